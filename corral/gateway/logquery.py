"""Request-log queries: filtered rows, per-model statistics and beacons, as plain dicts.

The read side of :class:`corral.gateway.requestlog.RequestLog`, kept apart
from its writer. Every function takes the caller's connection and returns
JSON-ready values: the CLI prints them, the admin HTTP routes send them.
The SQL is the subset SQLite and PostgreSQL share (no boolean sums, no
percentile functions). Percentiles are nearest-rank (p50 of 1..100 is 50, p95
is 95), each one row read at its rank with ``ORDER BY ... LIMIT 1 OFFSET``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from corral.errors import BadRequest
from corral.gateway.db import Connection, Cursor

MAX_LIMIT = 10000
_STATUS_CLASS = re.compile(r"([1-5])xx")
_STATUS_CODE = re.compile(r"[1-5]\d\d")
_OK = "CASE WHEN status BETWEEN 200 AND 399 AND error IS NULL THEN 1 ELSE 0 END"
_FAILED = "CASE WHEN error IS NOT NULL OR coalesce(status, 0) >= 400 THEN 1 ELSE 0 END"


def status_clause(text: str) -> tuple[str, list[int]]:
    """SQL for a status filter: ``404``, ``5xx`` or a comma list such as ``4xx,503``."""
    clauses: list[str] = []
    params: list[int] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if m := _STATUS_CLASS.fullmatch(part):
            low = int(m.group(1)) * 100
            clauses.append("status BETWEEN ? AND ?")
            params += [low, low + 99]
        elif _STATUS_CODE.fullmatch(part):
            clauses.append("status = ?")
            params.append(int(part))
        else:
            raise BadRequest(
                f"invalid status filter {text!r}: use a code such as 404 or a class such as 5xx", param="status"
            )
    return "(" + " OR ".join(clauses) + ")", params


def _filters(
    since: float | None, model: str | None, status: str | None, key_name: str | None
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if model is not None:
        where.append("model = ?")
        params.append(model)
    if status is not None:
        clause, status_params = status_clause(status)
        where.append(clause)
        params += status_params
    if key_name is not None:
        where.append("key_name = ?")
        params.append(key_name)
    return where, params


def _sql_where(where: list[str]) -> str:
    return " WHERE " + " AND ".join(where) if where else ""


def _dicts(cur: Cursor) -> list[dict[str, Any]]:
    return [row.as_dict() for row in cur.fetchall()]


def query_requests(
    conn: Connection,
    *,
    since: float | None = None,
    model: str | None = None,
    status: str | None = None,
    key_name: str | None = None,
    limit: int = 50,
    offset: int = 0,
    after_rowid: int | None = None,
) -> list[dict[str, Any]]:
    """Rows newest first; with ``after_rowid``, only later rows, oldest first (for following)."""
    if limit < 0 or offset < 0:
        raise BadRequest("limit and offset must not be negative")
    where, params = _filters(since, model, status, key_name)
    if after_rowid is not None:
        where.append("rowid > ?")
        params.append(after_rowid)
        order = "rowid ASC"
    else:
        order = "ts DESC, rowid DESC"
    sql = f"SELECT * FROM requests{_sql_where(where)} ORDER BY {order} LIMIT ? OFFSET ?"
    rows = _dicts(conn.execute(sql, [*params, min(limit, MAX_LIMIT), offset]))
    for row in rows:
        row["stream"] = bool(row["stream"])
    return rows


def last_rowid(conn: Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM requests").one()[0])


def _nearest_rank(conn: Connection, where: str, params: list[Any], n: int, pct: float) -> float | None:
    if n == 0:
        return None
    rank = max(1, math.ceil(pct / 100 * n))
    row = conn.execute(
        f"SELECT total_ms FROM requests{where} ORDER BY total_ms LIMIT 1 OFFSET ?", [*params, rank - 1]
    ).fetchone()
    return float(row[0]) if row is not None else None


def request_stats(conn: Connection, *, since: float | None = None, key_name: str | None = None) -> dict[str, Any]:
    """``{"requests", "models": [...], "statuses": {"200": n}, "beacons": {...}}`` for the window."""
    where, params = _filters(since, None, None, key_name)
    by_model = conn.execute(
        f"SELECT model, count(*), sum({_OK}), avg(total_ms), count(total_ms), "
        f"coalesce(sum(prompt_tokens), 0), coalesce(sum(output_tokens), 0) FROM requests"
        f"{_sql_where([*where, 'model IS NOT NULL'])} GROUP BY model ORDER BY count(*) DESC, model",
        params,
    ).fetchall()
    models = []
    for model, turns, ok, avg_ms, timed, prompt, output in by_model:
        timed_where = _sql_where([*where, "model = ?", "total_ms IS NOT NULL"])
        models.append(
            {
                "model": model,
                "turns": int(turns),
                "ok": int(ok or 0),
                "avg_ms": float(avg_ms) if avg_ms is not None else None,
                "p50_ms": _nearest_rank(conn, timed_where, [*params, model], int(timed), 50),
                "p95_ms": _nearest_rank(conn, timed_where, [*params, model], int(timed), 95),
                "prompt_tokens": int(prompt),
                "output_tokens": int(output),
            }
        )
    statuses = {
        str(status): int(n)
        for status, n in conn.execute(
            f"SELECT status, count(*) FROM requests{_sql_where(where)} GROUP BY status ORDER BY status", params
        )
    }
    return {
        "since": since,
        "key_name": key_name,
        "requests": sum(statuses.values()),
        "models": models,
        "statuses": statuses,
        "beacons": beacon_summary(conn, since=since, key_name=key_name),
    }


def beacon_summary(conn: Connection, *, since: float | None = None, key_name: str | None = None) -> dict[str, Any]:
    """``{"total", "errors", "by_event": {event: n}}``; an error is an event with error text or status >= 400."""
    where, params = _filters(since, None, None, key_name)
    by_event: dict[str, int] = {}
    errors = 0
    for event, n, failed in conn.execute(
        f"SELECT event, count(*), sum({_FAILED}) FROM beacons"
        f"{_sql_where(where)} GROUP BY event ORDER BY count(*) DESC, event",
        params,
    ):
        by_event[str(event)] = int(n)
        errors += int(failed or 0)
    return {"total": sum(by_event.values()), "errors": errors, "by_event": by_event}


def query_beacons(
    conn: Connection, *, since: float | None = None, limit: int = 50, key_name: str | None = None
) -> list[dict[str, Any]]:
    """Analytics events newest first; ``data`` is the stored event, parsed."""
    if limit < 0:
        raise BadRequest("limit must not be negative")
    where, params = _filters(since, None, None, key_name)
    rows = _dicts(
        conn.execute(
            f"SELECT * FROM beacons{_sql_where(where)} ORDER BY ts DESC, rowid DESC LIMIT ?",
            [*params, min(limit, MAX_LIMIT)],
        )
    )
    for row in rows:
        row["data"] = json.loads(row["data"])
    return rows
