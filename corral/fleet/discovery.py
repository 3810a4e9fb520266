"""Discovery: learning what each upstream serves and has loaded, and merging that for the gateway's listings.

Owns the I/O that fills :class:`corral.fleet.state.UpstreamState`'s catalog
and the pure functions that merge every upstream's catalog into one answer.

- :func:`refresh` (models and what is loaded) and :func:`check` (the cheaper
  active health check) read one upstream: ``ollama``/``corral`` kinds
  ``GET /api/tags`` and ``GET /api/ps``; the ``openai`` kind
  ``GET /v1/models``, whose models all count as loaded (an OpenAI server
  has no ``/api/ps``). Success reports the upstream healthy; a refused
  connection, a timeout, a non-2xx answer or a body that is not the
  expected JSON counts as one failure toward its circuit breaker, and the
  last known catalog stays.
- :class:`Discovery` runs both on the fleet's intervals
  (``refresh_interval``, ``health_interval``) until closed.
- :func:`merged_tags`, :func:`merged_ps` and :func:`merged_openai_models`
  build ``/api/tags``, ``/api/ps`` and ``/v1/models`` answers from the states.
  Every entry names its upstream. Upstreams whose circuit is open are left
  out (their models cannot be served now). Dedupe policy:

  * ``/api/tags`` and ``/v1/models``: one entry per model name. The first
    upstream in fleet order that lists it supplies the entry (size, digest,
    details); ``"upstream"`` is that upstream and ``"upstreams"`` all that
    serve it. Two upstreams with different builds under one name still show
    as one model (routing treats them as interchangeable).
  * ``/api/ps``: one entry per (model, upstream): being loaded is a fact
    about one machine, so nothing is merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from corral.fleet.openai_wire import running_from_openai, summary_from_openai
from corral.fleet.state import FleetState, UpstreamState
from corral.store.store import now_iso

log = logging.getLogger(__name__)


class DiscoveryError(Exception):
    """One discovery request failed (the message says how); counted as a failure of the upstream."""


async def _get(
    session: aiohttp.ClientSession, state: UpstreamState, path: str, key: str, timeout: float
) -> list[dict[str, Any]]:
    """GET ``path`` and return the list under ``key`` (``models`` or ``data``)."""
    headers = {"Authorization": f"Bearer {state.spec.key}"} if state.spec.key else {}
    try:
        async with session.get(
            state.spec.url + path, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status != 200:
                raise DiscoveryError(f"GET {path} answered {resp.status}")
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise DiscoveryError(f"GET {path}: {(str(exc) or type(exc).__name__).splitlines()[0]}") from None
    except ValueError:
        raise DiscoveryError(f"GET {path} answered with something that is not JSON") from None
    items = body.get(key) if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise DiscoveryError(f"GET {path} answered without a {key!r} list")
    return [item for item in items if isinstance(item, dict)]


def tags_entry(
    summary_name: str, modified_at: datetime, size: int, digest: str, details: dict[str, Any]
) -> dict[str, Any]:
    """One ``/api/tags`` entry in Ollama's shape."""
    return {
        "name": summary_name,
        "model": summary_name,
        "modified_at": now_iso(modified_at),
        "size": size,
        "digest": digest,
        "details": details,
    }


