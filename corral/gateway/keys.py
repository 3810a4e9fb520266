"""API keys: creation, lookup by visible prefix, constant-time verification, revocation.

A key reads ``corral-`` + 8 lookup characters + 43 random URL-safe characters
(about 300 bits in all). The database keeps the visible prefix
(``corral-XXXXXXXX``) and the SHA-256 of the whole key, never the key itself;
:meth:`KeyStore.verify` finds the row by prefix and compares hashes with
:func:`hmac.compare_digest`. A plain SHA-256 is enough because the keys are
random, not chosen by people.

A key created or revoked by another process (``corral keys ...``, or another
gateway replica sharing the database) takes effect at once, without a
restart. On SQLite the store remembers the active-key count and the keys it
has verified, and drops what it remembers whenever the file's key-change
counter (:mod:`corral.gateway.changes`, bumped by every create and revoke in
any process) moves: a request with a known key, or with none, then costs no
database read. On PostgreSQL every lookup queries the database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from corral.errors import BadRequest
from corral.gateway.db import Database, DatabaseError, IntegrityError, Row, utc_now_iso

log = logging.getLogger("corral.gateway.keys")

KEY_PREFIX = "corral-"
LOOKUP_CHARS = 8
PREFIX_LEN = len(KEY_PREFIX) + LOOKUP_CHARS
_LOOKUP_ALPHABET = string.ascii_letters + string.digits
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Compared against when no row has the prefix, so a miss costs what a wrong key costs.
_DUMMY_HASH = hashlib.sha256(b"corral-no-such-key").hexdigest()

Scope = Literal["user", "admin"]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key's public facts: never the secret nor its hash."""

    name: str
    scope: Scope
    prefix: str
    created_at: str
    last_used_at: str | None
    models: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    def allows_model(self, model: str) -> bool:
        """Whether the allowlist (if any) admits ``model``; ``x`` and ``x:latest`` are one model."""
        if self.models is None:
            return True
        return _with_tag(model) in {_with_tag(m) for m in self.models}


def _with_tag(model: str) -> str:
    base = model.rsplit("/", 1)[-1]
    return model if ":" in base else f"{model}:latest"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    lookup = "".join(secrets.choice(_LOOKUP_ALPHABET) for _ in range(LOOKUP_CHARS))
    return f"{KEY_PREFIX}{lookup}{secrets.token_urlsafe(32)}"


def _validate(name: str, models: Iterable[str] | None, rpm: int | None, tpm: int | None) -> tuple[str, ...] | None:
    if not _NAME.fullmatch(name):
        raise BadRequest(f"invalid key name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-'", param="name")
    for label, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadRequest(f"invalid {label} {value!r}: must be a positive integer", param=label)
    if models is None:
        return None
    cleaned = tuple(dict.fromkeys(m.strip() for m in models if m.strip()))
    if not cleaned:
        raise BadRequest("empty model allowlist: name at least one model, or give none to allow all", param="models")
    return cleaned


_COLUMNS = "name, scope, prefix, created_at, last_used_at, models, rpm, tpm"


def _from_row(row: Row) -> ApiKey:
    name, scope, prefix, created_at, last_used_at, models, rpm, tpm = row[:8]
    return ApiKey(
        name=name,
        scope="admin" if scope == "admin" else "user",
        prefix=prefix,
        created_at=created_at,
        last_used_at=last_used_at,
        models=tuple(json.loads(models)) if models is not None else None,
        rpm=rpm,
        tpm=tpm,
    )


