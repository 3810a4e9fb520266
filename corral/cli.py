"""Command line: ``corral serve`` plus ollama-style client commands.

Everything but ``serve`` talks to a running server over HTTP (see
:mod:`corral.client`), exactly as the ``ollama`` CLI does.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral.cli_gateway import add_db_argument, add_gateway_parsers
from corral.client import Client, ClientError
from corral.settings import Settings
from corral.store.store import sha256_file


def _out(text: str = "", end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def _period(text: str) -> float:
    from corral.gateway.periods import parse_period

    try:
        return parse_period(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _human_duration(seconds: float) -> str:
    """Ollama's format.humanDuration."""
    secs = int(seconds)
    if secs < 1:
        return "Less than a second"
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def _parse_time(iso: str) -> datetime | None:
    """An RFC 3339 time from the API (UTC when it names no zone), or None if it is not one."""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return then if then.tzinfo is not None else then.replace(tzinfo=UTC)


def human_time(iso: str, zero: str = "Never", now: datetime | None = None) -> str:
    """Ollama's format.HumanTime: "4 minutes from now", "2 hours ago", "Forever" (20+ years ahead)."""
    then = _parse_time(iso)
    if then is None:
        return iso
    if then.year <= 1:
        return zero
    delta = ((now or datetime.now(UTC)) - then).total_seconds()
    if int(delta / 3600) // 24 // 365 < -20:
        return "Forever"
    if delta < 0:
        return _human_duration(-delta) + " from now"
    return _human_duration(delta) + " ago"


def human_ago(iso: str) -> str:
    return human_time(iso)


def until(iso: str, now: datetime | None = None) -> str:
    """``ollama ps``'s UNTIL: "Stopping..." once the expiry has passed, else :func:`human_time`."""
    then = _parse_time(iso)
    if then is None:
        return iso
    current = now or datetime.now(UTC)
    if current > then:
        return "Stopping..."
    return human_time(iso, "Never", current)


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        _out("    ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


# ---- commands -----------------------------------------------------------------------


def run_server(app: Any, settings: Settings) -> int:
    """Serve ``app`` with uvicorn on the settings' address until SIGTERM or SIGINT; return the exit code.

    On the first signal it stops accepting connections, lets open streams
    and requests run for ``CORRAL_SHUTDOWN_GRACE`` seconds (5 by default),
    ends those still running (a stream gets a last ``{"error": "server
    shutting down"}`` line, a waiting request a 503), unloads the models,
    flushes and exits 0. A second signal skips what is left of the grace.
    Exit codes: 0 after a requested shutdown, 3 when the server cannot start
    (address in use, a store it cannot open), 2 for bad arguments, 1 for
    any other error.
    """
    import uvicorn

    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Skip what the format does not show (the logging HOWTO's "Optimization" section), above all the
    # caller's file and line, which walks the stack on every record.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
    )
    server = _graceful_server(config, app.state.inflight, settings.shutdown_grace)
    # What is built by now (modules, the app) lives as long as the server: keep it out of every
    # garbage collection, so a full collection during a request walks only what requests made.
    gc.collect()
    gc.freeze()
    server.run()
    if not server.started:
        return 3  # uvicorn's STARTUP_FAILURE
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


def _bind_refused(settings: Settings) -> bool:
    """Log why and say True when serving this address with no API key would be unsafe, or the database fails."""
    from corral.gateway.db import DatabaseError, database_url, open_database
    from corral.gateway.keys import KeyStore
    from corral.gateway.service import StartupRefused, check_bind

    try:
        db = open_database(database_url(settings))
        try:
            db.migrate()
            check_bind(settings, KeyStore(db).active_count())
        finally:
            db.close()
    except (StartupRefused, DatabaseError) as exc:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("corral").error("%s", exc)
        return True
    return False


def cmd_serve(args: argparse.Namespace) -> int:
    from corral.server.app import create_app

    settings = Settings.from_env()
    changes: dict[str, Any] = {}
    if args.host:
        changes["host"] = args.host
    if args.port:
        changes["port"] = args.port
    if args.no_auth:
        changes["no_auth"] = True
    if args.origins is not None:
        changes["origins"] = tuple(o.strip() for o in args.origins.split(",") if o.strip())
    if args.log_retention is not None:
        changes["log_retention"] = args.log_retention
    if args.db is not None:
        changes["db"] = args.db
    settings = settings.with_overrides(**changes)
    if _bind_refused(settings):
        return 1
    return run_server(create_app(settings), settings)


def cmd_proxy(args: argparse.Namespace) -> int:
    """One upstream: a logging proxy. A fleet file, several --upstream or --routing: the fleet gateway."""
    from corral.fleet.config import FleetConfigError, from_urls, load_fleet
    from corral.gateway.upstream import Upstream
    from corral.server.fleet_proxy import create_fleet_app
    from corral.server.proxy import create_proxy_app

    changes: dict[str, Any] = {"host": args.host, "port": args.port}
    if args.no_auth:
        changes["no_auth"] = True
    if args.db is not None:
        changes["db"] = args.db
    settings = Settings.from_env().with_overrides(**changes)
    if _bind_refused(settings):
        return 1
    upstreams = args.upstream or ["http://127.0.0.1:11434"]
    if not (args.fleet or len(upstreams) > 1 or args.routing):
        try:
            upstream = Upstream(upstreams[0], args.upstream_key)
        except ValueError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            return 1
        return run_server(create_proxy_app(settings, upstream), settings)
    try:
        fleet = load_fleet(args.fleet) if args.fleet else from_urls(upstreams)
        if args.routing:
            fleet = dataclasses.replace(fleet, routing=args.routing)
    except FleetConfigError as exc:
        sys.stderr.write(f"Error: {exc.message}\n")
        return 1
    return run_server(create_fleet_app(settings, fleet), settings)


def _graceful_server(config: Any, inflight: Any, grace: float) -> Any:
    """uvicorn's Server with Corral's shutdown: drain what is in flight, then exit 0 (not re-raise the signal)."""
    import asyncio
    import contextlib
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: Any = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            signals = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)
            # Unlike uvicorn, the signal is not raised again: a shutdown that was asked for and
            # completed is a clean exit (0), not a death by SIGTERM.

        def handle_exit(self, sig: int, frame: Any) -> None:
            first = not self.should_exit
            self.should_exit = True
            if self.loop is None:
                return
            logging.getLogger("corral").info("%s: shutting down", signal.Signals(sig).name)
            wait = grace if first else 0.0
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(inflight.drain(wait)))

    return Server(config)


