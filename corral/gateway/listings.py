"""Model listings seen through a key's allowlist, for answers that come from an upstream.

The local server filters ``/api/tags``, ``/api/ps`` and ``/v1/models`` as it
builds them. In ``corral proxy`` mode those answers come from the server
behind the proxy, whole; :func:`filter_listing` drops from such an answer
every model the caller's key may not use, so a key sees the same listing
through the proxy as from the server itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

LISTING_PATHS = frozenset({"/api/tags", "/api/ps", "/v1/models"})


def _name(entry: dict[str, Any]) -> object:
    return entry.get("name") or entry.get("model") or entry.get("id")


def filter_listing(body: bytes, allows: Callable[[str], bool]) -> bytes | None:
    """``body`` (Ollama's ``{"models": [...]}`` or OpenAI's ``{"data": [...]}``) with only the models
    ``allows`` admits; None when ``body`` is not such a listing."""
    try:
        doc = orjson.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    for field in ("models", "data"):
        entries = doc.get(field)
        if isinstance(entries, list):
            doc[field] = [
                e for e in entries if isinstance(e, dict) and isinstance(name := _name(e), str) and allows(name)
            ]
            return orjson.dumps(doc)
    return None
