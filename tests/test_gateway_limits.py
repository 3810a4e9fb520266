"""Per-key rpm/tpm sliding windows, driven by a fake clock."""

from __future__ import annotations

import pytest

from corral.gateway.keys import ApiKey
from corral.gateway.limits import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(name: str = "ci", *, rpm: int | None = None, tpm: int | None = None) -> ApiKey:
    return ApiKey(name, "user", "corral-abcdefgh", "2025-01-01T00:00:00Z", None, None, rpm, tpm)


def test_unlimited_key_is_never_held() -> None:
    limiter = RateLimiter(clock=FakeClock())
    for _ in range(1000):
        assert limiter.check(key()) is None


def test_rpm_blocks_then_reopens_as_the_window_slides() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
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


def test_refused_requests_are_not_counted() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(rpm=1)
    assert limiter.check(k) is None
    for _ in range(50):
        assert limiter.check(k) is not None
    clock.now += 60.0
    assert limiter.check(k) is None


def test_tpm_counts_tokens_added_after_requests() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
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


def test_tpm_waits_for_enough_tokens_to_expire() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(tpm=100)
    for i, n in enumerate((40, 40, 40)):
        clock.now = 1000.0 + 10 * i
        limiter.add_tokens("ci", n)
    clock.now = 1025.0  # 120 in the window; dropping the first 40 leaves 80 < 100
    assert limiter.check(k) == pytest.approx(35.0)


def test_both_limits_report_the_longer_wait() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(rpm=2, tpm=10)
    assert limiter.check(k) is None
    limiter.add_tokens("ci", 10)  # t=1000: tpm exhausted until 1060
    clock.now = 1040.0
    assert limiter.check(k) == pytest.approx(20.0)
    clock.now = 1061.0
    assert limiter.check(k) is None


def test_keys_are_independent_and_forget_resets() -> None:
    limiter = RateLimiter(clock=FakeClock())
    a, b = key("a", rpm=1), key("b", rpm=1)
    assert limiter.check(a) is None
    assert limiter.check(a) is not None
    assert limiter.check(b) is None
    limiter.forget("a")
    assert limiter.check(a) is None
