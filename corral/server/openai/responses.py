"""OpenAI Responses API: ``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``.

A thin adapter: the request's input items become OpenAI chat messages
(:class:`ChatMessage`), which :func:`corral.server.openai.convert.messages_in`
turns into the internal messages of one :class:`ChatCall`, exactly as for
``/v1/chat/completions``; the backend's :class:`Piece` / :class:`Final`
events are written back as Responses output items (``message``,
``function_call``, ``reasoning``), either as one JSON object or as the typed
SSE events the openai SDK's ``client.responses.stream()`` consumes, each with
its ``sequence_number``.

Beyond Ollama, responses are stateful: with ``store`` (the default) the
response and the conversation behind it are kept in the gateway database
(:class:`corral.gateway.responses.ResponseStore`), read back by ``GET``,
removed by ``DELETE`` and continued by ``previous_response_id``.

Errors are the OpenAI dialect's. A failure after the stream started is sent
as a ``response.failed`` event followed by the dialect's error event, which
the SDK raises as :class:`openai.APIError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from corral.backend.base import Backend, ChatCall, Final, Piece, collect
from corral.errors import BadRequest, CorralError, NotFound
from corral.gateway.responses import ResponseStore, StoredResponse
from corral.server.chatmap import (
    apply_tool_choice,
    function_tool,
    images_of,
    link_tool_names,
    new_id,
    tool_arguments,
    tool_call_id,
)
from corral.server.context import backend_of, context_of, reporting
from corral.server.errors import OPENAI, route_factory
from corral.server.http import JSON, dumps, read_json, stream_events
from corral.server.openai.convert import messages_in, think_from_effort, tool_choice_of
from corral.server.openai.types import ChatMessage, ResponseCreateParams, parse

route = route_factory(OPENAI)

SSE_HEADERS = {"Cache-Control": "no-cache"}


def _backend(request: Request) -> Backend:
    return backend_of(request)


def _store(request: Request) -> ResponseStore:
    return request.app.state.responses  # type: ignore[no-any-return]


# ---- request translation ---------------------------------------------------------------


def _content_parts(content: Any, param: str) -> str | list[dict[str, Any]]:
    """A Responses message's content -> chat-message content (a string, or text and image_url parts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or a list of content parts", param=param)
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": part.get("image_url")})
        else:
            raise BadRequest(f"unsupported content part {kind!r}", param=param)
    return parts


def _chat_messages(items: str | list[dict[str, Any]]) -> list[ChatMessage]:
    """Responses input (a string or items) -> OpenAI chat messages."""
    if isinstance(items, str):
        return [ChatMessage(role="user", content=items)] if items else []
    out: list[ChatMessage] = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("system", "developer", "user", "assistant"):
                raise BadRequest(f"invalid message role: {role!r}", param=param)
            out.append(ChatMessage(role=role, content=_content_parts(item.get("content"), param)))
        elif kind == "function_call":
            name, call_id = item.get("name"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                raise BadRequest("a function_call item needs a name and a call_id", param=param)
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": tool_arguments(item.get("arguments"), param=param)},
            }
            if out and out[-1].role == "assistant":  # calls of one turn go on one assistant message
                out[-1].tool_calls = [*(out[-1].tool_calls or []), call]
            else:
                out.append(ChatMessage(role="assistant", content="", tool_calls=[call]))
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise BadRequest("a function_call_output item needs a call_id", param=param)
            content = output if isinstance(output, str) else _content_parts(output, param)
            out.append(ChatMessage(role="tool", tool_call_id=call_id, content=content))
        elif kind == "reasoning":
            continue  # a previous turn's reasoning summary: not part of the prompt
        else:
            raise BadRequest(f"unsupported input item type {kind!r}", param=param)
    return out


def _tools(req: ResponseCreateParams) -> list[dict[str, Any]] | None:
    tools = []
    for t in req.tools or []:
        if t.get("type") != "function":
            raise BadRequest(f"unsupported tool type {t.get('type')!r}; only function tools are", param="tools")
        tools.append(function_tool(t.get("name"), t.get("description"), t.get("parameters")))
    return tools or None


