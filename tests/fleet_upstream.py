"""A scripted upstream for the fleet tests: a real aiohttp.web server on loopback, in its own thread.

It speaks enough of OpenAI's API (as vLLM and llama-server answer it) and of
Ollama's catalog routes to drive :class:`corral.fleet.openai_backend.OpenAIBackend`
and discovery over real HTTP: streamed chat with reasoning, tool-call deltas
and a usage chunk, a length stop, raw completions, embeddings, error answers
(vLLM's 404 shape, llama-server's 400, a 500), an error event mid-stream and
a connection cut mid-stream. Every request is recorded for the tests to read.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

from tests.conftest import free_port

MODELS = [
    {"id": "chat-model", "object": "model", "created": 1_700_000_000, "owned_by": "vllm", "max_model_len": 4096},
    {
        "id": "tool-model",
        "object": "model",
        "created": 1_700_000_100,
        "owned_by": "llamacpp",
        "meta": {"n_ctx_train": 8192, "size": 123456},
    },
    {"id": "cut", "object": "model", "created": 1, "owned_by": "vllm"},
    {"id": "errmid", "object": "model", "created": 1, "owned_by": "vllm"},
    {"id": "broken", "object": "model", "created": 1, "owned_by": "vllm"},
]
BODY = web.RequestKey("body", object)
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def chat_script(body: dict[str, Any]) -> list[dict[str, Any]]:
    model = body["model"]
    usage = {"choices": [], "usage": USAGE}
    if model == "tool-model":
        return [
            _chunk({"role": "assistant", "content": ""}),
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_abc",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_def",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
                        }
                    ]
                }
            ),
            _chunk({}, "tool_calls"),
            usage,
        ]
    if body.get("max_tokens") == 2:
        return [
            _chunk({"role": "assistant", "content": "Hel"}),
            _chunk({"content": "lo"}),
            _chunk({}, "length"),
            {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}},
        ]
    return [
        _chunk({"role": "assistant", "reasoning_content": "Let me think."}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk({"content": " world"}),
        _chunk({}, "stop"),
        usage,
    ]


class FakeUpstream:
    """Start with :meth:`start`, stop with :meth:`stop`; ``requests`` holds (method, path, headers, body)."""

    def __init__(self, *, key: str | None = None) -> None:
        self.key = key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.tags: list[dict[str, Any]] = []
        self.ps: list[dict[str, Any]] = []
        self.fail_with: int | None = None  # answer every request with this status
        self.disconnected = threading.Event()  # a streamed answer's client went away
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._gate])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def bodies(self, path: str) -> list[Any]:
        return [body for _, p, _, body in self.requests if p == path]

    # ---- handlers -----------------------------------------------------------------------
    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, dict(request.headers), body))
        if self.key and request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"error": {"message": "Invalid API key", "type": "auth_error"}}, status=401)
        if self.fail_with is not None:
            return web.json_response({"error": {"message": "upstream is sick"}}, status=self.fail_with)
        request[BODY] = body
        result: web.StreamResponse = await handler(request)
        return result

    async def _refuse(self, model: str) -> web.Response | None:
        if model == "broken":
            return web.json_response({"error": {"message": "CUDA out of memory", "type": "server_error"}}, status=500)
        if model == "picky":
            return web.json_response(
                {"error": {"code": 400, "type": "invalid_request_error", "message": "'temperature' must be <= 2"}},
                status=400,
            )
        if model not in {m["id"] for m in MODELS}:
            return web.json_response(
                {
                    "object": "error",
                    "message": f"The model `{model}` does not exist.",
                    "type": "NotFoundError",
                    "param": None,
                    "code": 404,
                },
                status=404,
            )
        return None

    async def _sse(self, request: web.Request, events: list[Any], *, cut: bool = False) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for event in events:
                data = b"data: " + json.dumps(event).encode() + b"\n\n"
                await resp.write(data[:9])  # every event split across two writes
                await resp.write(data[9:])
                await asyncio.sleep(0.01)
            if cut:
                assert request.transport is not None
                request.transport.abort()
                return resp
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return resp

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body: Any = request[BODY]
        if (refusal := await self._refuse(body["model"])) is not None:
            return refusal
        if body["model"] == "cut":
            return await self._sse(request, [_chunk({"role": "assistant", "content": "partial"})], cut=True)
        if body["model"] == "errmid":
            return await self._sse(
                request, [_chunk({"content": "x"}), {"error": {"message": "engine died", "code": 500}}]
            )
        if body.get("max_tokens") == 1000:  # a long answer, for a client that stops reading
            return await self._sse(request, [_chunk({"content": f"t{i} "}) for i in range(1000)])
        return await self._sse(request, chat_script(body))

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body: Any = request[BODY]
        if (refusal := await self._refuse(body["model"])) is not None:
            return refusal
        chunks = [
            {"choices": [{"index": 0, "text": text, "finish_reason": None, "logprobs": None}]}
            for text in ("raw:", body["prompt"])
        ]
        chunks.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]})
        chunks.append({"choices": [], "usage": USAGE})
        return await self._sse(request, chunks)

    async def _embeddings(self, request: web.Request) -> web.Response:
        body: Any = request[BODY]
        if (refusal := await self._refuse(body["model"])) is not None:
            return refusal
        return web.json_response(
            {
                "object": "list",
                "model": body["model"],
                "usage": {"prompt_tokens": 5},
                "data": [{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [3.0, 4.0]}],
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": MODELS})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": self.tags})

    async def _ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": self.ps})
