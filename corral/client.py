"""HTTP client the CLI uses to talk to a running Corral (or Ollama) server.

The server address comes from ``CORRAL_HOST``, then ``OLLAMA_HOST``, then
``127.0.0.1:11434``; the API key, sent as ``Authorization: Bearer``, from
``CORRAL_API_KEY``, then ``OLLAMA_API_KEY``. Errors come back as
:class:`ClientError` carrying the server's ``error`` message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from corral.settings import parse_host


class ClientError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def base_url(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    raw = env.get("CORRAL_HOST") or env.get("OLLAMA_HOST") or ""
    scheme, host, port = parse_host(raw)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


class Client:
    def __init__(self, url: str | None = None, *, api_key: str | None = None) -> None:
        headers = {}
        key = api_key or os.environ.get("CORRAL_API_KEY") or os.environ.get("OLLAMA_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(base_url=url or base_url(), timeout=httpx.Timeout(None, connect=5.0), headers=headers)

    def _raise(self, r: httpx.Response) -> None:
        if r.status_code >= 400:
            r.read()
            try:
                message = r.json().get("error", r.text)
            except ValueError:
                message = r.text
            if isinstance(message, dict):
                message = message.get("message", str(message))
            raise ClientError(str(message), r.status_code)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            r = self.http.request(method, path, json=body)
        except httpx.ConnectError as exc:
            raise ClientError(
                f"could not connect to the server at {self.http.base_url}: is `corral serve` running?"
            ) from exc
        self._raise(r)
        return r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else None

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        try:
            with self.http.stream("POST", path, json=body) as r:
                self._raise(r)
                for line in r.iter_lines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if "error" in item:
                        raise ClientError(str(item["error"]))
                    yield item
        except httpx.ConnectError as exc:
            raise ClientError(
                f"could not connect to the server at {self.http.base_url}: is `corral serve` running?"
            ) from exc

    def has_blob(self, digest: str) -> bool:
        r = self.http.head(f"/api/blobs/{digest}")
        return r.status_code == 200

    def upload_blob(self, path: Path, digest: str) -> None:
        if self.has_blob(digest):
            return
        with open(path, "rb") as fh:
            r = self.http.post(f"/api/blobs/{digest}", content=iter(lambda: fh.read(1 << 20), b""))
        self._raise(r)