def _format(req: ResponseCreateParams) -> str | dict[str, Any] | None:
    fmt = req.text.format if req.text is not None else None
    kind = (fmt or {}).get("type", "text")
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = fmt.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise BadRequest("text.format.schema must be an object", param="text.format")
        return schema if schema is not None else "json"
    raise BadRequest(
        f"invalid text.format type {kind!r}; expected text, json_object or json_schema", param="text.format"
    )


def _options(req: ResponseCreateParams) -> dict[str, Any]:
    """Sampling fields -> Ollama options (OpenAI's defaults of 1.0, as chat completions)."""
    opts: dict[str, Any] = {
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
    }
    if req.max_output_tokens is not None:
        opts["num_predict"] = req.max_output_tokens
    return opts


def _call(req: ResponseCreateParams, history: list[dict[str, Any]]) -> tuple[ChatCall, list[dict[str, Any]]]:
    """The internal call, and the conversation it continues (history plus this input, without instructions)."""
    new, _ = messages_in(_chat_messages(req.input))
    conversation = link_tool_names([*history, *new])
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + conversation
    if not messages:
        raise BadRequest("input is required", param="input")
    mode, name = tool_choice_of(req.tool_choice, lambda c: c.get("name"))
    tools, force = apply_tool_choice(_tools(req), mode, name)
    call = ChatCall(
        model=req.model,
        messages=messages,
        tools=tools,
        force_tool=force,
        format=_format(req),
        options=_options(req),
        images=images_of(messages),
        think=think_from_effort(req.reasoning.effort if req.reasoning else None, param="reasoning.effort"),
    )
    return call, conversation


# ---- output ----------------------------------------------------------------------------


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [_text_part(text)] if status == "completed" else [],
    }


def _reasoning_item(item_id: str, text: str, done: bool) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}] if done else []}


def _call_item(item_id: str, call_id: str, call: dict[str, Any], status: str) -> dict[str, Any]:
    fn = call["function"]
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": fn["name"],
        "arguments": dumps(fn["arguments"]) if status == "completed" else "",
    }


def _usage(final: Final) -> dict[str, Any]:
    return {
        "input_tokens": final.prompt_eval_count,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": final.eval_count,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": final.prompt_eval_count + final.eval_count,
    }