def cmd_list(args: argparse.Namespace) -> int:
    models = Client().request("GET", "/api/tags")["models"]
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in models:
        rows.append([m["name"], m["digest"][:12], human_bytes(m["size"]), human_ago(m["modified_at"])])
    _table(rows)
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    models = Client().request("GET", "/api/ps")["models"]
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        rows.append(
            [
                m["name"],
                m["digest"][:12],
                human_bytes(m["size"]),
                "100% CPU",
                str(m.get("context_length", "")),
                until(m["expires_at"]),
            ]
        )
    _table(rows)
    return 0


def _stream_chat(client: Client, model: str, messages: list[dict[str, Any]], opts: dict[str, Any]) -> str:
    reply = []
    for chunk in client.stream("/api/chat", {"model": model, "messages": messages, "stream": True, **opts}):
        piece = chunk.get("message", {}).get("content", "")
        reply.append(piece)
        _out(piece, end="")
    _out()
    return "".join(reply)


def cmd_run(args: argparse.Namespace) -> int:
    client = Client()
    opts: dict[str, Any] = {}
    if args.keepalive:
        opts["keep_alive"] = args.keepalive
    if args.format:
        opts["format"] = args.format
    prompt = " ".join(args.prompt).strip()
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
    if prompt:
        _stream_chat(client, args.model, [{"role": "user", "content": prompt}], opts)
        return 0
    client.request("POST", "/api/generate", {"model": args.model, **opts})  # load, as ollama does
    history: list[dict[str, Any]] = []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            _out()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit"):
            return 0
        if text == "/clear":
            history.clear()
            _out("Cleared session context")
            continue
        if text.startswith("/set parameter "):
            _set_parameter(opts, text.split()[2:])
            continue
        if text.startswith("/"):
            _out(f"Unknown command '{text.split()[0]}'. Type /bye to quit.")
            continue
        history.append({"role": "user", "content": text})
        history.append({"role": "assistant", "content": _stream_chat(client, args.model, history, opts)})
        _out()


