"""Request log: one row per request, written off the request path by one writer thread.

:meth:`RequestLog.submit` puts a :class:`RequestRecord` on a bounded queue and
returns at once; it never blocks on the database and never raises. When the
queue is full the record is dropped and counted (:attr:`RequestLog.dropped`,
exported to ``/metrics``) rather than let memory grow. The writer wakes on the
first row, sleeps ``flush_interval`` while the batch fills (unless a full
batch is already waiting; a row submitted meanwhile wakes nothing), takes up
to ``batch_size`` items, inserts them with ``executemany`` in one transaction, and at most
once a minute deletes rows older than ``retention_seconds``.

:meth:`RequestLog.close` (what runs on SIGTERM) stops new submissions, lets the
writer drain everything queued, and writes any stragglers itself: nothing
submitted before ``close`` is lost. The writer also prints each row's line to
the ``corral.access`` log (method, path, status, total time), so that line
costs the event loop nothing either. Playground analytics events
(:meth:`RequestLog.record_beacon`) take the same queue into the ``beacons``
table. The writer reconnects when its connection breaks (a PostgreSQL
restart); a batch it cannot write meanwhile is dropped and counted. The read
side (:meth:`RequestLog.query`, :meth:`RequestLog.stats`,
:meth:`RequestLog.beacons`) runs in the caller's thread on its own connection;
the SQL is in :mod:`corral.gateway.logquery`, the same for SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import operator
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from corral.gateway import logquery
from corral.gateway.db import Connection, Database, DatabaseError
from corral.gateway.timing import PHASES

access = logging.getLogger("corral.access")  # the server's line per request, written from here off the event loop
log = logging.getLogger("corral.gateway.requestlog")

PRUNE_EVERY_SECONDS = 60.0


def log_access(method: str, path: str, status: int, total_ms: float) -> None:
    """The server's ``corral.access`` line for one request (``POST /api/chat 200 412.9ms``)."""
    access.info("%s %s %s %.1fms", method, path, status, total_ms)


PRUNE_CHUNK = 5000


@dataclass(slots=True)
class RequestRecord:
    """One finished request. ``ts`` is its start (unix seconds); phases are milliseconds."""

    id: str
    ts: float
    key_name: str | None = None
    client: str | None = None
    user_agent: str | None = None
    method: str = ""
    path: str = ""
    route: str | None = None
    dialect: str | None = None
    model: str | None = None
    status: int = 0
    error: str | None = None
    stream: bool = False
    done_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    auth_ms: float | None = None
    queue_ms: float | None = None
    load_ms: float | None = None
    prompt_eval_ms: float | None = None
    ttft_ms: float | None = None
    generation_ms: float | None = None
    client_io_ms: float | None = None
    upstream_ms: float | None = None
    total_ms: float | None = None
    upstream: str | None = None

    def phases(self) -> dict[str, float | None]:
        """Phase name (see :data:`corral.gateway.timing.PHASES`) to milliseconds."""
        return {name: getattr(self, f"{name}_ms") for name in PHASES}


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RequestRecord))
_row_of = operator.attrgetter(*COLUMNS)
_INSERT_REQUEST = f"INSERT INTO requests({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_INSERT_BEACON = "INSERT INTO beacons(ts, key_name, event, model, status, error, data) VALUES (?, ?, ?, ?, ?, ?, ?)"


class _Beacon(NamedTuple):
    ts: float
    key_name: str | None
    event: str
    model: str | None
    status: int | None
    error: str | None
    data: str


class _Stop:
    """Wakes the writer at close."""


_Item = RequestRecord | _Beacon | _Stop


