"""Gateway commands: ``corral keys``, ``corral logs`` and ``corral stats``.

Unlike the other client commands these need no running server: they open
the gateway database directly (applying any pending migrations): ``--db URL``
or ``CORRAL_DB`` (a PostgreSQL URL or a SQLite path), else
``<CORRAL_HOME>/corral.db``. That is how an operator creates the first key.
A running server sees their changes at once, since it reads keys from the same
database. :func:`add_gateway_parsers` registers them on ``corral``'s argument
parser; :func:`add_db_argument` gives ``serve`` and ``proxy`` the same ``--db``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from corral.errors import CorralError
from corral.gateway.db import Database, DatabaseError, database_url, open_database
from corral.gateway.keys import KeyStore
from corral.gateway.periods import parse_period
from corral.gateway.requestlog import RequestLog
from corral.settings import Settings

FOLLOW_POLL_SECONDS = 0.5

Command = Callable[[argparse.Namespace], int]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        _out("    ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _guarded(fn: Command) -> Command:
    """Turn the gateway's errors into ``Error: ...`` on stderr and exit status 1."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (CorralError, DatabaseError) as exc:
            sys.stderr.write(f"Error: {exc}\n")
            return 1

    return run


def _open_db(args: argparse.Namespace) -> Database:
    settings = Settings.from_env()
    if args.db is not None:
        settings = settings.with_overrides(db=args.db)
    db = open_database(database_url(settings))
    db.migrate()
    return db


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="the gateway database: postgresql://user:pass@host/db (shared by several gateways) "
        "or a SQLite file path (CORRAL_DB; default $CORRAL_HOME/corral.db)",
    )


def _period(text: str) -> float:
    try:
        return parse_period(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a positive integer")
    return value


def _when(iso: str | None) -> str:
    return "never" if iso is None else iso.replace("T", " ")[:16]


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.2f}s"


def _clip(value: Any, width: int) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text if len(text) <= width else text[: width - 1] + "~"


# ---- keys ---------------------------------------------------------------------------


@_guarded
def cmd_keys_create(args: argparse.Namespace) -> int:
    models = args.models.split(",") if args.models is not None else None
    key, secret = KeyStore(_open_db(args)).create(
        args.name, admin=args.admin, models=models, rpm=args.rpm, tpm=args.tpm
    )
    _out(f'Created {key.scope} key "{key.name}" (prefix {key.prefix})')
    _out(
        f"  models: {', '.join(key.models) if key.models else 'all'}"
        f"   rpm: {key.rpm or 'unlimited'}   tpm: {key.tpm or 'unlimited'}"
    )
    _out("Save it now: Corral stores only its hash and cannot show it again.")
    _out(secret)
    return 0


@_guarded
def cmd_keys_list(args: argparse.Namespace) -> int:
    keys = KeyStore(_open_db(args)).list()
    if not keys:
        _out("No API keys: the server is open to loopback clients. Create one with `corral keys create NAME`.")
        return 0
    rows = [["NAME", "SCOPE", "PREFIX", "CREATED", "LAST USED", "MODELS", "RPM", "TPM"]]
    for k in keys:
        rows.append(
            [
                k.name,
                k.scope,
                k.prefix,
                _when(k.created_at),
                _when(k.last_used_at),
                ",".join(k.models) if k.models else "all",
                str(k.rpm or "-"),
                str(k.tpm or "-"),
            ]
        )
    _table(rows)
    return 0


@_guarded
def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if not KeyStore(_open_db(args)).revoke(args.name):
        sys.stderr.write(f'Error: no active key named "{args.name}"\n')
        return 1
    _out(f'Revoked key "{args.name}"')
    return 0


# ---- logs ---------------------------------------------------------------------------

_LOG_FORMAT = "{:<19}  {:<12}  {:<6}  {:<22}  {:<20}  {:>6}  {:>8}  {:>8}  {:>6}  {:>6}  {}"
_LOG_HEADER = ("TIME", "KEY", "METHOD", "PATH", "MODEL", "STATUS", "TOTAL", "TTFT", "IN", "OUT", "ERROR")