class KeyStore:
    """API keys in the gateway database (see module docstring)."""

    def __init__(
        self, db: Database, *, touch_interval: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self.touch_interval = touch_interval
        self._clock = clock
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._changes = db.change_counter("keys")
        self._seen = -1  # the change count what is remembered below was read at
        self._active: int | None = None
        self._verified: dict[str, ApiKey] = {}  # hash of a secret -> its active key

    def _fresh(self) -> int:
        """The change count now, forgetting what was remembered if it moved; -1 where there is no counter."""
        if self._changes is None:
            return -1
        now = self._changes.value()
        if now != self._seen:
            self._active = None
            self._verified = {}
            self._seen = now
        return now

    def _changed(self) -> None:
        if self._changes is not None:
            self._changes.bump()

    def create(
        self,
        name: str,
        *,
        admin: bool = False,
        models: Iterable[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Store a new key; return it and its secret, which is shown this once and never again."""
        allow = _validate(name, models, rpm, tpm)
        conn = self.db.conn
        models_json = json.dumps(list(allow)) if allow is not None else None
        for _ in range(5):  # a prefix collision is ~1 in 10^14; retry rather than fail
            secret = new_secret()
            key = ApiKey(name, "admin" if admin else "user", secret[:PREFIX_LEN], utc_now_iso(), None, allow, rpm, tpm)
            try:
                with conn.transaction():
                    taken = conn.execute("SELECT 1 FROM keys WHERE name = ? AND revoked_at IS NULL", (name,)).fetchone()
                    if taken is not None:
                        raise BadRequest(
                            f'a key named "{name}" already exists: revoke it first or pick another name', param="name"
                        )
                    conn.execute(
                        "INSERT INTO keys(name, scope, prefix, hash, created_at, models, rpm, tpm)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (name, key.scope, key.prefix, hash_key(secret), key.created_at, models_json, rpm, tpm),
                    )
            except IntegrityError:  # the prefix, or the name, taken by a concurrent create: look again
                continue
            self._changed()
            log.info("created %s key %r (%s)", key.scope, name, key.prefix)
            return key, secret
        raise RuntimeError("could not allocate a unique key prefix")

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        """Keys in order of creation; revoked ones only when asked."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = self.db.conn.execute(f"SELECT {_COLUMNS} FROM keys{where} ORDER BY id").fetchall()
        return [_from_row(r) for r in rows]

    def get(self, name: str) -> ApiKey | None:
        row = self.db.conn.execute(
            f"SELECT {_COLUMNS} FROM keys WHERE name = ? AND revoked_at IS NULL", (name,)
        ).fetchone()
        return _from_row(row) if row is not None else None

    def revoke(self, name: str) -> bool:
        """Revoke the active key ``name``; False when there is none."""
        conn = self.db.conn
        with conn.transaction():
            cur = conn.execute(
                "UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (utc_now_iso(), name)
            )
        if cur.rowcount:
            self._changed()
            log.info("revoked key %r", name)
        return cur.rowcount > 0

    def verify(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, or None. Never logs the secret."""
        if not secret.startswith(KEY_PREFIX) or len(secret) <= PREFIX_LEN or len(secret) > 256:
            return None
        seen = self._fresh()  # read before the database, so a change made meanwhile is noticed next time
        digest = hash_key(secret)
        known = self._verified.get(digest)
        if known is not None:
            return known
        row = self.db.conn.execute(
            f"SELECT {_COLUMNS}, hash FROM keys WHERE prefix = ? AND revoked_at IS NULL", (secret[:PREFIX_LEN],)
        ).fetchone()
        stored = row["hash"] if row is not None else _DUMMY_HASH
        if not hmac.compare_digest(digest, stored) or row is None:
            return None
        key = _from_row(row)
        if seen >= 0 and self._seen == seen:  # unknown secrets are never remembered: they cannot grow this
            self._verified[digest] = key
        return key

    def touch(self, name: str) -> None:
        """Record that ``name`` was used; writes at most once per ``touch_interval`` per key."""
        now = self._clock()
        with self._lock:
            last = self._touched.get(name)
            if last is not None and now - last < self.touch_interval:
                return
            self._touched[name] = now
        try:
            self.db.conn.execute(
                "UPDATE keys SET last_used_at = ? WHERE name = ? AND revoked_at IS NULL", (utc_now_iso(), name)
            )
        except DatabaseError:
            log.warning("could not record last use of key %r", name, exc_info=True)

    def active_count(self) -> int:
        seen = self._fresh()
        if self._active is not None:
            return self._active
        row = self.db.conn.execute("SELECT count(*) FROM keys WHERE revoked_at IS NULL").one()
        count = int(row[0])
        if seen >= 0 and self._seen == seen:
            self._active = count
        return count
