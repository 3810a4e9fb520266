"""OpenAI dialect: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

A thin translation onto :mod:`corral.backend.local`, following Ollama's
``openai/openai.go``: each handler validates the body
(:mod:`corral.server.openai.types`), builds the same internal
:class:`ChatCall` / :class:`GenerateCall` the Ollama dialect builds, and writes
OpenAI's JSON answer or its server-sent events (``data: {...}\\n\\n`` chunks
ending in ``data: [DONE]``). Per-token SSE lines are assembled from a
precomputed prefix, as in :mod:`corral.server.ollama.inference`.

Errors are :class:`corral.errors.CorralError` subclasses; these routes are
:data:`corral.server.errors.OPENAI` routes, so the app's handler writes
OpenAI's ``{"error": {...}}`` for them, and an error after the stream has
started becomes a last ``data: {"error": {...}}`` event.

As in the Ollama dialect, each handler tells the request's context
(:mod:`corral.server.context`) its model and stream flag, and the final
tokens and phases, for the request log.
"""

from __future__ import annotations

import array
import base64
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from corral.backend.base import Backend, ChatCall, EmbedCall, Final, GenerateCall, ModelSummary, Piece, collect
from corral.errors import BadRequest
from corral.server.chatmap import apply_tool_choice, new_id, tool_call_id
from corral.server.context import RequestContext, backend_of, context_of
from corral.server.errors import OPENAI, route_factory
from corral.server.http import JSON, answer, dumps, read_json, stream_events
from corral.server.openai.convert import messages_in, think_from_effort, tool_choice_of
from corral.server.openai.types import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponseFormat,
    parse,
)

log = logging.getLogger(__name__)

FINGERPRINT = "fp_ollama"
SSE_DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache"}


route = route_factory(OPENAI)


def _backend(request: Request) -> Backend:
    return backend_of(request)


# ---- request translation ---------------------------------------------------------


def _only_one(value: int | None, param: str) -> None:
    if value is not None and value != 1:
        raise BadRequest(f"{param}={value} is not supported; only {param}=1 is", param=param)


