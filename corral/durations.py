"""Durations: Ollama's ``keep_alive`` values and nanosecond helpers.

``keep_alive`` may be a number of seconds, or a Go duration string such as
``"5m"``, ``"1h30m"``, ``"-1"`` or ``"0"``. We return seconds as a float:
negative means "keep forever", ``0`` means "unload now".
"""

from __future__ import annotations

import re
from typing import Any

from corral.errors import BadRequest

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: Any) -> float | None:
    """Parse a keep_alive value into seconds; None when absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("invalid keep_alive: must be a duration or a number of seconds")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise BadRequest("invalid keep_alive: must be a duration or a number of seconds")
    text = value.strip()
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        pass
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
    if pos != len(text) or pos == 0:
        raise BadRequest(f'time: invalid duration "{value}"')
    return sign * total


def ns(seconds: float) -> int:
    """Seconds to integer nanoseconds, as Ollama reports durations."""
    return int(seconds * 1e9)
