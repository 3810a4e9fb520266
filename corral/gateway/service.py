"""The gateway of one server: its database, keys, rate limits, request log and metrics, and the auth rules.

:meth:`Gateway.open` builds them once from :class:`~corral.settings.Settings`
(the database of ``--db`` / ``CORRAL_DB``, by default the SQLite file
``<CORRAL_HOME>/corral.db``, migrated; rate-limit windows live in it too, so
replicas sharing a PostgreSQL share them); the app starts the
log writer with :meth:`Gateway.start` and flushes it with
:meth:`Gateway.close` at shutdown. The HTTP side (``corral.server``) holds
one ``Gateway`` and reads these objects from it; nothing here imports
Starlette.

The rules for when a key is needed:

* ``--no-auth`` (``CORRAL_NO_AUTH=1``): never; every caller may do everything.
* No active key and a loopback bind address: none needed, as with Ollama.
* Otherwise, every route but the open ones needs a valid key. Keys created
  or revoked by ``corral keys`` count at once (:mod:`corral.gateway.keys` says how).
* A non-loopback bind with no key at all refuses to start
  (:func:`check_bind`) unless ``--no-auth`` is given; should every key be
  revoked while it runs, it stays closed (401) rather than fall open.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from functools import cached_property

from corral.gateway.db import Database, database_url, open_database
from corral.gateway.keys import KeyStore
from corral.gateway.limits import DbRateLimiter, Limiter
from corral.gateway.metrics import Metrics
from corral.gateway.requestlog import RequestLog
from corral.settings import Settings

log = logging.getLogger("corral.gateway")

CREATE_KEY_HINT = "corral keys create NAME --admin"


class StartupRefused(Exception):
    """The server must not start as configured; the message says what to do."""


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` only accepts connections from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def check_bind(settings: Settings, active_keys: int) -> None:
    """Refuse to serve a non-loopback address with no API key, unless auth is off on purpose."""
    if settings.no_auth or active_keys > 0 or is_loopback(settings.host):
        return
    raise StartupRefused(
        f"refusing to listen on {settings.host}:{settings.port} with no API keys: anyone who can reach it "
        f"could use it. Create a key first with `{CREATE_KEY_HINT}` (then send it as "
        "'Authorization: Bearer <key>'), bind to 127.0.0.1, or pass --no-auth to serve without keys."
    )


@dataclass
class Gateway:
    """The gateway objects of one server (see module docstring)."""

    settings: Settings
    db: Database
    keys: KeyStore
    limiter: Limiter
    log: RequestLog
    metrics: Metrics

    @classmethod
    def open(cls, settings: Settings) -> Gateway:
        db = open_database(database_url(settings))
        db.migrate()
        retention = settings.log_retention if settings.log_retention > 0 else None
        return cls(
            settings, db, KeyStore(db), DbRateLimiter(db), RequestLog(db, retention_seconds=retention), Metrics()
        )

    @cached_property
    def loopback(self) -> bool:
        return is_loopback(self.settings.host)

    def auth_required(self) -> bool:
        """Whether a request to a non-open route needs a key right now."""
        if self.settings.no_auth:  # open on any address while no key exists; a key, once created, is checked
            return self.keys.active_count() > 0
        return not self.loopback or self.keys.active_count() > 0

    def check_bind(self) -> None:
        check_bind(self.settings, self.keys.active_count())

    def start(self) -> None:
        if self.settings.no_auth and not self.loopback:
            log.warning(
                "--no-auth: serving %s with no API key required until one is created in %s",
                self.settings.host,
                self.db.display,
            )
        log.info("gateway database: %s", self.db.display)
        self.log.start()

    def close(self) -> None:
        """Flush the request log (every row submitted so far is written) and close this thread's connection."""
        self.log.close()
        self.db.close()