def _set_parameter(opts: dict[str, Any], args: list[str]) -> None:
    """``/set parameter NAME VALUE`` in interactive mode, as ollama run has."""
    from corral.errors import BadRequest
    from corral.store.modelfile import ModelfileError, convert_parameter

    if len(args) < 2:
        _out("Usage: /set parameter <name> <value>")
        return
    name, raw = args[0], " ".join(args[1:])
    try:
        value = convert_parameter(name, raw)
    except (ModelfileError, BadRequest) as exc:
        _out(f"Couldn't set parameter: {exc}")
        return
    options = opts.setdefault("options", {})
    if name == "stop":
        options.setdefault("stop", []).append(value)
    else:
        options[name] = value
    _out(f"Set parameter '{name}' to '{raw}'")


def _upload_tree(client: Client, path: Path) -> dict[str, str]:
    files = {}
    if path.is_file():
        targets = [(path.name, path)]
    else:
        targets = [
            (p.relative_to(path).as_posix(), p)
            for p in sorted(path.rglob("*"))
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and p.suffix in (".safetensors", ".json", ".txt", ".model", ".gguf")
        ]
    for name, item in targets:
        digest = sha256_file(item)
        _out(f"uploading {name} ({human_bytes(item.stat().st_size)})")
        client.upload_blob(item, digest)
        files[name] = digest
    return files


def cmd_create(args: argparse.Namespace) -> int:
    from corral.store.modelfile import parse

    client = Client()
    mf_path = Path(args.file)
    if not mf_path.is_file():
        raise ClientError(f"no Modelfile found at {mf_path}")
    mf = parse(mf_path.read_text(encoding="utf-8"))
    body: dict[str, Any] = {"model": args.name, "stream": True}
    source = Path(mf.from_).expanduser()
    if not source.is_absolute():
        source = (mf_path.parent / source).resolve()
    if mf.from_.startswith((".", "/", "~")) or source.exists():
        if not source.exists():
            raise ClientError(f"FROM {mf.from_}: no such file or directory")
        body["files"] = _upload_tree(client, source)
    else:
        body["from"] = mf.from_
    if mf.adapters:
        adapters: dict[str, str] = {}
        for a in mf.adapters:
            ap = (mf_path.parent / Path(a).expanduser()).resolve()
            adapters.update(_upload_tree(client, ap))
        body["adapters"] = adapters
    for key, value in (("template", mf.template), ("system", mf.system)):
        if value is not None:
            body[key] = value
    if mf.license:
        body["license"] = mf.license
    if mf.parameters:
        body["parameters"] = mf.parameters
    if mf.messages:
        body["messages"] = mf.messages
    if args.quantize:
        body["quantize"] = args.quantize
    for status in client.stream("/api/create", body):
        _out(status.get("status", ""))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    info = Client().request("POST", "/api/show", {"model": args.model, "verbose": args.verbose})
    for flag, key in (
        ("modelfile", "modelfile"),
        ("parameters", "parameters"),
        ("template", "template"),
        ("system", "system"),
        ("license", "license"),
    ):
        if getattr(args, flag):
            _out(info.get(key) or "")
            return 0
    d = info.get("details", {})
    mi = info.get("model_info", {})
    arch = mi.get("general.architecture", d.get("family", ""))
    _out("  Model")
    for label, value in (
        ("architecture", arch),
        ("parameters", d.get("parameter_size", "")),
        ("context length", mi.get(f"{arch}.context_length", "")),
        ("embedding length", mi.get(f"{arch}.embedding_length", "")),
        ("quantization", d.get("quantization_level", "")),
    ):
        _out(f"    {label:<20}{value}")
    _out("\n  Capabilities")
    for cap in info.get("capabilities", []):
        _out(f"    {cap}")
    if info.get("parameters"):
        _out("\n  Parameters")
        for line in info["parameters"].splitlines():
            _out(f"    {line}")
    if info.get("system"):
        _out("\n  System")
        _out(f"    {info['system']}")
    if args.verbose:
        _out("\n  Metadata")
        for k, v in mi.items():
            _out(f"    {k:<40}{str(v)[:100]}")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    Client().request("POST", "/api/copy", {"source": args.source, "destination": args.destination})
    _out(f"copied '{args.source}' to '{args.destination}'")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    client = Client()
    for name in args.models:
        client.request("DELETE", "/api/delete", {"model": name})
        _out(f"deleted '{name}'")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    Client().request("POST", "/api/generate", {"model": args.model, "keep_alive": 0})
    return 0


