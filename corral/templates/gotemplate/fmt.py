"""Go values and ``fmt`` printing for the text/template engine.

Owns how Python data reads as Go values (truth, type names, struct fields,
sorted map order) and Go's ``fmt`` formatting of them: ``Sprint``,
``Sprintf`` verbs, ``%q`` quoting and Go's shortest float formatting. Used
by :mod:`corral.templates.gotemplate.exec` (actions, ``print``/``printf``) and
:mod:`corral.templates.gotemplate.template`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

# ---------------------------------------------------------------- values


def is_true(v: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings/slices/maps are false."""
    if v is None:
        return False
    if isinstance(v, (bool, int, float)):
        return v != 0
    if isinstance(v, (str, bytes, Sequence, Mapping)):
        return len(v) > 0
    return True


GO_TYPES = (
    (bool, "bool"),
    (int, "int"),
    (float, "float64"),
    (str, "string"),
    (Mapping, "map[string]interface {}"),
    ((list, tuple), "[]interface {}"),
)


def go_type_name(v: Any) -> str:
    if v is None:
        return "<nil>"
    return next((name for typ, name in GO_TYPES if isinstance(v, typ)), type(v).__name__)


def sorted_items(m: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    if getattr(m, "go_ordered", False):
        return list(m.items())
    try:
        return sorted(m.items(), key=lambda kv: kv[0])
    except TypeError:
        return sorted(m.items(), key=lambda kv: str(kv[0]))


def shortest_digits(x: float) -> tuple[str, int]:
    """Shortest round-trip digits of abs(x) > 0 and the decimal point position."""
    mant, _, exp = repr(abs(x)).partition("e")
    ip, _, fp = mant.partition(".")
    digits = ip + fp
    dp = len(ip) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    dp -= len(digits) - len(stripped)
    return stripped.rstrip("0") or "0", dp


def fmt_exp(digits: str, dp: int) -> str:
    exp = dp - 1
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def fmt_fixed(digits: str, dp: int) -> str:
    if dp <= 0:
        return "0." + "0" * -dp + digits
    if dp >= len(digits):
        return digits + "0" * (dp - len(digits))
    return digits[:dp] + "." + digits[dp:]


def go_float(x: float) -> str:
    """Go's ``%v`` of a float64: shortest digits, exponent form when exp < -4 or exp >= 6 (``1e+06``)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    digits, dp = shortest_digits(x)
    exp = dp - 1
    body = fmt_exp(digits, dp) if exp < -4 or exp >= 6 else fmt_fixed(digits, dp)
    return ("-" if x < 0 else "") + body


def struct_fields(v: Any) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return [(f.name, getattr(v, f.name)) for f in dataclasses.fields(v)]
    return [(k, val) for k, val in vars(v).items() if not k.startswith("_")]


def go_sprint(v: Any) -> str:
    """``fmt.Sprint`` of one value (``%v``)."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, str):
        return v
    hook = getattr(type(v), "__go_string__", None)
    if hook is not None:
        return str(hook(v))
    if isinstance(v, (bytes, bytearray)):
        return "[" + " ".join(str(b) for b in v) + "]"
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{go_sprint(k)}:{go_sprint(x)}" for k, x in sorted_items(v)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_sprint(x) for x in v) + "]"
    if dataclasses.is_dataclass(v) or hasattr(v, "__dict__"):
        return "{" + " ".join(go_sprint(x) for _, x in struct_fields(v)) + "}"
    return str(v)


def print_action(v: Any) -> str:
    """What ``{{ pipeline }}`` writes: Go prints an invalid value as ``<no value>``."""
    return "<no value>" if v is None else go_sprint(v)


# ---------------------------------------------------------------- fmt


_QUOTE_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def go_quote(s: str) -> str:
    """Go ``strconv.Quote``."""
    out = ['"']
    for c in s:
        if c in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[c])
        elif c.isprintable():
            out.append(c)
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out) + '"'


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?(.)?", re.DOTALL)


