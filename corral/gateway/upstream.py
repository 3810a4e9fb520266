"""Upstream: the server behind ``corral proxy``, and what the proxy reads back from its answers.

:class:`Upstream` opens one request to the server behind the proxy (an
Ollama, or another Corral) over :mod:`corral.gateway.http1`'s pooled
connections, passing the request line, headers and body through as they
came, except hop-by-hop headers and the client's credentials, which it
strips or replaces with the upstream's own key. A refused or failed
connection becomes :class:`corral.errors.BadGateway` naming the upstream.
:class:`AnswerTap` watches the bytes of an answer as they pass, without
holding them, and reads back what the request log wants: token counts, the
done reason and the upstream's own timings, from the last NDJSON object,
the SSE usage chunk or a small JSON body.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from corral.errors import BadGateway
from corral.gateway.http1 import Answer, ConnectError, Pool

log = logging.getLogger(__name__)

# Connection-level headers (RFC 9110 7.6.1): they describe one hop, not the request.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)
# The client's credentials for this gateway: never forwarded.
CREDENTIALS = frozenset({b"authorization", b"x-api-key"})
_NOT_FORWARDED = HOP_BY_HOP | CREDENTIALS | {b"content-length"}  # the proxy frames the body itself
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
TAIL_BYTES = 64 * 1024  # enough for the last NDJSON object of any answer, with its context array


@dataclass
class Upstream:
    """One server behind the proxy, at ``url`` (``http(s)://host[:port][/prefix]``); ValueError if malformed."""

    url: str
    key: str | None = None
    connect_timeout: float = 10.0
    _pool: Pool = field(init=False, repr=False)
    _prefix: bytes = field(init=False, repr=False)
    _fixed: bytes = field(init=False, repr=False)  # header lines every request carries: host, the upstream's key

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid upstream URL {self.url!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"invalid upstream URL {self.url!r}: expected http://HOST[:PORT][/PATH]")
        if self.key is not None and not (self.key.isascii() and self.key.isprintable()):
            raise ValueError("invalid upstream key: printable ASCII only")
        tls = parts.scheme == "https"
        self._pool = Pool(parts.hostname, port or (443 if tls else 80), tls=tls, connect_timeout=self.connect_timeout)
        self._prefix = parts.path.encode()
        fixed = b"host: %s\r\n" % parts.netloc.rpartition("@")[2].encode("idna")
        if self.key:
            fixed += b"authorization: Bearer %s\r\n" % self.key.encode()
        self._fixed = fixed

    @staticmethod
    def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The answer's headers that go on to the client (names are lower-case already)."""
        return [(k, v) for k, v in raw if k not in HOP_BY_HOP]

    async def open(
        self,
        method: str,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes],
    ) -> Answer:
        """Send the request (``target``: path and query as the client sent them); return at the answer's head."""
        head = [b"%s %s%s HTTP/1.1\r\n" % (method.encode(), self._prefix, target), self._fixed]
        for name, value in headers:
            if name not in _NOT_FORWARDED:
                head += (name, b": ", value, b"\r\n")
        if not isinstance(content, bytes):
            head.append(b"transfer-encoding: chunked\r\n")
        elif content or method in _BODY_METHODS:
            head.append(b"content-length: %d\r\n" % len(content))
        head.append(b"\r\n")
        try:
            return await self._pool.request(b"".join(head), content, head_only=method == "HEAD")
        except ConnectError as exc:
            raise BadGateway(f"upstream {self.url} is unreachable: {exc}") from None

    async def close(self) -> None:
        self._pool.close()


@dataclass
class AnswerTap:
    """What the request log learns from an answer passing through (see module docstring)."""

    media_type: str
    tail: bytearray = field(default_factory=bytearray)
    seen: int = 0
    usage_line: bytes | None = None
    sse: bool = field(init=False)

    def __post_init__(self) -> None:
        self.sse = self.media_type.startswith("text/event-stream")

    def feed(self, chunk: bytes) -> None:
        """Called per chunk relayed: kept to a few operations, and the tail trimmed only now and then."""
        self.seen += len(chunk)
        tail = self.tail
        tail += chunk
        if len(tail) > 2 * TAIL_BYTES:  # trimmed to TAIL_BYTES once per TAIL_BYTES fed, not on every chunk
            del tail[: len(tail) - TAIL_BYTES]
        if self.sse and b'"usage"' in chunk:
            self.usage_line = bytes(chunk)  # OpenAI's usage chunk comes alone, just before [DONE]

    def summary(self) -> dict[str, Any]:
        """``done_reason``, ``prompt_tokens``, ``output_tokens`` and upstream phases (ms), where the answer has them."""
        final = self._final()
        if final is None:
            return {}
        out: dict[str, Any] = {}
        if isinstance(final.get("usage"), dict):  # OpenAI shape
            usage = final["usage"]
            out["prompt_tokens"] = usage.get("prompt_tokens") or usage.get("input_tokens")
            out["output_tokens"] = usage.get("completion_tokens") or usage.get("output_tokens")
            return out
        for key, name in (
            ("prompt_eval_count", "prompt_tokens"),
            ("eval_count", "output_tokens"),
            ("done_reason", "done_reason"),
        ):
            if key in final:
                out[name] = final[key]
        for key, phase in (
            ("load_duration", "load"),
            ("prompt_eval_duration", "prompt_eval"),
            ("eval_duration", "generation"),
        ):
            if isinstance(final.get(key), int):
                out.setdefault("phases", {})[phase] = final[key] / 1e6
        return out

    def _final(self) -> dict[str, Any] | None:
        if self.sse:
            if self.usage_line is None:
                return None
            for line in self.usage_line.splitlines():
                if line.startswith(b"data: {"):
                    return _loads(line[6:])
            return None
        if self.media_type.startswith("application/json"):
            return _loads(bytes(self.tail)) if self.seen == len(self.tail) else None
        last = bytes(self.tail).rstrip()  # NDJSON: only the last line is parsed, once the answer is over
        return _loads(last[last.rfind(b"\n") + 1 :]) if last else None


def _loads(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
