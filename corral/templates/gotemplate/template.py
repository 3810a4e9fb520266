"""Ollama-compatible Go templates: :class:`Template` and the functions Ollama adds.

Owns parsing a Modelfile ``TEMPLATE`` once, executing it, reporting which
fields it uses, and the functions Ollama adds to Go's ``text/template``
(``json``, ``currentDate``, ``yesterdayDate``, ``toTypeScriptType``). Lexing
and parsing are :mod:`.lexer` and :mod:`.parser`, execution :mod:`.exec`,
the data a template sees :mod:`.data`, the prompt semantics :mod:`.prompt`.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from corral.templates.gotemplate.data import ToolProperty
from corral.templates.gotemplate.exec import BUILTINS, FuncError, execute
from corral.templates.gotemplate.gojson import (
    go_json,
)
from corral.templates.gotemplate.nodes import (
    ActionNode,
    BranchNode,
    CommandNode,
    FieldNode,
    ListNode,
    PipeNode,
    VariableNode,
)
from corral.templates.gotemplate.parser import parse_template

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- Ollama's template functions


def _json(v: Any) -> str:
    try:
        return go_json(v)
    except ValueError:
        return ""  # Ollama ignores the json.Marshal error and prints nothing


def _date(days_ago: int) -> str:
    return (datetime.date.today() - datetime.timedelta(days=days_ago)).isoformat()


def _check_strings(args: tuple[Any, ...]) -> None:
    for a in args:
        if not isinstance(a, str):
            raise FuncError(f"wrong type for value; expected string; got {type(a).__name__}")


def _current_date(*args: Any) -> str:
    _check_strings(args)  # Ollama accepts and ignores a format argument
    return _date(0)


def _yesterday_date(*args: Any) -> str:
    _check_strings(args)
    return _date(1)


def _to_typescript(v: Any) -> str:
    return v.typescript() if isinstance(v, ToolProperty) else "any"


FUNCS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    **BUILTINS,
    "json": (_json, 1, 1),
    "currentDate": (_current_date, 0, None),
    "yesterdayDate": (_yesterday_date, 0, None),
    "toTypeScriptType": (_to_typescript, 1, 1),
}
_FUNC_NAMES = frozenset(FUNCS)

# ---------------------------------------------------------------- Template


class Template:
    """A parsed Go text/template (raises :class:`TemplateError` on bad syntax)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._root = parse_template(source, _FUNC_NAMES)
        self._vars = frozenset(name.lower() for name in _identifiers(self._root))
        # Ollama appends {{ .Response }} when a template mentions neither messages nor response.
        if "messages" in self._vars or "response" in self._vars:
            self._ollama_root = self._root
        else:
            response = ActionNode(PipeNode(0, cmds=[CommandNode([FieldNode(["Response"])])]), 0)
            self._ollama_root = ListNode([*self._root.nodes, response])
        self._legacy_root: ListNode | None = None

    def __str__(self) -> str:
        return self.source

    def __repr__(self) -> str:
        return f"Template({self.source[:40]!r}...)"

    def execute(self, data: Mapping[str, Any]) -> str:
        """Render with ``data`` as ``.`` and ``$`` (plain Go semantics, no Ollama touch-ups)."""
        return execute(self._root, data, FUNCS)

    def uses(self, name: str) -> bool:
        """Whether the template references ``name`` (e.g. ``Messages``, ``Tools``, ``Suffix``).

        Same rule as Ollama's ``Template.Vars``: case-insensitive, any component of
        a field or variable path (``.Messages``, ``$.Messages``, ``.X.Messages``).
        """
        return name.lower() in self._vars

    def variables(self) -> list[str]:
        """Ollama's ``Vars()``: identifiers mentioned, lower-cased, sorted, plus ``response`` when Ollama appends it."""
        return sorted(self._vars | {"response"} if self._ollama_root is not self._root else self._vars)

    def _execute_ollama(self, data: Mapping[str, Any], legacy_final: bool = False) -> str:
        if not legacy_final:
            return execute(self._ollama_root, data, FUNCS)
        if self._legacy_root is None:
            self._legacy_root = _cut_after_response(self._ollama_root)
        return execute(self._legacy_root, data, FUNCS)


def _identifiers(node: Any) -> Iterator[str]:
    """Field and variable names, walked like Ollama's ``Identifiers`` (chains are skipped)."""
    if isinstance(node, ListNode):
        for child in node.nodes:
            yield from _identifiers(child)
    elif isinstance(node, ActionNode):
        yield from _identifiers(node.pipe)
    elif isinstance(node, BranchNode):
        yield from _identifiers(node.pipe)
        yield from _identifiers(node.list)
        if node.else_list is not None:
            yield from _identifiers(node.else_list)
    elif isinstance(node, PipeNode):
        for cmd in node.cmds:
            for arg in cmd.args:
                yield from _identifiers(arg)
    elif isinstance(node, FieldNode):
        yield from node.idents
    elif isinstance(node, VariableNode):
        yield node.name
        yield from node.fields


def _cut_after_response(root: ListNode) -> ListNode:
    """Copy of the tree with everything after the first ``.Response`` field removed (Ollama's deleteNode)."""
    cut = False

    def walk(n: Any) -> Any:
        nonlocal cut
        if isinstance(n, FieldNode) and "Response" in n.idents:
            cut = True
            return n
        if cut:
            return None
        if isinstance(n, ListNode):
            return ListNode([c for c in (walk(x) for x in n.nodes) if c is not None])
        if isinstance(n, BranchNode):
            body = walk(n.list)
            other = walk(n.else_list) if n.else_list is not None else None
            return BranchNode(n.kind, n.pipe, body or ListNode([]), other, n.line)
        if isinstance(n, ActionNode):
            pipe = walk(n.pipe)
            return None if pipe is None else ActionNode(pipe, n.line)
        if isinstance(n, PipeNode):
            cmds = []
            for cmd in n.cmds:
                args = [a for a in (walk(x) for x in cmd.args) if a is not None]
                if not args:
                    return None
                cmds.append(CommandNode(args))
            return PipeNode(n.line, n.decl, n.is_assign, cmds)
        return n

    out = walk(root)
    return out if isinstance(out, ListNode) else ListNode([])
