"""Ollama dialect, inference routes: /api/generate, /api/chat, /api/embed(dings).

Each handler validates the wire request (``corral.server.ollama.types``), builds the
internal call (``corral.backend.local``), and writes Ollama's NDJSON chunks or its
single JSON answer. Per-token lines are assembled from a precomputed prefix
rather than by building a pydantic object per token.

Each handler also tells the request's context (:mod:`corral.server.context`)
what the gateway logs: the model and stream flag once the body is parsed, and
the :class:`Final` at the end, which gives back the phases that
``/api/generate`` and ``/api/chat`` put in their ``done`` object as
``corral_timing`` (:mod:`corral.gateway.timing`), streamed or not.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from corral.backend.base import Backend, ChatCall, EmbedCall, Final, GenerateCall, Piece, collect
from corral.durations import parse_keep_alive
from corral.errors import BadRequest
from corral.gateway.timing import STREAM_TIMING_FIELD
from corral.server.context import RequestContext, backend_of, context_of
from corral.server.errors import OLLAMA, route_factory
from corral.server.http import JSON, answer, dumps, read_json, stream_events
from corral.server.ollama.types import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, parse_request

route = route_factory(OLLAMA)


def now() -> str:
    """UTC time as Ollama's ``created_at`` (RFC 3339, microseconds); called for every streamed token."""
    t = time.time()
    second = int(t)
    return f"{_rfc3339_second(second)}.{int((t - second) * 1e6):06d}Z"


@functools.lru_cache(maxsize=4)
def _rfc3339_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _backend(request: Request) -> Backend:
    return backend_of(request)


def _stats(final: Final) -> dict[str, Any]:
    return {
        "done_reason": final.done_reason,
        "total_duration": final.total_ns,
        "load_duration": final.load_ns,
        "prompt_eval_count": final.prompt_eval_count,
        "prompt_eval_duration": final.prompt_eval_ns,
        "eval_count": final.eval_count,
        "eval_duration": final.eval_ns,
    }


def _tool_calls_wire(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "function": {
                "index": c["function"].get("index", i),
                "name": c["function"]["name"],
                "arguments": c["function"]["arguments"],
            }
        }
        for i, c in enumerate(calls)
    ]


# ---- /api/generate ----------------------------------------------------------------


async def generate(request: Request) -> Response:
    arrived = time.monotonic()
    req: GenerateRequest = parse_request(GenerateRequest, await read_json(request))
    load_only = req.prompt == "" and not req.images and req.suffix is None
    ctx = context_of(request).note(req.model, stream=req.stream is not False and not load_only)
    backend = _backend(request)
    keep_alive = parse_keep_alive(req.keep_alive)
    if load_only:
        loaded = await backend.load(req.model, keep_alive=keep_alive, options=req.options)
        return JSON(
            {
                "model": loaded.model,
                "created_at": now(),
                "response": "",
                "done": True,
                "done_reason": "load" if loaded.loaded else "unload",
            }
        )
    call = GenerateCall(
        model=req.model,
        prompt=req.prompt,
        suffix=req.suffix,
        system=req.system,
        template=req.template,
        context=req.context,
        raw=req.raw,
        format=req.format,
        images=req.images,
        options=req.options or {},
        think=req.think,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        keep_alive=keep_alive,
        report=ctx.report,
        arrived=arrived,
    )
    events = backend.generate(call)
    if req.stream is False:
        return JSON(await answer(request, _collect_generate(events, req.model, ctx)))
    return await stream_events(events, _generate_line(req.model, ctx), dialect=OLLAMA, request=request)


def _generate_line(model: str, ctx: RequestContext) -> Callable[[Piece | Final], str]:
    """Render one event of /api/generate as its NDJSON line (called per token: no pydantic, no dict)."""
    prefix = '{"model":' + dumps(model) + ',"created_at":"'

    def render(ev: Piece | Final) -> str:
        if type(ev) is Piece:
            line = prefix + now() + '","response":' + dumps(ev.content)
            if ev.thinking:
                line += ',"thinking":' + dumps(ev.thinking)
            if ev.logprobs:
                line += ',"logprobs":' + dumps(ev.logprobs)
            return line + ',"done":false}\n'
        assert isinstance(ev, Final)
        out: dict[str, Any] = {"model": model, "created_at": now(), "response": ev.content, "done": True}
        out.update(_stats(ev))
        if ev.context is not None:
            out["context"] = ev.context
        out[STREAM_TIMING_FIELD] = ctx.finish(ev)
        return dumps(out) + "\n"

    return render


async def _collect_generate(events: AsyncIterator[Piece | Final], model: str, ctx: RequestContext) -> dict[str, Any]:
    got = await collect(events)
    out: dict[str, Any] = {"model": model, "created_at": now(), "response": got.content, "done": True}
    if got.thinking:
        out["thinking"] = got.thinking
    out.update(_stats(got.final))
    if got.final.context is not None:
        out["context"] = got.final.context
    if got.logprobs:
        out["logprobs"] = got.logprobs
    out[STREAM_TIMING_FIELD] = ctx.finish(got.final)
    return out


# ---- /api/chat ---------------------------------------------------------------------


def chat_call_from(req: ChatRequest, keep_alive: float | None, arrived: float | None = None) -> ChatCall:
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    images = [img for m in req.messages for img in (m.images or [])]
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    return ChatCall(
        model=req.model,
        messages=messages,
        tools=tools,
        format=req.format,
        options=req.options or {},
        think=req.think,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        keep_alive=keep_alive,
        images=images or None,
        arrived=arrived,
    )


