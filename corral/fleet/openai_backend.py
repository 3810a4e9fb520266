"""OpenAIBackend: the :class:`~corral.backend.base.Backend` seam over one OpenAI-compatible server.

What lets Ollama clients use a vLLM (``vllm serve``) or llama.cpp
(``llama-server``) upstream: the gateway runs the server's own Ollama routes
with this object as their backend, so ``/api/chat``, ``/api/generate``,
``/api/embed``, ``/api/tags``, ``/api/show`` and ``/api/ps`` become
``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
``/v1/models`` calls. This module owns the HTTP side (aiohttp, one session
per backend); the wire translation is :mod:`corral.fleet.openai_wire`.

- ``chat`` streams ``/v1/chat/completions`` (``stream_options.include_usage``)
  into :class:`Piece` events (content; ``reasoning_content``/``reasoning`` as
  thinking) and one :class:`Final` (tool calls accumulated from their deltas,
  in Ollama's shape; token counts from ``usage``; durations measured here).
- ``generate``: a raw or fill-in-the-middle call streams ``/v1/completions``
  with the prompt as given; any other is a one-turn chat, so the upstream
  applies the model's chat template, as Ollama's ``/api/generate`` does.
- ``embed`` posts ``/v1/embeddings`` and L2-normalises the vectors (Ollama's
  contract for ``/api/embed``).
- The catalog is ``/v1/models``: every listed model counts as loaded for
  good (an OpenAI server has no load or unload); ``show`` tells what the
  listing tells (capabilities ``completion`` and ``tools``: the API the
  server speaks, not a promise about the model).

Errors: an unreachable server is :class:`BadGateway` naming it; an error
answer is mapped by :func:`corral.fleet.openai_wire.upstream_error` (404 ->
ModelNotFound, other 4xx -> BadRequest with the upstream's status, 5xx ->
BadGateway). An error raised before the first event means nothing reached the
client yet (safe to retry elsewhere); a stream that breaks later raises
BadGateway from inside the iteration.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from corral.backend.base import (
    ChatCall,
    EmbedCall,
    Embeddings,
    Final,
    GenerateCall,
    Loaded,
    ModelInfo,
    ModelSummary,
    Piece,
    RunningModel,
)
from corral.errors import BadGateway, ModelNotFound
from corral.fleet.openai_wire import (
    SSEDecoder,
    StreamFolder,
    chat_body,
    completion_body,
    context_length,
    generate_as_chat,
    running_from_openai,
    summary_from_openai,
    upstream_error,
)
from corral.fleet.state import model_aliases

log = logging.getLogger(__name__)

_NET_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


class OpenAIBackend:
    """One OpenAI-compatible server behind the Backend seam (see module docstring).

    ``url`` is the server's root (``http://host:8000``, without ``/v1``);
    ``key`` is sent as a Bearer token; ``name`` is how errors and logs call
    it (default: the URL). A ``session`` given here is used but not closed.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str | None = None,
        name: str | None = None,
        connect_timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.name = name or self.url
        self.connect_timeout = connect_timeout
        self._session = session
        self._owns_session = session is None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the running event loop
            # No read timeout: a model may think for minutes before its first token.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers

    async def _request(self, method: str, path: str, body: dict[str, Any] | None, model: str) -> aiohttp.ClientResponse:
        """The upstream's answer once its status is in; an error status is raised as a CorralError."""
        try:
            resp = await self._client().request(
                method, self.url + path, headers=self._headers(), data=None if body is None else json.dumps(body)
            )
        except _NET_ERRORS as exc:
            raise BadGateway(f"upstream {self.name} is unreachable: {_reason(exc)}") from None
        if resp.status < 400:
            return resp
        try:
            text = await resp.text(errors="replace")
        except _NET_ERRORS:
            text = ""
        finally:
            resp.release()
        log.info("upstream %s answered %s %s with %d: %s", self.name, method, path, resp.status, text[:300])
        raise upstream_error(resp.status, _loads(text.encode()), model, self.name)

    async def _json(self, method: str, path: str, body: dict[str, Any] | None, model: str) -> Any:
        resp = await self._request(method, path, body, model)
        try:
            return await resp.json(content_type=None)
        except _NET_ERRORS as exc:
            raise BadGateway(f"upstream {self.name} failed: {_reason(exc)}") from None
        except ValueError:
            raise BadGateway(f"upstream {self.name} answered {path} with something that is not JSON") from None
        finally:
            resp.release()

    async def _stream(self, path: str, body: dict[str, Any], model: str) -> AsyncIterator[Piece | Final]:
        folder = StreamFolder(model, self.name)
        resp = await self._request("POST", path, body, model)
        decoder = SSEDecoder()
        done = False
        try:
            async for chunk in resp.content.iter_any():
                for payload in decoder.feed(chunk):
                    if payload.strip() == b"[DONE]":
                        done = True
                        break
                    if (piece := folder.chunk(_loads(payload))) is not None:
                        yield piece
                if done:
                    break
            else:
                for payload in decoder.finish():
                    if payload.strip() != b"[DONE]" and (piece := folder.chunk(_loads(payload))) is not None:
                        yield piece
        except _NET_ERRORS as exc:
            raise BadGateway(f"upstream {self.name} failed mid-answer: {_reason(exc)}") from None
        finally:
            resp.release()  # closes the connection if the answer was not read to its end: the upstream stops
        if not done and folder.finish_reason is None:
            raise BadGateway(f"upstream {self.name} ended the answer early")
        yield folder.final()

    # ---- inference ----------------------------------------------------------------------
    def chat(self, call: ChatCall) -> AsyncIterator[Piece | Final]:
        return self._stream("/v1/chat/completions", chat_body(call), call.model)

    def generate(self, call: GenerateCall) -> AsyncIterator[Piece | Final]:
        if call.raw or call.suffix:
            return self._stream("/v1/completions", completion_body(call), call.model)
        return self.chat(generate_as_chat(call))

    async def embed(self, call: EmbedCall) -> Embeddings:
        start = time.monotonic()
        body: dict[str, Any] = {"model": call.model, "input": call.inputs, "encoding_format": "float"}
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        answer = await self._json("POST", "/v1/embeddings", body, call.model)
        try:
            data = sorted(answer["data"], key=lambda d: d.get("index", 0))
            vectors = [[float(x) for x in d["embedding"]] for d in data]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BadGateway(f"upstream {self.name} answered /v1/embeddings without embeddings") from None
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        return Embeddings(
            [_normalise(v) for v in vectors],
            int(usage.get("prompt_tokens") or 0),
            0,
            max(1, int((time.monotonic() - start) * 1e9)),
        )

    # ---- catalog ------------------------------------------------------------------------
    async def listing(self) -> list[dict[str, Any]]:
        """The raw ``/v1/models`` entries."""
        answer = await self._json("GET", "/v1/models", None, "")
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise BadGateway(f"upstream {self.name} answered /v1/models without a model list")
        return [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]

    async def _entry(self, name: str) -> dict[str, Any]:
        entries = {e["id"]: e for e in await self.listing()}
        for alias in model_aliases(name):
            if alias in entries:
                return entries[alias]
        raise ModelNotFound(name)

    async def models(self) -> list[ModelSummary]:
        return [summary_from_openai(e) for e in await self.listing()]

    async def model(self, name: str) -> ModelSummary:
        return summary_from_openai(await self._entry(name))

    async def show(self, name: str, *, verbose: bool = False) -> ModelInfo:
        entry = await self._entry(name)
        summary = summary_from_openai(entry)
        info: dict[str, Any] = {"general.architecture": "openai", "general.name": summary.name}
        if n_ctx := context_length(entry):
            info["openai.context_length"] = n_ctx
        return ModelInfo(
            name=summary.name,
            modelfile=f"# {summary.name}, served by {self.name} (OpenAI API)\n",
            parameters={},
            template="",
            system=None,
            license=[],
            details=summary.details,
            messages=[],
            model_info=info,
            capabilities=["completion", "tools"],
            modified_at=summary.modified_at,
        )

    async def running(self) -> list[RunningModel]:
        return [running_from_openai(e) for e in await self.listing()]

    async def load(self, model: str, *, keep_alive: float | None, options: dict[str, Any] | None) -> Loaded:
        """Nothing to load: the model must be listed. ``keep_alive`` 0 answers "unloaded" but changes nothing."""
        entry = await self._entry(model)
        return Loaded(entry["id"], loaded=keep_alive != 0)

    async def unload(self, model: str) -> bool:
        return False

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None


def _normalise(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else vec


__all__ = ["OpenAIBackend"]
