"""Settings: the one configuration object, built once from the environment.

Every knob follows Ollama's variable name (``OLLAMA_HOST``, ``OLLAMA_MODELS``,
``OLLAMA_KEEP_ALIVE`` ...). Each has a ``CORRAL_*`` twin of the same suffix
which wins when both are set. Knobs Ollama lacks (the gateway's
``CORRAL_NO_AUTH``, ``CORRAL_LOG_RETENTION``, ``CORRAL_DB``, the pull/push
client's ``CORRAL_REGISTRY_KEYS``) are ``CORRAL_*`` only. The object is
immutable; it is built by :func:`Settings.from_env` and passed to whatever
needs it. Secrets it holds (the registry keys) stay out of its ``repr`` and
out of every error message here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from corral.durations import parse_keep_alive
from corral.errors import CorralError
from corral.gateway.periods import parse_period

DEFAULT_PORT = 11434
DEFAULT_LOG_RETENTION = 30 * 86400.0
_TRUE = ("1", "true", "yes", "on")


def _env(env: Mapping[str, str], name: str) -> str | None:
    """Return ``CORRAL_<name>`` if set, else ``OLLAMA_<name>``, else None."""
    for prefix in ("CORRAL_", "OLLAMA_"):
        value = env.get(prefix + name)
        if value is not None and value.strip() != "":
            return value.strip()
    return None


def parse_host(value: str | None, default_port: int = DEFAULT_PORT) -> tuple[str, str, int]:
    """Parse an ``OLLAMA_HOST``-style value into (scheme, host, port).

    Accepts ``host``, ``host:port``, ``:port``, ``scheme://host:port`` and
    bracketed IPv6 forms, as Ollama does.
    """
    scheme = "http"
    raw = (value or "").strip()
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
    raw = raw.split("/", 1)[0]
    host, port = "127.0.0.1", default_port
    if scheme == "https":
        port = 443
    if raw.startswith("["):
        end = raw.find("]")
        host = raw[1:end]
        rest = raw[end + 1 :]
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif raw.count(":") == 1:
        h, p = raw.split(":")
        host = h or "127.0.0.1"
        if p.isdigit():
            port = int(p)
    elif raw:
        host = raw
    return scheme, host, port


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1000**3,
    "gib": 1 << 30,
}


def parse_size(value: str) -> int:
    """``"33554432"``, ``"32MiB"``, ``"32m"``, ``"50MB"`` -> bytes."""
    text = value.strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :]
    if not digits or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}: use bytes or a unit such as 32MiB")
    return int(float(digits) * _SIZE_UNITS[unit])


_REGISTRY_HOST = re.compile(r"[a-z0-9_][a-z0-9_.\-]{0,349}(:[0-9]{1,5})?")


def parse_registry_keys(value: str) -> tuple[tuple[str, str], ...]:
    """``"host:port=key,otherhost=key2"`` -> ``(("host:port", "key"), ("otherhost", "key2"))``.

    Hosts are written as in a model name (``127.0.0.1:11434``, ``registry.example``;
    an ``http://``/``https://`` prefix is dropped) and matched exactly, lowercased.
    An error names the entry by its position, and a host only once it is valid:
    never the key, nor text that may be one (a swapped ``key=host``).
    """
    out: dict[str, str] = {}
    for index, entry in enumerate((e.strip() for e in value.split(",")), 1):
        if not entry:
            continue
        host, sep, key = entry.partition("=")
        host = host.strip().lower().removeprefix("http://").removeprefix("https://").rstrip("/")
        key = key.strip()
        where = f"invalid CORRAL_REGISTRY_KEYS entry {index}"
        if not sep:
            raise ValueError(f"{where}: write host[:port]=key")
        if not _REGISTRY_HOST.fullmatch(host):
            raise ValueError(f"{where}: the part before '=' is not a registry host[:port]")
        if not key or any(c.isspace() for c in key):
            raise ValueError(f"{where}: the key for {host} is empty or contains whitespace")
        if host in out:
            raise ValueError(f"{where}: {host} is given a key twice")
        out[host] = key
    return tuple(out.items())


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _env(env, name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"invalid integer for OLLAMA_{name}/CORRAL_{name}: {value!r}") from exc


def _seconds(value: str, name: str) -> float:
    """A duration setting: seconds, or a Go duration such as ``"10s"`` or ``"12h"``."""
    try:
        seconds = parse_keep_alive(value)
    except CorralError as exc:
        raise ValueError(f"invalid duration for CORRAL_{name}: {value!r} ({exc.message})") from None
    return 0.0 if seconds is None else seconds


@dataclass(frozen=True)
class Settings:
    """Server and client configuration (see module docstring)."""

    home: Path
    models_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    scheme: str = "http"
    keep_alive: float = 300.0  # seconds; <0 keeps forever, 0 unloads at once
    num_parallel: int = 1
    max_queue: int = 512
    max_loaded_models: int = 3
    context_length: int = 4096
    origins: tuple[str, ...] = field(default_factory=tuple)
    num_threads: int = 0  # 0 = let the engine pick (physical cores)
    starter_models: bool = True
    debug: bool = False
    # f16 as Ollama. q8_0 halves the KV memory but, measured on CPU, also
    # halves prompt-eval speed (bench/RESULTS.md), so it is opt-in.
    kv_cache_type: str = "f16"  # f16 | q8_0 | q4_0 (OLLAMA_KV_CACHE_TYPE)
    flash_attention: bool = False  # OLLAMA_FLASH_ATTENTION (on anyway for a quantized KV cache)
    prompt_cache_mib: int = 0  # CORRAL_PROMPT_CACHE_MIB: llama.cpp's host-RAM cache of idle slots' prompts
    no_auth: bool = False  # CORRAL_NO_AUTH / --no-auth: may start on a public address with no key
    log_retention: float = DEFAULT_LOG_RETENTION  # CORRAL_LOG_RETENTION / --log-retention (seconds; 0 keeps all)
    # CORRAL_MAX_BODY: the largest JSON request body (413 above). Blob uploads stream to disk and are not capped.
    max_body: int = 32 << 20
    # CORRAL_SHUTDOWN_GRACE: seconds that open streams get to finish after SIGTERM before they are ended.
    shutdown_grace: float = 5.0
    # CORRAL_PARTIAL_PULL_TTL: an interrupted pull's partial blob is kept this long for a later pull to resume.
    partial_pull_ttl: float = 24 * 3600.0
    db: str | None = None  # CORRAL_DB / --db: a PostgreSQL URL or a SQLite path; None is <home>/corral.db
    # CORRAL_REGISTRY_KEYS: (registry host[:port], API key) pairs; /api/pull and /api/push send a host its key
    # as "Authorization: Bearer". Kept out of repr, so no log line of the settings can show a key.
    registry_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("CORRAL_HOME") or Path.home() / ".corral").expanduser()
        models = _env(env, "MODELS")
        models_dir = Path(models).expanduser() if models else home / "models"
        scheme, host, port = parse_host(_env(env, "HOST"))
        keep_alive_raw = _env(env, "KEEP_ALIVE")
        keep_alive = parse_keep_alive(keep_alive_raw) if keep_alive_raw is not None else 300.0
        origins_raw = _env(env, "ORIGINS") or ""
        origins = tuple(o.strip() for o in origins_raw.split(",") if o.strip())
        starters = (env.get("CORRAL_STARTER_MODELS") or "1").strip().lower() not in ("0", "false", "no")
        debug = (_env(env, "DEBUG") or "0").lower() in ("1", "true", "yes")
        kv_type = (_env(env, "KV_CACHE_TYPE") or "f16").lower()
        if kv_type not in ("f16", "q8_0", "q4_0"):
            raise ValueError(f"invalid OLLAMA_KV_CACHE_TYPE {kv_type!r}: use f16, q8_0 or q4_0")
        flash = (_env(env, "FLASH_ATTENTION") or "0").lower() in ("1", "true", "yes")
        no_auth = (env.get("CORRAL_NO_AUTH") or "0").strip().lower() in _TRUE
        retention_raw = (env.get("CORRAL_LOG_RETENTION") or "").strip()
        try:
            retention = parse_period(retention_raw) if retention_raw else DEFAULT_LOG_RETENTION
        except ValueError as exc:
            raise ValueError(f"invalid CORRAL_LOG_RETENTION: {exc}") from None
        max_body_raw = _env(env, "MAX_BODY")
        grace_raw = _env(env, "SHUTDOWN_GRACE")
        ttl_raw = _env(env, "PARTIAL_PULL_TTL")
        return cls(
            home=home,
            models_dir=models_dir,
            host=host,
            port=port,
            scheme=scheme,
            keep_alive=keep_alive if keep_alive is not None else 300.0,
            num_parallel=max(1, _int(env, "NUM_PARALLEL", 1)),
            max_queue=max(1, _int(env, "MAX_QUEUE", 512)),
            max_loaded_models=max(1, _int(env, "MAX_LOADED_MODELS", 3)),
            context_length=max(256, _int(env, "CONTEXT_LENGTH", 4096)),
            origins=origins,
            num_threads=_int(env, "NUM_THREADS", 0),
            starter_models=starters,
            debug=debug,
            kv_cache_type=kv_type,
            flash_attention=flash,
            prompt_cache_mib=max(0, _int(env, "PROMPT_CACHE_MIB", 0)),
            no_auth=no_auth,
            log_retention=retention,
            max_body=max(1024, parse_size(max_body_raw)) if max_body_raw else 32 << 20,
            shutdown_grace=max(0.0, _seconds(grace_raw, "SHUTDOWN_GRACE")) if grace_raw else 5.0,
            partial_pull_ttl=max(0.0, _seconds(ttl_raw, "PARTIAL_PULL_TTL")) if ttl_raw else 24 * 3600.0,
            db=(env.get("CORRAL_DB") or "").strip() or None,
            registry_keys=parse_registry_keys(env.get("CORRAL_REGISTRY_KEYS") or ""),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def registry_key(self, host: str) -> str | None:
        """The key configured for registry ``host`` (``name.host`` of a model name), matched exactly."""
        wanted = host.lower()
        return next((key for configured, key in self.registry_keys if configured == wanted), None)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}"
