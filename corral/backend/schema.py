"""A structural check of the JSON schemas that ``format`` (and ``response_format``) constrain output with.

llama.cpp's grammar engine accepts a schema it cannot make sense of (a
``"type": "notatype"``, ``"properties": 5``) and then samples freely, so a
client asking for structure silently gets prose. Each schema is checked
here first, and a broken one is a 400 that names the problem and where it
is (a JSON pointer into ``format``). Only what decides the shape of the
output is checked; unknown keywords are allowed, as JSON Schema allows them.
"""

from __future__ import annotations

from typing import Any

from corral.errors import BadRequest

TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONE = (
    "additionalProperties",
    "unevaluatedProperties",
    "additionalItems",
    "unevaluatedItems",
    "contains",
    "not",
    "propertyNames",
    "if",
    "then",
    "else",
)
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_COUNTS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_NUMBERS = ("minimum", "maximum")
_STRINGS = (
    "pattern",
    "format",
    "$ref",
    "$id",
    "$schema",
    "title",
    "description",
    "contentEncoding",
    "contentMediaType",
)


class _Invalid(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(problem)
        self.where, self.problem = where, problem


def _pointer(path: list[str]) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path) if path else "/"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, float) and value.is_integer() and value >= 0
    )


def _check(schema: Any, path: list[str]) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise _Invalid(_pointer(path), f"a schema must be an object or a boolean, not {_kind(schema)}")
    where = _pointer(path)
    if "type" in schema:
        kinds = schema["type"]
        names = kinds if isinstance(kinds, list) else [kinds]
        if not names:
            raise _Invalid(_pointer([*path, "type"]), "type must not be an empty list")
        for name in names:
            if not isinstance(name, str) or name not in TYPES:
                raise _Invalid(
                    _pointer([*path, "type"]),
                    f"{_show(name)} is not a valid type (one of " + ", ".join(f'"{t}"' for t in TYPES) + ")",
                )
    for key in _SCHEMA_MAPS:
        if key in schema:
            value = schema[key]
            if not isinstance(value, dict):
                raise _Invalid(_pointer([*path, key]), f"{key} must be an object of schemas, not {_kind(value)}")
            for name, sub in value.items():
                _check(sub, [*path, key, str(name)])
    for key in _SCHEMA_ONE:
        if key in schema:
            _check(schema[key], [*path, key])
    if "items" in schema:
        items = schema["items"]
        if isinstance(items, list):  # draft 4-7 tuple form
            for i, sub in enumerate(items):
                _check(sub, [*path, "items", str(i)])
        else:
            _check(items, [*path, "items"])
    for key in _SCHEMA_LISTS:
        if key in schema:
            value = schema[key]
            if not isinstance(value, list) or not value:
                raise _Invalid(_pointer([*path, key]), f"{key} must be a non-empty list of schemas")
            for i, sub in enumerate(value):
                _check(sub, [*path, key, str(i)])
    if "required" in schema:
        required = schema["required"]
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise _Invalid(_pointer([*path, "required"]), "required must be a list of property names")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise _Invalid(_pointer([*path, "enum"]), f"enum must be a list, not {_kind(schema['enum'])}")
    for key in _COUNTS:
        if key in schema and not _is_count(schema[key]):
            raise _Invalid(_pointer([*path, key]), f"{key} must be a non-negative integer, not {_show(schema[key])}")
    for key in _NUMBERS:
        if key in schema and not _is_number(schema[key]):
            raise _Invalid(_pointer([*path, key]), f"{key} must be a number, not {_show(schema[key])}")
    for key in ("exclusiveMinimum", "exclusiveMaximum"):  # a number, or draft 4's boolean
        if key in schema and not (_is_number(schema[key]) or isinstance(schema[key], bool)):
            raise _Invalid(_pointer([*path, key]), f"{key} must be a number, not {_show(schema[key])}")
    if "multipleOf" in schema and not (_is_number(schema["multipleOf"]) and schema["multipleOf"] > 0):
        raise _Invalid(_pointer([*path, "multipleOf"]), "multipleOf must be a number above 0")
    for key in _STRINGS:
        if key in schema and not isinstance(schema[key], str):
            raise _Invalid(_pointer([*path, key]), f"{key} must be a string, not {_kind(schema[key])}")
    for low, high in (
        ("minLength", "maxLength"),
        ("minItems", "maxItems"),
        ("minProperties", "maxProperties"),
        ("minimum", "maximum"),
    ):
        if low in schema and high in schema and schema[low] > schema[high]:
            raise _Invalid(where, f"{low} {schema[low]} is above {high} {schema[high]}: nothing can match")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else "null"


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def check_schema(schema: dict[str, Any]) -> None:
    """Raise a 400 naming the first structural problem of ``schema``, a ``format`` JSON schema."""
    try:
        _check(schema, [])
    except _Invalid as exc:
        raise BadRequest(f"invalid JSON schema in format at {exc.where}: {exc.problem}", param="format") from None
