"""The request log on both backends (SQLite, PostgreSQL): batching, lossless close, drops, retention, queries, beacons."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from corral.errors import BadRequest, PayloadTooLarge
from corral.gateway.beacons import MAX_BEACON_BYTES, beacon_dict, parse_beacon
from corral.gateway.db import Connection, Database
from corral.gateway.periods import parse_period
from corral.gateway.requestlog import RequestLog, RequestRecord
from corral.gateway.timing import STREAM_TIMING_FIELD, server_timing, stream_marker


def rec(i: int, **fields: object) -> RequestRecord:
    base: dict[str, object] = {
        "id": f"req{i}",
        "ts": time.time(),
        "method": "POST",
        "path": "/api/chat",
        "route": "/api/chat",
        "model": "m",
        "status": 200,
        "total_ms": 10.0,
    }
    base.update(fields)
    return RequestRecord(**base)  # type: ignore[arg-type]


def count(db: Database, table: str = "requests") -> int:
    return int(db.conn.execute(f"SELECT count(*) FROM {table}").one()[0])


# ---- writing ------------------------------------------------------------------------


def test_rows_round_trip_with_every_field(db: Database) -> None:
    log = RequestLog(db, flush_interval=0.01)
    log.start()
    full = rec(
        1,
        key_name="ci",
        client="127.0.0.1:5000",
        user_agent="ollama-python/0.6",
        dialect="ollama",
        error=None,
        stream=True,
        done_reason="stop",
        prompt_tokens=12,
        output_tokens=34,
        bytes_in=100,
        bytes_out=5_000_000_000,
        auth_ms=0.1,
        queue_ms=0.4,
        load_ms=5.0,
        prompt_eval_ms=20.0,
        ttft_ms=61.2,
        generation_ms=300.0,
        client_io_ms=1.5,
        upstream_ms=None,
        total_ms=412.9,
        upstream=None,
    )
    log.submit(full)
    log.close()
    (row,) = log.query()
    assert row["rowid"] == 1
    for name in (
        "id",
        "ts",
        "key_name",
        "client",
        "user_agent",
        "dialect",
        "stream",
        "done_reason",
        "prompt_tokens",
        "output_tokens",
        "bytes_in",
        "bytes_out",
        "ttft_ms",
        "total_ms",
        "upstream_ms",
    ):
        assert row[name] == getattr(full, name), name
    assert row["stream"] is True
    assert full.phases()["ttft"] == 61.2 and full.phases()["upstream"] is None


def test_writes_are_batched(db: Database) -> None:
    log = RequestLog(db, batch_size=100, flush_interval=0.5)
    events: list[Any] = []
    real_connect = db.connect

    def traced() -> Connection:
        conn = real_connect()
        real_transaction, real_executemany = conn.transaction, conn.executemany

        def transaction() -> Any:
            events.append("begin")
            return real_transaction()

        def executemany(sql: str, rows: Any) -> None:
            rows = list(rows)
            events.append((sql.split("(")[0], len(rows)))
            real_executemany(sql, rows)

        conn.transaction = transaction  # type: ignore[method-assign]
        conn.executemany = executemany  # type: ignore[method-assign]
        return conn

    db.connect = traced  # type: ignore[method-assign]
    for i in range(250):  # queued before the writer starts: it finds full batches waiting
        log.submit(rec(i))
    log.start()
    log.close()
    assert log.written == 250 and count(db) == 250
    inserts = [(events[i + 1]) for i, e in enumerate(events[:-1]) if e == "begin" and isinstance(events[i + 1], tuple)]
    assert inserts == [("INSERT INTO requests", 100), ("INSERT INTO requests", 100), ("INSERT INTO requests", 50)]


def test_close_flushes_a_burst_from_many_threads(db: Database) -> None:
    log = RequestLog(db, max_backlog=10000, batch_size=256, flush_interval=0.05)
    log.start()
    per_thread, n_threads = 1000, 5

    def burst(t: int) -> None:
        for i in range(per_thread):
            log.submit(rec(t * per_thread + i))

    threads = [threading.Thread(target=burst, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close(timeout=30)
    assert log.dropped == 0
    assert log.written == 5000
    assert count(db) == 5000
    assert len({r[0] for r in db.conn.execute("SELECT id FROM requests")}) == 5000
    assert [r[0] for r in db.conn.execute("SELECT max(rowid) FROM requests")] == [5000]
    assert log.backlog == 0


def test_submit_never_blocks_and_a_full_backlog_drops_and_counts(db: Database) -> None:
    log = RequestLog(db, max_backlog=10)  # writer not started: nothing drains
    started = time.perf_counter()
    for i in range(25):
        log.submit(rec(i))
    assert time.perf_counter() - started < 1.0
    assert log.backlog == 10 and log.dropped == 15
    log.close()  # flushes the ten that fit, even with no writer thread
    assert count(db) == 10 and log.written == 10
    log.submit(rec(99))  # after close: dropped, not raised
    assert log.dropped == 16 and count(db) == 10


def test_a_failing_write_is_counted_not_raised(db: Database) -> None:
    log = RequestLog(db, flush_interval=0.01)
    db.conn.execute("DROP TABLE requests")
    log.start()
    log.submit(rec(1))
    log.close()
    assert log.dropped == 1 and log.written == 0


def test_retention_prune(db: Database) -> None:
    now = time.time()
    old = RequestLog(db, retention_seconds=None)
    old.submit(rec(1, ts=now - 10 * 86400))
    old.submit(rec(2, ts=now - 3600))
    old.record_beacon({"event": "turn"}, None)
    old.close()
    db.conn.execute("UPDATE beacons SET ts = ?", (now - 10 * 86400,))
    assert count(db) == 2 and count(db, "beacons") == 1
    log = RequestLog(db, retention_seconds=parse_period("7d"))
    log.start()  # the writer prunes when it starts, then at most once a minute
    deadline = time.monotonic() + 10
    while count(db) != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    log.close()
    assert [r["id"] for r in log.query()] == ["req2"]
    assert count(db, "beacons") == 0
    assert log.prune() == 0


# ---- reading ------------------------------------------------------------------------


@pytest.fixture
def filled(db: Database) -> RequestLog:
    now = time.time()
    log = RequestLog(db)
    rows = [
        rec(1, ts=now - 7200, model="a", status=200, key_name="alice"),
        rec(2, ts=now - 60, model="a", status=404, key_name="bob", error='model "zz" not found'),
        rec(3, ts=now - 50, model="b", status=500, key_name="alice", error="engine crashed"),
        rec(4, ts=now - 40, model="b", status=503, key_name="bob"),
        rec(5, ts=now - 30, model="a", status=201, key_name="alice"),
        rec(6, ts=now - 20, model=None, status=200, key_name=None, path="/api/tags", route="/api/tags"),
    ]
    for r in rows:
        log.submit(r)
    log.close()
    return log


def ids(rows: list[dict[str, object]]) -> list[object]:
    return [r["id"] for r in rows]


def test_query_filters_and_order(filled: RequestLog) -> None:
    now = time.time()
    assert ids(filled.query()) == ["req6", "req5", "req4", "req3", "req2", "req1"]
    assert ids(filled.query(status="5xx")) == ["req4", "req3"]
    assert ids(filled.query(status="2xx")) == ["req6", "req5", "req1"]
    assert ids(filled.query(status="404")) == ["req2"]
    assert ids(filled.query(status="404,5xx")) == ["req4", "req3", "req2"]
    assert ids(filled.query(model="a")) == ["req5", "req2", "req1"]
    assert ids(filled.query(key_name="alice", since=now - 3600)) == ["req5", "req3"]
    assert ids(filled.query(limit=2, offset=1)) == ["req5", "req4"]
    with pytest.raises(BadRequest, match="status"):
        filled.query(status="6xx")


def test_follow_reads_rows_after_a_rowid_oldest_first(filled: RequestLog) -> None:
    assert filled.last_rowid() == 6
    assert ids(filled.query(after_rowid=3)) == ["req4", "req5", "req6"]
    assert ids(filled.query(after_rowid=3, key_name="bob")) == ["req4"]
    assert filled.query(after_rowid=6) == []


def test_stats_percentiles_on_known_data(db: Database) -> None:
    log = RequestLog(db)
    now = time.time()
    for i in range(1, 101):  # model "m": total 1..100 ms, two of them failed
        log.submit(
            rec(i, ts=now - 10, total_ms=float(i), status=500 if i in (7, 8) else 200, prompt_tokens=2, output_tokens=3)
        )
    log.submit(rec(200, ts=now - 10, model="n", total_ms=40.0, status=200, error="stream broke"))
    log.submit(rec(201, ts=now - 10, model="n", total_ms=None, status=429))
    log.submit(rec(300, ts=now - 10 * 86400, model="m", total_ms=99999.0))  # outside the window
    log.close()
    stats = log.stats(since=now - 86400)
    m, n = stats["models"]
    assert m == {
        "model": "m",
        "turns": 100,
        "ok": 98,
        "avg_ms": 50.5,
        "p50_ms": 50.0,
        "p95_ms": 95.0,
        "prompt_tokens": 200,
        "output_tokens": 300,
    }
    assert (n["model"], n["turns"], n["ok"], n["avg_ms"], n["p50_ms"], n["p95_ms"]) == ("n", 2, 0, 40.0, 40.0, 40.0)
    assert stats["statuses"] == {"200": 99, "429": 1, "500": 2}
    assert stats["requests"] == 102
    assert log.stats(since=now - 86400, key_name="nobody")["models"] == []


def test_beacons_are_stored_and_summarised(db: Database) -> None:
    log = RequestLog(db)
    log.start()
    ok = parse_beacon(
        b'{"event": "chat_turn", "model": "m", "timings": {"ttft": 61.2, "total": 412.9},'
        b' "status": 200, "clientProfile": {"userAgent": "Firefox", "screen": "1920x1080",'
        b' "timezone": "Europe/Paris", "language": "fr", "dpr": 2}, "deviceId": "abc"}'
    )
    failed = parse_beacon(b'{"event": "chat_turn", "model": "m", "status": 502, "error": "bad gateway"}')
    log.record_beacon(beacon_dict(ok), "alice")
    log.record_beacon(beacon_dict(failed), "bob")
    log.record_beacon(beacon_dict(parse_beacon(b'{"event": "page_view"}')), "alice")
    log.close()
    rows = log.beacons()
    assert [r["event"] for r in rows] == ["page_view", "chat_turn", "chat_turn"]
    stored = rows[2]["data"]
    assert stored["timings"] == {"ttft": 61.2, "total": 412.9}
    assert stored["clientProfile"]["timezone"] == "Europe/Paris" and stored["clientProfile"]["dpr"] == 2
    assert stored["deviceId"] == "abc"
    assert rows[1]["status"] == 502 and rows[1]["error"] == "bad gateway"
    assert [r["event"] for r in log.beacons(key_name="alice")] == ["page_view", "chat_turn"]
    assert log.stats()["beacons"] == {"total": 3, "errors": 1, "by_event": {"chat_turn": 2, "page_view": 1}}


def test_beacon_validation() -> None:
    with pytest.raises(PayloadTooLarge) as too_big:
        parse_beacon(b'{"event": "x", "error": "' + b"a" * MAX_BEACON_BYTES + b'"}')
    assert too_big.value.status == 413
    for body, message in (
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "invalid analytics event"),
        (b'{"model": "m"}', "event"),
        (b'{"event": "x", "status": "teapot"}', "status"),
        (b'{"event": "x", "timings": {"ttft": "fast"}}', "timings"),
        (b'{"event": "x", "timings": {"ttft": NaN}}', "timings"),
        (b'{"event": "x", ' + b", ".join(b'"f%d": 1' % i for i in range(40)) + b"}", "extra"),
    ):
        with pytest.raises(BadRequest, match=message) as bad:
            parse_beacon(body)
        assert bad.value.status == 400


def test_timing_header_and_stream_marker() -> None:
    phases = {"total": 412.94, "ttft": 61.23, "queue": 0.4, "load": None, "bogus": 1.0}
    assert server_timing(phases) == "queue;dur=0.4, ttft;dur=61.2, total;dur=412.9"
    assert server_timing({}) == ""
    assert stream_marker(phases) == {"queue": 0.4, "ttft": 61.2, "total": 412.9}
    assert list(stream_marker(phases)) == ["queue", "ttft", "total"]
    assert STREAM_TIMING_FIELD == "corral_timing"
    assert server_timing(rec(1, ttft_ms=5.0, total_ms=7.26).phases()) == "ttft;dur=5.0, total;dur=7.3"


def test_periods() -> None:
    assert parse_period("30d") == 30 * 86400
    assert parse_period("24h") == 86400
    assert parse_period("1h30m") == 5400
    assert parse_period("15m") == 900
    assert parse_period("1d12h") == 1.5 * 86400
    assert parse_period("90") == 90
    for bad in ("", "-1h", "abc", "1x", "h"):
        with pytest.raises(ValueError):
            parse_period(bad)
