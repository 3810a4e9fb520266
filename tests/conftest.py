"""Shared fixtures: real ``corral serve`` processes on loopback, the app in-process, and the gateway database
on both backends.

The session server is started once with a fresh ``CORRAL_HOME`` (seeded with
the starter models) and driven by the official clients. ``start_server``
starts extra servers with their own environment, for what needs llama.cpp
under settings of its own.

``make_app`` (and its default, ``inproc``) builds the real Starlette app in
the test's event loop with a :class:`tests.fake_engine.FakeEngine` behind
it, runs its lifespan, and drives it through httpx's ASGI transport: no
process, no model, milliseconds per test. Use it for everything above the
engine (scheduler, service, HTTP layer, error bodies); keep the real servers
for what the engine does (generation, streaming, embeddings, templates on
real models, the official clients against a real socket).

``pg_cluster`` is one real PostgreSQL server per session (see
:mod:`tests.pgcluster`; ``scripts/test.sh`` installs PostgreSQL where it is missing), and
``pg_url`` a fresh database in it for each test. ``db_url`` / ``db`` run a
storage test once per backend: a SQLite file, then a PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import pytest_asyncio
from starlette.types import ASGIApp, Message

from corral.gateway.db import Database, open_database
from corral.server.app import create_app
from corral.settings import Settings
from corral.store.create import CreateSpec, create_model
from corral.store.store import Store
from tests.fake_engine import FakeEngine
from tests.pgcluster import PgCluster, pg_bin, remove_cluster, start_cluster
from tests.tiny_gguf import tiny_llama

ROOT = Path(__file__).resolve().parent.parent
SMOLLM = "smollm2:135m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProc:
    url: str
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def launch(home: Path, env_extra: dict[str, str] | None = None, port: int | None = None) -> ServerProc:
    port = port or free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "CORRAL_"))}
    # One llama.cpp thread: the suite runs test files in parallel workers (scripts/test.sh), and two
    # spinning threads per server on a 2-core machine cost more CPU than they save time.
    env.update({"CORRAL_HOME": str(home), "CORRAL_HOST": f"127.0.0.1:{port}", "CORRAL_NUM_THREADS": "1"})
    env.update(env_extra or {})
    log = home / f"server-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "serve"], cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return ServerProc(url, home, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text(errors='replace')[-3000:]}")


REAL_SERVER_FIXTURES = {
    "server",
    "base_url",
    "start_server",
    "q8_server",
    "registry_a",
    "keyed_registry",
    "quick_report",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_server: starts corral serve or bench processes (set by conftest for the real-server fixtures)"
    )


# The files that take longest (measured), in that order. scripts/test.sh runs files in parallel workers
# (pytest-xdist, --dist loadfile, in collection order): starting the long ones first keeps any one of
# them from running alone at the end. Only an order; a file missing here just runs after these.
LONGEST_FILES = (
    "test_bench.py",
    "test_playground.py",
    "test_fleet_gateway.py",
    "test_openai_api.py",
    "test_ollama_api.py",
    "test_parity.py",
    "test_hardening.py",
    "test_anthropic_api.py",
    "test_responses_api.py",
    "test_lifecycle.py",
    "test_gateway_server.py",
    "test_proxy.py",
    "test_registry.py",
    "test_cli_gateway.py",
)


def _longest_first(item: pytest.Item) -> int:
    name = item.path.name
    return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real server, so ``-m "not real_server"`` is the in-process fast loop;
    put the longest files first (a stable sort: tests keep their order within a file)."""
    for item in items:
        if REAL_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_server)
    items.sort(key=_longest_first)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    # Four slots, so the suite exercises batching of concurrent requests (the default is one, as Ollama's).
    srv = launch(tmp_path_factory.mktemp("corral-home"), {"OLLAMA_NUM_PARALLEL": "4"})
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def base_url(server: ServerProc) -> str:
    return server.url


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProc]]:
    started: list[ServerProc] = []

    def start(env: dict[str, str] | None = None, home: Path | None = None, port: int | None = None) -> ServerProc:
        srv = launch(home or tmp_path / f"home{len(started)}", env, port)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


# ---- in-process app with a fake engine ------------------------------------------------

TINY = "tiny"  # the model every in-process store holds (tests.tiny_gguf.tiny_llama, F32, no template)


