"""Per-request context: what the gateway knows about one request, filled in as it runs.

:class:`GatewayMiddleware` (``corral.server.middleware``) makes one
:class:`RequestContext` per HTTP request and puts it at
``scope["state"]["ctx"]``; :func:`context_of` finds it again from a request or
a scope. The middleware fills in the route facts (route template, dialect,
access scope, path parameters), status, bytes and first byte; the gateway
hooks add the caller (key name) and the ``auth`` phase; the route handlers add
what only they know, each with one call: :meth:`RequestContext.note` once the
body is parsed (model, stream), :meth:`RequestContext.finish` with the
backend's :class:`~corral.backend.base.Final` (tokens, done_reason and the
queue/load/prompt_eval/ttft/generation phases; it returns the stream marker
for the ``done`` object), :meth:`RequestContext.finish_embed` for embeddings.
The error handlers record the error text (:attr:`RequestContext.error`).

Nothing here runs per streamed token.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.types import Message, Receive, Scope

from corral.backend.base import Backend, Embeddings, Final, Piece
from corral.gateway.keys import ApiKey
from corral.gateway.timing import stream_marker

STATE_KEY = "ctx"
# ``ctx.extra[UNLOGGED] = True``: a handler says its request is not an API call worth a request-log
# row (the playground's static files); it is still counted in the metrics.
UNLOGGED = "unlogged"


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


@dataclass
class RequestContext:
    id: str
    method: str
    path: str
    route: str  # the matched route's path template ("" when none matched)
    dialect: str
    access: str = "user"  # the matched route's scope: open | user | admin
    model_from: str | None = None  # where the request names its model: body | path | None
    path_params: dict[str, Any] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)
    ts: float = field(default_factory=time.time)  # wall-clock start, for the log
    phases: dict[str, float] = field(default_factory=dict)  # name -> milliseconds
    status: int = 0
    started_at: float | None = None  # seconds after start when the response headers went out
    first_byte: float | None = None  # seconds after start
    answered_at: float | None = None  # seconds after start when the answer was complete (the Final)
    bytes_in: int = 0
    bytes_out: int = 0
    client: str | None = None  # the peer's address
    user_agent: str | None = None
    key_name: str | None = None  # the caller's key (None: auth off, or an open route)
    key: ApiKey | None = None  # the caller's key, as verified (its allowlist filters listings)
    is_admin: bool = False  # the caller may use admin routes and read every log row
    model: str | None = None
    stream: bool = False
    done_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None
    upstream: str | None = None  # fleet mode: "NAME:reason", which upstream answered and why it was chosen
    extra: dict[str, Any] = field(default_factory=dict)
    receive: Receive = field(default=_no_body, repr=False)  # the request's body channel (set by the middleware)
    body: bytes | None = field(default=None, repr=False)  # the body, once a hook has read it

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    async def read_body(self) -> bytes:
        """The whole request body, read once; the middleware hands it on to the endpoint."""
        if self.body is None:
            chunks: list[bytes] = []
            while True:
                message = await self.receive()
                if message["type"] != "http.request":  # the client went away: the endpoint sees that too
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            self.body = b"".join(chunks)
        return self.body

    def may_list(self, model: str) -> bool:
        """Whether a listing (tags, ps, /v1/models) shows ``model`` to this caller: its key's allowlist."""
        return self.key is None or self.key.allows_model(model)

    # ---- what the route handlers report (one call each) --------------------------------

    def note(self, model: str | None, stream: bool = False) -> RequestContext:
        """The model the request names and whether it is answered as a stream."""
        self.model = model or None
        self.stream = stream
        return self

    def report(self, phase: str, ms: float) -> None:
        """A phase known before the answer ends (``Common.report``): it makes the stream's headers."""
        self.phases[phase] = ms

    def finish(self, final: Final) -> dict[str, float]:
        """Record how the answer ended; return the ``corral_timing`` stream marker for its ``done`` object."""
        self.done_reason = final.done_reason
        self.prompt_tokens = final.prompt_eval_count
        self.output_tokens = final.eval_count
        phases = self.phases
        phases["queue"] = final.queue_ns / 1e6
        # Ollama's load_duration runs from the request's arrival to the runner being ready, the queue
        # included; the load phase is the part that was not waiting for a slot.
        phases["load"] = max(0.0, final.load_ns - final.queue_ns) / 1e6
        phases["prompt_eval"] = final.prompt_eval_ns / 1e6
        if final.first_token_at is not None:
            phases["ttft"] = (final.first_token_at - self.start) * 1000
        phases["generation"] = final.eval_ns / 1e6
        self.answered_at = self.elapsed
        return stream_marker({**phases, "total": self.answered_at * 1000})

    def finish_embed(self, out: Embeddings) -> None:
        """Record an embeddings answer: prompt tokens and its queue and load phases."""
        self.prompt_tokens = out.prompt_tokens
        self.output_tokens = 0
        self.phases["queue"] = out.queue_ns / 1e6
        self.phases["load"] = max(0.0, out.load_ns - out.queue_ns) / 1e6
        self.answered_at = self.elapsed


async def reporting(events: AsyncIterator[Piece | Final], ctx: RequestContext) -> AsyncIterator[Piece | Final]:
    """``events`` unchanged, recording the Final on ``ctx`` as it passes (for dialects whose renderers
    don't take the context themselves; one more generator layer per token)."""
    async for event in events:
        if type(event) is Final:
            ctx.finish(event)
        yield event


BACKEND_KEY = "backend"


def backend_of(request: Request) -> Backend:
    """The backend that answers this request: one set for it alone (``corral proxy --fleet`` routes an
    Ollama request to an OpenAI-compatible upstream this way), else the app's."""
    backend = request.scope.get("state", {}).get(BACKEND_KEY)
    return backend if backend is not None else request.app.state.backend  # type: ignore[no-any-return]


def context_of(source: Request | Scope) -> RequestContext:
    """The request's context; a detached one when no middleware made one (a handler called directly)."""
    scope = source.scope if isinstance(source, Request) else source
    state = scope.setdefault("state", {})
    ctx = state.get(STATE_KEY)
    if not isinstance(ctx, RequestContext):
        ctx = RequestContext("", scope.get("method", ""), scope.get("path", ""), "", "ollama")
        state[STATE_KEY] = ctx
    return ctx
