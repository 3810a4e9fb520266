"""Anthropic dialect: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A thin adapter, as the OpenAI dialect: the request's ``system`` and content
blocks (``text``, ``image``, ``tool_use``, ``tool_result``, ``thinking``)
become the internal messages of one :class:`ChatCall`; ``tool_choice``
``any``/``tool`` become :attr:`ChatCall.force_tool`, so the backend constrains
sampling to the tool call, and ``output_config.format`` becomes its JSON
schema format (structured output). The backend's :class:`Piece` / :class:`Final`
events are written back as content blocks, either in one message object or
as Anthropic's SSE events (``message_start``, ``ping``,
``content_block_start``/``_delta``/``_stop``, ``message_delta``,
``message_stop``), which the anthropic SDK's ``client.messages.stream()``
accumulates.

These are :data:`corral.server.errors.ANTHROPIC` routes: errors are
``{"type": "error", "error": {"type", "message"}}`` with Anthropic's type
names, and a failure after the stream started is an ``event: error``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from corral.backend.base import Backend, ChatCall, Final, Piece, collect
from corral.errors import BadRequest
from corral.server.anthropic.types import MessageCountTokensParams, MessageCreateParams, parse
from corral.server.chatmap import (
    ToolChoiceMode,
    apply_tool_choice,
    base64_image,
    function_tool,
    images_of,
    link_tool_names,
    new_id,
    tool_arguments,
    tool_call_id,
)
from corral.server.context import backend_of, context_of, reporting
from corral.server.errors import ANTHROPIC, route_factory
from corral.server.http import JSON, dumps, read_json, stream_events

route = route_factory(ANTHROPIC)

SSE_HEADERS = {"Cache-Control": "no-cache"}
_CHOICE: dict[str, ToolChoiceMode] = {"auto": "auto", "any": "required", "tool": "named", "none": "none"}


def _backend(request: Request) -> Backend:
    return backend_of(request)


# ---- request translation ---------------------------------------------------------------


def _system(system: str | list[dict[str, Any]] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for i, block in enumerate(system):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise BadRequest(f"system.{i}: system blocks must be text blocks", param=f"system.{i}")
        texts.append(block["text"])
    return "\n".join(texts)


def _image(block: dict[str, Any], param: str) -> str:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise BadRequest("only base64 image sources are supported", param=param)
    return base64_image(source.get("data"), param=param)


def _tool_result(block: dict[str, Any], param: str) -> dict[str, Any]:
    """A ``tool_result`` block -> an internal tool message (text joined, images kept)."""
    content = block.get("content")
    texts: list[str] = []
    images: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image":
                images.append(_image(part, param))
            else:
                raise BadRequest(f"unsupported tool_result content {kind!r}", param=param)
    elif content is not None:
        raise BadRequest("tool_result content must be a string or a list of blocks", param=param)
    msg: dict[str, Any] = {"role": "tool", "content": "\n".join(texts)}
    if isinstance(block.get("tool_use_id"), str):
        msg["tool_call_id"] = block["tool_use_id"]
    if images:
        msg["images"] = images
    return msg


def _messages(req: MessageCountTokensParams) -> list[dict[str, Any]]:
    """System and message blocks -> internal messages. A user turn's tool results come first, as tool
    messages answering the assistant turn before it; the rest of the turn follows as one message."""
    system = _system(req.system)
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        texts: list[str] = []
        images: list[str] = []
        calls: list[dict[str, Any]] = []
        thinking: list[str] = []
        for j, block in enumerate(m.content):
            param = f"messages.{i}.content.{j}"
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "image":
                images.append(_image(block, param))
            elif kind == "tool_use" and m.role == "assistant":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                    raise BadRequest("a tool_use block needs an id and a name", param=param)
                calls.append(
                    {
                        "id": block["id"],
                        "function": {
                            "name": block["name"],
                            "arguments": tool_arguments(block.get("input"), param=param),
                        },
                    }
                )
            elif kind == "tool_result" and m.role == "user":
                out.append(_tool_result(block, param))
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                thinking.append(block["thinking"])
            elif kind == "redacted_thinking":
                continue
            else:
                raise BadRequest(f"unsupported content block {kind!r} in a {m.role} message", param=param)
        if texts or images or calls or thinking:
            msg: dict[str, Any] = {"role": m.role, "content": "\n".join(texts)}
            if images:
                msg["images"] = images
            if calls:
                msg["tool_calls"] = calls
            if thinking:
                msg["thinking"] = "".join(thinking)
            out.append(msg)
    return link_tool_names(out)


def _tools(req: MessageCountTokensParams) -> tuple[list[dict[str, Any]] | None, list[str] | None]:
    tools = []
    for t in req.tools or []:
        if t.type not in (None, "custom"):
            raise BadRequest(
                f"unsupported tool type {t.type!r}; only client tools with an input_schema are", param="tools"
            )
        tools.append(function_tool(t.name, t.description, t.input_schema))
    choice = req.tool_choice
    if choice is None:
        return tools or None, None
    if choice.type == "tool" and not choice.name:
        raise BadRequest("tool_choice of type tool needs the tool's name", param="tool_choice")
    return apply_tool_choice(tools, _CHOICE[choice.type], choice.name)


def _think(req: MessageCountTokensParams) -> bool | None:
    """``enabled`` turns thinking on and ``disabled`` off; ``adaptive`` (the model decides) leaves the
    model's default, so a client that always sends it still works with models that cannot think."""
    if req.thinking is None:
        return None
    return {"enabled": True, "disabled": False}.get(req.thinking.type)


