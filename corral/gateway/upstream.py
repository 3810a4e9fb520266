"""Upstream: the HTTP client side of ``corral proxy``, and what it reads back from the answers.

:class:`Upstream` opens one request to the server behind the proxy (an
Ollama, or another Corral), passing headers and body through except the
client's credentials, which it strips or replaces with the upstream's own
key. A refused or failed connection becomes :class:`corral.errors.BadGateway`
naming the upstream. :class:`AnswerTap` watches the bytes of an answer as
they pass, without holding them, and reads back what the request log wants:
token counts, the done reason and the upstream's own timings, from the last
NDJSON object, the SSE usage chunk or a small JSON body.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from corral.errors import BadGateway

log = logging.getLogger(__name__)

# Connection-level headers (RFC 9110 7.6.1) and the ones the client lib sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# The client's credentials for this gateway: never forwarded.
CREDENTIALS = frozenset({"authorization", "x-api-key"})
TAIL_BYTES = 64 * 1024  # enough for the last NDJSON object of any answer, with its context array


@dataclass
class Upstream:
    """One server behind the proxy.

    aiohttp's client, not httpx: measured on this path (one streamed request
    after another on loopback) it spends ~150 µs of CPU per request against
    httpx's ~650 µs, and that difference is most of what the proxy adds.
    """

    url: str
    key: str | None = None
    connect_timeout: float = 10.0
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the running event loop
            # No read timeout: a generation may think for minutes between tokens.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                auto_decompress=False,  # bytes pass through as the upstream encoded them
                # No cookie jar: cookies belong to the callers, and one caller's must never ride along on
                # another's request (it also saves a lookup per request).
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    def request_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        out = [
            (k, v)
            for k, v in headers
            if k.lower() not in HOP_BY_HOP and k.lower() not in CREDENTIALS and k.lower() != "content-length"
        ]
        if self.key:
            out.append(("authorization", f"Bearer {self.key}"))
        return out

    @staticmethod
    def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [(k.lower(), v) for k, v in raw if k.decode("latin-1").lower() not in HOP_BY_HOP]

    async def open(
        self,
        method: str,
        path: str,
        query: str,
        headers: Iterable[tuple[str, str]],
        content: bytes | AsyncIterator[bytes],
    ) -> aiohttp.ClientResponse:
        """Send the request and return once the upstream's status and headers are in (body still streaming)."""
        url = self.url + path + (f"?{query}" if query else "")
        try:
            return await self._client().request(
                method, url, headers=self.request_headers(headers), data=content, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BadGateway(f"upstream {self.url} is unreachable: {_reason(exc)}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


@dataclass
class AnswerTap:
    """What the request log learns from an answer passing through (see module docstring)."""

    media_type: str
    tail: bytearray = field(default_factory=bytearray)
    seen: int = 0
    usage_line: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        self.tail += chunk
        if len(self.tail) > TAIL_BYTES:
            del self.tail[: len(self.tail) - TAIL_BYTES]
        if b'"usage"' in chunk and self.media_type.startswith("text/event-stream"):
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
        if self.media_type.startswith("text/event-stream"):
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
