"""Database: the one storage interface of the gateway, over SQLite (the default) or PostgreSQL.

Keys, the request log, rate-limit windows, beacons and stored responses all
go through this module's types, so they run unchanged on either backend:

* :func:`open_database` picks the implementation from a URL:
  ``postgresql://...`` / ``postgres://...`` is PostgreSQL
  (:mod:`corral.gateway.db_postgres`, shared by several gateway replicas),
  anything else a SQLite file path (:mod:`corral.gateway.db_sqlite`, one
  file in WAL mode, the embedded default ``<CORRAL_HOME>/corral.db``).
* :class:`Connection` is a thin wrapper over the driver's connection: SQL is
  written once with ``?`` placeholders, rows are :class:`Row` (by index or by
  column name), driver errors become :class:`DatabaseError` /
  :class:`IntegrityError`, :meth:`Connection.transaction` groups writes
  (SQLite ``BEGIN IMMEDIATE``, PostgreSQL ``BEGIN``) and
  :meth:`Connection.lock` serialises transactions on a name across processes.
  Connections are in autocommit mode outside a transaction.
* :class:`Database` hands each thread its own connection (:attr:`Database.conn`,
  reopened if the old one broke); a thread that wants a private one (the log
  writer) calls :meth:`Database.connect`. :attr:`Database.dialect` holds the
  facts DDL needs (key, float and boolean column types).
* :meth:`Database.migrate` applies the ordered, named migrations of
  :mod:`corral.gateway.migrations` not yet recorded in the ``migrations``
  table, each in its own transaction that takes the ``migrations`` lock and
  re-checks the record first, so concurrent migrators apply each step once.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from corral.gateway.changes import ChangeCounter

if TYPE_CHECKING:
    from corral.settings import Settings

log = logging.getLogger("corral.gateway.db")

PG_SCHEMES = ("postgresql", "postgres")


class DatabaseError(Exception):
    """Any failure of the gateway database, whichever the backend."""


class IntegrityError(DatabaseError):
    """A constraint (unique, check, not null) refused a write."""


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends' DDL; the SQL itself is written once."""

    name: str  # "sqlite" | "postgresql"
    serial_key: str  # an auto-numbered 64-bit primary key column type
    real: str  # an 8-byte float column (timestamps, milliseconds)
    boolean: str  # a boolean column


class Row:
    """One result row: ``row[0]``, ``row["name"]``, unpacking, ``==`` a tuple of the same values."""

    __slots__ = ("_names", "_values")

    def __init__(self, values: Sequence[Any], names: tuple[str, ...]) -> None:
        self._values = tuple(values)
        self._names = names

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._names.index(key)]
            except ValueError:
                raise KeyError(key) from None
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values
        if isinstance(other, tuple):
            return self._values == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({self.as_dict()!r})"

    def keys(self) -> tuple[str, ...]:
        return self._names

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self._names, self._values, strict=True))


class _DriverCursor(Protocol):
    @property
    def description(self) -> Any: ...
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


ErrorMap = tuple[type[BaseException], type[BaseException]]  # (the driver's integrity error, its base error)


def translate(exc: BaseException, errors: ErrorMap) -> BaseException:
    """The driver's exception as ours; anything else unchanged."""
    if isinstance(exc, errors[0]):
        return IntegrityError(str(exc))
    if isinstance(exc, errors[1]):
        return DatabaseError(str(exc))
    return exc


