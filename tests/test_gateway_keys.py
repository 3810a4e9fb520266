"""API keys on both backends (a SQLite file, a PostgreSQL database): lifecycle, hashing, prefix lookup, visibility."""

from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path
from typing import Any

import pytest

from corral.errors import BadRequest
from corral.gateway.db import Database, IntegrityError, database_url, default_db_path, open_database
from corral.gateway.keys import KEY_PREFIX, PREFIX_LEN, KeyStore
from corral.settings import Settings


def test_default_path_is_under_corral_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"CORRAL_HOME": str(tmp_path)})
    assert default_db_path(settings) == tmp_path / "corral.db"
    assert database_url(settings) == str(tmp_path / "corral.db")
    pg = Settings.from_env({"CORRAL_HOME": str(tmp_path), "CORRAL_DB": "postgresql://u:p@db:5432/corral"})
    assert database_url(pg) == "postgresql://u:p@db:5432/corral"


def test_create_verify_and_list(db: Database) -> None:
    store = KeyStore(db)
    key, secret = store.create("ci", models=["smollm2:135m", "all-minilm"], rpm=10, tpm=1000)
    assert secret.startswith(KEY_PREFIX) and len(secret) >= 50
    assert key.prefix == secret[:PREFIX_LEN]
    assert (key.scope, key.admin, key.models, key.rpm, key.tpm) == (
        "user",
        False,
        ("smollm2:135m", "all-minilm"),
        10,
        1000,
    )
    found = store.verify(secret)
    assert found is not None and found.name == "ci" and found.models == key.models
    admin, admin_secret = store.create("root", admin=True)
    assert admin.admin and admin.models is None
    assert [k.name for k in store.list()] == ["ci", "root"]
    assert store.active_count() == 2
    assert admin_secret != secret


def test_wrong_or_malformed_secrets_are_refused(db: Database) -> None:
    store = KeyStore(db)
    _, secret = store.create("ci")
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for bad in (
        flipped,
        secret + "x",
        secret[:PREFIX_LEN],
        "",
        "Bearer " + secret,
        secret.upper(),
        KEY_PREFIX + "zzzzzzzz" + secret[PREFIX_LEN:],
    ):
        assert store.verify(bad) is None, bad


def test_only_the_hash_is_stored(db: Database, tmp_path: Path) -> None:
    store = KeyStore(db)
    _, secret = store.create("ci")
    stored = db.conn.execute("SELECT prefix, hash FROM keys WHERE name = 'ci'").fetchone()
    assert stored == (secret[:PREFIX_LEN], hashlib.sha256(secret.encode()).hexdigest())
    columns = db.conn.execute("SELECT * FROM keys").fetchall()[0]
    assert secret not in [str(v) for v in columns]
    if db.dialect.name != "sqlite":
        return
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("corral.db"))
    assert secret[:PREFIX_LEN].encode() in raw  # the visible prefix is there ...
    assert secret.encode() not in raw  # ... the key is not
    assert secret[PREFIX_LEN:].encode() not in raw


