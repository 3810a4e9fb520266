"""Rate limits: per-key requests per minute and tokens per minute, in memory or in the gateway database.

A sliding 60-second window per key name. ``check`` runs before a request: it
answers how many seconds to wait (the ``Retry-After``) when the key's request
or token budget for the window is spent, and otherwise counts the request.
``add_tokens`` counts prompt plus output tokens once a request has finished,
so a long answer uses up the budget of the requests that follow it. Two
implementations of that :class:`Limiter` interface give the same answers:

* :class:`RateLimiter` keeps the windows in this process only: they restart
  with the server, and several servers do not share them.
* :class:`DbRateLimiter` keeps them in the gateway database (table
  ``rate_events``), so a limit holds across every process and replica sharing
  it: several ``corral proxy`` behind a load balancer on one PostgreSQL, or
  several processes on one SQLite file. Each check of a limited key is one
  short transaction, serialised per key (:meth:`Connection.lock`); keys
  without limits never touch the database. Its clock is the wall clock, since
  replicas compare each other's timestamps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from corral.gateway.db import Database, DatabaseError
from corral.gateway.keys import ApiKey

log = logging.getLogger("corral.gateway.limits")

WINDOW_SECONDS = 60.0


class Limiter(Protocol):
    """What the auth hook needs of a rate limiter (see module docstring)."""

    @property
    def blocking(self) -> bool:
        """True when calls may wait on I/O, so an event loop runs them in a thread."""

    def check(self, key: ApiKey) -> float | None:
        """Seconds to wait if ``key`` is over its rpm or tpm; else count the request and return None."""

    def add_tokens(self, name: str, n: int) -> None:
        """Count ``n`` prompt plus output tokens against ``name``'s tpm budget."""


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def prune(self, horizon: float) -> None:
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= horizon:
            self.token_sum -= self.tokens.popleft()[1]

    @property
    def empty(self) -> bool:
        return not self.requests and not self.tokens


class RateLimiter:
    """Sliding-window rpm/tpm limits per key name, in this process (see module docstring)."""

    blocking = False

    def __init__(self, *, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._usage: dict[str, _Usage] = {}
        self._lock = threading.Lock()

    def check(self, key: ApiKey) -> float | None:
        """Seconds to wait if ``key`` is over its rpm or tpm; else count the request and return None."""
        if key.rpm is None and key.tpm is None:
            return None
        now = self._clock()
        with self._lock:
            usage = self._usage.setdefault(key.name, _Usage())
            usage.prune(now - self.window)
            waits: list[float] = []
            if key.rpm is not None and len(usage.requests) >= key.rpm:
                waits.append(usage.requests[len(usage.requests) - key.rpm] + self.window - now)
            if key.tpm is not None and usage.token_sum >= key.tpm:
                remaining = usage.token_sum
                for ts, n in usage.tokens:  # the oldest entries expire first
                    remaining -= n
                    if remaining < key.tpm:
                        waits.append(ts + self.window - now)
                        break
            if waits:
                return max(waits)
            if key.rpm is not None:
                usage.requests.append(now)
            return None

    def add_tokens(self, name: str, n: int) -> None:
        """Count ``n`` prompt plus output tokens against ``name``'s tpm budget."""
        if n <= 0:
            return
        now = self._clock()
        with self._lock:
            usage = self._usage.setdefault(name, _Usage())
            usage.prune(now - self.window)
            usage.tokens.append((now, n))
            usage.token_sum += n

    def usage(self, name: str) -> tuple[int, int]:
        """(requests, tokens) counted for ``name`` in the current window."""
        now = self._clock()
        with self._lock:
            usage = self._usage.get(name)
            if usage is None:
                return 0, 0
            usage.prune(now - self.window)
            if usage.empty:
                del self._usage[name]
                return 0, 0
            return len(usage.requests), usage.token_sum

    def forget(self, name: str) -> None:
        """Drop ``name``'s window (its key was revoked)."""
        with self._lock:
            self._usage.pop(name, None)


_SUMS = "SELECT coalesce(sum(requests), 0), coalesce(sum(tokens), 0) FROM rate_events WHERE key_name = ? AND ts > ?"


class DbRateLimiter:
    """The windows of :class:`RateLimiter`, kept in the gateway database and shared (see module docstring)."""

    blocking = True

    def __init__(self, db: Database, *, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.window = window
        self._clock = clock
        self._pruned: dict[str, float] = {}  # key name -> when this process last deleted its expired rows
        self._lock = threading.Lock()

    def check(self, key: ApiKey) -> float | None:
        """Seconds to wait if ``key`` is over its rpm or tpm; else count the request and return None."""
        if key.rpm is None and key.tpm is None:
            return None
        now = self._clock()
        horizon = now - self.window
        conn = self.db.conn
        with conn.transaction():
            conn.lock(f"rate:{key.name}")
            self._maybe_prune(key.name, now)
            sums = conn.execute(_SUMS, (key.name, horizon)).one()
            requests, tokens = int(sums[0]), int(sums[1])
            waits: list[float] = []
            if key.rpm is not None and requests >= key.rpm:
                row = conn.execute(
                    "SELECT ts FROM rate_events WHERE key_name = ? AND ts > ? AND requests > 0 "
                    "ORDER BY ts LIMIT 1 OFFSET ?",
                    (key.name, horizon, requests - key.rpm),
                ).fetchone()
                if row is not None:
                    waits.append(float(row[0]) + self.window - now)
            if key.tpm is not None and tokens >= key.tpm:
                remaining = tokens
                for ts, n in conn.execute(
                    "SELECT ts, tokens FROM rate_events WHERE key_name = ? AND ts > ? AND tokens > 0 ORDER BY ts",
                    (key.name, horizon),
                ):
                    remaining -= int(n)  # the oldest entries expire first
                    if remaining < key.tpm:
                        waits.append(float(ts) + self.window - now)
                        break
            if waits:
                return max(waits)
            if key.rpm is not None:
                conn.execute(
                    "INSERT INTO rate_events(key_name, ts, requests, tokens) VALUES (?, ?, 1, 0)", (key.name, now)
                )
        return None

    def _maybe_prune(self, name: str, now: float) -> None:
        """Delete ``name``'s expired rows, at most once a window; the caller holds the key's lock."""
        with self._lock:
            last = self._pruned.get(name)
            if last is not None and now - last < self.window:
                return
            self._pruned[name] = now
        self.db.conn.execute("DELETE FROM rate_events WHERE key_name = ? AND ts <= ?", (name, now - self.window))

    def add_tokens(self, name: str, n: int) -> None:
        """Count ``n`` prompt plus output tokens against ``name``'s tpm budget (a failed write is logged, not raised)."""
        if n <= 0:
            return
        try:
            self.db.conn.execute(
                "INSERT INTO rate_events(key_name, ts, requests, tokens) VALUES (?, ?, 0, ?)", (name, self._clock(), n)
            )
        except DatabaseError:
            log.warning("could not count %d tokens against key %r", n, name, exc_info=True)

    def usage(self, name: str) -> tuple[int, int]:
        """(requests, tokens) counted for ``name`` in the current window, by every process."""
        sums = self.db.conn.execute(_SUMS, (name, self._clock() - self.window)).one()
        return int(sums[0]), int(sums[1])

    def forget(self, name: str) -> None:
        """Drop ``name``'s window (its key was revoked)."""
        self.db.conn.execute("DELETE FROM rate_events WHERE key_name = ?", (name,))
