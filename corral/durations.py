"""Durations: Ollama's ``keep_alive`` values and nanosecond helpers.

``keep_alive`` may be a number of seconds, or a Go duration string such as
``"5m"``, ``"1h30m"``, ``"-1"`` or ``"0"``. We return seconds as a float:
negative means "keep forever", ``0`` means "unload now".

A duration must fit Go's ``time.Duration`` (int64 nanoseconds, about 292
years), as Ollama's decoder requires: ``"10000000000h"``, ``1e300``,
``"NaN"`` or ``"inf"`` are a 400 ``time: invalid duration``, never a value
that overflows later in the scheduler. Any negative number still means
forever, as in Ollama.
"""

from __future__ import annotations

import math
import re
from typing import Any

from corral.errors import BadRequest

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
MAX_SECONDS = (2**63 - 1) / 1e9  # Go's time.Duration: int64 nanoseconds


def _invalid(value: Any) -> BadRequest:
    text = value if isinstance(value, str) else repr(value)
    return BadRequest(f'time: invalid duration "{text}"', param="keep_alive")


def _checked(seconds: float, value: Any) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise _invalid(value)
    if seconds > MAX_SECONDS:
        raise _invalid(value)
    return seconds


def parse_keep_alive(value: Any) -> float | None:
    """Parse a keep_alive value into seconds; None when absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("invalid keep_alive: must be a duration or a number of seconds")
    if isinstance(value, (int, float)):
        try:
            return _checked(float(value), value)
        except OverflowError:  # an int beyond a float's range
            raise _invalid(value) from None
    if not isinstance(value, str):
        raise BadRequest("invalid keep_alive: must be a duration or a number of seconds")
    text = value.strip()
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return _checked(number, value)
    sign = 1.0
    if text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0 or total > MAX_SECONDS:
        raise _invalid(value)
    return sign * total


def ns(seconds: float) -> int:
    """Seconds to integer nanoseconds, as Ollama reports durations."""
    return int(seconds * 1e9)
