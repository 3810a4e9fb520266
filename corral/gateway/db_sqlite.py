"""SQLite implementation of :class:`corral.gateway.db.Database`: the embedded default.

One file (``<CORRAL_HOME>/corral.db`` unless ``--db`` names another) in WAL
mode, so that readers (the CLI, key lookups) never wait for the request-log
writer; several processes on one machine may share it. Connections are in
autocommit mode (``isolation_level=None``); :meth:`SqliteConnection.transaction`
is ``BEGIN IMMEDIATE``, which takes the file's single write lock at once, so
:meth:`SqliteConnection.lock` has nothing left to do.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from corral.gateway.changes import ChangeCounter
from corral.gateway.db import Connection, Cursor, Database, DatabaseError, Dialect, ErrorMap, translate

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000


def _wal(raw: sqlite3.Connection) -> None:
    """Put the file in WAL mode. Switching modes takes an exclusive lock and SQLite does not wait on a
    busy file for it, so several processes opening a new file at once retry here, within the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            raw.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


SQLITE = Dialect(name="sqlite", serial_key="INTEGER PRIMARY KEY", real="REAL", boolean="INTEGER")
_ERRORS: ErrorMap = (sqlite3.IntegrityError, sqlite3.Error)


class SqliteConnection(Connection):
    """A :class:`Connection` over :mod:`sqlite3`."""

    dialect = SQLITE

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw
        self._open = True

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            return Cursor(self.raw.execute(sql, params), _ERRORS)
        except sqlite3.Error as exc:
            raise translate(exc, _ERRORS) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self.raw.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise translate(exc, _ERRORS) from exc

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        self.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            if self.raw.in_transaction:
                self.raw.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def lock(self, name: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already holds the whole file's write lock."""

    @property
    def usable(self) -> bool:
        return self._open

    def close(self) -> None:
        self._open = False
        self.raw.close()


class SqliteDatabase(Database):
    """The gateway's SQLite file (see module docstring)."""

    dialect = SQLITE
    remote = False

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = Path(path)

    def change_counter(self, name: str) -> ChangeCounter | None:
        """``<file>-<name>``, shared by every process on this machine that opens the file."""
        try:
            return ChangeCounter(self.path.with_name(f"{self.path.name}-{name}"))
        except OSError as exc:  # a read-only folder: the caller asks the database every time instead
            log.warning("no change counter beside %s: %s", self.path, exc)
            return None

    def connect(self) -> SqliteConnection:
        """A new connection with the gateway's pragmas; the caller closes it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            raw = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            raw.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _wal(raw)
            raw.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise translate(exc, _ERRORS) from exc
        except OSError as exc:
            raise DatabaseError(f"cannot open {self.path}: {exc}") from exc
        return SqliteConnection(raw)
