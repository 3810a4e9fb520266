"""OpenAI's wire format, client side: internal calls out as request bodies, SSE chunks in as Piece/Final.

Owns the pure half of :class:`corral.fleet.openai_backend.OpenAIBackend`:
:func:`chat_body` / :func:`completion_body` (a :class:`ChatCall` /
:class:`GenerateCall` as an OpenAI request, Ollama options and ``format``
mapped onto OpenAI's fields), :class:`SSEDecoder` (bytes to event payloads),
:class:`StreamFolder` (chunks to :class:`Piece` events and one
:class:`Final`, tool-call deltas accumulated), the catalog entries
(``/v1/models`` entries as :class:`ModelSummary` / :class:`RunningModel`)
and :func:`upstream_error` (an error answer as a :class:`CorralError`).
No I/O here, so every piece is testable on its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from corral.backend.base import ChatCall, Final, GenerateCall, ModelSummary, Piece, RunningModel
from corral.errors import BadGateway, BadRequest, CorralError, ModelNotFound, TooManyRequests

log = logging.getLogger(__name__)

FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)  # expires_at of a model an OpenAI server keeps loaded for good
DETAILS: dict[str, Any] = {
    "parent_model": "",
    "format": "openai",
    "family": "",
    "families": None,
    "parameter_size": "",
    "quantization_level": "",
}
# Ollama option -> OpenAI field. top_k and min_p are extensions that vLLM and llama-server both accept.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "num_predict": "max_tokens",
    "stop": "stop",
}
_IMAGE_MAGIC = (("iVBOR", "png"), ("/9j/", "jpeg"), ("R0lGOD", "gif"), ("UklGR", "webp"))
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


# ---- requests -------------------------------------------------------------------------


def sampling(options: dict[str, Any]) -> dict[str, Any]:
    """Ollama options -> OpenAI sampling fields; options OpenAI has no field for (num_ctx...) are left out."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        field = _OPTIONS.get(key)
        if field is None:
            log.debug("option %s has no OpenAI equivalent; not sent upstream", key)
            continue
        if value is None:
            continue
        if key == "num_predict" and isinstance(value, int) and value < 0:  # -1/-2: no limit, OpenAI's default
            continue
        out[field] = [value] if key == "stop" and isinstance(value, str) else value
    return out


