"""Ollama-compatible Go templates: the public API and Ollama's prompt semantics.

Owns :class:`Template` (parse a Modelfile ``TEMPLATE`` once, execute it,
report which fields it uses), the functions Ollama adds to Go's
``text/template`` (``json``, ``currentDate``, ``yesterdayDate``,
``toTypeScriptType``), Go ``encoding/json`` output, the data structures
Ollama hands to a template (messages, tool calls, tools) and
:func:`render_chat_prompt`, which mirrors Ollama's ``template.Execute``:
fill-in-middle data when a prompt and suffix are given, the message list when
the template mentions ``.Messages``, otherwise the legacy per-turn rendering
through ``.System``/``.Prompt``/``.Response`` cut after the last ``.Response``.

Lexing/parsing is in :mod:`corral.gotemplate_lexer`, execution in
:mod:`corral.gotemplate_exec`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from corral.gotemplate_exec import BUILTINS, FuncError, execute
from corral.gotemplate_fmt import fmt_exp, fmt_fixed, go_sprint, shortest_digits, sorted_items, struct_fields
from corral.gotemplate_lexer import (ActionNode, BranchNode, CommandNode, FieldNode, ListNode, PipeNode,
                                     TemplateError, VariableNode, parse_template)

__all__ = ["FUNCS", "NIL_SLICE", "NilSlice", "OrderedMap", "PropertyType", "Template", "TemplateArgs", "TemplateError",
           "TemplateMessage", "TemplateTool", "TemplateTools", "ToolProperty", "go_json", "go_sprint",
           "render_chat_prompt"]

log = logging.getLogger(__name__)


class OrderedMap(dict):  # type: ignore[type-arg]
    """A dict that prints, ranges and JSON-encodes in insertion order."""

    go_ordered = True


class NilSlice(tuple):  # type: ignore[type-arg]
    """A Go nil slice: empty and false, prints ``[]``, JSON-encodes as ``null``."""

    go_nil = True


NIL_SLICE = NilSlice()


# ---------------------------------------------------------------- Go encoding/json

_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f",
                 "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_NEEDS_ESCAPE = re.compile('["\\\\<>&\u2028\u2029\x00-\x1f\ud800-\udfff]')


def _json_char(m: re.Match[str]) -> str:
    c = m.group()
    if c in _JSON_ESCAPES:
        return _JSON_ESCAPES[c]
    return "\ufffd" if "\ud800" <= c <= "\udfff" else f"\\u{ord(c):04x}"


def json_string(s: str) -> str:
    """A JSON string as Go writes it (``<``, ``>``, ``&`` escaped; UTF-8 kept)."""
    return '"' + _JSON_NEEDS_ESCAPE.sub(_json_char, s) + '"'


def json_float(x: float) -> str:
    """Go's float64 JSON: plain digits for 1e-6 <= |x| < 1e21, else ``1e+21`` / ``1e-7``."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError(f"json: unsupported value: {x}")
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    digits, dp = shortest_digits(x)
    if 1e-6 <= abs(x) < 1e21:
        body = fmt_fixed(digits, dp)
    else:
        body = re.sub(r"e-0(\d)$", r"e-\1", fmt_exp(digits, dp))
    return ("-" if x < 0 else "") + body


def _omit(v: Any) -> bool:
    """Go's ``omitempty``: false, 0, "", nil and empty slices/maps are left out (non-nil pointers are kept)."""
    if getattr(v, "go_pointer", False):
        return False
    if v is None or v is False:
        return True
    if isinstance(v, (int, float)):
        return v == 0
    return isinstance(v, (str, bytes, Sequence, Mapping)) and len(v) == 0