@dataclass
class _Turn:
    """One response being made: its ids, the request it echoes, and the conversation behind it."""

    req: ResponseCreateParams
    conversation: list[dict[str, Any]]
    id: str = field(default_factory=lambda: new_id("resp_", 24))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(
        self, status: str, output: list[dict[str, Any]], final: Final | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        req = self.req
        incomplete = final is not None and final.done_reason == "length"
        text = "".join(
            c["text"]
            for item in output
            if item["type"] == "message"
            for c in item["content"]
            if c["type"] == "output_text"
        )
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "incomplete" if incomplete and status == "completed" else status,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": req.model,
            "output": output,
            "output_text": text,
            "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id,
            "reasoning": {
                "effort": req.reasoning.effort if req.reasoning else None,
                "summary": req.reasoning.summary if req.reasoning else None,
            },
            "service_tier": "default",
            "store": req.store is not False,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {"format": (req.text.format if req.text else None) or {"type": "text"}},
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "tools": req.tools or [],
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "truncation": "disabled",
            "usage": _usage(final) if final is not None else None,
            "metadata": req.metadata or {},
        }

    def answered(self, content: str, thinking: str, calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """The conversation with this response's answer appended, as the next turn continues it."""
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            msg["thinking"] = thinking
        if calls:
            msg["tool_calls"] = [{"id": call_id, "function": c["function"]} for call_id, c in calls]
        return [*self.conversation, msg]


async def _save(store: ResponseStore, turn: _Turn, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
    if turn.req.store is not False:
        await asyncio.to_thread(store.put, response, messages)


# ---- POST /v1/responses ------------------------------------------------------------------


async def create_response(request: Request) -> Response:
    req: ResponseCreateParams = parse(ResponseCreateParams, await read_json(request))
    store = _store(request)
    history: list[dict[str, Any]] = []
    if req.previous_response_id:
        previous = await asyncio.to_thread(store.get, req.previous_response_id)
        if previous is None:
            raise NotFound(
                f"Previous response with id '{req.previous_response_id}' not found.", param="previous_response_id"
            )
        history = previous.messages
    call, conversation = _call(req, history)
    turn = _Turn(req, conversation)
    ctx = context_of(request).note(req.model, stream=bool(req.stream))
    call.report = ctx.report
    events = reporting(_backend(request).chat(call), ctx)
    if not req.stream:
        return JSON(await _collect(events, turn, store))
    return await stream_events(
        _events(events, turn, store), media_type="text/event-stream", dialect=OPENAI, headers=SSE_HEADERS
    )


async def _collect(events: AsyncIterator[Piece | Final], turn: _Turn, store: ResponseStore) -> dict[str, Any]:
    got = await collect(events)
    output: list[dict[str, Any]] = []
    if got.thinking:
        output.append(_reasoning_item(new_id("rs_"), got.thinking, done=True))
    if got.content or not got.final.tool_calls:
        output.append(_message_item(new_id("msg_"), got.content, "completed"))
    calls = [(tool_call_id(), c) for c in got.final.tool_calls]
    output.extend(_call_item(new_id("fc_"), call_id, c, "completed") for call_id, c in calls)
    response = turn.response("completed", output, got.final)
    await _save(store, turn, response, turn.answered(got.content, got.thinking, calls))
    return response


class _Events:
    """Renders one streamed response as typed SSE events, numbering them."""

    def __init__(self, turn: _Turn) -> None:
        self.turn = turn
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # finished items, in output order
        self.reasoning: dict[str, Any] | None = None  # the open reasoning item and its text so far
        self.message: dict[str, Any] | None = None  # the open message item and its text so far

    def event(self, kind: str, **data: Any) -> str:
        body = {"type": kind, **data, "sequence_number": self.seq}
        self.seq += 1
        return "event: " + kind + "\ndata: " + dumps(body) + "\n\n"

    def thinking(self, text: str) -> str:
        out = ""
        if self.reasoning is None:
            self.reasoning = {"id": new_id("rs_"), "index": len(self.output), "text": ""}
            item = _reasoning_item(self.reasoning["id"], "", done=False)
            out += self.event("response.output_item.added", output_index=self.reasoning["index"], item=item)
            out += self.event(
                "response.reasoning_summary_part.added",
                item_id=item["id"],
                output_index=self.reasoning["index"],
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
        self.reasoning["text"] += text
        return out + self.event(
            "response.reasoning_summary_text.delta",
            item_id=self.reasoning["id"],
            output_index=self.reasoning["index"],
            summary_index=0,
            delta=text,
        )

    def end_thinking(self) -> str:
        r, self.reasoning = self.reasoning, None
        if r is None:
            return ""
        item = _reasoning_item(r["id"], r["text"], done=True)
        self.output.append(item)
        common = {"item_id": r["id"], "output_index": r["index"], "summary_index": 0}
        return (
            self.event("response.reasoning_summary_text.done", **common, text=r["text"])
            + self.event("response.reasoning_summary_part.done", **common, part=item["summary"][0])
            + self.event("response.output_item.done", output_index=r["index"], item=item)
        )

    def text(self, text: str) -> str:
        out = self.end_thinking()
        if self.message is None:
            self.message = {"id": new_id("msg_"), "index": len(self.output), "text": ""}
            out += self.event(
                "response.output_item.added",
                output_index=self.message["index"],
                item=_message_item(self.message["id"], "", "in_progress"),
            )
            out += self.event(
                "response.content_part.added",
                item_id=self.message["id"],
                output_index=self.message["index"],
                content_index=0,
                part=_text_part(""),
            )
        if text:
            self.message["text"] += text
            out += self.event(
                "response.output_text.delta",
                item_id=self.message["id"],
                output_index=self.message["index"],
                content_index=0,
                delta=text,
                logprobs=[],
            )
        return out

    def end_text(self) -> str:
        m, self.message = self.message, None
        if m is None:
            return ""
        item = _message_item(m["id"], m["text"], "completed")
        self.output.append(item)
        common = {"item_id": m["id"], "output_index": m["index"], "content_index": 0}
        return (
            self.event("response.output_text.done", **common, text=m["text"], logprobs=[])
            + self.event("response.content_part.done", **common, part=item["content"][0])
            + self.event("response.output_item.done", output_index=m["index"], item=item)
        )

    def tool_call(self, call_id: str, call: dict[str, Any]) -> str:
        item_id, index = new_id("fc_"), len(self.output)
        item = _call_item(item_id, call_id, call, "completed")
        self.output.append(item)
        args = item["arguments"]
        return (
            self.event(
                "response.output_item.added", output_index=index, item=_call_item(item_id, call_id, call, "in_progress")
            )
            + self.event("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=args)
            + self.event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                name=call["function"]["name"],
                arguments=args,
            )
            + self.event("response.output_item.done", output_index=index, item=item)
        )


async def _events(events: AsyncIterator[Piece | Final], turn: _Turn, store: ResponseStore) -> AsyncIterator[str]:
    out = _Events(turn)
    content: list[str] = []
    thinking: list[str] = []
    try:
        first: Piece | Final | None = await anext(events)  # a failure here still gets its own status
    except StopAsyncIteration:
        first = None
    begun = out.turn.response("in_progress", [])
    yield out.event("response.created", response=begun) + out.event("response.in_progress", response=begun)
    try:
        ev = first
        while ev is not None:
            if isinstance(ev, Piece):
                chunk = ""
                if ev.thinking:
                    thinking.append(ev.thinking)
                    chunk += out.thinking(ev.thinking)
                if ev.content:
                    content.append(ev.content)
                    chunk += out.text(ev.content)
                if chunk:
                    yield chunk
            else:
                content.append(ev.content)
                chunk = out.end_thinking()
                if ev.content or out.message is not None or not ev.tool_calls:
                    chunk += out.text(ev.content) + out.end_text()
                calls = [(tool_call_id(), c) for c in ev.tool_calls]
                for call_id, c in calls:
                    chunk += out.tool_call(call_id, c)
                response = turn.response("completed", out.output, ev)
                await _save(store, turn, response, turn.answered("".join(content), "".join(thinking), calls))
                yield chunk + out.event("response.completed", response=response)
            ev = await anext(events, None)
    except Exception as exc:  # after the stream started: a response.failed event, then the dialect's error
        status = exc.status if isinstance(exc, CorralError) else 500
        message = exc.message if isinstance(exc, CorralError) else f"internal error: {exc}"
        error = {"code": "server_error" if status >= 500 else "invalid_request", "message": message}
        yield out.event("response.failed", response=turn.response("failed", out.output, error=error))
        raise
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()


# ---- GET and DELETE /v1/responses/{id} ------------------------------------------------------


async def _stored(request: Request) -> StoredResponse:
    response_id = request.path_params["response_id"]
    stored = await asyncio.to_thread(_store(request).get, response_id)
    if stored is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return stored


async def get_response(request: Request) -> Response:
    return JSON((await _stored(request)).response)


async def delete_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    if not await asyncio.to_thread(_store(request).delete, response_id):
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return JSON({"id": response_id, "object": "response", "deleted": True})


routes = [
    route("/v1/responses", create_response, methods=["POST"], model_from="body"),
    route("/v1/responses/{response_id}", get_response, methods=["GET"]),
    route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
]

__all__ = ["routes"]
