"""Shared fixtures: real ``corral serve`` processes on loopback, and the gateway database on both backends.

The session server is started once with a fresh ``CORRAL_HOME`` (seeded with
the starter models) and driven by the official clients. ``start_server``
starts extra servers with their own environment for scheduler tests.

``pg_cluster`` is one real PostgreSQL server per session (see
:mod:`tests.pgcluster`; skipped where PostgreSQL is not installed), and
``pg_url`` a fresh database in it for each test. ``db_url`` / ``db`` run a
storage test once per backend: a SQLite file, then a PostgreSQL database.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral.gateway.db import Database, open_database
from tests.pgcluster import PgCluster, pg_bin, remove_cluster, start_cluster

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
    env.update({"CORRAL_HOME": str(home), "CORRAL_HOST": f"127.0.0.1:{port}", "CORRAL_NUM_THREADS": "2"})
    env.update(env_extra or {})
    log = home / f"server-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "corral", "serve"], cwd=ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
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


# ---- the gateway database on both backends ------------------------------------------

BACKENDS = ("sqlite", "postgresql")
_pg_names = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    try:
        pg_bin()
    except RuntimeError as exc:
        pytest.skip(str(exc))
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