def go_json(v: Any) -> str:
    """Go ``json.Marshal`` (compact): maps in sorted key order, :class:`OrderedMap` in insertion order."""
    if v is None or getattr(v, "go_nil", False):
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return json_float(v)
    if isinstance(v, str):
        return json_string(v)
    hook = getattr(type(v), "__go_json__", None)
    if hook is not None:
        return go_json(hook(v))
    if isinstance(v, (bytes, bytearray)):
        return json_string(base64.b64encode(bytes(v)).decode("ascii"))
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{json_string(str(k))}:{go_json(x)}" for k, x in sorted_items(v)) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(go_json(x) for x in v) + "]"
    spec = getattr(type(v), "_go_json_fields", None)
    if spec is not None:
        return "{" + ",".join(f"{json_string(name)}:{go_json(getattr(v, attr))}"
                              for attr, name, omitempty in spec if not (omitempty and _omit(getattr(v, attr)))) + "}"
    if dataclasses.is_dataclass(v) or hasattr(v, "__dict__"):
        return "{" + ",".join(f"{json_string(k)}:{go_json(x)}" for k, x in struct_fields(v)) + "}"
    return json_string(str(v))


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


FUNCS = {**BUILTINS, "json": (_json, 1, 1), "currentDate": (_current_date, 0, None),
         "yesterdayDate": (_yesterday_date, 0, None), "toTypeScriptType": (_to_typescript, 1, 1)}
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


# ---------------------------------------------------------------- data Ollama passes to templates


def _json_string_method(self: Any) -> str:
    return go_json(self)


class PropertyType(list):  # type: ignore[type-arg]
    """JSON-schema ``type``: one name or several (api.PropertyType)."""

    def __go_string__(self) -> str:
        return "" if not self else self[0] if len(self) == 1 else "[" + " ".join(self) + "]"

    def __go_json__(self) -> Any:
        return self[0] if len(self) == 1 else list(self)


_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
             "array": "any[]", "object": "Record<string, any>", "null": "null"}


@dataclasses.dataclass
class ToolProperty:
    """One parameter property (api.ToolProperty)."""

    AnyOf: Sequence[ToolProperty] = NIL_SLICE
    Type: PropertyType = dataclasses.field(default_factory=PropertyType)
    Items: Any = None
    Description: str = ""
    Enum: Sequence[Any] = NIL_SLICE
    Properties: ToolPropertiesMap | None = None
    Required: Sequence[str] = NIL_SLICE
    _go_json_fields: ClassVar = (("AnyOf", "anyOf", True), ("Type", "type", True), ("Items", "items", True),
                                 ("Description", "description", True), ("Enum", "enum", True),
                                 ("Properties", "properties", True), ("Required", "required", True))

    def typescript(self) -> str:
        """Ollama's ``ToTypeScriptType``."""
        if self.AnyOf:
            return " | ".join(p.typescript() for p in self.AnyOf)
        return " | ".join(_TS_TYPES.get(t, "any") for t in self.Type) if self.Type else "any"


class ToolPropertiesMap(OrderedMap):
    """Nested ``properties`` (a non-nil *api.ToolPropertiesMap): insertion order, kept even when empty."""

    go_pointer = True


class TemplateProperties(dict):  # type: ignore[type-arg]
    """Property name -> ToolProperty; a Go map whose String() is its JSON."""

    def __init__(self, items: Any = (), *, nil: bool = False, ordered: bool = False) -> None:
        super().__init__(items)
        self.go_nil = nil
        self.go_ordered = ordered

    def __go_string__(self) -> str:
        return "{}" if self.go_nil else go_json(self)


class TemplateArgs(TemplateProperties):
    """Tool-call arguments; a Go map whose String() is its JSON (``{}`` when absent)."""


@dataclasses.dataclass
class TemplateToolFunctionParameters:
    Type: str = ""
    Defs: Any = None
    Items: Any = None
    Required: Sequence[str] = NIL_SLICE
    Properties: TemplateProperties = dataclasses.field(default_factory=lambda: TemplateProperties(nil=True))
    _go_json_fields: ClassVar = (("Type", "type", False), ("Defs", "$defs", True), ("Items", "items", True),
                                 ("Required", "required", True), ("Properties", "properties", False))
    # Ollama >= 0.14 prints this struct Go-style (ollama/ollama#14601); JSON is the intended output.
    __go_string__ = _json_string_method


@dataclasses.dataclass
class TemplateToolFunction:
    Name: str = ""
    Description: str = ""
    Parameters: TemplateToolFunctionParameters = dataclasses.field(default_factory=TemplateToolFunctionParameters)
    _go_json_fields: ClassVar = (("Name", "name", False), ("Description", "description", False),
                                 ("Parameters", "parameters", False))
    __go_string__ = _json_string_method