def _sampling(req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> dict[str, Any]:
    """OpenAI sampling fields -> Ollama options (OpenAI's defaults of 1.0, as Ollama)."""
    opts: dict[str, Any] = {
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
    }
    if max_tokens is not None:
        opts["num_predict"] = max_tokens
    if req.seed is not None:
        opts["seed"] = req.seed
    if req.presence_penalty is not None:
        opts["presence_penalty"] = req.presence_penalty
    if req.frequency_penalty is not None:
        opts["frequency_penalty"] = req.frequency_penalty
    if req.stop:
        opts["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    return opts


def _think(req: ChatCompletionRequest) -> bool | str | None:
    return think_from_effort(req.reasoning.effort if req.reasoning is not None else req.reasoning_effort)


def _format(rf: ResponseFormat | None) -> str | dict[str, Any] | None:
    if rf is None:
        return None
    kind = rf.type.strip().lower()
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        if not rf.json_schema:
            raise BadRequest("response_format.json_schema is required for type json_schema", param="response_format")
        schema = rf.json_schema.get("schema")
        if schema is None:
            return "json"
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be an object", param="response_format")
        return schema
    raise BadRequest(
        f"invalid response_format type {rf.type!r}; expected text, json_object or json_schema", param="response_format"
    )


def _tools(req: ChatCompletionRequest) -> tuple[list[dict[str, Any]] | None, list[str] | None]:
    """Apply tool_choice: ``none`` drops the tools, a named function keeps only it, and ``required`` or a
    named function force a call of it (constrained sampling in the backend)."""
    mode, name = tool_choice_of(req.tool_choice, lambda c: (c.get("function") or {}).get("name"))
    return apply_tool_choice(req.tools, mode, name)


def chat_call_from(req: ChatCompletionRequest) -> ChatCall:
    """Translate a validated chat completion request into the internal call."""
    _only_one(req.n, "n")
    if not req.messages:
        raise BadRequest("[] is too short - 'messages'", param="messages")
    messages, images = messages_in(req.messages)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    want_logprobs = bool(req.logprobs)
    tools, force = _tools(req)
    return ChatCall(
        model=req.model,
        messages=messages,
        tools=tools,
        format=_format(req.response_format),
        options=_sampling(req, max_tokens),
        think=_think(req),
        logprobs=want_logprobs,
        top_logprobs=(req.top_logprobs or 0) if want_logprobs else 0,
        images=images or None,
        force_tool=force,
    )


# ---- response pieces ---------------------------------------------------------------


def _usage(final: Final) -> dict[str, int]:
    return {
        "prompt_tokens": final.prompt_eval_count,
        "completion_tokens": final.eval_count,
        "total_tokens": final.prompt_eval_count + final.eval_count,
    }


def _finish_reason(final: Final, tool_calls: bool) -> str:
    if final.done_reason == "length":
        return "length"
    return "tool_calls" if tool_calls else "stop"


def _tool_calls_out(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama tool calls -> OpenAI's: an id, type function, arguments as a JSON string."""
    return [
        {
            "index": c["function"].get("index", i),
            "id": c.get("id") or tool_call_id(),
            "type": "function",
            "function": {"name": c["function"]["name"], "arguments": dumps(c["function"]["arguments"])},
        }
        for i, c in enumerate(calls)
    ]


def _trim_top(entries: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """OpenAI's token logprobs: every entry has ``top_logprobs``, at most ``n`` of them (``[]`` for 0)."""
    return [{**e, "top_logprobs": (e.get("top_logprobs") or [])[:n]} for e in entries]


async def _sse(request: Request, lines: AsyncIterator[str]) -> Response:
    return await stream_events(
        lines, media_type="text/event-stream", dialect=OPENAI, headers=SSE_HEADERS, request=request
    )


# ---- /v1/chat/completions --------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    arrived = time.monotonic()
    req: ChatCompletionRequest = parse(ChatCompletionRequest, await read_json(request))
    ctx = context_of(request).note(req.model, stream=bool(req.stream))
    call = chat_call_from(req)
    call.report = ctx.report
    call.arrived = arrived
    events = _backend(request).chat(call)
    cid, created = new_id("chatcmpl-"), int(time.time())
    top_n = call.top_logprobs if call.logprobs else -1
    if not req.stream:
        return JSON(await answer(request, _collect_chat(events, cid, created, req.model, top_n, ctx)))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await _sse(request, _chat_sse(events, cid, created, req.model, top_n, include_usage, ctx))


async def _chat_sse(
    events: AsyncIterator[Piece | Final],
    cid: str,
    created: int,
    model: str,
    top_n: int,
    include_usage: bool,
    ctx: RequestContext,
) -> AsyncIterator[str]:
    """Chunks as Ollama writes them: role on the first delta, then content,
    thinking as ``reasoning``, tool calls as one delta, an empty-delta finish
    chunk, the usage chunk when asked, then ``[DONE]``."""
    head = (
        'data: {"id":'
        + dumps(cid)
        + ',"object":"chat.completion.chunk","created":'
        + str(created)
        + ',"model":'
        + dumps(model)
        + ',"system_fingerprint":"'
        + FINGERPRINT
        + '","choices":'
    )
    delta_head = head + '[{"index":0,"delta":{'
    tail = ',"finish_reason":null}]}\n\n'
    role = '"role":"assistant",'
    first = True
    async for ev in events:
        if isinstance(ev, Piece):
            lp = ""
            if ev.logprobs and top_n >= 0:
                lp = ',"logprobs":{"content":' + dumps(_trim_top(ev.logprobs, top_n)) + "}"
            if ev.thinking:
                yield (
                    delta_head
                    + (role if first else "")
                    + '"reasoning":'
                    + dumps(ev.thinking)
                    + "}"
                    + ("" if ev.content else lp)
                    + tail
                )
                first = False
                if not ev.content:
                    continue
                lp = ""
            yield delta_head + (role if first else "") + '"content":' + dumps(ev.content) + "}" + lp + tail
            first = False
            continue
        if ev.content or (first and not ev.tool_calls):
            yield delta_head + (role if first else "") + '"content":' + dumps(ev.content) + "}" + tail
            first = False
        if ev.tool_calls:
            yield (
                delta_head
                + (role if first else "")
                + '"tool_calls":'
                + dumps(_tool_calls_out(ev.tool_calls))
                + "}"
                + tail
            )
        ctx.finish(ev)
        reason = _finish_reason(ev, bool(ev.tool_calls))
        yield head + '[{"index":0,"delta":{},"finish_reason":"' + reason + '"}]}\n\n'
        if include_usage:
            yield head + '[],"usage":' + dumps(_usage(ev)) + "}\n\n"
        yield SSE_DONE


async def _collect_chat(
    events: AsyncIterator[Piece | Final], cid: str, created: int, model: str, top_n: int, ctx: RequestContext
) -> dict[str, Any]:
    got = await collect(events)
    content, final, logprobs = got.content, got.final, got.logprobs
    ctx.finish(final)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if got.thinking:
        message["reasoning"] = got.thinking
    if final.tool_calls:
        message["tool_calls"] = _tool_calls_out(final.tool_calls)
        if not content:
            message["content"] = None
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": _finish_reason(final, bool(final.tool_calls)),
        "logprobs": {"content": _trim_top(logprobs, top_n)} if top_n >= 0 else None,
    }
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": _usage(final),
    }


# ---- /v1/completions --------------------------------------------------------------------


def generate_call_from(req: CompletionRequest) -> GenerateCall:
    """Translate a legacy completion request into a raw internal generate call.

    The prompt goes to the model as-is (``raw``), as OpenAI's completions
    endpoint intends. A ``suffix`` needs fill-in-the-middle, so that request
    goes through the model's insert support (a 400 for models without it).
    """
    _only_one(req.n, "n")
    _only_one(req.best_of, "best_of")
    prompt: str = ""
    tokens: list[int] | None = None
    raw_prompt: Any = req.prompt
    if isinstance(raw_prompt, list):
        if len(raw_prompt) == 1 and isinstance(raw_prompt[0], (str, list)):
            raw_prompt = raw_prompt[0]
        elif raw_prompt and not all(isinstance(t, int) for t in raw_prompt):
            raise BadRequest("only a single prompt is supported", param="prompt")
    if isinstance(raw_prompt, str):
        prompt = raw_prompt
    else:
        tokens = list(raw_prompt)
        if any(t < 0 for t in tokens):
            raise BadRequest("prompt token ids must be non-negative", param="prompt")
    if req.echo and req.logprobs is not None:
        raise BadRequest("echo is not supported together with logprobs", param="echo")
    if req.echo and tokens:
        raise BadRequest("echo is not supported with a token-id prompt", param="echo")
    if req.suffix and tokens:
        raise BadRequest("suffix is not supported with a token-id prompt", param="suffix")
    return GenerateCall(
        model=req.model,
        prompt=prompt,
        context=tokens,
        suffix=req.suffix or None,
        raw=not req.suffix,
        options=_sampling(req, req.max_tokens),
        logprobs=req.logprobs is not None,
        top_logprobs=req.logprobs or 0,
    )


async def completions(request: Request) -> Response:
    arrived = time.monotonic()
    req: CompletionRequest = parse(CompletionRequest, await read_json(request))
    ctx = context_of(request).note(req.model, stream=bool(req.stream))
    call = generate_call_from(req)
    call.report = ctx.report
    call.arrived = arrived
    events = _backend(request).generate(call)
    cid, created = new_id("cmpl-"), int(time.time())
    top_n = req.logprobs if req.logprobs is not None else -1
    echo = call.prompt if req.echo else ""
    if not req.stream:
        return JSON(await answer(request, _collect_completion(events, cid, created, req.model, top_n, echo, ctx)))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await _sse(request, _completion_sse(events, cid, created, req.model, top_n, echo, include_usage, ctx))


def _legacy_logprobs(entries: list[dict[str, Any]], offset: int, n: int) -> tuple[dict[str, Any], int]:
    """Chat-style logprob entries -> the legacy ``{tokens, token_logprobs, top_logprobs, text_offset}``.

    ``text_offset`` counts characters from the start of the returned text.
    """
    tokens, token_logprobs, top, offsets = [], [], [], []
    for e in entries:
        token = e.get("token", "")
        tokens.append(token)
        token_logprobs.append(e.get("logprob", 0.0))
        top.append({t["token"]: t["logprob"] for t in (e.get("top_logprobs") or [])[:n]})
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}, offset


async def _completion_sse(
    events: AsyncIterator[Piece | Final],
    cid: str,
    created: int,
    model: str,
    top_n: int,
    echo: str,
    include_usage: bool,
    ctx: RequestContext,
) -> AsyncIterator[str]:
    head = (
        'data: {"id":'
        + dumps(cid)
        + ',"object":"text_completion","created":'
        + str(created)
        + ',"model":'
        + dumps(model)
        + ',"system_fingerprint":"'
        + FINGERPRINT
        + '","choices":'
    )
    text_head = head + '[{"index":0,"text":'
    tail = ',"finish_reason":null}]}\n\n'
    offset = 0
    pending_echo = echo
    async for ev in events:
        if isinstance(ev, Piece):
            lp = ""
            if top_n >= 0 and ev.logprobs:
                legacy, offset = _legacy_logprobs(ev.logprobs, offset, top_n)
                lp = ',"logprobs":' + dumps(legacy)
            yield text_head + dumps(pending_echo + ev.content) + lp + tail
            pending_echo = ""
            continue
        ctx.finish(ev)
        reason = "length" if ev.done_reason == "length" else "stop"
        yield text_head + dumps(pending_echo + ev.content) + ',"finish_reason":"' + reason + '"}]}\n\n'
        if include_usage:
            yield head + '[],"usage":' + dumps(_usage(ev)) + "}\n\n"
        yield SSE_DONE


async def _collect_completion(
    events: AsyncIterator[Piece | Final], cid: str, created: int, model: str, top_n: int, echo: str, ctx: RequestContext
) -> dict[str, Any]:
    got = await collect(events)
    final, entries = got.final, got.logprobs
    ctx.finish(final)
    choice: dict[str, Any] = {
        "index": 0,
        "text": echo + got.content,
        "finish_reason": "length" if final.done_reason == "length" else "stop",
        "logprobs": _legacy_logprobs(entries, 0, top_n)[0] if top_n >= 0 else None,
    }
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": _usage(final),
    }


