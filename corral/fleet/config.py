"""Fleet configuration: which upstreams the gateway fronts, and how it routes among them.

Owns :class:`UpstreamSpec` (one inference server), :class:`FleetConfig` (all
of them plus the routing and health settings), and the two ways to build
one: :func:`load_fleet` reads a TOML fleet file, :func:`from_urls` turns
repeated ``--upstream`` arguments into a fleet. Every value is checked here,
once; a bad one raises :class:`FleetConfigError` (both a
:class:`corral.errors.BadRequest` and a :class:`ValueError`) whose ``param``
names the field, e.g. ``upstream[2].url``.

The fleet file::

    routing = "cache-aware"          # or "least-loaded", "round-robin"
    refresh_interval = 10.0          # seconds between model discovery (/api/tags, /v1/models)
    health_interval = 5.0            # seconds between active health checks (/api/ps, /v1/models)
    failure_threshold = 3            # consecutive failures that open an upstream's circuit
    cooldown = 10.0                  # seconds an open circuit waits before one half-open probe
    load_margin = 4.0                # outstanding requests cache affinity may add over the least loaded
    default_upstream = "gpu1"        # model management (pull, create, ...) goes here; default: the first
    prefix_index_size = 65536        # prefix blocks remembered by the cache-aware router (LRU)
    block_size = 128                 # characters per prefix block
    min_prefix_match = 0.5           # share of a prompt's blocks a prefix must cover to steer it (0..1)
    probe_timeout = 5.0              # seconds for one discovery or health request

    [[upstream]]
    name = "gpu1"                    # [A-Za-z0-9][A-Za-z0-9._-]*, unique
    url = "http://10.0.0.1:11434"    # http or https, no query or fragment
    kind = "ollama"                  # "ollama" (default), "corral" or "openai"
    key = "secret"                   # or key_env = "GPU1_KEY": Bearer key sent upstream
    weight = 2.0                     # > 0; relative capacity for least-loaded and round-robin
    models = ["llama3.2:3b"]         # only route these models here (default: what discovery finds)

Changing one setting of a loaded config (``--routing`` on the command
line) is ``dataclasses.replace(config, routing=...)``, which validates again.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from corral.errors import BadRequest

Kind = Literal["ollama", "corral", "openai"]
Routing = Literal["cache-aware", "least-loaded", "round-robin"]
KINDS: tuple[Kind, ...] = ("ollama", "corral", "openai")
ROUTINGS: tuple[Routing, ...] = ("cache-aware", "least-loaded", "round-robin")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class FleetConfigError(BadRequest, ValueError):
    """A bad fleet setting; ``param`` is the field's path (``routing``, ``upstream[1].url``)."""


def _fail(param: str, problem: str) -> FleetConfigError:
    return FleetConfigError(f"fleet config: {param}: {problem}", param=param)