class RequestLog:
    """Batched, bounded, lossless-on-close request log (see module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        max_backlog: int = 10000,
        batch_size: int = 256,
        flush_interval: float = 0.25,
        retention_seconds: float | None = 30 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max(1, max_backlog))
        self._submit_lock = threading.Lock()  # orders submit() against close()
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune: float | None = None
        self._dropped = 0
        self._written = 0
        self._count_lock = threading.Lock()

    # ---- write side -----------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (once; later calls do nothing)."""
        with self._submit_lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="corral-request-log", daemon=True)
            self._thread.start()

    def submit(self, rec: RequestRecord) -> None:
        """Queue ``rec`` for writing; drops and counts it when the backlog is full or the log closed."""
        self._put(rec)

    def record_beacon(self, event: Mapping[str, Any], key_name: str | None) -> None:
        """Queue one playground analytics event (a validated ``AnalyticsEvent`` dumped to a dict)."""
        try:
            status = event.get("status")
            beacon = _Beacon(
                self._clock(),
                key_name,
                str(event.get("event", "")),
                _str_or_none(event.get("model")),
                status if isinstance(status, int) and not isinstance(status, bool) else None,
                _str_or_none(event.get("error")),
                json.dumps(event, separators=(",", ":"), default=str),
            )
        except Exception:  # never fail the request that carried it
            log.warning("unserializable analytics event dropped", exc_info=True)
            self._count_drop()
            return
        self._put(beacon)

    def _put(self, item: RequestRecord | _Beacon) -> None:
        try:
            with self._submit_lock:
                if not self._closed:
                    self._queue.put_nowait(item)
                    return
        except queue.Full:
            pass
        except Exception:
            log.exception("request log submit failed")
        self._count_drop()

    def _count_drop(self, n: int = 1) -> None:
        with self._count_lock:
            before = self._dropped
            self._dropped += n
        if before == 0 or before // 1000 != self._dropped // 1000:
            log.warning("request log dropped %d rows so far (backlog full, closed, or write failed)", self._dropped)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking rows, flush everything queued, stop the writer. Safe to call twice."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        try:
            self._queue.put_nowait(_Stop())
        except queue.Full:
            pass  # the writer is busy draining and sees the stop flag when the queue empties
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("request log writer still busy after %.1fs with %d rows queued", timeout, self.backlog)
                return
        if not self._queue.empty():  # never started, or the writer died
            conn: Connection | None = None
            try:
                while batch := self._take(wait=False):
                    conn = self._write(self._reconnect(conn), batch)
            finally:
                if conn is not None:
                    conn.close()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def written(self) -> int:
        return self._written

    def _run(self) -> None:
        conn: Connection | None = None
        try:
            while True:
                conn = self._reconnect(conn)
                if conn is not None:
                    self._maybe_prune(conn)
                batch = self._take(wait=not self._stop.is_set())
                if batch:
                    conn = self._write(self._reconnect(conn), batch)
                elif self._stop.is_set() and self._queue.empty():
                    return
        except Exception:
            log.exception("request log writer failed; close() will write what is left")
        finally:
            if conn is not None:
                conn.close()

    def _reconnect(self, conn: Connection | None) -> Connection | None:
        """``conn`` if still usable, else a new connection, or None (logged) when the database cannot be reached."""
        if conn is not None:
            if conn.usable:
                return conn
            conn.close()
        try:
            return self.db.connect()
        except DatabaseError as exc:
            log.warning("request log cannot reach %s: %s", self.db.display, exc)
            return None

    def _take(self, *, wait: bool) -> list[RequestRecord | _Beacon]:
        """Up to ``batch_size`` items; when ``wait``, up to 1 s for the first and ``flush_interval`` for more."""
        batch: list[RequestRecord | _Beacon] = []
        try:
            first = self._queue.get(timeout=1.0) if wait else self._queue.get_nowait()
        except queue.Empty:
            return batch
        if not isinstance(first, _Stop):
            batch.append(first)
        if wait and self._queue.qsize() < self.batch_size - 1:
            # Let the batch fill while sleeping on the stop flag, not on the queue: a request that
            # submits a row then wakes no thread (a wake-up per request costs the event loop the GIL).
            self._stop.wait(self.flush_interval)
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, _Stop):
                batch.append(item)
        return batch

    def _write(self, conn: Connection | None, batch: list[RequestRecord | _Beacon]) -> Connection | None:
        """Insert ``batch`` in one transaction; return the connection to use next (a new one if this one broke)."""
        if access.isEnabledFor(logging.INFO):
            for item in batch:
                if isinstance(item, RequestRecord):
                    log_access(item.method, item.path, item.status, item.total_ms or 0.0)
        requests = [_row_of(item) for item in batch if isinstance(item, RequestRecord)]
        beacons = [item for item in batch if isinstance(item, _Beacon)]
        for attempt in (1, 2):
            if conn is None:
                self._count_drop(len(batch))
                return None
            try:
                with conn.transaction():
                    if requests:
                        conn.executemany(_INSERT_REQUEST, requests)
                    if beacons:
                        conn.executemany(_INSERT_BEACON, beacons)
                break
            except DatabaseError:
                if attempt == 1 and not conn.usable:  # the server dropped us (a restart): once more, reconnected
                    log.warning("request log lost its connection to %s; reconnecting", self.db.display)
                    conn = self._reconnect(conn)
                    continue
                log.exception("request log could not write %d rows", len(batch))
                self._count_drop(len(batch))
                return conn
        with self._count_lock:
            self._written += len(batch)
        return conn

    def _maybe_prune(self, conn: Connection) -> None:
        now = time.monotonic()
        if self._last_prune is not None and now - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = now
        try:
            self.prune(conn)
        except DatabaseError:
            log.exception("request log retention prune failed")

    def prune(self, conn: Connection | None = None) -> int:
        """Delete request and beacon rows older than the retention; return how many went."""
        if self.retention_seconds is None or self.retention_seconds <= 0:
            return 0
        conn = conn or self.db.conn
        cutoff = self._clock() - self.retention_seconds
        deleted = 0
        for table in ("requests", "beacons"):
            while True:  # in chunks, so the write lock is never held for long
                with conn.transaction():
                    cur = conn.execute(
                        f"DELETE FROM {table} WHERE rowid IN "
                        f"(SELECT rowid FROM {table} WHERE ts < ? LIMIT {PRUNE_CHUNK})",
                        (cutoff,),
                    )
                deleted += cur.rowcount
                if cur.rowcount < PRUNE_CHUNK:
                    break
        if deleted:
            log.info("request log retention removed %d rows older than %.0fs", deleted, self.retention_seconds)
        return deleted

    # ---- read side (caller's thread) --------------------------------------------------

    def query(
        self,
        *,
        since: float | None = None,
        model: str | None = None,
        status: str | None = None,
        key_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
        after_rowid: int | None = None,
    ) -> list[dict[str, Any]]:
        """Request rows matching the filters, newest first; with ``after_rowid``, the rows after it, oldest first.

        ``since`` is a unix time; ``status`` a code (``404``), a class (``5xx``) or a comma list of them.
        """
        return logquery.query_requests(
            self.db.conn,
            since=since,
            model=model,
            status=status,
            key_name=key_name,
            limit=limit,
            offset=offset,
            after_rowid=after_rowid,
        )

    def last_rowid(self) -> int:
        """The newest request row's rowid (0 when empty): where ``-f`` starts following."""
        return logquery.last_rowid(self.db.conn)

    def stats(self, *, since: float | None = None, key_name: str | None = None) -> dict[str, Any]:
        """Per model turns/ok/latency/tokens, counts by HTTP status, and a beacons summary."""
        return logquery.request_stats(self.db.conn, since=since, key_name=key_name)

    def beacons(
        self, *, since: float | None = None, limit: int = 50, key_name: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored analytics events, newest first, each with its parsed ``data``."""
        return logquery.query_beacons(self.db.conn, since=since, limit=limit, key_name=key_name)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
