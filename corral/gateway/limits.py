"""Rate limits: per-key requests per minute and tokens per minute, in memory.

A sliding 60-second window per key name. :meth:`RateLimiter.check` runs
before a request: it answers how many seconds to wait (the ``Retry-After``)
when the key's request or token budget for the window is spent, and otherwise
counts the request. :meth:`RateLimiter.add_tokens` counts prompt plus output
tokens once a request has finished, so a long answer uses up the budget of the
requests that follow it. The state lives in this process only: limits restart
with the server, and several servers do not share them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.gateway.keys import ApiKey

WINDOW_SECONDS = 60.0


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
    """Sliding-window rpm/tpm limits per key name (see module docstring)."""

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