def _openai_tags(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in data:
        if isinstance(entry.get("id"), str):
            s = summary_from_openai(entry)
            out.append(tags_entry(s.name, s.modified_at, s.size, s.digest, s.details))
    return out


def _openai_ps(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in data:
        if isinstance(entry.get("id"), str):
            r = running_from_openai(entry)
            out.append(
                {
                    "name": r.name,
                    "model": r.name,
                    "size": r.size,
                    "digest": r.digest,
                    "details": r.details,
                    "expires_at": r.expires_at.isoformat().replace("+00:00", "Z"),
                    "size_vram": r.size_vram,
                    "context_length": r.context_length,
                }
            )
    return out


async def refresh(session: aiohttp.ClientSession, state: UpstreamState, *, timeout: float, now: float) -> bool:
    """Re-read one upstream's models and what it has loaded; True if that worked (see module docstring)."""
    try:
        if state.spec.kind == "openai":
            data = await _get(session, state, "/v1/models", "data", timeout)
            tags, running = _openai_tags(data), _openai_ps(data)
        else:
            tags = await _get(session, state, "/api/tags", "models", timeout)
            running = await _get(session, state, "/api/ps", "models", timeout)
    except DiscoveryError as exc:
        log.info("discovery of upstream %s failed: %s", state.name, exc)
        state.failed(str(exc))
        return False
    state.set_catalog(tags, now)
    state.set_running(running, now)
    state.succeeded()
    return True


async def check(session: aiohttp.ClientSession, state: UpstreamState, *, timeout: float, now: float) -> bool:
    """Active health check: ``/api/ps`` (which also updates what is loaded), or for the openai kind
    ``/v1/models``. An upstream never discovered yet gets a full :func:`refresh` instead."""
    if state.spec.kind == "openai" or not state.discovered:
        return await refresh(session, state, timeout=timeout, now=now)
    try:
        running = await _get(session, state, "/api/ps", "models", timeout)
    except DiscoveryError as exc:
        log.info("health check of upstream %s failed: %s", state.name, exc)
        state.failed(str(exc))
        return False
    state.set_running(running, now)
    state.succeeded()
    return True


class Discovery:
    """Keeps a fleet's states fresh: :meth:`start` refreshes every upstream once (concurrently), then
    loops refresh and health checks in the background until :meth:`close`."""

    def __init__(self, fleet: FleetState, session: aiohttp.ClientSession | None = None) -> None:
        self.fleet = fleet
        self._session = session
        self._owns_session = session is None
        self._tasks: list[asyncio.Task[None]] = []

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30))
        return self._session

    async def refresh_all(self) -> None:
        timeout = self.fleet.config.probe_timeout
        await asyncio.gather(*(refresh(self._client(), s, timeout=timeout, now=self.fleet.clock()) for s in self.fleet))

    async def check_all(self) -> None:
        timeout = self.fleet.config.probe_timeout
        await asyncio.gather(*(check(self._client(), s, timeout=timeout, now=self.fleet.clock()) for s in self.fleet))

    async def start(self) -> None:
        await self.refresh_all()
        self._tasks = [
            asyncio.create_task(self._loop(self.refresh_all, self.fleet.config.refresh_interval)),
            asyncio.create_task(self._loop(self.check_all, self.fleet.config.health_interval)),
        ]

    @staticmethod
    async def _loop(step: Callable[[], Awaitable[None]], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except Exception:  # one bad round must not end discovery for good
                log.exception("fleet discovery round failed")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None


# ---- merged answers -----------------------------------------------------------------------


def _listable(states: Iterable[UpstreamState]) -> list[UpstreamState]:
    return [s for s in states if s.breaker.state != "open"]


def _key(entry: dict[str, Any]) -> str:
    return str(entry.get("model") or entry.get("name") or "")


def merged_tags(states: Iterable[UpstreamState]) -> dict[str, Any]:
    """The gateway's ``/api/tags``: one entry per model, naming its upstreams (see module docstring)."""
    merged: dict[str, dict[str, Any]] = {}
    for state in _listable(states):
        for entry in state.tags:
            name = _key(entry)
            if name in merged:
                if state.name not in merged[name]["upstreams"]:
                    merged[name]["upstreams"].append(state.name)
                continue
            merged[name] = {**entry, "upstream": state.name, "upstreams": [state.name]}
    return {"models": list(merged.values())}


def merged_ps(states: Iterable[UpstreamState]) -> dict[str, Any]:
    """The gateway's ``/api/ps``: every loaded model of every upstream, each naming its upstream."""
    return {"models": [{**entry, "upstream": state.name} for state in _listable(states) for entry in state.running]}


def _timestamp(iso: Any) -> int:
    if isinstance(iso, str):
        try:
            return int(datetime.fromisoformat(iso).timestamp())
        except ValueError:
            pass
    return int(datetime.now(UTC).timestamp())


def merged_openai_models(states: Iterable[UpstreamState]) -> dict[str, Any]:
    """The gateway's ``/v1/models``: one entry per model; ``owned_by`` is the upstream that supplies it,
    ``upstreams`` all that serve it."""
    tags = merged_tags(states)["models"]
    return {
        "object": "list",
        "data": [
            {
                "id": _key(t),
                "object": "model",
                "created": _timestamp(t.get("modified_at")),
                "owned_by": t["upstream"],
                "upstream": t["upstream"],
                "upstreams": t["upstreams"],
            }
            for t in tags
        ],
    }