class AsgiStream:
    """One request driven straight through the ASGI app, its body read as it is sent.

    httpx's ASGITransport returns a response only once the app has finished,
    so it can neither read a stream that never ends nor hang up half-way.
    This can: ``lines()`` yields each line when the app sends it, and
    ``disconnect()`` delivers ``http.disconnect`` as a server does when the
    client goes away.
    """

    def __init__(self, app: ASGIApp, method: str, path: str, body: Any) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.body = json.dumps(body).encode()
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.status = 0
        self.ended = False
        self._pending = b""

    async def __aenter__(self) -> Self:
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"corral.test")],
            "server": ("corral.test", 80),
            "client": ("127.0.0.1", 50000),
        }
        self.task = asyncio.ensure_future(self.app(scope, receive, self.messages.put))
        start = await self._next()
        assert start["type"] == "http.response.start", start
        self.status = start["status"]
        return self

    async def _next(self, timeout: float = 10.0) -> Message:
        get = asyncio.ensure_future(self.messages.get())
        done, _ = await asyncio.wait({get, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        if self.task.done():
            self.task.result()  # the app raised: let it surface
            raise AssertionError("the app returned without sending its response")
        raise AssertionError(f"nothing sent by the app within {timeout}s")

    async def lines(self) -> AsyncIterator[str]:
        """Each line of the body as soon as the app sends it."""
        while not self.ended:
            message = await self._next()
            assert message["type"] == "http.response.body", message
            self._pending += message.get("body", b"")
            self.ended = not message.get("more_body", False)
            *complete, self._pending = self._pending.split(b"\n")
            for line in complete:
                if line:
                    yield line.decode()
        if self._pending:
            yield self._pending.decode()
            self._pending = b""

    async def json_lines(self) -> AsyncIterator[Any]:
        async for line in self.lines():
            yield json.loads(line)

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Hang up, as a client closing its connection, and wait for the app to finish the request."""
        self.gone.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout)

    async def __aexit__(self, *exc: object) -> None:
        self.gone.set()
        await asyncio.wait_for(self.task, 10)


@dataclass
class InProc:
    """The real app in this event loop, a fake engine behind it, an httpx client in front."""

    app: Any
    client: httpx.AsyncClient
    engine: FakeEngine
    settings: Settings
    store: Store
    digest: str  # of the tiny GGUF blob every model here is made from

    def add_model(self, name: str, **spec: Any) -> str:
        """Create another model in the store (``CreateSpec`` fields), from the tiny GGUF unless ``from_`` is given."""
        if "from_" not in spec:
            spec.setdefault("files", {"tiny.gguf": self.digest})
        for _ in create_model(self.store, CreateSpec(name=name, **spec)):
            pass
        return name

    async def ps(self) -> list[dict[str, Any]]:
        r = await self.client.get("/api/ps")
        assert r.status_code == 200, r.text
        return list(r.json()["models"])

    async def generate(self, model: str = TINY, prompt: str = "hi", **body: Any) -> httpx.Response:
        return await self.client.post("/api/generate", json={"model": model, "prompt": prompt, "stream": False, **body})

    def stream(self, path: str, body: Any, method: str = "POST") -> AsgiStream:
        return AsgiStream(self.app, method, path, body)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A trained context of 8192: the fake engine never allocates it, and num_ctx is clamped to it (as Ollama).
    return tiny_llama(tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf", ctx=8192)


MakeApp = Callable[..., Awaitable[InProc]]


@pytest_asyncio.fixture(loop_scope="function")
async def make_app(tmp_path: Path, tiny_gguf: Path) -> AsyncIterator[MakeApp]:
    """Factory: ``await make_app(env, engine=..., models=(...), **settings_overrides)`` -> :class:`InProc`.

    ``env`` is read by ``Settings.from_env`` as the server's environment
    (``OLLAMA_*`` / ``CORRAL_*``; nothing from the real environment leaks
    in); the store starts with the tiny model under each name in ``models``.
    Everything started is shut down (lifespan included) after the test.
    """
    async with AsyncExitStack() as stack:
        count = 0

        async def make(
            env: dict[str, str] | None = None,
            *,
            engine: FakeEngine | None = None,
            models: tuple[str, ...] = (TINY,),
            **overrides: Any,
        ) -> InProc:
            nonlocal count
            count += 1
            home = tmp_path / f"inproc-{count}"
            settings = Settings.from_env({"CORRAL_HOME": str(home), "CORRAL_STARTER_MODELS": "0", **(env or {})})
            if overrides:
                settings = settings.with_overrides(**overrides)
            store = Store(settings.models_dir)
            store.ensure()
            digest, _ = store.import_file(tiny_gguf)
            engine = engine or FakeEngine()
            app = create_app(settings, engine=engine)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://corral.test", timeout=30)
            )
            inproc = InProc(app, client, engine, settings, store, digest)
            for name in models:
                inproc.add_model(name)
            return inproc

        yield make


@pytest_asyncio.fixture(loop_scope="function")
async def inproc(make_app: MakeApp) -> InProc:
    """The default in-process app: default settings, the tiny model, a fake engine echoing the prompt."""
    return await make_app()


# ---- the gateway database on both backends ------------------------------------------

BACKENDS = ("sqlite", "postgresql")
_pg_names = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    pg_bin()  # fails, saying how to install it, where PostgreSQL is missing (scripts/test.sh installs it)
    cluster = start_cluster()
    yield cluster
    remove_cluster(cluster)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, empty database in the session's PostgreSQL."""
    return pg_cluster.create_database(f"t{os.getpid()}_{next(_pg_names)}")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty gateway database on each backend in turn: a SQLite path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "corral.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """The gateway database at ``db_url``, migrated; this thread's connection closed afterwards."""
    database = open_database(db_url)
    database.migrate()
    yield database
    database.close()


@pytest.fixture(scope="session")
def tools_model(base_url: str) -> str:
    """SmolLM2's weights with a Jinja template that lists tools, for the dialects' tool-call tests."""
    from tests.test_responses_api import TOOLS_MODEL, TOOLS_TEMPLATE

    r = httpx.post(
        base_url + "/api/create",
        json={"model": TOOLS_MODEL, "from": SMOLLM, "template": TOOLS_TEMPLATE, "stream": False},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return TOOLS_MODEL
