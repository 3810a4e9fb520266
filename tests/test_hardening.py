"""Bad input and limits, sent to a running server: a clear 4xx (never a 500), and a server no worse off.

Each test sends the bad input over HTTP, checks the status and the whole
error body, then checks that the server still answers a normal request.
Most use the session server; a test that needs its own slot count starts
its own server on the session store.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Scope

from corral.server.app import create_app
from corral.server.middleware import RequestContext
from corral.settings import Settings
from tests.conftest import SMOLLM, ServerProc
from tests.tiny_gguf import unknown_arch

QUICK = {"temperature": 0, "num_predict": 2}
LONG = {"temperature": 0, "num_predict": 100000}
GO_STREAM = "json: cannot unmarshal string into Go struct field {}.stream of type bool"


def still_answers(url: str) -> None:
    r = httpx.post(
        url + "/api/generate", timeout=120, json={"model": SMOLLM, "prompt": "Hi", "stream": False, "options": QUICK}
    )
    assert r.status_code == 200 and r.json()["done"] is True


def post(url: str, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120, **kw)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.fixture
def shared_env(server: ServerProc) -> dict[str, str]:
    return {"OLLAMA_MODELS": str(server.home / "models"), "CORRAL_STARTER_MODELS": "0"}


# ---- types checked as strictly as Ollama's decoder checks them ---------------------------------------------


def test_stream_given_as_a_string_is_400_not_a_stream(base_url: str) -> None:
    for path, body, struct in (
        ("/api/generate", {"model": SMOLLM, "prompt": "Hi", "stream": "yes"}, "GenerateRequest"),
        (
            "/api/chat",
            {"model": SMOLLM, "messages": [{"role": "user", "content": "Hi"}], "stream": "yes"},
            "ChatRequest",
        ),
    ):
        r = post(base_url, path, body)
        assert r.status_code == 400 and r.json() == {"error": GO_STREAM.format(struct)}
    r = post(
        base_url,
        "/v1/chat/completions",
        {"model": SMOLLM, "stream": "yes", "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == GO_STREAM.format("ChatCompletionRequest")
    still_answers(base_url)


def test_a_seed_beyond_64_bits_is_400(base_url: str) -> None:
    r = post(base_url, "/api/generate", {"model": SMOLLM, "prompt": "Hi", "options": {"seed": 2**64}})
    assert r.status_code == 400
    assert r.json() == {
        "error": "json: cannot unmarshal number 18446744073709551616 into Go struct field Options.seed of type int"
    }
    r = post(
        base_url,
        "/v1/chat/completions",
        {"model": SMOLLM, "seed": -(2**63) - 1, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert r.status_code == 400
    still_answers(base_url)


def test_invalid_base64_images_are_400_whatever_the_model(base_url: str) -> None:
    for model in (SMOLLM, "all-minilm"):  # neither has vision: the images are refused first for what they are
        r = post(base_url, "/api/generate", {"model": model, "prompt": "What is this?", "images": ["abc!def"]})
        assert r.status_code == 400 and r.json() == {"error": "illegal base64 data at input byte 3"}
        r = post(
            base_url,
            "/api/chat",
            {"model": model, "messages": [{"role": "user", "content": "What is this?", "images": ["aGVsbG8"]}]},
        )
        assert r.status_code == 400 and r.json() == {"error": "illegal base64 data at input byte 4"}
    still_answers(base_url)


# ---- format ------------------------------------------------------------------------------------------------


def test_format_with_an_invalid_json_schema_is_400_naming_the_problem(base_url: str) -> None:
    r = post(
        base_url,
        "/api/generate",
        {"model": SMOLLM, "prompt": "Invent a person.", "stream": False, "format": {"type": "notatype"}},
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": 'invalid JSON schema in format at /type: "notatype" is not a valid type (one of '
        '"array", "boolean", "integer", "null", "number", "object", "string")'
    }
    r = post(
        base_url,
        "/api/chat",
        {
            "model": SMOLLM,
            "messages": [{"role": "user", "content": "Hi"}],
            "format": {"type": "object", "properties": {"age": {"type": "int"}}},
        },
    )
    assert r.status_code == 400 and "at /properties/age/type" in r.json()["error"]
    r = post(
        base_url,
        "/v1/chat/completions",
        {
            "model": SMOLLM,
            "messages": [{"role": "user", "content": "Hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"properties": 5}}},
        },
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        "invalid JSON schema in format at /properties: properties must be an object of schemas, not a number"
    )
    # a valid schema stays enforced
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = post(
        base_url,
        "/api/generate",
        {
            "model": SMOLLM,
            "prompt": "Invent a person.",
            "stream": False,
            "format": schema,
            "options": {"temperature": 0, "num_predict": 48},
        },
    )
    person = json.loads(r.json()["response"])
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


# ---- body shape and size -----------------------------------------------------------------------------------


def test_json_nested_10000_deep_is_400_on_api_and_v1(base_url: str) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    deep_in_field = '{"model": "smollm2:135m", "prompt": "Hi", "format": ' + '{"a": ' * 10_000 + "1" + "}" * 10_001
    for path, body in (
        ("/api/generate", deep),
        ("/api/chat", deep_in_field),
        ("/api/embed", deep),
        ("/v1/chat/completions", deep),
        ("/v1/embeddings", deep_in_field),
    ):
        r = httpx.post(base_url + path, content=body, timeout=60)
        assert r.status_code == 400, (path, r.text)
        message = r.json()["error"]
        message = message["message"] if isinstance(message, dict) else message
        assert message == "invalid JSON in request body: exceeded max depth of 200"
    still_answers(base_url)


def test_a_body_over_the_size_limit_is_413_and_is_not_held(server: ServerProc) -> None:
    before = rss_kib(server.proc.pid)
    prompt = "word " * (34 * 1024 * 1024 // 5)  # just over the 32 MiB default of CORRAL_MAX_BODY
    r = post(server.url, "/api/generate", {"model": SMOLLM, "prompt": prompt, "stream": False})
    assert r.status_code == 413
    assert r.json() == {"error": "request body too large: the limit is 33554432 bytes (CORRAL_MAX_BODY)"}
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, content=b"{" + b" " * (33 << 20) + b"}")
    assert r.status_code == 413 and r.json()["error"]["message"].startswith("request body too large")
    assert rss_kib(server.proc.pid) - before < 64 * 1024  # the refused body was never kept
    still_answers(server.url)


def test_NaN_and_Infinity_are_not_json(base_url: str) -> None:
    r = httpx.post(
        base_url + "/api/generate",
        timeout=60,
        content='{"model": "smollm2:135m", "prompt": "Hi", "options": {"temperature": NaN}}',
    )
    assert r.status_code == 400
    assert r.json() == {"error": "invalid JSON in request body: invalid character 'N' looking for beginning of value"}
    still_answers(base_url)


# ---- huge prompts and context sizes ------------------------------------------------------------------------


def test_a_200k_character_chat_is_truncated_to_num_ctx_as_generate_is(base_url: str) -> None:
    client = ollama.Client(host=base_url, timeout=120)
    text = "The quick brown fox jumps over the lazy dog. " * (200_000 // 45)
    options = {**QUICK, "num_ctx": 1024}  # a small window: three full prompt evals stay quick on one thread
    started = time.monotonic()
    chat = client.chat(model=SMOLLM, messages=[{"role": "user", "content": text}], options=options)
    assert chat.done and 0 < chat.prompt_eval_count < 1024
    generated = client.generate(model=SMOLLM, prompt=text, options=options)
    assert generated.done and 0 < generated.prompt_eval_count < 1024
    long_history = [{"role": "user" if i % 2 == 0 else "assistant", "content": text[:20_000]} for i in range(10)]
    chat = client.chat(model=SMOLLM, messages=[*long_history, {"role": "user", "content": "Hi"}], options=options)
    assert chat.done and 0 < chat.prompt_eval_count < 1024
    assert time.monotonic() - started < 90
    still_answers(base_url)


@pytest.mark.parametrize("num_ctx", [0, -1])
def test_num_ctx_of_zero_or_less_is_400(base_url: str, num_ctx: int) -> None:
    for path, body in (
        ("/api/generate", {"model": SMOLLM, "prompt": "Hi"}),
        ("/api/chat", {"model": SMOLLM, "messages": [{"role": "user", "content": "Hi"}]}),
    ):
        r = post(base_url, path, {**body, "options": {"num_ctx": num_ctx}})
        assert r.status_code == 400
        assert r.json() == {"error": f"invalid option num_ctx {num_ctx}: the context length must be at least 1"}
    still_answers(base_url)


# ---- keep_alive ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", ["10000000000h", 1e300, "NaN"])
def test_keep_alive_that_overflows_is_400_as_a_bad_duration(base_url: str, keep_alive: Any) -> None:
    shown = keep_alive if isinstance(keep_alive, str) else "1e+300"
    for path, body in (
        ("/api/generate", {"model": SMOLLM, "prompt": "Hi"}),
        ("/api/generate", {"model": SMOLLM}),
        ("/api/chat", {"model": SMOLLM, "messages": [{"role": "user", "content": "Hi"}]}),
        ("/api/embed", {"model": "all-minilm", "input": "Hi"}),
    ):
        r = post(base_url, path, {**body, "keep_alive": keep_alive})
        assert r.status_code == 400 and r.json() == {"error": f'time: invalid duration "{shown}"'}
    # and the model can still be unloaded and reloaded with other options
    r = post(base_url, "/api/generate", {"model": SMOLLM, "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert SMOLLM not in [m["name"] for m in httpx.get(base_url + "/api/ps").json()["models"]]
    r = post(
        base_url,
        "/api/generate",
        {"model": SMOLLM, "prompt": "Hi", "stream": False, "options": {**QUICK, "num_ctx": 2048}},
    )
    assert r.status_code == 200
    still_answers(base_url)


# ---- clients that go away ------------------------------------------------------------------------------------


def test_a_non_streamed_request_whose_client_goes_away_frees_its_slot(
    start_server: Callable[..., ServerProc], shared_env: dict[str, str]
) -> None:
    srv = start_server({**shared_env, "OLLAMA_NUM_PARALLEL": "1"})
    still_answers(srv.url)
    endless = {"type": "array", "items": {"type": "integer"}, "minItems": 100000}  # no end of turn before that
    for path, body in (
        ("/api/generate", {"model": SMOLLM, "prompt": "Count.", "format": endless, "options": LONG}),
        (
            "/api/chat",
            {"model": SMOLLM, "messages": [{"role": "user", "content": "Count."}], "format": endless, "options": LONG},
        ),
        (
            "/v1/chat/completions",
            {
                "model": SMOLLM,
                "max_tokens": 100000,
                "messages": [{"role": "user", "content": "Count."}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": endless}},
            },
        ),
    ):
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while the only slot generates
            httpx.post(srv.url + path, json={**body, "stream": False}, timeout=3)
        # The only slot was busy with an endless generation: it must be free well before that could end.
        started = time.monotonic()
        still_answers(srv.url)
        assert time.monotonic() - started < 15
    assert "client disconnected before the answer was ready" in srv.log_text()


def test_a_client_dropping_mid_body_is_logged_in_one_line_without_traceback(server: ServerProc) -> None:
    offset = len(server.log_text())
    host, port = server.url.removeprefix("http://").split(":")
    for path in ("/api/generate", "/api/blobs/sha256:" + "0" * 64):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: 100000\r\n\r\n".encode()
                + b'{"model": "smollm2:135m", "prompt": "'
            )
            time.sleep(0.3)
        time.sleep(0.5)
    still_answers(server.url)
    log = server.log_text()[offset:]
    assert log.count("client disconnected while sending the request body") == 2
    assert "Traceback" not in log and "ERROR" not in log


# ---- every response goes through the gateway seam --------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.seen: list[RequestContext] = []

    async def before(self, ctx: RequestContext, scope: Scope) -> None:
        if ctx.path == "/api/version" and scope.get("query_string") == b"crash=before":
            raise RuntimeError("hook exploded")

    def on_start(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        if ctx.path == "/api/tags":
            raise RuntimeError("on_start exploded")

    async def after(self, ctx: RequestContext) -> None:
        self.seen.append(ctx)


async def _unguarded(request: Any) -> Any:
    raise RuntimeError("a route without the dialect guard")


def test_a_500_from_anywhere_below_the_seam_goes_through_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Endpoint crashes were already answered inside the middleware; a crash in a hook, in a route without
    the dialect guard or in another middleware is now too, so the access log and hooks see the 500."""
    hook = Recorder()
    app = create_app(Settings(home=tmp_path, models_dir=tmp_path / "models", starter_models=False), hooks=[hook])
    app.router.routes.insert(0, Route("/api/unguarded", _unguarded))
    with caplog.at_level(logging.INFO, logger="corral.access"), TestClient(app, raise_server_exceptions=False) as c:
        for url in ("/api/version?crash=before", "/api/unguarded", "/api/tags"):
            r = c.get(url)
            assert r.status_code == 500 and r.json()["error"].startswith("internal error: ")
            assert len(r.headers["x-request-id"]) == 16
        assert c.get("/api/version").status_code == 200
    assert [ctx.status for ctx in hook.seen] == [500, 500, 500, 200]
    access = [rec.getMessage() for rec in caplog.records if rec.name == "corral.access"]
    assert [line.split()[2] for line in access] == ["500", "500", "500", "200"]


def test_an_engine_failure_on_a_running_server_is_a_500_in_the_access_log(server: ServerProc, tmp_path: Path) -> None:
    client = ollama.Client(host=server.url, timeout=120)
    digest = client.create_blob(unknown_arch(tmp_path / "hollow.gguf", arch="llama"))  # llama without weights
    for _ in client.create(model="hollow", files={"hollow.gguf": digest}):
        pass
    offset = len(server.log_text())
    r = post(server.url, "/api/generate", {"model": "hollow", "prompt": "Hi", "stream": False})
    assert r.status_code == 500 and r.json()["error"].startswith("llama runner failed to load model")
    deadline = time.monotonic() + 5  # the request log's writer prints the line, within its flush interval
    while "corral.access: POST /api/generate 500" not in server.log_text()[offset:] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "corral.access: POST /api/generate 500" in server.log_text()[offset:]
    client.delete("hollow")
    still_answers(server.url)
