"""How much of the machine something else used while a phase ran.

The benchmark shares two cores with other people's test runs, and llama.cpp's
threads synchronise at barriers many times per token, so one foreign busy
process can slow a peer several-fold. :class:`Meter` brackets a phase and
reports the share of total CPU capacity used by everything *except* the peer
under test and the driver (including hypervisor steal), so each sample
carries its own noise level and the figures can prefer clean samples.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Self

from bench.peers import tree_pids

_TCK = os.sysconf("SC_CLK_TCK")
_NCPU = os.cpu_count() or 1


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


def _proc_jiffies(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0


def _ours(pids: list[int]) -> int:
    return sum(_proc_jiffies(p) for p in pids)


@dataclass
class Meter:
    """``with Meter(pid) as m: ...`` then ``m.background_share`` (0..1)."""

    peer_pid: int | None
    background_share: float = 0.0
    wall_s: float = 0.0

    def _pids(self) -> list[int]:
        return [os.getpid()] + (tree_pids(self.peer_pid) if self.peer_pid else [])

    def __enter__(self) -> Self:
        self._t0 = time.monotonic()
        self._busy0 = _busy_jiffies()
        self._ours0 = _ours(self._pids())
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.monotonic() - self._t0
        busy = _busy_jiffies() - self._busy0
        ours = _ours(self._pids()) - self._ours0
        capacity = self.wall_s * _NCPU * _TCK
        self.background_share = max(0.0, (busy - ours) / capacity) if capacity > 0 else 0.0


def busy_share(window_s: float = 0.5) -> float:
    """Share of all CPUs busy (incl. steal) over a ``window_s`` blocking sample."""
    b0, t0 = _busy_jiffies(), time.monotonic()
    time.sleep(window_s)
    wall = time.monotonic() - t0
    return (_busy_jiffies() - b0) / (wall * _NCPU * _TCK)


async def wait_quiet(threshold: float, max_wait_s: float, window_s: float = 0.5) -> tuple[float, float]:
    """Wait (up to ``max_wait_s``) until the machine is below ``threshold`` busy.

    Call it while every peer is idle. Returns (seconds waited, last busy share).
    """
    import asyncio

    if max_wait_s <= 0:
        return 0.0, 0.0
    t0 = time.monotonic()
    while True:
        share = await asyncio.to_thread(busy_share, window_s)
        waited = time.monotonic() - t0
        if share <= threshold or waited >= max_wait_s:
            return waited, share