# ---- /v1/embeddings ------------------------------------------------------------------------


def _b64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64-encoded (OpenAI's ``encoding_format=base64``)."""
    packed = array.array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _as_floats(vector: list[float]) -> list[float]:
    return vector


async def embeddings(request: Request) -> Response:
    req: EmbeddingRequest = parse(EmbeddingRequest, await read_json(request))
    ctx = context_of(request).note(req.model)
    fmt = (req.encoding_format or "float").lower()
    if fmt not in ("float", "base64"):
        raise BadRequest(
            f"Invalid value for 'encoding_format' = {req.encoding_format}. Supported values: ['float', 'base64'].",
            param="encoding_format",
        )
    inputs: Any = req.input
    if isinstance(inputs, str) or (inputs and all(isinstance(i, int) for i in inputs)):  # one input
        inputs = [inputs]
    if not inputs or any(isinstance(i, list) and not i for i in inputs):
        raise BadRequest("invalid input: expected a string, a list of strings or token arrays", param="input")
    if any(isinstance(i, list) and any(t < 0 for t in i) for i in inputs):
        raise BadRequest("invalid input: token ids must be non-negative", param="input")
    out = await _backend(request).embed(EmbedCall(req.model, inputs, dimensions=req.dimensions))
    ctx.finish_embed(out)
    vectors, n_tokens = out.vectors, out.prompt_tokens
    encode: Callable[[list[float]], str | list[float]] = _b64 if fmt == "base64" else _as_floats
    data = [{"object": "embedding", "embedding": encode(v), "index": i} for i, v in enumerate(vectors)]
    return JSON(
        {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )


async def not_found(request: Request) -> Response:
    raise HTTPException(404)


# ---- /v1/models ------------------------------------------------------------------------------


def _model_entry(model: ModelSummary) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.modified_at.timestamp()),
        "owned_by": model.namespace,
    }


async def list_models(request: Request) -> Response:
    ctx = context_of(request)
    models = [_model_entry(m) for m in await _backend(request).models() if ctx.may_list(m.name)]
    return JSON({"object": "list", "data": models})


async def retrieve_model(request: Request) -> Response:
    name = request.path_params["model"]
    context_of(request).note(name)
    entry = _model_entry(await _backend(request).model(name))
    entry["id"] = name  # OpenAI (and Ollama) echo the id as asked
    return JSON(entry)


routes = [
    route("/v1/chat/completions", chat_completions, methods=["POST"], model_from="body"),
    route("/v1/completions", completions, methods=["POST"], model_from="body"),
    route("/v1/embeddings", embeddings, methods=["POST"], model_from="body"),
    route("/v1/models", list_models, methods=["GET"]),
    route("/v1/models/{model:path}", retrieve_model, methods=["GET"], model_from="path"),
]
# Anything else under /v1 that no dialect claimed: answered in OpenAI's shape. Mounted last by the app.
fallback = [route("/v1/{path:path}", not_found, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])]

__all__ = ["chat_call_from", "generate_call_from", "routes"]