def _bad(verb: str, arg: Any) -> str:
    return f"%!{verb}(<nil>)" if arg is None else f"%!{verb}({go_type_name(arg)}={go_sprint(arg)})"


def _fmt_one(verb: str, flags: str, prec: int | None, arg: Any) -> str:
    is_int = isinstance(arg, int) and not isinstance(arg, bool)
    if verb in "vT":
        return go_sprint(arg) if verb == "v" else go_type_name(arg)
    if isinstance(arg, (list, tuple)) and verb in "sdqxXfFeEgGt":
        return "[" + " ".join(_fmt_one(verb, flags, prec, x) for x in arg) + "]"
    if isinstance(arg, Mapping) and not hasattr(type(arg), "__go_string__") and verb in "sdqxXfFeEgGt":
        return (
            "map["
            + " ".join(
                f"{_fmt_one(verb, flags, prec, k)}:{_fmt_one(verb, flags, prec, x)}" for k, x in sorted_items(arg)
            )
            + "]"
        )
    if verb == "s":
        if isinstance(arg, str) or hasattr(type(arg), "__go_string__"):
            s = go_sprint(arg)
            return s if prec is None else s[:prec]
        return _bad(verb, arg)
    if verb == "q":
        if isinstance(arg, str) or hasattr(type(arg), "__go_string__"):
            return go_quote(go_sprint(arg))
        if is_int:
            return "'" + go_quote(chr(arg))[1:-1].replace('\\"', '"').replace("'", "\\'") + "'"
        return _bad(verb, arg)
    if verb in "dboxXc" and is_int:
        if verb == "c":
            return chr(arg)
        sign = "+" if "+" in flags and arg >= 0 else ""
        body = str(abs(arg)) if verb == "d" else format(abs(arg), verb)
        if "#" in flags and verb in "xX":
            body = ("0x" if verb == "x" else "0X") + body
        return ("-" if arg < 0 else sign) + body
    if verb in "xX" and isinstance(arg, str):
        return arg.encode("utf-8").hex() if verb == "x" else arg.encode("utf-8").hex().upper()
    if verb in "fFeEgG" and isinstance(arg, float):
        if math.isnan(arg) or math.isinf(arg):
            return go_float(arg)
        sign = "+" if "+" in flags and arg >= 0 else ""
        if verb in "gG" and prec is None:
            return sign + go_float(arg)
        p = 6 if prec is None else prec
        return sign + format(arg, f".{p}{verb}")
    if verb == "t" and isinstance(arg, bool):
        return "true" if arg else "false"
    return _bad(verb, arg)


def go_sprintf(fmt: str, *args: Any) -> str:
    """Go ``fmt.Sprintf`` for the common verbs (v s d q f e g t x c b o %%), widths and precisions."""
    out: list[str] = []
    argi, i, n = 0, 0, len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        m = _VERB.match(fmt, j)
        assert m is not None
        flags, width, prec_s, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        i = m.end()
        if verb is None:
            out.append("%!(NOVERB)")
            break
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        prec = None if prec_s is None else int(prec_s or 0)
        s = _fmt_one(verb, flags, prec, arg)
        if width and len(s) < int(width):
            pad = int(width) - len(s)
            if "-" in flags:
                s += " " * pad
            elif "0" in flags and verb in "dfFeEgGxXbo" and not isinstance(arg, str):
                sign = s[0] if s[:1] in "+-" else ""
                s = sign + "0" * pad + s[len(sign) :]
            else:
                s = " " * pad + s
        out.append(s)
    if argi < len(args):
        extra = ", ".join("<nil>" if a is None else f"{go_type_name(a)}={go_sprint(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def go_print(*args: Any) -> str:
    """``fmt.Sprint``: spaces between operands when neither is a string."""
    out: list[str] = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_sprint(a))
    return "".join(out)