def response_format(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Ollama ``format`` (``"json"`` or a JSON schema) -> OpenAI ``response_format``."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    raise BadRequest(f'invalid format: {fmt!r}; expected "json" or a JSON schema', param="format")


def _data_url(image: str) -> str:
    kind = next((t for magic, t in _IMAGE_MAGIC if image.startswith(magic)), "png")
    return f"data:image/{kind};base64,{image}"


def _call_id(*parts: object) -> str:
    """A stable 9-character id for a tool call that came without one: the same conversation renders
    the same prompt every turn (so the upstream's prompt cache still matches), and Mistral's
    templates accept it."""
    digest = int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")
    out = []
    for _ in range(9):
        digest, rem = divmod(digest, 36)
        out.append(_ID_CHARS[rem])
    return "".join(out)


def messages_out(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama chat messages -> OpenAI's: images as ``image_url`` parts, tool calls with ids and string
    arguments, each tool answer tied to its call (by ``tool_call_id``, else ``tool_name``, else order)."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of the last assistant turn's unanswered calls
    for n, m in enumerate(messages):
        role = m.get("role", "user")
        content = m.get("content") or ""
        msg: dict[str, Any] = {"role": role, "content": content}
        if m.get("images"):
            msg["content"] = ([{"type": "text", "text": content}] if content else []) + [
                {"type": "image_url", "image_url": {"url": _data_url(img)}} for img in m["images"]
            ]
        if role == "assistant" and m.get("tool_calls"):
            calls, pending = [], []
            for i, tc in enumerate(m["tool_calls"]):
                fn = tc.get("function") or {}
                name = str(fn.get("name", ""))
                cid = str(tc.get("id") or _call_id(n, i, name))
                args = fn.get("arguments")
                calls.append(
                    {
                        "id": cid,
                        "type": "function",
                        "function": {
                            "name": name,
                            "arguments": args if isinstance(args, str) else json.dumps(args or {}, ensure_ascii=False),
                        },
                    }
                )
                pending.append((cid, name))
            msg["tool_calls"] = calls
        if role == "tool":
            cid = str(m.get("tool_call_id") or "")
            if not cid and pending:
                named = [p for p in pending if p[1] == m.get("tool_name")]
                cid = (named or pending)[0][0]
            pending = [p for p in pending if p[0] != cid]
            if cid:
                msg["tool_call_id"] = cid
        out.append(msg)
    return out


def _common(call: ChatCall | GenerateCall) -> dict[str, Any]:
    body: dict[str, Any] = {"model": call.model, "stream": True, "stream_options": {"include_usage": True}}
    body.update(sampling(call.options))
    return body


def chat_body(call: ChatCall) -> dict[str, Any]:
    """The ``/v1/chat/completions`` request for a chat call (always streamed, usage included)."""
    body = _common(call)
    body["messages"] = messages_out(call.messages)
    if call.tools:
        body["tools"] = call.tools
    if (fmt := response_format(call.format)) is not None:
        body["response_format"] = fmt
    if isinstance(call.think, bool):  # vLLM and llama-server pass these to the chat template
        body["chat_template_kwargs"] = {"enable_thinking": call.think}
    elif isinstance(call.think, str) and call.think:
        body["reasoning_effort"] = call.think
    if call.logprobs:
        body["logprobs"] = True
        if call.top_logprobs:
            body["top_logprobs"] = call.top_logprobs
    return body


def generate_as_chat(call: GenerateCall) -> ChatCall:
    """A templated generate is a one-turn chat: the upstream applies the model's template, as Ollama does."""
    if call.template:
        raise BadRequest("a template override is not supported by an OpenAI-compatible upstream", param="template")
    messages: list[dict[str, Any]] = [{"role": "system", "content": call.system}] if call.system else []
    user: dict[str, Any] = {"role": "user", "content": call.prompt}
    if call.images:
        user["images"] = call.images
    messages.append(user)
    return ChatCall(
        model=call.model,
        options=call.options,
        format=call.format,
        think=call.think,
        logprobs=call.logprobs,
        top_logprobs=call.top_logprobs,
        keep_alive=call.keep_alive,
        messages=messages,
    )


def completion_body(call: GenerateCall) -> dict[str, Any]:
    """The ``/v1/completions`` request for a raw (or fill-in-the-middle) generate call."""
    if call.context:
        raise BadRequest("context tokens are not supported by an OpenAI-compatible upstream", param="context")
    body = _common(call)
    body["prompt"] = call.prompt
    if call.suffix:
        body["suffix"] = call.suffix
    if (fmt := response_format(call.format)) is not None:
        body["response_format"] = fmt
    if call.logprobs:
        body["logprobs"] = max(call.top_logprobs, 1)
    return body


# ---- answers ------------------------------------------------------------------------------


class SSEDecoder:
    """Server-sent events -> the data of each event (``data:`` lines joined); ``error:`` events are wrapped
    as ``{"error": ...}``. Bytes may be cut anywhere."""

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        out: list[bytes] = []
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data = []
                continue
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"data":
                self._data.append(value)
            elif name == b"error":
                self._data.append(b'{"error":' + value + b"}")
        return out

    def finish(self) -> list[bytes]:
        """What is left once the body ended (an event without its closing blank line)."""
        return self.feed(b"\n\n") if self._rest or self._data else []


def error_message(body: Any, fallback: str) -> str:
    """The message of an OpenAI (``{"error": {"message"}}``), vLLM (``{"message"}``) or plain error body."""
    for _ in range(3):
        if isinstance(body, dict) and "error" in body:
            body = body["error"]
        else:
            break
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def upstream_error(status: int, body: Any, model: str, upstream: str) -> CorralError:
    """An error answer from the upstream as the CorralError with the upstream's status:
    404 -> ModelNotFound, 429 -> TooManyRequests, 401/403 (the gateway's own key was refused) and
    5xx -> BadGateway, other 4xx -> BadRequest."""
    message = error_message(body, f"HTTP {status}")
    err: CorralError
    if status == 404:
        return ModelNotFound(model)
    if status == 429:
        err = TooManyRequests(message)
    elif status in (401, 403):
        err = BadGateway(f"upstream {upstream} refused the gateway's credentials: {message}")
    elif 400 <= status < 500:
        err = BadRequest(message)
        err.status = status
    else:
        err = BadGateway(f"upstream {upstream} failed: {message}")
        err.status = status if status in (502, 503, 504) else 502
    return err


def _legacy_logprobs(lp: Any) -> list[dict[str, Any]] | None:
    """``/v1/completions`` logprobs ({tokens, token_logprobs, top_logprobs}) -> chat-style entries."""
    if not isinstance(lp, dict) or not lp.get("tokens"):
        return None
    tops = lp.get("top_logprobs") or []
    return [
        {
            "token": t,
            "logprob": p,
            "top_logprobs": [
                {"token": k, "logprob": v} for k, v in (tops[i] if i < len(tops) and tops[i] else {}).items()
            ],
        }
        for i, (t, p) in enumerate(zip(lp["tokens"], lp.get("token_logprobs") or [], strict=False))
    ]


class StreamFolder:
    """Folds one streamed answer's chunks into Pieces and, at the end, one Final with client-side timings."""

    def __init__(self, model: str, upstream: str, start: float | None = None) -> None:
        self.model = model
        self.upstream = upstream
        self.start = time.monotonic() if start is None else start
        self.first: float | None = None
        self.chunks = 0
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.calls: dict[int, dict[str, Any]] = {}

    def chunk(self, obj: Any) -> Piece | None:
        if not isinstance(obj, dict):
            return None
        if "error" in obj or obj.get("object") == "error":
            raise BadGateway(f"upstream {self.upstream} failed mid-answer: {error_message(obj, 'unknown error')}")
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        choices = obj.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta")
        logprobs: list[dict[str, Any]] | None
        if isinstance(delta, dict):  # chat
            content = delta.get("content") or ""
            thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
            logprobs = (choice.get("logprobs") or {}).get("content") or None
            for i, tc in enumerate(delta.get("tool_calls") or []):
                self._tool_delta(tc, i)
        else:  # completions
            content, thinking = choice.get("text") or "", ""
            logprobs = _legacy_logprobs(choice.get("logprobs"))
        if (content or thinking or logprobs or self.calls) and self.first is None:
            self.first = time.monotonic()
        if content or thinking or logprobs:
            self.chunks += 1
            return Piece(str(content), str(thinking), logprobs)
        return None

    def _tool_delta(self, tc: dict[str, Any], position: int) -> None:
        index = tc.get("index", position)
        call = self.calls.setdefault(index, {"id": None, "name": "", "arguments": []})
        if tc.get("id") and not call["id"]:
            call["id"] = tc["id"]
        fn = tc.get("function") or {}
        if fn.get("name") and not call["name"]:  # sent once, with the first delta (some servers repeat it)
            call["name"] = fn["name"]
        if fn.get("arguments"):
            args = fn["arguments"]
            call["arguments"].append(args if isinstance(args, str) else json.dumps(args))

    def final(self) -> Final:
        end = time.monotonic()
        first = self.first if self.first is not None else end
        tool_calls, leftover = [], []
        for i, index in enumerate(sorted(self.calls)):
            call = self.calls[index]
            text = "".join(call["arguments"])
            try:
                args = json.loads(text) if text.strip() else {}
            except ValueError:
                args = None
            if not isinstance(args, dict):  # unparseable: released as text, as a failed local tool parse is
                log.warning(
                    "upstream %s sent tool call %r with arguments that are no JSON object", self.upstream, call["name"]
                )
                leftover.append(json.dumps({"name": call["name"], "arguments": text}, ensure_ascii=False))
                continue
            out: dict[str, Any] = {"function": {"index": i, "name": call["name"], "arguments": args}}
            if call["id"]:
                out["id"] = call["id"]
            tool_calls.append(out)
        return Final(
            done_reason="length" if self.finish_reason == "length" else "stop",
            model=self.model,
            total_ns=max(1, int((end - self.start) * 1e9)),
            prompt_eval_count=int(self.usage.get("prompt_tokens") or 0),
            prompt_eval_ns=max(1, int((first - self.start) * 1e9)),
            eval_count=int(self.usage.get("completion_tokens") or self.chunks),
            eval_ns=max(1, int((end - first) * 1e9)),
            tool_calls=tool_calls,
            content="\n".join(leftover),
        )


# ---- catalog ---------------------------------------------------------------------------------


def _created(entry: dict[str, Any]) -> datetime:
    created = entry.get("created")
    if isinstance(created, (int, float)) and not isinstance(created, bool) and created > 0:
        return datetime.fromtimestamp(created, UTC)
    return datetime.fromtimestamp(0, UTC)


def _meta_int(entry: dict[str, Any], *keys: str) -> int:
    meta: dict[str, Any] = entry["meta"] if isinstance(entry.get("meta"), dict) else {}
    for key in keys:
        for source in (entry, meta):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return 0


def summary_from_openai(entry: dict[str, Any]) -> ModelSummary:
    """One ``/v1/models`` entry as a listing entry (size from llama-server's ``meta`` where it gives one)."""
    return ModelSummary(
        name=str(entry.get("id", "")),
        namespace=str(entry.get("owned_by") or ""),
        modified_at=_created(entry),
        size=_meta_int(entry, "size"),
        digest="",
        details=dict(DETAILS),
    )


def context_length(entry: dict[str, Any]) -> int:
    """vLLM's ``max_model_len``, else llama-server's ``n_ctx_train``; 0 if neither is given."""
    return _meta_int(entry, "max_model_len", "n_ctx_train")


def running_from_openai(entry: dict[str, Any]) -> RunningModel:
    """An OpenAI server serves every model it lists, loaded for good."""
    size = _meta_int(entry, "size")
    return RunningModel(
        name=str(entry.get("id", "")),
        digest="",
        size=size,
        size_vram=size,
        details=dict(DETAILS),
        expires_at=FAR_FUTURE,
        context_length=context_length(entry),
    )