class Cursor:
    """The result of :meth:`Connection.execute`: rows as :class:`Row`, and ``rowcount``."""

    __slots__ = ("_cur", "_errors", "_names")

    def __init__(self, cur: _DriverCursor, errors: ErrorMap) -> None:
        self._cur = cur
        self._errors = errors
        desc = cur.description
        self._names: tuple[str, ...] = tuple(d[0] for d in desc) if desc else ()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def columns(self) -> tuple[str, ...]:
        return self._names

    def fetchone(self) -> Row | None:
        try:
            values = self._cur.fetchone()
        except self._errors[1] as exc:
            raise translate(exc, self._errors) from exc
        return None if values is None else Row(values, self._names)

    def one(self) -> Row:
        """The first row, for a statement that always returns one (an aggregate)."""
        row = self.fetchone()
        if row is None:
            raise DatabaseError("the statement returned no row")
        return row

    def fetchall(self) -> list[Row]:
        try:
            rows = self._cur.fetchall()
        except self._errors[1] as exc:
            raise translate(exc, self._errors) from exc
        return [Row(values, self._names) for values in rows]

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class Connection(ABC):
    """One connection to the gateway database (see module docstring); used by one thread at a time."""

    dialect: Dialect

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement with ``?`` placeholders."""

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Connection]:
        """Group statements: committed on exit, rolled back on any exception. Holds the write lock on SQLite."""

    @abstractmethod
    def lock(self, name: str) -> None:
        """Inside a transaction: wait until no other transaction holds ``name``, then hold it until this one ends."""

    @property
    @abstractmethod
    def usable(self) -> bool:
        """False once the connection is closed or broken (the server went away)."""

    @abstractmethod
    def close(self) -> None: ...


Migration = Callable[[Connection], None]


class Database(ABC):
    """The gateway database at ``url``, with per-thread connections (see module docstring)."""

    dialect: Dialect
    remote: bool = False  # True: calls go over the network, so callers on an event loop run them in a thread

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()

    @abstractmethod
    def connect(self) -> Connection:
        """A new connection; the caller closes it."""

    @property
    def display(self) -> str:
        """The location, fit for a log line (no password)."""
        return self.url

    def change_counter(self, name: str) -> ChangeCounter | None:
        """A counter every process using this database can bump and read cheaply, to know that a cached
        copy of some table is out of date (:mod:`corral.gateway.changes`); None where there is none."""
        return None

    @property
    def conn(self) -> Connection:
        """This thread's connection, opened on first use and reopened once it stops being usable."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or not conn.usable:
            if conn is not None:
                log.warning("reconnecting to %s", self.display)
                conn.close()
            conn = self.connect()
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection, if it has one (others close with their thread)."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def applied_migrations(self) -> list[str]:
        """Names of the migrations recorded in this database, in the order applied."""
        conn = self.conn
        self._ensure_migrations_table(conn)
        return [row[0] for row in conn.execute("SELECT name FROM migrations ORDER BY applied_at, name")]

    def migrate(self, migrations: Sequence[Migration] | None = None) -> list[str]:
        """Apply the migrations not yet recorded (default: all of Corral's); return the names applied now."""
        if migrations is None:
            from corral.gateway.migrations import MIGRATIONS

            migrations = MIGRATIONS
        conn = self.conn
        self._ensure_migrations_table(conn)
        applied: list[str] = []
        for fn in migrations:
            name = fn.__name__
            with conn.transaction():
                conn.lock("migrations")
                if conn.execute("SELECT 1 FROM migrations WHERE name = ?", (name,)).fetchone() is not None:
                    continue
                fn(conn)
                conn.execute("INSERT INTO migrations(name, applied_at) VALUES (?, ?)", (name, utc_now_iso()))
            log.info("applied migration %s to %s", name, self.display)
            applied.append(name)
        return applied

    @staticmethod
    def _ensure_migrations_table(conn: Connection) -> None:
        with conn.transaction():
            conn.lock("migrations")
            conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in PG_SCHEMES


def open_database(url: str | Path) -> Database:
    """The database at ``url``: PostgreSQL for ``postgresql://`` / ``postgres://``, else a SQLite file path."""
    text = str(url)
    if is_postgres_url(text):
        from corral.gateway.db_postgres import PostgresDatabase

        return PostgresDatabase(text)
    from corral.gateway.db_sqlite import SqliteDatabase

    return SqliteDatabase(Path(text).expanduser())


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def default_db_path(settings: Settings) -> Path:
    """Where the embedded SQLite database lives: ``<CORRAL_HOME>/corral.db``."""
    return settings.home / "corral.db"


def database_url(settings: Settings) -> str:
    """The gateway database of these settings: ``CORRAL_DB`` / ``--db``, else the SQLite default."""
    return settings.db or str(default_db_path(settings))


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC with a ``Z``, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
