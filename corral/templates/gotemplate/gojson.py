"""Go values Ollama's templates see as Go types, and Go's ``encoding/json`` output.

Owns :class:`OrderedMap` (a map that keeps insertion order), :class:`NilSlice`
and :func:`go_json`, which writes JSON byte for byte as Go's ``json.Marshal`` does
(HTML-safe escapes, shortest floats, omitempty).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from corral.templates.gotemplate.fmt import (
    fmt_exp,
    fmt_fixed,
    shortest_digits,
    sorted_items,
    struct_fields,
)

log = logging.getLogger(__name__)


class OrderedMap(dict):  # type: ignore[type-arg]
    """A dict that prints, ranges and JSON-encodes in insertion order."""

    go_ordered = True


class NilSlice(tuple):  # type: ignore[type-arg]
    """A Go nil slice: empty and false, prints ``[]``, JSON-encodes as ``null``."""

    go_nil = True


NIL_SLICE = NilSlice()


# ---------------------------------------------------------------- Go encoding/json

_JSON_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
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
        return (
            "{"
            + ",".join(
                f"{json_string(name)}:{go_json(getattr(v, attr))}"
                for attr, name, omitempty in spec
                if not (omitempty and _omit(getattr(v, attr)))
            )
            + "}"
        )
    if dataclasses.is_dataclass(v) or hasattr(v, "__dict__"):
        return "{" + ",".join(f"{json_string(k)}:{go_json(x)}" for k, x in struct_fields(v)) + "}"
    return json_string(str(v))
