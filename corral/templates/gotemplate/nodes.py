"""Go text/template node tree: the nodes the parser builds and the executor walks, and TemplateError."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class TemplateError(ValueError):
    """A Go template failed to parse or execute; the message names the line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


# ---------------------------------------------------------------- nodes


@dataclass(slots=True)
class TextNode:
    text: str


@dataclass(slots=True)
class FieldNode:
    idents: list[str]


@dataclass(slots=True)
class VariableNode:
    name: str
    fields: list[str]


@dataclass(slots=True)
class LiteralNode:
    """A constant operand: ``kind`` is dot, nil, bool, number or string (``text`` is the source)."""

    kind: str
    value: Any = None
    text: str = ""


@dataclass(slots=True)
class IdentifierNode:
    name: str


@dataclass(slots=True)
class ChainNode:
    node: ArgNode
    fields: list[str]


@dataclass(slots=True)
class CommandNode:
    args: list[ArgNode]


@dataclass(slots=True)
class PipeNode:
    line: int
    decl: list[str] = field(default_factory=list)
    is_assign: bool = False
    cmds: list[CommandNode] = field(default_factory=list)


@dataclass(slots=True)
class ActionNode:
    pipe: PipeNode
    line: int


@dataclass(slots=True)
class ListNode:
    nodes: list[Node]


@dataclass(slots=True)
class BranchNode:
    """``{{if}}``, ``{{with}}`` or ``{{range}}`` (``kind``), with its optional ``{{else}}`` list."""

    kind: str
    pipe: PipeNode
    list: ListNode
    else_list: ListNode | None
    line: int


@dataclass(slots=True)
class LoopControlNode:
    """``{{break}}`` or ``{{continue}}`` (``kind``)."""

    kind: str
    line: int


ArgNode = FieldNode | VariableNode | LiteralNode | IdentifierNode | ChainNode | PipeNode
Node = TextNode | ActionNode | BranchNode | LoopControlNode | ListNode