@dataclasses.dataclass
class TemplateTool:
    Type: str = ""
    Items: Any = None
    Function: TemplateToolFunction = dataclasses.field(default_factory=TemplateToolFunction)
    _go_json_fields: ClassVar = (("Type", "type", False), ("Items", "items", True), ("Function", "function", False))
    __go_string__ = _json_string_method


class TemplateTools(list):  # type: ignore[type-arg]
    """``.Tools``: prints as its JSON (``null`` when no tools were given)."""

    def __init__(self, items: Any = (), *, nil: bool = False) -> None:
        super().__init__(items)
        self.go_nil = nil

    __go_string__ = _json_string_method


@dataclasses.dataclass
class TemplateToolCallFunction:
    Index: int = 0
    Name: str = ""
    Arguments: TemplateArgs = dataclasses.field(default_factory=lambda: TemplateArgs(nil=True))


@dataclasses.dataclass
class TemplateToolCall:
    ID: str = ""
    Function: TemplateToolCallFunction = dataclasses.field(default_factory=TemplateToolCallFunction)


@dataclasses.dataclass
class TemplateMessage:
    Role: str = ""
    Content: str = ""
    Thinking: str = ""
    Images: Sequence[Any] = NIL_SLICE
    ToolCalls: Sequence[TemplateToolCall] = NIL_SLICE
    ToolName: str = ""
    ToolCallID: str = ""


def _go_any(v: Any, ordered: bool) -> Any:
    """A JSON value as Go decodes it into ``any`` (numbers become float64)."""
    if isinstance(v, bool) or v is None or isinstance(v, (str, float)):
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, Mapping):
        items = {str(k): _go_any(x, ordered) for k, x in v.items()}
        return OrderedMap(items) if ordered else items
    if isinstance(v, (list, tuple)):
        return [_go_any(x, ordered) for x in v]
    return v


def _strings(v: Any) -> Sequence[str]:
    return [str(x) for x in v] if isinstance(v, (list, tuple)) and v else NIL_SLICE


def _tool_property(d: Any, ordered: bool) -> ToolProperty:
    d = d if isinstance(d, Mapping) else {}
    typ = d.get("type")
    props = d.get("properties")
    any_of = d.get("anyOf")
    enum = d.get("enum")
    return ToolProperty(
        AnyOf=[_tool_property(x, ordered) for x in any_of] if isinstance(any_of, list) and any_of else NIL_SLICE,
        Type=PropertyType([typ] if isinstance(typ, str) else [str(t) for t in typ] if isinstance(typ, list) else []),
        Items=_go_any(d.get("items"), ordered),
        Description=str(d.get("description") or ""),
        Enum=[_go_any(x, ordered) for x in enum] if isinstance(enum, list) and enum else NIL_SLICE,
        Properties=(ToolPropertiesMap((str(k), _tool_property(x, ordered)) for k, x in props.items())
                    if isinstance(props, Mapping) else None),
        Required=_strings(d.get("required")),
    )


def _convert_tool(t: Mapping[str, Any], ordered: bool) -> TemplateTool:
    fn = t.get("function") or {}
    params = fn.get("parameters") or {}
    props = params.get("properties")
    properties = TemplateProperties(
        ((str(k), _tool_property(x, ordered)) for k, x in props.items()) if isinstance(props, Mapping) else (),
        nil=not isinstance(props, Mapping), ordered=ordered)
    return TemplateTool(
        Type=str(t.get("type") or ""), Items=_go_any(t.get("items"), ordered),
        Function=TemplateToolFunction(
            Name=str(fn.get("name") or ""), Description=str(fn.get("description") or ""),
            Parameters=TemplateToolFunctionParameters(
                Type=str(params.get("type") or ""), Defs=_go_any(params.get("$defs"), ordered),
                Items=_go_any(params.get("items"), ordered), Required=_strings(params.get("required")),
                Properties=properties)))


def _arguments(raw: Any, ordered: bool) -> TemplateArgs:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw, object_pairs_hook=dict) if raw.strip() else {}
        except json.JSONDecodeError:
            log.warning("tool call arguments are not JSON: %.80s", raw)
            raw = {}
    if not isinstance(raw, Mapping):
        return TemplateArgs(nil=True, ordered=ordered)
    return TemplateArgs(((str(k), _go_any(v, ordered)) for k, v in raw.items()), ordered=ordered)