def _log_line(row: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(row["ts"]).strftime("%Y-%m-%d %H:%M:%S")
    return _LOG_FORMAT.format(
        when,
        _clip(row["key_name"], 12),
        _clip(row["method"], 6),
        _clip(row["path"], 22),
        _clip(row["model"], 20),
        row["status"],
        _ms(row["total_ms"]),
        _ms(row["ttft_ms"]),
        _clip(row["prompt_tokens"], 6),
        _clip(row["output_tokens"], 6),
        _clip(row["error"], 80) if row["error"] else "",
    ).rstrip()


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    for row in rows:
        _out(json.dumps(row, separators=(",", ":")) if as_json else _log_line(row))


@_guarded
def cmd_logs(args: argparse.Namespace) -> int:
    log = RequestLog(_open_db(args))
    filters: dict[str, Any] = {"model": args.model, "status": args.status, "key_name": args.key}
    since = time.time() - args.since if args.since is not None else None
    start = log.last_rowid()
    rows = list(reversed(log.query(since=since, limit=args.n, **filters)))  # oldest first, newest last
    if not args.json:
        _out(_LOG_FORMAT.format(*_LOG_HEADER))
    _print_rows(rows, args.json)
    if not args.follow:
        return 0
    after = max([start, *(r["rowid"] for r in rows)])
    deadline = time.monotonic() + args.follow_seconds if args.follow_seconds is not None else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(FOLLOW_POLL_SECONDS)
            new = log.query(after_rowid=after, limit=1000, **filters)
            _print_rows(new, args.json)
            if new:
                after = new[-1]["rowid"]
    except KeyboardInterrupt:
        pass
    return 0


# ---- stats --------------------------------------------------------------------------


@_guarded
def cmd_stats(args: argparse.Namespace) -> int:
    stats = RequestLog(_open_db(args)).stats(since=time.time() - args.since, key_name=args.key)
    if args.json:
        _out(json.dumps(stats))
        return 0
    if not stats["requests"]:
        _out("No requests in this window.")
    if stats["models"]:
        rows = [["MODEL", "TURNS", "OK", "AVG", "P50", "P95", "PROMPT Σ", "REPLY Σ"]]
        for m in stats["models"]:
            rows.append(
                [
                    m["model"],
                    str(m["turns"]),
                    str(m["ok"]),
                    _ms(m["avg_ms"]),
                    _ms(m["p50_ms"]),
                    _ms(m["p95_ms"]),
                    str(m["prompt_tokens"]),
                    str(m["output_tokens"]),
                ]
            )
        _table(rows)
    if stats["statuses"]:
        _out()
        _table([["STATUS", "COUNT"], *([code, str(n)] for code, n in stats["statuses"].items())])
    beacons = stats["beacons"]
    if beacons["total"]:
        events = ", ".join(f"{name} {n}" for name, n in beacons["by_event"].items())
        _out()
        _out(f"Beacons: {beacons['total']} ({events}); {beacons['errors']} with errors")
    return 0


# ---- registration -------------------------------------------------------------------


def add_gateway_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys``, ``logs`` and ``stats`` to ``corral``'s subcommands."""
    k = sub.add_parser("keys", help="create, list and revoke API keys (works on the database directly)")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key; it is printed once, alone on the last line")
    kc.add_argument("name")
    kc.add_argument("--admin", action="store_true", help="admin scope: model management, logs, stats, /metrics")
    kc.add_argument("--models", default=None, help="comma-separated allowlist of models (default: all)")
    kc.add_argument("--rpm", type=_positive_int, default=None, help="requests per minute")
    kc.add_argument("--tpm", type=_positive_int, default=None, help="prompt plus output tokens per minute")
    add_db_argument(kc)
    kc.set_defaults(func=cmd_keys_create)
    kl = ksub.add_parser("list", aliases=["ls"], help="list active keys")
    add_db_argument(kl)
    kl.set_defaults(func=cmd_keys_list)
    kr = ksub.add_parser("revoke", help="revoke a key")
    kr.add_argument("name")
    add_db_argument(kr)
    kr.set_defaults(func=cmd_keys_revoke)

    lg = sub.add_parser("logs", help="show the request log")
    lg.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    lg.add_argument("--since", type=_period, default=None, help="only rows newer than this, e.g. 1h, 30m, 7d")
    lg.add_argument("--model", default=None)
    lg.add_argument("--status", default=None, help="a code (404), a class (5xx) or a comma list")
    lg.add_argument("--key", default=None, help="only this key's requests")
    lg.add_argument("-n", type=_positive_int, default=50, help="rows to show (default 50)")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new rows until Ctrl-C")
    lg.add_argument("--follow-seconds", type=float, default=None, help=argparse.SUPPRESS)
    add_db_argument(lg)
    lg.set_defaults(func=cmd_logs)

    st = sub.add_parser("stats", help="per-model request statistics from the log")
    st.add_argument("--since", type=_period, default="24h", help="window, e.g. 24h (default), 1h, 30d")
    st.add_argument("--key", default=None, help="only this key's requests")
    st.add_argument("--json", action="store_true")
    add_db_argument(st)
    st.set_defaults(func=cmd_stats)
