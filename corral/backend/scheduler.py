"""Scheduler: which models are loaded, for how long, and who may use them.

* A model is loaded on first use and stays for ``keep_alive`` after its last
  request (default from settings, 5m): ``0`` unloads as soon as it is idle,
  a negative value keeps it forever.
* At most ``max_loaded_models`` are resident; the least recently used idle
  one is evicted to make room, otherwise the request waits.
* A change of load-time options (``num_ctx``...) reloads the model once it
  is idle, as Ollama does.
* Each model has ``num_parallel`` slots; requests beyond that wait in a
  queue bounded by ``max_queue``, past which we answer 503.

Whatever raises or is cancelled while a request holds a model (a failed
load, an engine error mid-generation, a client that goes away, a model that
fails to close), the reference it took is given back: a reference is taken
only after every step that can fail, and given back synchronously, before
any ``await`` that a second cancellation could interrupt. A load that the
client abandons still completes and leaves the model loaded (idle, on its
keep_alive timer), as Ollama's does, rather than leaking it.

Each :class:`Lease` says how long its request waited for a slot
(``queue_seconds``, load time excluded) and how long it spent loading the
model. :meth:`Scheduler.queue_depth`, :meth:`Scheduler.slot_usage` and
:meth:`Scheduler.loaded_bytes` are the live numbers ``/metrics`` exports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from corral.engine.base import Engine, LoadedModel, LoadSpec
from corral.errors import ServerBusy
from corral.settings import Settings

log = logging.getLogger(__name__)

FOREVER = datetime(2318, 1, 1, tzinfo=UTC)


@dataclass
class Runner:
    key: str  # model display name
    digest: str
    spec: LoadSpec
    model: LoadedModel
    slots: asyncio.Semaphore
    keep_alive: float
    load_seconds: float
    refs: int = 0
    busy: int = 0  # slots held right now
    last_used: float = field(default_factory=time.monotonic)
    expires_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    timer: asyncio.TimerHandle | None = None
    closing: bool = False

    def touch(self) -> None:
        """Restart the keep_alive clock. Never raises: a duration past FOREVER is FOREVER."""
        self.last_used = time.monotonic()
        self.expires_at = expiry(self.keep_alive)


def expiry(keep_alive: float) -> datetime:
    """When a model idle from now on unloads (FOREVER for a negative keep_alive)."""
    if keep_alive < 0:
        return FOREVER
    try:
        return min(datetime.now(UTC) + timedelta(seconds=keep_alive), FOREVER)
    except (OverflowError, ValueError):
        return FOREVER


@dataclass
class Lease:
    runner: Runner
    load_seconds: float  # 0 when the model was already loaded
    queue_seconds: float = 0.0  # waiting for the model and a free slot, load time excluded

    @property
    def model(self) -> LoadedModel:
        return self.runner.model


class Scheduler:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.runners: dict[str, Runner] = {}
        self._cond = asyncio.Condition()
        self._pending = 0
        self._waiting: dict[str, int] = {}  # model -> requests not yet holding a slot

    # ---- public API ---------------------------------------------------------
    @asynccontextmanager
    async def acquire(self, key: str, digest: str, spec: LoadSpec, keep_alive: float | None) -> AsyncIterator[Lease]:
        """Hold one slot of a loaded model for the duration of a request."""
        if self._pending >= self.settings.max_queue:
            raise ServerBusy("server busy, please try again.  maximum pending requests exceeded")
        start = time.perf_counter()
        self._enqueue(key)
        try:
            runner, load_seconds = await self._get_runner(key, digest, spec, keep_alive)
            try:
                await runner.slots.acquire()
            except BaseException:
                await self._release(runner)
                raise
        finally:
            self._dequeue(key)
        runner.busy += 1
        queued = max(0.0, time.perf_counter() - start - load_seconds)
        try:
            yield Lease(runner, load_seconds, queued)
        finally:
            runner.busy -= 1
            runner.slots.release()
            await self._release(runner)

    async def ensure_loaded(self, key: str, digest: str, spec: LoadSpec, keep_alive: float | None) -> Lease:
        """Load (or refresh keep_alive of) a model without running anything."""
        runner, load_seconds = await self._get_runner(key, digest, spec, keep_alive)
        await self._release(runner)
        return Lease(runner, load_seconds)

    async def unload(self, key: str) -> bool:
        async with self._cond:
            runner = self.runners.get(key)
            if runner is None:
                return False
            runner.keep_alive = 0
            if runner.refs == 0:
                await self._unload_locked(runner)
            self._cond.notify_all()
            return True

    def running(self) -> list[Runner]:
        return sorted(self.runners.values(), key=lambda r: r.last_used, reverse=True)

    def queue_depth(self) -> dict[str, int]:
        """Requests waiting for a slot (or for their model to load), per model."""
        return dict(self._waiting)

    def slot_usage(self) -> dict[str, tuple[int, int]]:
        """``(busy, total)`` slots of each loaded model."""
        return {r.key: (r.busy, r.spec.num_parallel) for r in self.runners.values()}

    def loaded_bytes(self) -> dict[str, int]:
        """Memory held by each loaded model."""
        return {r.key: r.model.size_bytes for r in self.runners.values()}

    def _enqueue(self, key: str) -> None:
        self._pending += 1
        self._waiting[key] = self._waiting.get(key, 0) + 1

    def _dequeue(self, key: str) -> None:
        self._pending -= 1
        left = self._waiting.get(key, 1) - 1
        if left > 0:
            self._waiting[key] = left
        else:
            self._waiting.pop(key, None)

    async def close(self) -> None:
        async with self._cond:
            for runner in list(self.runners.values()):
                await self._unload_locked(runner)

    # ---- internals -------------------------------------------------------------
    async def _get_runner(
        self, key: str, digest: str, spec: LoadSpec, keep_alive: float | None
    ) -> tuple[Runner, float]:
        ka = self.settings.keep_alive if keep_alive is None else keep_alive
        async with self._cond:
            while True:
                runner = self.runners.get(key)
                if runner is not None and runner.closing:
                    await self._cond.wait()
                    continue
                if runner is not None and (runner.spec != spec or runner.digest != digest):
                    if runner.refs == 0:
                        log.info("reloading %s with new load options", key)
                        await self._unload_locked(runner)
                        continue
                    await self._cond.wait()
                    continue
                if runner is not None:
                    previous, runner.keep_alive = runner.keep_alive, ka
                    try:
                        runner.touch()
                    except BaseException:
                        runner.keep_alive = previous
                        raise
                    self._cancel_timer(runner)
                    runner.refs += 1  # last: nothing after it can fail
                    return runner, 0.0
                if len(self.runners) >= self.settings.max_loaded_models:
                    idle = [r for r in self.runners.values() if r.refs == 0 and not r.closing]
                    if not idle:
                        await self._cond.wait()
                        continue
                    victim = min(idle, key=lambda r: r.last_used)
                    log.info("evicting %s to make room for %s", victim.key, key)
                    await self._unload_locked(victim)
                    continue
                start = time.monotonic()
                model = await self._load(key, digest, spec, ka)
                elapsed = time.monotonic() - start
                log.info("loaded %s in %.2fs", key, elapsed)
                runner = Runner(key, digest, spec, model, asyncio.Semaphore(spec.num_parallel), ka, elapsed)
                self.runners[key] = runner  # first: a loaded model is always tracked
                try:
                    runner.touch()
                except BaseException:
                    await self._idle_locked(runner)
                    raise
                runner.refs = 1
                return runner, elapsed

    async def _load(self, key: str, digest: str, spec: LoadSpec, keep_alive: float) -> LoadedModel:
        """Load a model, to the end even when the request that asked is cancelled meanwhile.

        The engine loads on a worker thread that a cancellation cannot stop;
        abandoning it would leave a loaded model nobody tracks. So a
        cancelled load is waited for (the lock still held, so nobody starts
        a second copy), kept as an idle runner on its keep_alive timer, and
        then the cancellation goes on.
        """
        task = asyncio.ensure_future(self.engine.load(spec))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                model = await task
            except BaseException:
                raise asyncio.CancelledError from None
            runner = Runner(key, digest, spec, model, asyncio.Semaphore(spec.num_parallel), keep_alive, 0.0)
            self.runners[key] = runner
            runner.touch()
            await self._idle_locked(runner)
            raise

    async def _release(self, runner: Runner) -> None:
        """Give back one reference: synchronously (a cancellation cannot skip it), then settle the model."""
        runner.refs = max(0, runner.refs - 1)
        try:
            runner.touch()
        finally:
            if runner.refs == 0 and self.runners.get(runner.key) is runner:
                # Shielded: the unload (keep_alive 0) or the timer happens even if this task is cancelled now.
                await asyncio.shield(self._settle_locked(runner))

    async def _settle_locked(self, runner: Runner) -> None:
        async with self._cond:
            if self.runners.get(runner.key) is runner and runner.refs == 0:
                await self._idle_locked(runner)
            self._cond.notify_all()

    async def _idle_locked(self, runner: Runner) -> None:
        """A runner nobody uses now: unloaded at once for keep_alive 0, else on its keep_alive timer."""
        if runner.keep_alive == 0:
            await self._unload_locked(runner)
        elif runner.keep_alive > 0:
            self._arm_timer(runner)

    def _arm_timer(self, runner: Runner) -> None:
        self._cancel_timer(runner)
        loop = asyncio.get_running_loop()
        runner.timer = loop.call_later(runner.keep_alive, lambda: asyncio.ensure_future(self._expire(runner)))

    @staticmethod
    def _cancel_timer(runner: Runner) -> None:
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None

    async def _expire(self, runner: Runner) -> None:
        async with self._cond:
            if self.runners.get(runner.key) is runner and runner.refs == 0:
                log.info("keep_alive expired for %s", runner.key)
                await self._unload_locked(runner)
                self._cond.notify_all()

    async def _unload_locked(self, runner: Runner) -> None:
        """Forget the runner and close its model; a model that fails to close is logged and forgotten all the same."""
        self._cancel_timer(runner)
        runner.closing = True
        try:
            await asyncio.shield(runner.model.close())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("closing %s failed; dropping it anyway", runner.key)
        finally:
            if self.runners.get(runner.key) is runner:
                del self.runners[runner.key]
            log.info("unloaded %s", runner.key)