def test_lookup_is_by_prefix_and_compare_is_constant_time(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(db)
    _, secret = store.create("ci")
    store.create("other")
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # keys.py calls hmac.compare_digest
    statements: list[str] = []
    conn = db.conn
    real_execute = conn.execute

    def traced(sql: str, params: Any = ()) -> Any:
        statements.append(sql)
        return real_execute(sql, params)

    conn.execute = traced  # type: ignore[method-assign]
    try:
        assert store.verify(secret) is not None
    finally:
        del conn.execute
    assert compared == [(hashlib.sha256(secret.encode()).hexdigest(),) * 2]
    assert any("WHERE prefix = " in s for s in statements)
    # a prefix that matches no row still costs one comparison, against a dummy hash
    compared.clear()
    assert store.verify(KEY_PREFIX + "00000000" + secret[PREFIX_LEN:]) is None
    assert len(compared) == 1


def test_revoke(db: Database) -> None:
    store = KeyStore(db)
    _, secret = store.create("ci")
    assert store.revoke("ci") is True
    assert store.verify(secret) is None
    assert store.revoke("ci") is False
    assert store.revoke("never-was") is False
    assert store.list() == [] and store.active_count() == 0
    assert [k.name for k in store.list(include_revoked=True)] == ["ci"]
    # the name is free again, with a new secret
    _, again = store.create("ci")
    assert again != secret and store.verify(again) is not None


def test_duplicate_and_invalid_names(db: Database) -> None:
    store = KeyStore(db)
    store.create("ci")
    with pytest.raises(BadRequest, match='"ci" already exists'):
        store.create("ci")
    for bad in ("", "has space", "x" * 65, "semi;colon", "ünï"):
        with pytest.raises(BadRequest, match="invalid key name"):
            store.create(bad)
    with pytest.raises(BadRequest, match="rpm"):
        store.create("zero", rpm=0)
    with pytest.raises(BadRequest, match="allowlist"):
        store.create("empty", models=["", " "])
    assert store.active_count() == 1


def test_visible_to_a_second_store_on_the_same_database(db: Database) -> None:
    """As a running server sees keys the CLI (or another replica) creates: another connection, no restart."""
    server = KeyStore(open_database(db.url))
    cli = KeyStore(open_database(db.url))
    assert server.active_count() == 0
    _, secret = cli.create("late")
    found = server.verify(secret)
    assert found is not None and found.name == "late"
    assert cli.revoke("late")
    assert server.verify(secret) is None


def test_touch_is_throttled(db: Database) -> None:
    now = [1000.0]
    store = KeyStore(db, touch_interval=5.0, clock=lambda: now[0])
    store.create("ci")
    store.touch("ci")
    first = store.get("ci")
    assert first is not None and first.last_used_at is not None
    db.conn.execute("UPDATE keys SET last_used_at = 'marker' WHERE name = 'ci'")
    now[0] += 1.0
    store.touch("ci")  # within the interval: no write
    assert db.conn.execute("SELECT last_used_at FROM keys WHERE name = 'ci'").fetchone()[0] == "marker"
    now[0] += 5.0
    store.touch("ci")
    assert db.conn.execute("SELECT last_used_at FROM keys WHERE name = 'ci'").fetchone()[0] != "marker"


def test_model_allowlist_treats_latest_tag_as_same_model(db: Database) -> None:
    key, _ = KeyStore(db).create("ci", models=["llama3", "smollm2:135m"])
    assert key.allows_model("llama3:latest") and key.allows_model("llama3")
    assert key.allows_model("smollm2:135m")
    assert not key.allows_model("smollm2") and not key.allows_model("qwen2.5:7b")


def test_the_name_is_unique_among_active_keys_in_the_database_too(db: Database) -> None:
    KeyStore(db).create("ci")
    with pytest.raises(IntegrityError):
        db.conn.execute(
            "INSERT INTO keys(name, scope, prefix, hash, created_at) VALUES ('ci', 'user', 'p', 'h', 'now')"
        )
    db.conn.execute("UPDATE keys SET revoked_at = 'now'")
    db.conn.execute("INSERT INTO keys(name, scope, prefix, hash, created_at) VALUES ('ci', 'user', 'p', 'h', 'now')")


def test_concurrent_creates_of_one_name_make_one_key(db: Database) -> None:
    """Two writers (two replicas) race to create the same name: one key results, the other gets a 400."""
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def create() -> None:
        own = open_database(db.url)
        barrier.wait()
        try:
            KeyStore(own).create("racer")
            outcomes.append("created")
        except BadRequest:
            outcomes.append("refused")
        finally:
            own.close()

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created", "refused", "refused", "refused"]
    assert [k.name for k in KeyStore(db).list()] == ["racer"]


# ---- the SQLite key cache and its change counter --------------------------------------------------------------


def _reads(database: Database) -> list[str]:
    """Every SQL statement this thread's SQLite connection runs from now on."""
    seen: list[str] = []
    database.conn.raw.set_trace_callback(seen.append)  # type: ignore[attr-defined]
    return seen


def test_on_sqlite_a_known_key_and_the_key_count_cost_no_database_read(tmp_path: Path) -> None:
    server_db, cli_db = open_database(str(tmp_path / "g.db")), open_database(str(tmp_path / "g.db"))
    server_db.migrate()
    server, cli = KeyStore(server_db), KeyStore(cli_db)
    _, secret = cli.create("ci")
    assert server.active_count() == 1 and server.verify(secret) is not None
    reads = _reads(server_db)
    for _ in range(3):
        assert server.active_count() == 1
        found = server.verify(secret)
        assert found is not None and found.name == "ci"
    assert reads == []
    assert server.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None  # a wrong key is asked
    assert len(reads) == 1
    # another process's change moves the counter: the next check reads the database again, and sees it
    _, other = cli.create("other")
    assert cli.revoke("ci")
    assert server.verify(secret) is None and server.active_count() == 1
    assert server.verify(other) is not None
    assert (tmp_path / "g.db-keys").stat().st_size == 8


def test_change_counter_is_shared_and_loses_no_bump(tmp_path: Path) -> None:
    from corral.gateway.changes import ChangeCounter

    a, b = ChangeCounter(tmp_path / "c"), ChangeCounter(tmp_path / "c")
    assert a.value() == b.value() == 0
    threads = [threading.Thread(target=lambda c=c: [c.bump() for _ in range(200)]) for c in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.value() == b.value() == 800