def _check_url(url: str, param: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise _fail(param, f"invalid URL {url!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(param, f"invalid URL {url!r}: expected http://HOST[:PORT][/PATH]")
    if parts.query or parts.fragment:
        raise _fail(param, f"invalid URL {url!r}: no query or fragment allowed")
    return url.rstrip("/")


def _number(value: object, param: str, *, minimum: float, integer: bool = False, strict: bool = False) -> None:
    ok = isinstance(value, int) or (not integer and isinstance(value, float))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok or not math.isfinite(value):
        raise _fail(param, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise _fail(param, f"must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


@dataclass(frozen=True)
class UpstreamSpec:
    """One inference server behind the gateway (validated on construction; ``url`` loses its trailing slash)."""

    name: str
    url: str
    kind: Kind = "ollama"
    key: str | None = None
    weight: float = 1.0
    models: tuple[str, ...] | None = None
    where: str = field(default="", compare=False, repr=False)  # the path errors name ("upstream[1]")

    def __post_init__(self) -> None:
        at = self.where or f"upstream {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise _fail(
                f"{at}.name",
                f"invalid name {self.name!r}: letters, digits, '.', '_' and '-', "
                "starting with a letter or digit, at most 64",
            )
        if not isinstance(self.url, str):
            raise _fail(f"{at}.url", f"expected a string, got {self.url!r}")
        object.__setattr__(self, "url", _check_url(self.url, f"{at}.url"))
        if self.kind not in KINDS:
            raise _fail(f"{at}.kind", f"invalid kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise _fail(f"{at}.key", "expected a non-empty string")
        _number(self.weight, f"{at}.weight", minimum=0, strict=True)
        if self.models is not None and (
            not isinstance(self.models, tuple)
            or not self.models
            or not all(isinstance(m, str) and m for m in self.models)
        ):
            raise _fail(f"{at}.models", f"expected a non-empty list of model names, got {self.models!r}")


@dataclass(frozen=True)
class FleetConfig:
    """The whole fleet: upstreams in order (the first is the default for model management) and the settings."""

    upstreams: tuple[UpstreamSpec, ...]
    routing: Routing = "cache-aware"
    refresh_interval: float = 10.0
    health_interval: float = 5.0
    failure_threshold: int = 3
    cooldown: float = 10.0
    load_margin: float = 4.0
    default_upstream: str | None = None
    prefix_index_size: int = 65536
    block_size: int = 128
    min_prefix_match: float = 0.5
    probe_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise _fail("upstream", "at least one upstream is required")
        seen: set[str] = set()
        for spec in self.upstreams:
            if spec.name in seen:
                raise _fail(f"{spec.where or 'upstream'}.name", f"duplicate upstream name {spec.name!r}")
            seen.add(spec.name)
        if self.routing not in ROUTINGS:
            raise _fail("routing", f"invalid routing {self.routing!r}; expected one of {', '.join(ROUTINGS)}")
        for name in ("refresh_interval", "health_interval", "cooldown", "probe_timeout"):
            _number(getattr(self, name), name, minimum=0, strict=True)
        _number(self.load_margin, "load_margin", minimum=0)
        _number(self.failure_threshold, "failure_threshold", minimum=1, integer=True)
        _number(self.prefix_index_size, "prefix_index_size", minimum=1, integer=True)
        _number(self.block_size, "block_size", minimum=1, integer=True)
        _number(self.min_prefix_match, "min_prefix_match", minimum=0)
        if self.min_prefix_match > 1:
            raise _fail("min_prefix_match", f"must be <= 1, got {self.min_prefix_match!r}")
        if self.default_upstream is not None and self.default_upstream not in seen:
            raise _fail("default_upstream", f"no upstream is named {self.default_upstream!r}")

    def upstream(self, name: str) -> UpstreamSpec:
        """The upstream called ``name``; a :class:`BadRequest` (param ``upstream``) if there is none."""
        for spec in self.upstreams:
            if spec.name == name:
                return spec
        raise BadRequest(f"no upstream is named {name!r}; the fleet has {', '.join(self.names)}", param="upstream")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.upstreams)

    @property
    def default(self) -> UpstreamSpec:
        """Where model-management calls go when the request names no upstream."""
        return self.upstream(self.default_upstream) if self.default_upstream else self.upstreams[0]


# ---- loading --------------------------------------------------------------------------

_SETTINGS = {f.name for f in fields(FleetConfig)} - {"upstreams"}
_UPSTREAM_KEYS = {"name", "url", "kind", "key", "key_env", "weight", "models"}


def _upstream_from(raw: object, where: str, env: Mapping[str, str]) -> UpstreamSpec:
    if not isinstance(raw, dict):
        raise _fail(where, "expected a table ([[upstream]])")
    unknown = sorted(set(raw) - _UPSTREAM_KEYS)
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"unknown field; expected one of {', '.join(sorted(_UPSTREAM_KEYS))}")
    for required in ("name", "url"):
        if required not in raw:
            raise _fail(f"{where}.{required}", "required")
    key = raw.get("key")
    if "key_env" in raw:
        if key is not None:
            raise _fail(f"{where}.key_env", "give key or key_env, not both")
        var = raw["key_env"]
        if not isinstance(var, str) or not env.get(var):
            raise _fail(f"{where}.key_env", f"environment variable {var!r} is not set")
        key = env[var]
    models = raw.get("models")
    if models is not None:
        if not isinstance(models, list):
            raise _fail(f"{where}.models", f"expected a list of model names, got {models!r}")
        models = tuple(models)
    weight = raw.get("weight", 1.0)
    return UpstreamSpec(
        name=raw["name"],
        url=raw["url"],
        kind=raw.get("kind", "ollama"),
        key=key,
        weight=weight,
        models=models,
        where=where,
    )


def fleet_from_dict(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> FleetConfig:
    """A fleet from the parsed TOML (see the module docstring); ``env`` resolves ``key_env`` (default: os.environ)."""
    env = os.environ if env is None else env
    unknown = sorted(set(data) - _SETTINGS - {"upstream"})
    if unknown:
        raise _fail(unknown[0], f"unknown setting; expected [[upstream]] or one of {', '.join(sorted(_SETTINGS))}")
    raw_upstreams = data.get("upstream", [])
    if not isinstance(raw_upstreams, list):
        raise _fail("upstream", "expected an array of tables ([[upstream]])")
    upstreams = tuple(_upstream_from(raw, f"upstream[{i}]", env) for i, raw in enumerate(raw_upstreams))
    settings = {k: v for k, v in data.items() if k in _SETTINGS}
    return FleetConfig(upstreams=upstreams, **settings)


def load_fleet(path: str | Path, env: Mapping[str, str] | None = None) -> FleetConfig:
    """Read and validate a fleet file; errors name the file and the field."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise FleetConfigError(f"fleet config {path}: cannot read: {exc.strerror or exc}", param="fleet") from None
    except tomllib.TOMLDecodeError as exc:
        raise FleetConfigError(f"fleet config {path}: invalid TOML: {exc}", param="fleet") from None
    try:
        return fleet_from_dict(data, env)
    except FleetConfigError as exc:
        raise FleetConfigError(f"{exc.message} (in {path})", param=exc.param) from None


def parse_upstream_arg(text: str, index: int) -> UpstreamSpec:
    """One ``--upstream`` value: ``[NAME=][KIND+]URL``, e.g. ``http://a:11434``, ``gpu2=http://b:11434``,
    ``vllm=openai+http://c:8000``. Unnamed upstreams are ``u1``, ``u2``... by position (``index`` counts from 0)."""
    name, sep, rest = text.partition("=")
    if not sep or "://" in name:  # "=" only inside the URL: no name given
        name, rest = f"u{index + 1}", text
    kind = "ollama"
    scheme, sep, tail = rest.partition("://")
    if sep and "+" in scheme:
        kind, _, scheme = scheme.partition("+")
        rest = f"{scheme}://{tail}"
    return UpstreamSpec(name=name, url=rest, kind=cast(Kind, kind), where=f"--upstream[{index}]")


def from_urls(urls: Sequence[str], *, routing: Routing = "cache-aware") -> FleetConfig:
    """A fleet from repeated ``--upstream`` values (see :func:`parse_upstream_arg`), other settings at defaults."""
    return FleetConfig(upstreams=tuple(parse_upstream_arg(u, i) for i, u in enumerate(urls)), routing=routing)