def _format(req: MessageCountTokensParams) -> dict[str, Any] | None:
    """``output_config.format`` -> the JSON schema to constrain sampling to (as ``/api/chat``'s format)."""
    fmt = req.output_config.format if req.output_config is not None else None
    if fmt is None:
        return None
    schema = fmt.get("schema")
    if fmt.get("type") != "json_schema" or not isinstance(schema, dict):
        raise BadRequest(
            'output_config.format must be {"type": "json_schema", "schema": {...}}', param="output_config.format"
        )
    return schema


def chat_call_from(req: MessageCountTokensParams) -> ChatCall:
    """The internal call for a create (or, with no sampling fields, a count_tokens) request."""
    messages = _messages(req)
    if not any(m["role"] != "system" for m in messages):
        raise BadRequest("messages: at least one message is required", param="messages")
    tools, force = _tools(req)
    options: dict[str, Any] = {}
    if isinstance(req, MessageCreateParams):
        options["num_predict"] = req.max_tokens
        for key, value in (("temperature", req.temperature), ("top_p", req.top_p), ("top_k", req.top_k)):
            if value is not None:
                options[key] = value
        if req.stop_sequences:
            options["stop"] = list(req.stop_sequences)
    return ChatCall(
        model=req.model,
        messages=messages,
        tools=tools,
        force_tool=force,
        options=options,
        format=_format(req),
        think=_think(req),
        images=images_of(messages),
    )


# ---- response pieces --------------------------------------------------------------------