def _progress(stream: Any) -> None:
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    for status in stream:
        digest = status.get("digest")
        if digest and status.get("total"):
            bar = bars.get(digest)
            if bar is None:
                bar = bars[digest] = tqdm(
                    total=status["total"],
                    unit="B",
                    unit_scale=True,
                    desc=f"{status.get('status', '')[:30]}",
                    leave=True,
                )
            bar.update(int(status.get("completed", 0)) - bar.n)
        else:
            _out(status.get("status", ""))
    for bar in bars.values():
        bar.close()


def cmd_pull(args: argparse.Namespace) -> int:
    _progress(Client().stream("/api/pull", {"model": args.model, "insecure": args.insecure, "stream": True}))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    _progress(Client().stream("/api/push", {"model": args.model, "insecure": args.insecure, "stream": True}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corral", description="Ollama-compatible LLM server and gateway")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start the server")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument(
        "--no-auth",
        action="store_true",
        help="start on a non-loopback address with no API key: open until one is created (CORRAL_NO_AUTH=1)",
    )
    s.add_argument(
        "--origins",
        default=None,
        help="comma-separated extra CORS origins (CORRAL_ORIGINS / OLLAMA_ORIGINS; '*' for all)",
    )
    s.add_argument(
        "--log-retention",
        type=_period,
        default=None,
        metavar="PERIOD",
        help="keep request-log rows this long, e.g. 30d (default), 12h; 0 keeps all (CORRAL_LOG_RETENTION)",
    )
    add_db_argument(s)
    s.set_defaults(func=cmd_serve)
    px = sub.add_parser("proxy", help="run the gateway in front of another Ollama or Corral (no local engine)")
    px.add_argument(
        "--upstream",
        action="append",
        default=None,
        help="a server to forward to (default http://127.0.0.1:11434); repeat it for a fleet, "
        "as [NAME=][KIND+]URL with KIND ollama, corral or openai",
    )
    px.add_argument("--fleet", default=None, help="a fleet file (TOML): upstreams, routing, health settings")
    px.add_argument(
        "--routing",
        choices=["cache-aware", "least-loaded", "round-robin"],
        default=None,
        help="how the fleet picks an upstream (default cache-aware)",
    )
    px.add_argument("--upstream-key", default=None, help="Bearer key to send upstream instead of the client's")
    px.add_argument("--host", default="127.0.0.1")
    px.add_argument("--port", type=int, default=11435, help="default 11435, the seeds' ollama_logger port")
    px.add_argument(
        "--no-auth", action="store_true", help="start on a public address with no API key: open until one is created"
    )
    add_db_argument(px)
    px.set_defaults(func=cmd_proxy)
    r = sub.add_parser("run", help="chat with a model")
    r.add_argument("model")
    r.add_argument("prompt", nargs="*")
    r.add_argument("--keepalive", default=None)
    r.add_argument("--format", default=None)
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("create", help="create a model from a Modelfile")
    c.add_argument("name")
    c.add_argument("-f", "--file", default="Modelfile")
    c.add_argument("-q", "--quantize", default=None)
    c.set_defaults(func=cmd_create)
    sub.add_parser("list", aliases=["ls"], help="list models").set_defaults(func=cmd_list)
    sub.add_parser("ps", help="list running models").set_defaults(func=cmd_ps)
    sh = sub.add_parser("show", help="show model information")
    sh.add_argument("model")
    for flag in ("modelfile", "parameters", "template", "system", "license"):
        sh.add_argument(f"--{flag}", action="store_true")
    sh.add_argument("-v", "--verbose", action="store_true")
    sh.set_defaults(func=cmd_show)
    cp = sub.add_parser("cp", help="copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(func=cmd_cp)
    rm = sub.add_parser("rm", help="remove models")
    rm.add_argument("models", nargs="+")
    rm.set_defaults(func=cmd_rm)
    st = sub.add_parser("stop", help="unload a running model")
    st.add_argument("model")
    st.set_defaults(func=cmd_stop)
    for name, func in (("pull", cmd_pull), ("push", cmd_push)):
        pp = sub.add_parser(name, help=f"{name} a model from/to a registry")
        pp.add_argument("model")
        pp.add_argument("--insecure", action="store_true")
        pp.set_defaults(func=func)
    add_gateway_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClientError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
