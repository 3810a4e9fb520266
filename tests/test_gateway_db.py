"""The storage interface on both backends: URL dispatch, rows, placeholders, errors, transactions,
migrations (recorded, idempotent, atomic, safe to race), reconnection, and stored /v1/responses."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral.gateway.db import Connection, Database, DatabaseError, IntegrityError, open_database, redact_url
from corral.gateway.db_postgres import PostgresDatabase
from corral.gateway.db_sqlite import SqliteDatabase
from corral.gateway.migrations import MIGRATIONS
from corral.gateway.requestlog import RequestLog, RequestRecord
from corral.gateway.responses import ResponseStore

NAMES = [fn.__name__ for fn in MIGRATIONS]


def tables(db: Database) -> set[str]:
    if db.dialect.name == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    return {r[0] for r in db.conn.execute(sql)}


def test_open_database_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_database(tmp_path / "x.db"), SqliteDatabase)
    assert isinstance(open_database(str(tmp_path / "x.db")), SqliteDatabase)
    for url in ("postgresql://u:secret@db:5432/corral", "postgres://db/corral", "POSTGRESQL://db/corral"):
        db = open_database(url)
        assert isinstance(db, PostgresDatabase) and db.remote
        assert "secret" not in db.display
    assert (
        redact_url("postgresql://u:secret@db:5432/corral?sslmode=require")
        == "postgresql://u:***@db:5432/corral?sslmode=require"
    )
    assert redact_url("postgresql://db/corral") == "postgresql://db/corral"


def test_unreachable_postgres_is_a_database_error() -> None:
    db = open_database("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(DatabaseError):
        db.migrate()


# ---- connections ---------------------------------------------------------------------


def test_rows_placeholders_and_errors(db: Database) -> None:
    conn = db.conn
    row = conn.execute("SELECT ? AS a, ? AS b, '100%' AS pct", (1, "x")).one()
    assert row["a"] == 1 and row[1] == "x" and row["pct"] == "100%" and row == (1, "x", "100%")
    assert row.as_dict() == {"a": 1, "b": "x", "pct": "100%"} and list(row) == [1, "x", "100%"]
    with pytest.raises(KeyError):
        row["nope"]
    assert conn.execute("SELECT '50%' AS pct").one()["pct"] == "50%"  # no parameters: sent as written
    with pytest.raises(DatabaseError):
        conn.execute("SELEKT 1")
    assert conn.execute("SELECT 1").one()[0] == 1  # the connection is still good after an error
    KeyStoreRow = "INSERT INTO keys(name, scope, prefix, hash, created_at) VALUES (?, ?, ?, ?, ?)"
    conn.execute(KeyStoreRow, ("a", "user", "p1", "h", "now"))
    with pytest.raises(IntegrityError):
        conn.execute(KeyStoreRow, ("b", "user", "p1", "h", "now"))  # the prefix is unique
    with pytest.raises(IntegrityError):
        conn.execute(KeyStoreRow, ("c", "superuser", "p2", "h", "now"))  # the scope is checked


def test_transactions_commit_or_roll_back(db: Database) -> None:
    conn = db.conn
    insert = "INSERT INTO responses(id, created_at, model, response, messages) VALUES (?, ?, 'm', '{}', '[]')"
    with conn.transaction():
        conn.execute(insert, ("kept", 1.0))
    with pytest.raises(RuntimeError), conn.transaction():
        conn.execute(insert, ("gone", 2.0))
        raise RuntimeError("boom")
    with pytest.raises(IntegrityError), conn.transaction():
        conn.execute(insert, ("gone-too", 3.0))
        conn.execute(insert, ("kept", 4.0))
    assert [r[0] for r in conn.execute("SELECT id FROM responses")] == ["kept"]
    other = open_database(db.url)
    assert other.conn.execute("SELECT count(*) FROM responses").one()[0] == 1  # committed, seen elsewhere
    other.close()


def test_timestamps_and_counters_keep_their_precision(db: Database) -> None:
    ts = time.time()
    db.conn.execute("INSERT INTO rate_events(key_name, ts, requests, tokens) VALUES (?, ?, ?, ?)", ("k", ts, 1, 2**40))
    row = db.conn.execute("SELECT ts, tokens FROM rate_events").one()
    assert row["ts"] == ts and row["tokens"] == 2**40


def test_a_dropped_postgres_connection_is_replaced(pg_url: str) -> None:
    db = open_database(pg_url)
    db.migrate()
    log = RequestLog(db, flush_interval=0.01)
    log.start()
    log.submit(RequestRecord(id="before", ts=time.time()))
    deadline = time.monotonic() + 10
    while log.written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    killer = open_database(pg_url)
    killed = killer.conn.execute(  # as a server restart would: every other session of this database goes
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).one()[0]
    assert killed >= 2  # this thread's connection and the log writer's
    with pytest.raises(DatabaseError):
        db.conn.execute("SELECT 1")
    assert db.conn.execute("SELECT 1").one()[0] == 1  # reconnected
    log.submit(RequestRecord(id="after", ts=time.time()))
    log.close()
    assert log.dropped == 0
    assert sorted(r["id"] for r in log.query()) == ["after", "before"]
    killer.close()
    db.close()


# ---- migrations -----------------------------------------------------------------------


def test_migrations_recorded_by_name_and_idempotent(db_url: str) -> None:
    db = open_database(db_url)
    assert NAMES[:4] == ["m001_keys", "m002_requests", "m003_beacons", "m004_responses"]
    assert db.migrate() == NAMES
    assert db.migrate() == []
    again = open_database(db_url)  # another process-like opener
    assert again.migrate() == []
    again.close()
    assert db.applied_migrations() == NAMES
    assert {"migrations", "keys", "requests", "beacons", "responses", "rate_events"} <= tables(db)
    db.close()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    db = open_database(tmp_path / "corral.db")
    conn = db.conn
    assert conn.execute("PRAGMA journal_mode").one()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").one()[0] == 5000
    assert conn.execute("PRAGMA synchronous").one()[0] == 1  # NORMAL
    db.close()


def test_a_new_migration_applies_once_and_a_failing_one_rolls_back(db: Database) -> None:
    def m900_extra(conn: Connection) -> None:
        conn.execute("CREATE TABLE extra (x INTEGER)")

    def m901_broken(conn: Connection) -> None:
        conn.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("boom")

    assert db.migrate((*MIGRATIONS, m900_extra)) == ["m900_extra"]
    assert db.migrate((*MIGRATIONS, m900_extra)) == []
    with pytest.raises(RuntimeError):
        db.migrate((*MIGRATIONS, m900_extra, m901_broken))
    assert db.applied_migrations() == [*NAMES, "m900_extra"]
    assert "extra" in tables(db) and "half" not in tables(db)


def test_concurrent_migrators_apply_each_step_once(db_url: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        db = open_database(db_url)
        try:
            barrier.wait()
            results.append(db.migrate())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(name for r in results for name in r) == sorted(NAMES)
    check = open_database(db_url)
    assert check.applied_migrations() == NAMES
    check.close()


# ---- stored /v1/responses -------------------------------------------------------------


def test_response_store(db_url: str) -> None:
    store = ResponseStore.open(db_url)
    response: dict[str, Any] = {"id": "resp_1", "model": "m", "created_at": 1700000000.25, "output": [{"t": "é%?"}]}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    store.put(response, messages)
    got = store.get("resp_1")
    assert got is not None and got.response == response and got.messages == messages
    store.put({**response, "model": "m2", "previous_response_id": "resp_0"}, messages[:1])  # same id: replaced
    again = ResponseStore.open(db_url)  # another replica reads it
    got = again.get("resp_1")
    assert got is not None and got.response["model"] == "m2" and got.messages == messages[:1]
    assert again.get("resp_missing") is None
    assert store.delete("resp_1") is True and store.delete("resp_1") is False
    assert again.get("resp_1") is None
    store.close()
    again.close()
