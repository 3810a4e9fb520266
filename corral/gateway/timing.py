"""Timing on the wire: the phase names, the ``Server-Timing`` header value, the stream marker.

A request's time splits into named phases, always reported in this order and
in milliseconds:

``auth``        key lookup and checks;
``queue``       waiting for a free slot of the model;
``load``        loading the model, when the request had to;
``prompt_eval`` evaluating the prompt;
``ttft``        time to first token, from the start of the request;
``generation``  producing the output tokens;
``client_io``   time spent sending the answer to the client once it was complete;
``upstream``    in proxy mode, the upstream's share of the request;
``total``       the whole request, as the gateway saw it.

Every response carries the same value in ``Server-Timing`` (W3C; browsers'
dev tools show it) and ``X-SDL-Proxy-Timing`` (the seeds' proxy header), for
example ``queue;dur=0.4, ttft;dur=61.2, total;dur=412.9``. A streamed
answer's headers leave with its first token, so they carry only what is known
then (``auth``, ``queue``, ``load``, ``ttft``); the stream marker has the rest.

Stream markers: the final ``"done": true`` object of ``/api/generate`` and
``/api/chat`` (streamed NDJSON, and the single object of ``"stream": false``)
carries one extra field, :data:`STREAM_TIMING_FIELD` (``corral_timing``), an
object of phase name to milliseconds (same phases, same order, one decimal;
``total`` up to that object, ``client_io`` not yet known). Ollama's clients
ignore fields they do not know. :data:`STREAM_MARKERS` lists every such
extra field. Every phase of every request is also in the request log.
"""

from __future__ import annotations

from collections.abc import Mapping

PHASES: tuple[str, ...] = (
    "auth",
    "queue",
    "load",
    "prompt_eval",
    "ttft",
    "generation",
    "client_io",
    "upstream",
    "total",
)

SERVER_TIMING_HEADER = "Server-Timing"
PROXY_TIMING_HEADER = "X-SDL-Proxy-Timing"
TIMING_HEADERS: tuple[str, ...] = (SERVER_TIMING_HEADER, PROXY_TIMING_HEADER)

STREAM_TIMING_FIELD = "corral_timing"
STREAM_MARKERS: tuple[str, ...] = (STREAM_TIMING_FIELD,)


def server_timing(phases: Mapping[str, float | None]) -> str:
    """``name;dur=ms`` for each known phase present, in :data:`PHASES` order, one decimal."""
    parts = []
    for name in PHASES:
        value = phases.get(name)
        if value is not None:
            parts.append(f"{name};dur={value:.1f}")
    return ", ".join(parts)


def stream_marker(phases: Mapping[str, float | None]) -> dict[str, float]:
    """The :data:`STREAM_TIMING_FIELD` object: known phases present, in order, rounded to 0.1 ms."""
    return {name: round(value, 1) for name in PHASES if (value := phases.get(name)) is not None}
