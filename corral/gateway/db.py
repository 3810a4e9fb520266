"""Database: the gateway's SQLite file, its connections and its schema migrations.

One file, ``<CORRAL_HOME>/corral.db``, in WAL mode so that readers (the CLI,
key lookups) never wait for the request-log writer. Each thread gets its own
connection (:attr:`Database.conn`); a thread that wants a private one (the
log writer) calls :meth:`Database.connect`.

Connections run in autocommit mode; writes group themselves with
:meth:`Database.transaction`. The schema is an ordered list of named
functions, :data:`MIGRATIONS`; :meth:`Database.migrate` applies the ones not
yet recorded in the ``migrations`` table, each in its own ``BEGIN IMMEDIATE``
transaction that re-checks the record first, so two processes migrating the
same file at once apply each step exactly once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.settings import Settings

log = logging.getLogger("corral.gateway.db")

BUSY_TIMEOUT_MS = 5000

Migration = Callable[[sqlite3.Connection], None]


def default_db_path(settings: Settings) -> Path:
    """Where the gateway database lives: ``<CORRAL_HOME>/corral.db``."""
    return settings.home / "corral.db"


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC with a ``Z``, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- migrations: append only, never edit one that has shipped -----------------------

def m001_keys(conn: sqlite3.Connection) -> None:
    """API keys: only the SHA-256 of a key is kept, found by its visible prefix."""
    conn.execute("""
        CREATE TABLE keys (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            scope TEXT NOT NULL CHECK (scope IN ('user', 'admin')),
            prefix TEXT NOT NULL,
            hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            models TEXT,
            rpm INTEGER,
            tpm INTEGER,
            revoked_at TEXT
        )""")
    conn.execute("CREATE UNIQUE INDEX keys_prefix ON keys(prefix)")
    conn.execute("CREATE UNIQUE INDEX keys_active_name ON keys(name) WHERE revoked_at IS NULL")


def m002_requests(conn: sqlite3.Connection) -> None:
    """The request log: one row per request, phases in milliseconds."""
    conn.execute("""
        CREATE TABLE requests (
            rowid INTEGER PRIMARY KEY,
            id TEXT NOT NULL,
            ts REAL NOT NULL,
            key_name TEXT,
            client TEXT,
            user_agent TEXT,
            method TEXT,
            path TEXT,
            route TEXT,
            dialect TEXT,
            model TEXT,
            status INTEGER,
            error TEXT,
            stream INTEGER,
            done_reason TEXT,
            prompt_tokens INTEGER,
            output_tokens INTEGER,
            bytes_in INTEGER,
            bytes_out INTEGER,
            auth_ms REAL,
            queue_ms REAL,
            load_ms REAL,
            prompt_eval_ms REAL,
            ttft_ms REAL,
            generation_ms REAL,
            client_io_ms REAL,
            upstream_ms REAL,
            total_ms REAL,
            upstream TEXT
        )""")
    conn.execute("CREATE INDEX requests_ts ON requests(ts)")
    conn.execute("CREATE INDEX requests_key_ts ON requests(key_name, ts)")
    conn.execute("CREATE INDEX requests_model_ts ON requests(model, ts)")


def m003_beacons(conn: sqlite3.Connection) -> None:
    """Playground analytics events; ``data`` is the whole validated event as JSON."""
    conn.execute("""
        CREATE TABLE beacons (
            rowid INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            key_name TEXT,
            event TEXT NOT NULL,
            model TEXT,
            status INTEGER,
            error TEXT,
            data TEXT NOT NULL
        )""")
    conn.execute("CREATE INDEX beacons_ts ON beacons(ts)")


def m004_responses(conn: sqlite3.Connection) -> None:
    """Stored ``/v1/responses`` answers: the response object as JSON, and the conversation up to and
    including it as internal chat messages, which ``previous_response_id`` continues from."""
    conn.execute("""
        CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            model TEXT NOT NULL,
            previous_response_id TEXT,
            response TEXT NOT NULL,
            messages TEXT NOT NULL
        )""")
    conn.execute("CREATE INDEX responses_created_at ON responses(created_at)")


MIGRATIONS: tuple[Migration, ...] = (m001_keys, m002_requests, m003_beacons, m004_responses)


class Database:
    """The gateway's SQLite file (see module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    def connect(self) -> sqlite3.Connection:
        """A new connection with the gateway's pragmas; the caller closes it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection, if it has one (others close with their thread)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @staticmethod
    @contextmanager
    def transaction(conn: sqlite3.Connection, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """``BEGIN [IMMEDIATE]`` ... ``COMMIT``, rolled back on any exception."""
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in this file, in the order applied."""
        conn = self.conn
        self._ensure_migrations_table(conn)
        return [row[0] for row in conn.execute("SELECT name FROM migrations ORDER BY applied_at, rowid")]

    def migrate(self, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
        """Apply the migrations not yet recorded; return the names applied now."""
        conn = self.conn
        self._ensure_migrations_table(conn)
        applied: list[str] = []
        for fn in migrations:
            name = fn.__name__
            with self.transaction(conn):
                done = conn.execute("SELECT 1 FROM migrations WHERE name = ?", (name,)).fetchone()
                if done is not None:
                    continue
                fn(conn)
                conn.execute("INSERT INTO migrations(name, applied_at) VALUES (?, ?)", (name, utc_now_iso()))
            log.info("applied migration %s to %s", name, self.path)
            applied.append(name)
        return applied

    @staticmethod
    def _ensure_migrations_table(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
