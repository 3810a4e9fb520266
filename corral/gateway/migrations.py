"""The gateway schema: an ordered list of named migrations, applied by :meth:`Database.migrate`.

Append only: never edit or reorder a migration that has shipped; change the
schema with a new one. Each function receives a :class:`Connection` inside the
transaction that records it, and writes its DDL once for both backends, taking
from :attr:`Connection.dialect` what differs: the auto-numbered key column
(SQLite ``INTEGER PRIMARY KEY``, PostgreSQL an identity ``BIGINT``), 8-byte
floats for timestamps and milliseconds (``REAL`` / ``DOUBLE PRECISION``, so no
precision is lost), and booleans. Counters are ``BIGINT`` on both.
"""

from __future__ import annotations

from corral.gateway.db import Connection, Migration


def m001_keys(conn: Connection) -> None:
    """API keys: only the SHA-256 of a key is kept, found by its visible prefix."""
    conn.execute(f"""
        CREATE TABLE keys (
            id {conn.dialect.serial_key},
            name TEXT NOT NULL,
            scope TEXT NOT NULL CHECK (scope IN ('user', 'admin')),
            prefix TEXT NOT NULL,
            hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            models TEXT,
            rpm BIGINT,
            tpm BIGINT,
            revoked_at TEXT
        )""")
    conn.execute("CREATE UNIQUE INDEX keys_prefix ON keys(prefix)")
    conn.execute("CREATE UNIQUE INDEX keys_active_name ON keys(name) WHERE revoked_at IS NULL")


def m002_requests(conn: Connection) -> None:
    """The request log: one row per request, phases in milliseconds."""
    d = conn.dialect
    conn.execute(f"""
        CREATE TABLE requests (
            rowid {d.serial_key},
            id TEXT NOT NULL,
            ts {d.real} NOT NULL,
            key_name TEXT,
            client TEXT,
            user_agent TEXT,
            method TEXT,
            path TEXT,
            route TEXT,
            dialect TEXT,
            model TEXT,
            status INTEGER,
            error TEXT,
            stream {d.boolean},
            done_reason TEXT,
            prompt_tokens BIGINT,
            output_tokens BIGINT,
            bytes_in BIGINT,
            bytes_out BIGINT,
            auth_ms {d.real},
            queue_ms {d.real},
            load_ms {d.real},
            prompt_eval_ms {d.real},
            ttft_ms {d.real},
            generation_ms {d.real},
            client_io_ms {d.real},
            upstream_ms {d.real},
            total_ms {d.real},
            upstream TEXT
        )""")
    conn.execute("CREATE INDEX requests_ts ON requests(ts)")
    conn.execute("CREATE INDEX requests_key_ts ON requests(key_name, ts)")
    conn.execute("CREATE INDEX requests_model_ts ON requests(model, ts)")


def m003_beacons(conn: Connection) -> None:
    """Playground analytics events; ``data`` is the whole validated event as JSON."""
    d = conn.dialect
    conn.execute(f"""
        CREATE TABLE beacons (
            rowid {d.serial_key},
            ts {d.real} NOT NULL,
            key_name TEXT,
            event TEXT NOT NULL,
            model TEXT,
            status INTEGER,
            error TEXT,
            data TEXT NOT NULL
        )""")
    conn.execute("CREATE INDEX beacons_ts ON beacons(ts)")


def m004_responses(conn: Connection) -> None:
    """Stored ``/v1/responses`` answers: the response object as JSON, and the conversation up to and
    including it as internal chat messages, which ``previous_response_id`` continues from."""
    conn.execute(f"""
        CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            created_at {conn.dialect.real} NOT NULL,
            model TEXT NOT NULL,
            previous_response_id TEXT,
            response TEXT NOT NULL,
            messages TEXT NOT NULL
        )""")
    conn.execute("CREATE INDEX responses_created_at ON responses(created_at)")


def m005_rate_events(conn: Connection) -> None:
    """Rate-limit windows shared by every process on the database: one row per admitted request of a key
    with an rpm (``requests`` = 1) and one per answer counted against a key with a tpm (``tokens``)."""
    conn.execute(f"""
        CREATE TABLE rate_events (
            key_name TEXT NOT NULL,
            ts {conn.dialect.real} NOT NULL,
            requests BIGINT NOT NULL,
            tokens BIGINT NOT NULL
        )""")
    conn.execute("CREATE INDEX rate_events_key_ts ON rate_events(key_name, ts)")


MIGRATIONS: tuple[Migration, ...] = (m001_keys, m002_requests, m003_beacons, m004_responses, m005_rate_events)
