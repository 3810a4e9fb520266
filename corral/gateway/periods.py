"""Periods: lengths of time such as ``30d``, ``24h``, ``1h30m``, ``15m`` or ``90s``, in seconds.

For ``--since`` (``corral logs``, ``corral stats``, the admin routes) and
``--log-retention``. Go's duration units (see :mod:`corral.durations`) plus
``d`` (days) and ``w`` (weeks); a bare number is seconds. Negative periods are
refused.
"""

from __future__ import annotations

import re

from corral.durations import parse_keep_alive
from corral.errors import BadRequest

_LONG = re.compile(r"(\d+(?:\.\d+)?)([dw])")
_LONG_UNITS = {"d": 86400.0, "w": 7 * 86400.0}


def parse_period(text: str) -> float:
    """Seconds in ``text``; ``ValueError`` with a readable message when it is not a period."""
    raw = text.strip().lower()
    if not raw or raw.startswith(("-", "+")):
        raise ValueError(f"invalid period {text!r}: use e.g. 30d, 24h, 1h30m, 15m or 90s")
    total, pos = 0.0, 0
    while m := _LONG.match(raw, pos):  # leading days/weeks; the rest is a Go duration
        total += float(m.group(1)) * _LONG_UNITS[m.group(2)]
        pos = m.end()
    rest = raw[pos:]
    if rest:
        try:
            seconds = parse_keep_alive(rest)
        except BadRequest:
            seconds = None
        if seconds is None or seconds < 0:
            raise ValueError(f"invalid period {text!r}: use e.g. 30d, 24h, 1h30m, 15m or 90s")
        total += seconds
    return total