def _stop(final: Final) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence)."""
    if final.tool_calls:
        return "tool_use", None
    if final.done_reason == "length":
        return "max_tokens", None
    if final.stop_sequence:
        return "stop_sequence", final.stop_sequence
    return "end_turn", None


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": call.get("id") or tool_call_id(),
        "name": call["function"]["name"],
        "input": call["function"]["arguments"],
    }


def _usage(final: Final) -> dict[str, int]:
    return {"input_tokens": final.prompt_eval_count, "output_tokens": final.eval_count}


# ---- POST /v1/messages ------------------------------------------------------------------


async def _no_output(backend: Backend, call: ChatCall) -> AsyncIterator[Piece | Final]:
    """``max_tokens`` 0 (Anthropic's way to warm the prompt cache): load the model, count the prompt,
    generate nothing."""
    yield Final("length", call.model, prompt_eval_count=await backend.count_tokens(call))


async def create_message(request: Request) -> Response:
    req: MessageCreateParams = parse(MessageCreateParams, await read_json(request))
    backend, call = _backend(request), chat_call_from(req)
    ctx = context_of(request).note(req.model, stream=bool(req.stream))
    call.report = ctx.report
    events = reporting(backend.chat(call) if req.max_tokens > 0 else _no_output(backend, call), ctx)
    if not req.stream:
        return JSON(await _collect(events, req.model))
    return await stream_events(
        _events(events, req.model), media_type="text/event-stream", dialect=ANTHROPIC, headers=SSE_HEADERS
    )


async def _collect(events: AsyncIterator[Piece | Final], model: str) -> dict[str, Any]:
    got = await collect(events)
    content: list[dict[str, Any]] = []
    if got.thinking:
        content.append({"type": "thinking", "thinking": got.thinking, "signature": ""})
    if got.content or not got.final.tool_calls:
        content.append({"type": "text", "text": got.content})
    content.extend(_tool_use(c) for c in got.final.tool_calls)
    reason, sequence = _stop(got.final)
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": _usage(got.final),
    }


def _sse(kind: str, body: dict[str, Any]) -> str:
    return "event: " + kind + "\ndata: " + dumps({"type": kind, **body}) + "\n\n"


class _Blocks:
    """The content blocks of one streamed message: at most one open at a time, numbered in order."""

    def __init__(self) -> None:
        self.count = 0
        self.open: str | None = None  # the open block's type
        self.text_seen = False

    def start(self, block: dict[str, Any]) -> str:
        out = self.stop()
        self.open = block["type"]
        self.text_seen = self.text_seen or block["type"] == "text"
        return out + _sse("content_block_start", {"index": self.count, "content_block": block})

    def delta(self, delta: dict[str, Any]) -> str:
        return _sse("content_block_delta", {"index": self.count, "delta": delta})

    def stop(self) -> str:
        if self.open is None:
            return ""
        out = ""
        if self.open == "thinking":  # local thinking has no signature; the SDK expects the delta all the same
            out += self.delta({"type": "signature_delta", "signature": ""})
        self.open = None
        self.count += 1
        return out + _sse("content_block_stop", {"index": self.count - 1})

    def text(self, text: str) -> str:
        out = "" if self.open == "text" else self.start({"type": "text", "text": ""})
        return out + (self.delta({"type": "text_delta", "text": text}) if text else "")

    def thinking(self, text: str) -> str:
        out = "" if self.open == "thinking" else self.start({"type": "thinking", "thinking": "", "signature": ""})
        return out + self.delta({"type": "thinking_delta", "thinking": text})


async def _events(events: AsyncIterator[Piece | Final], model: str) -> AsyncIterator[str]:
    try:
        first: Piece | Final | None = await anext(events)  # a failure here still gets its own status
    except StopAsyncIteration:
        first = None
    message: dict[str, Any] = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    yield _sse("message_start", {"message": message}) + _sse("ping", {})
    blocks = _Blocks()
    try:
        ev = first
        while ev is not None:
            if isinstance(ev, Piece):
                chunk = blocks.thinking(ev.thinking) if ev.thinking else ""
                if ev.content:
                    chunk += blocks.text(ev.content)
                if chunk:
                    yield chunk
            else:
                chunk = ""
                if ev.content or (not blocks.text_seen and not ev.tool_calls):
                    chunk += blocks.text(ev.content)
                for call in ev.tool_calls:
                    tool = _tool_use(call)
                    chunk += blocks.start({**tool, "input": {}})
                    chunk += blocks.delta({"type": "input_json_delta", "partial_json": dumps(tool["input"])})
                chunk += blocks.stop()
                reason, sequence = _stop(ev)
                yield (
                    chunk
                    + _sse(
                        "message_delta",
                        {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": _usage(ev)},
                    )
                    + _sse("message_stop", {})
                )
            ev = await anext(events, None)
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()


# ---- POST /v1/messages/count_tokens --------------------------------------------------------


async def count_tokens(request: Request) -> Response:
    req: MessageCountTokensParams = parse(MessageCountTokensParams, await read_json(request))
    context_of(request).note(req.model)
    return JSON({"input_tokens": await _backend(request).count_tokens(chat_call_from(req))})


routes = [
    route("/v1/messages", create_message, methods=["POST"], model_from="body"),
    route("/v1/messages/count_tokens", count_tokens, methods=["POST"], model_from="body"),
]

__all__ = ["chat_call_from", "routes"]
