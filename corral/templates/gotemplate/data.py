"""The data Ollama hands to a template: messages, tool calls and tools as Go structs.

Mirrors Ollama's ``api`` types as a template sees them (field names, JSON
methods, ``toTypeScriptType`` of a property) and converts request dicts into them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from corral.templates.gotemplate.gojson import (
    NIL_SLICE,
    OrderedMap,
    go_json,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- data Ollama passes to templates


def _json_string_method(self: Any) -> str:
    return go_json(self)


class PropertyType(list):  # type: ignore[type-arg]
    """JSON-schema ``type``: one name or several (api.PropertyType)."""

    def __go_string__(self) -> str:
        return "" if not self else self[0] if len(self) == 1 else "[" + " ".join(self) + "]"

    def __go_json__(self) -> Any:
        return self[0] if len(self) == 1 else list(self)


_TS_TYPES = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "array": "any[]",
    "object": "Record<string, any>",
    "null": "null",
}


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
    _go_json_fields: ClassVar = (
        ("AnyOf", "anyOf", True),
        ("Type", "type", True),
        ("Items", "items", True),
        ("Description", "description", True),
        ("Enum", "enum", True),
        ("Properties", "properties", True),
        ("Required", "required", True),
    )

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
    _go_json_fields: ClassVar = (
        ("Type", "type", False),
        ("Defs", "$defs", True),
        ("Items", "items", True),
        ("Required", "required", True),
        ("Properties", "properties", False),
    )
    # Ollama >= 0.14 prints this struct Go-style (ollama/ollama#14601); JSON is the intended output.
    __go_string__ = _json_string_method


@dataclasses.dataclass
class TemplateToolFunction:
    Name: str = ""
    Description: str = ""
    Parameters: TemplateToolFunctionParameters = dataclasses.field(default_factory=TemplateToolFunctionParameters)
    _go_json_fields: ClassVar = (
        ("Name", "name", False),
        ("Description", "description", False),
        ("Parameters", "parameters", False),
    )
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
        Properties=(
            ToolPropertiesMap((str(k), _tool_property(x, ordered)) for k, x in props.items())
            if isinstance(props, Mapping)
            else None
        ),
        Required=_strings(d.get("required")),
    )


def convert_tool(t: Mapping[str, Any], ordered: bool) -> TemplateTool:
    fn = t.get("function") or {}
    params = fn.get("parameters") or {}
    props = params.get("properties")
    properties = TemplateProperties(
        ((str(k), _tool_property(x, ordered)) for k, x in props.items()) if isinstance(props, Mapping) else (),
        nil=not isinstance(props, Mapping),
        ordered=ordered,
    )
    return TemplateTool(
        Type=str(t.get("type") or ""),
        Items=_go_any(t.get("items"), ordered),
        Function=TemplateToolFunction(
            Name=str(fn.get("name") or ""),
            Description=str(fn.get("description") or ""),
            Parameters=TemplateToolFunctionParameters(
                Type=str(params.get("type") or ""),
                Defs=_go_any(params.get("$defs"), ordered),
                Items=_go_any(params.get("items"), ordered),
                Required=_strings(params.get("required")),
                Properties=properties,
            ),
        ),
    )


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


def convert_message(m: Mapping[str, Any], ordered: bool) -> TemplateMessage:
    calls = []
    for tc in m.get("tool_calls") or ():
        fn = tc.get("function") or {}
        calls.append(
            TemplateToolCall(
                ID=str(tc.get("id") or ""),
                Function=TemplateToolCallFunction(
                    Index=int(fn.get("index") or 0),
                    Name=str(fn.get("name") or ""),
                    Arguments=_arguments(fn.get("arguments"), ordered),
                ),
            )
        )
    images = m.get("images")
    return TemplateMessage(
        Role=m["role"],
        Content=m["content"],
        Thinking=str(m.get("thinking") or ""),
        Images=list(images) if images else NIL_SLICE,
        ToolCalls=calls or NIL_SLICE,
        ToolName=str(m.get("tool_name") or ""),
        ToolCallID=str(m.get("tool_call_id") or ""),
    )
