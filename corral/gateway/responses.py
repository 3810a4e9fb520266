"""ResponseStore: stored ``/v1/responses`` answers in the gateway's database.

OpenAI's Responses API is stateful: a response made with ``store`` (the
default) can be read back (``GET /v1/responses/{id}``), deleted, and
continued by a later request's ``previous_response_id``. Each row keeps the
response object exactly as it was answered, and the conversation up to and
including it as internal chat messages (``instructions`` excluded: they do
not carry over to the next response), so a continuation only has to append
its own input. Rows live in the gateway database (migration
``m004_responses``): ``<CORRAL_HOME>/corral.db``, or the PostgreSQL of
``--db``, so they survive a restart and every process or replica sharing the
database sees them.

The methods are synchronous database calls; the server runs them in a worker
thread (each thread gets its own connection from :class:`Database`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from corral.gateway.db import Database, open_database


@dataclass
class StoredResponse:
    response: dict[str, Any]
    messages: list[dict[str, Any]]


class ResponseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, url: str) -> ResponseStore:
        """The store in the database at ``url`` (a SQLite path or a PostgreSQL URL), migrated."""
        db = open_database(url)
        db.migrate()
        return cls(db)

    def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        """Store ``response`` (replacing a stored one with the same id) and its conversation."""
        self.db.conn.execute(
            "INSERT INTO responses(id, created_at, model, previous_response_id, response, messages) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, "
            "model = excluded.model, previous_response_id = excluded.previous_response_id, "
            "response = excluded.response, messages = excluded.messages",
            (
                response["id"],
                float(response.get("created_at") or time.time()),
                str(response.get("model", "")),
                response.get("previous_response_id"),
                json.dumps(response),
                json.dumps(messages),
            ),
        )

    def get(self, response_id: str) -> StoredResponse | None:
        row = self.db.conn.execute("SELECT response, messages FROM responses WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]))

    def delete(self, response_id: str) -> bool:
        return self.db.conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def close(self) -> None:
        self.db.close()
