"""Per-key rpm/tpm sliding windows, driven by a fake clock: in memory, and shared in SQLite and PostgreSQL.

Every behaviour test runs on the three limiters; the shared ones also prove
that two limiters on one database (two replicas) see each other's counts, that
concurrent checks admit exactly the limit, and that a key without limits never
reaches the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.gateway.db import Database, open_database
from corral.gateway.keys import ApiKey
from corral.gateway.limits import DbRateLimiter, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(name: str = "ci", *, rpm: int | None = None, tpm: int | None = None) -> ApiKey:
    return ApiKey(name, "user", "corral-abcdefgh", "2025-01-01T00:00:00Z", None, None, rpm, tpm)


Limiter = RateLimiter | DbRateLimiter
MakeLimiter = Callable[..., Limiter]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def make_limiter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLimiter]:
    """``make_limiter(clock)``: a limiter of the parameter's kind; the database ones share one database."""
    if request.param == "memory":
        yield lambda clock=None: RateLimiter(clock=clock or FakeClock())
        return
    url = str(tmp_path / "corral.db") if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    db = open_database(url)
    db.migrate()
    yield lambda clock=None: DbRateLimiter(db, clock=clock or FakeClock())
    db.close()


def test_unlimited_key_is_never_held(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    for _ in range(1000):
        assert limiter.check(key()) is None


def test_rpm_blocks_then_reopens_as_the_window_slides(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    k = key(rpm=3)
    for step in (0.0, 10.0, 20.0):
        clock.now = 1000.0 + step
        assert limiter.check(k) is None
    clock.now = 1030.0
    assert limiter.check(k) == pytest.approx(30.0)  # the first request (t=1000) leaves the window at 1060
    clock.now = 1059.5
    assert limiter.check(k) == pytest.approx(0.5)
    clock.now = 1060.0
    assert limiter.check(k) is None  # one slot free again
    assert limiter.check(k) == pytest.approx(10.0)  # the t=1010 request is next to expire
    assert limiter.usage("ci") == (3, 0)


def test_refused_requests_are_not_counted(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    k = key(rpm=1)
    assert limiter.check(k) is None
    for _ in range(50):
        assert limiter.check(k) is not None
    clock.now += 60.0
    assert limiter.check(k) is None


def test_tpm_counts_tokens_added_after_requests(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    k = key(tpm=100)
    assert limiter.check(k) is None
    limiter.add_tokens("ci", 60)  # t=1000
    clock.now = 1020.0
    assert limiter.check(k) is None  # 60 < 100
    limiter.add_tokens("ci", 50)  # t=1020, 110 in the window
    clock.now = 1030.0
    assert limiter.check(k) == pytest.approx(30.0)  # once the 60 from t=1000 expire, 50 < 100
    clock.now = 1060.0
    assert limiter.check(k) is None
    assert limiter.usage("ci") == (0, 50)


def test_tpm_waits_for_enough_tokens_to_expire(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    k = key(tpm=100)
    for i, n in enumerate((40, 40, 40)):
        clock.now = 1000.0 + 10 * i
        limiter.add_tokens("ci", n)
    clock.now = 1025.0  # 120 in the window; dropping the first 40 leaves 80 < 100
    assert limiter.check(k) == pytest.approx(35.0)


def test_both_limits_report_the_longer_wait(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(clock)
    k = key(rpm=2, tpm=10)
    assert limiter.check(k) is None
    limiter.add_tokens("ci", 10)  # t=1000: tpm exhausted until 1060
    clock.now = 1040.0
    assert limiter.check(k) == pytest.approx(20.0)
    clock.now = 1061.0
    assert limiter.check(k) is None


def test_keys_are_independent_and_forget_resets(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    a, b = key("a", rpm=1), key("b", rpm=1)
    assert limiter.check(a) is None
    assert limiter.check(a) is not None
    assert limiter.check(b) is None
    limiter.forget("a")
    assert limiter.check(a) is None


# ---- shared windows -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database URL on each backend, for limiters that stand for separate replicas."""
    url = str(tmp_path / "corral.db") if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    db = open_database(url)
    db.migrate()
    db.close()
    return url


def test_two_replicas_share_one_window(shared_db: str) -> None:
    clock = FakeClock()
    a, b = open_database(shared_db), open_database(shared_db)
    one, two = DbRateLimiter(a, clock=clock), DbRateLimiter(b, clock=clock)
    k = key(rpm=2)
    assert one.check(k) is None
    clock.now = 1010.0
    assert two.check(k) is None
    clock.now = 1020.0
    assert one.check(k) == pytest.approx(40.0)  # the first request, made on the other replica, expires at 1060
    assert two.check(k) == pytest.approx(40.0)
    t = key("tok", tpm=50)
    assert two.check(t) is None
    one.add_tokens("tok", 80)  # counted on one replica ...
    assert two.check(t) == pytest.approx(60.0)  # ... holds on the other
    assert one.usage("ci") == two.usage("ci") == (2, 0)
    a.close()
    b.close()


def test_concurrent_checks_admit_exactly_the_limit(shared_db: str) -> None:
    """Eight threads, each with its own connection (as separate replicas), race 3 checks each on an rpm of 5."""
    admitted: list[int] = []
    barrier = threading.Barrier(8)
    k = key(rpm=5)

    def worker() -> None:
        db = open_database(shared_db)
        limiter = DbRateLimiter(db)
        barrier.wait()
        admitted.append(sum(limiter.check(k) is None for _ in range(3)))
        db.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 5


class _NoDatabase:
    """Fails the test on any use: the hot path of keys without limits must not touch the database."""

    @property
    def conn(self) -> Any:
        raise AssertionError("a key without limits reached the database")


def test_keys_without_limits_never_touch_the_database() -> None:
    limiter = DbRateLimiter(_NoDatabase(), clock=FakeClock())  # type: ignore[arg-type]
    for _ in range(100):
        assert limiter.check(key()) is None


def test_expired_rows_are_pruned(shared_db: str) -> None:
    clock = FakeClock()
    db: Database = open_database(shared_db)
    limiter = DbRateLimiter(db, clock=clock)
    k = key(rpm=100)
    for i in range(10):
        clock.now = 1000.0 + i
        assert limiter.check(k) is None
    clock.now = 1200.0  # every row expired; the next check of the key deletes them
    assert limiter.check(k) is None
    assert db.conn.execute("SELECT count(*) FROM rate_events").one()[0] == 1
    limiter.forget("ci")
    assert db.conn.execute("SELECT count(*) FROM rate_events").one()[0] == 0
    db.close()