def _convert_message(m: Mapping[str, Any], ordered: bool) -> TemplateMessage:
    calls = []
    for tc in m.get("tool_calls") or ():
        fn = tc.get("function") or {}
        calls.append(TemplateToolCall(ID=str(tc.get("id") or ""), Function=TemplateToolCallFunction(
            Index=int(fn.get("index") or 0), Name=str(fn.get("name") or ""),
            Arguments=_arguments(fn.get("arguments"), ordered))))
    images = m.get("images")
    return TemplateMessage(
        Role=m["role"], Content=m["content"], Thinking=str(m.get("thinking") or ""),
        Images=list(images) if images else NIL_SLICE, ToolCalls=calls or NIL_SLICE,
        ToolName=str(m.get("tool_name") or ""), ToolCallID=str(m.get("tool_call_id") or ""))


def _collate(messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's collate: join consecutive same-role turns (not tool) with a blank line; gather system text."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for msg in messages:
        role = str(msg.get("role") or "").lower()
        content = str(msg.get("content") or "")
        if role == "system":
            system.append(content)
        if out and out[-1]["role"] == role and role != "tool":
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({**msg, "role": role, "content": content})
    return "\n\n".join(system), out


def _think_values(think: bool | str | None) -> dict[str, Any]:
    if isinstance(think, str):
        enabled, level = think in ("high", "medium", "low", "max"), think
    else:
        enabled, level = bool(think), "medium" if think else ""
    return {"Think": enabled, "ThinkLevel": level, "IsThinkSet": think is not None}


def render_chat_prompt(template: Template | str, *, messages: Sequence[Mapping[str, Any]],
                       system: str | None = None, tools: Sequence[Mapping[str, Any]] | None = None,
                       think: bool | str | None = None, suffix: str | None = None, prompt: str | None = None,
                       preserve_key_order: bool = False) -> str:
    """Render a prompt the way Ollama's ``template.Execute`` does.

    ``messages`` use Ollama's wire shape. ``system`` is prepended as a system
    message unless the first message already is one (Ollama's chat handler
    does this with the model's SYSTEM). With a non-empty ``suffix``, nothing is
    folded in and, when ``prompt`` is non-empty too, only Prompt/Suffix/Response
    are passed (fill-in-middle). Without a suffix, ``prompt`` becomes the user
    message only when ``messages`` is empty. ``think`` may be a bool or a level
    ("high"/"medium"/"low"). Tool-call arguments and top-level tool properties
    are Go maps, so ``json``/printing sorts their keys as Ollama does;
    ``preserve_key_order=True`` keeps the caller's order instead.
    """
    tmpl = template if isinstance(template, Template) else Template(template)
    thinking = _think_values(think)
    msgs = [dict(m) for m in messages]
    if suffix:
        if prompt:
            return tmpl._execute_ollama({"Prompt": prompt, "Suffix": suffix, "Response": "", **thinking})
    else:
        if system and (not msgs or str(msgs[0].get("role")).lower() != "system"):
            msgs.insert(0, {"role": "system", "content": system})
        if prompt and not msgs:
            msgs.append({"role": "user", "content": prompt})
    system_text, collated = _collate(msgs)
    if tmpl.uses("messages"):
        data = {"System": system_text,
                "Messages": [_convert_message(m, preserve_key_order) for m in collated] or NIL_SLICE,
                "Tools": TemplateTools((_convert_tool(t, preserve_key_order) for t in tools or ()), nil=tools is None),
                "Response": "", **thinking}
        return tmpl._execute_ollama(data)
    # Legacy templates: one execution per system/user/assistant turn, then the
    # final turn rendered up to (and including) its {{ .Response }}.
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(tmpl._execute_ollama({**turn, **thinking}))
        turn.update(System="", Prompt="", Response="")

    for msg in collated:
        role, content = msg["role"], msg["content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    out.append(tmpl._execute_ollama({**turn, **thinking}, legacy_final=True))
    return "".join(out)