async def chat(request: Request) -> Response:
    arrived = time.monotonic()
    req: ChatRequest = parse_request(ChatRequest, await read_json(request))
    ctx = context_of(request).note(req.model, stream=req.stream is not False and bool(req.messages))
    backend = _backend(request)
    keep_alive = parse_keep_alive(req.keep_alive)
    for m in req.messages:
        if m.role not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"invalid message role: {m.role!r}", param="messages")
    if not req.messages:
        loaded = await backend.load(req.model, keep_alive=keep_alive, options=req.options)
        return JSON(
            {
                "model": loaded.model,
                "created_at": now(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "load" if loaded.loaded else "unload",
            }
        )
    call = chat_call_from(req, keep_alive, arrived)
    call.report = ctx.report
    events = backend.chat(call)
    if req.stream is False:
        return JSON(await answer(request, _collect_chat(events, req.model, ctx)))
    return await stream_events(events, _chat_line(req.model, ctx), dialect=OLLAMA, request=request)


def _chat_line(model: str, ctx: RequestContext) -> Callable[[Piece | Final], str]:
    """Render one event of /api/chat as its NDJSON line(s) (called per token)."""
    prefix = '{"model":' + dumps(model) + ',"created_at":"'

    def render(ev: Piece | Final) -> str:
        if type(ev) is Piece:
            line = prefix + now() + '","message":{"role":"assistant","content":' + dumps(ev.content)
            if ev.thinking:
                line += ',"thinking":' + dumps(ev.thinking)
            line += "}"
            if ev.logprobs:
                line += ',"logprobs":' + dumps(ev.logprobs)
            return line + ',"done":false}\n'
        assert isinstance(ev, Final)
        lines = ""
        if ev.tool_calls:
            msg = {"role": "assistant", "content": "", "tool_calls": _tool_calls_wire(ev.tool_calls)}
            lines = dumps({"model": model, "created_at": now(), "message": msg, "done": False}) + "\n"
        out: dict[str, Any] = {
            "model": model,
            "created_at": now(),
            "message": {"role": "assistant", "content": ev.content},
            "done": True,
        }
        out.update(_stats(ev))
        out[STREAM_TIMING_FIELD] = ctx.finish(ev)
        return lines + dumps(out) + "\n"

    return render


async def _collect_chat(events: AsyncIterator[Piece | Final], model: str, ctx: RequestContext) -> dict[str, Any]:
    got = await collect(events)
    message: dict[str, Any] = {"role": "assistant", "content": got.content}
    if got.thinking:
        message["thinking"] = got.thinking
    if got.final.tool_calls:
        message["tool_calls"] = _tool_calls_wire(got.final.tool_calls)
    out: dict[str, Any] = {"model": model, "created_at": now(), "message": message, "done": True}
    out.update(_stats(got.final))
    if got.logprobs:
        out["logprobs"] = got.logprobs
    out[STREAM_TIMING_FIELD] = ctx.finish(got.final)
    return out


# ---- /api/embed and /api/embeddings --------------------------------------------------


async def embed(request: Request) -> Response:
    arrived = time.monotonic()
    req: EmbedRequest = parse_request(EmbedRequest, await read_json(request))
    ctx = context_of(request).note(req.model)
    backend = _backend(request)
    keep_alive = parse_keep_alive(req.keep_alive)
    inputs: Any = req.input
    if isinstance(inputs, str) or inputs and all(isinstance(i, int) for i in inputs):
        inputs = [inputs]
    if not inputs:
        loaded = await backend.load(req.model, keep_alive=keep_alive, options=req.options)
        return JSON({"model": loaded.model, "embeddings": []})
    out = await backend.embed(
        EmbedCall(
            req.model,
            inputs,
            truncate=req.truncate is not False,
            dimensions=req.dimensions,
            options=req.options,
            keep_alive=keep_alive,
            arrived=arrived,
        )
    )
    ctx.finish_embed(out)
    return JSON(
        {
            "model": req.model,
            "embeddings": out.vectors,
            "total_duration": out.total_ns,
            "load_duration": out.load_ns,
            "prompt_eval_count": out.prompt_tokens,
        }
    )


async def embeddings(request: Request) -> Response:
    req: EmbeddingsRequest = parse_request(EmbeddingsRequest, await read_json(request))
    ctx = context_of(request).note(req.model)
    backend = _backend(request)
    keep_alive = parse_keep_alive(req.keep_alive)
    if not req.prompt:
        await backend.load(req.model, keep_alive=keep_alive, options=req.options)
        return JSON({"embedding": []})
    # The legacy endpoint answers the model's own vector, not normalised (Ollama's EmbeddingsHandler).
    out = await backend.embed(
        EmbedCall(req.model, [req.prompt], options=req.options, keep_alive=keep_alive, normalize=False)
    )
    ctx.finish_embed(out)
    return JSON({"embedding": out.vectors[0]})


routes = [
    route("/api/generate", generate, methods=["POST"], model_from="body"),
    route("/api/chat", chat, methods=["POST"], model_from="body"),
    route("/api/embed", embed, methods=["POST"], model_from="body"),
    route("/api/embeddings", embeddings, methods=["POST"], model_from="body"),
]

__all__ = ["chat_call_from", "json", "routes"]
