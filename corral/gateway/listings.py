"""Model listings seen through a key's allowlist, for answers that come from an upstream.

The local server filters ``/api/tags``, ``/api/ps`` and ``/v1/models`` as it
builds them. In ``corral proxy`` mode those answers come from the server
behind the proxy, whole; :func:`filter_listing` drops from such an answer
every model the caller's key may not use, so a key sees the same listing
through the proxy as from the server itself. The fleet gateway, which
builds its listings from every upstream's, filters them with
:func:`filter_doc`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

LISTING_PATHS = frozenset({"/api/tags", "/api/ps", "/v1/models"})


def _name(entry: dict[str, Any]) -> object:
    return entry.get("name") or entry.get("model") or entry.get("id")


def filter_doc(doc: dict[str, Any], allows: Callable[[str], bool]) -> dict[str, Any] | None:
    """``doc`` (Ollama's ``{"models": [...]}`` or OpenAI's ``{"data": [...]}``) with only the models ``allows``
    admits; None when it is not such a listing."""
    for field in ("models", "data"):
        entries = doc.get(field)
        if isinstance(entries, list):
            kept = [e for e in entries if isinstance(e, dict) and isinstance(name := _name(e), str) and allows(name)]
            return {**doc, field: kept}
    return None


def filter_listing(body: bytes, allows: Callable[[str], bool]) -> bytes | None:
    """:func:`filter_doc` over a JSON body; None when ``body`` is not such a listing."""
    try:
        doc = orjson.loads(body)
    except ValueError:
        return None
    kept = filter_doc(doc, allows) if isinstance(doc, dict) else None
    return None if kept is None else orjson.dumps(kept)
