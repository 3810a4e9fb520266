"""One remote registry host: its HTTP client, who may see its API key, and how its errors read.

:class:`Registry` is what :mod:`corral.registry.client` talks to for one pull or
push: the base URL (``https://<host>``, ``http://`` when insecure), one
``httpx.AsyncClient``, the operator's API key for that host
(``CORRAL_REGISTRY_KEYS``) and a token from the anonymous Docker token flow.
The key is sent up front, as ``Authorization: Bearer``, to the base URL's
origin only; nothing here puts it in a log line or an error message.
:func:`status_error` turns an error answer into the :class:`CorralError` the
HTTP layer renders: 404 ``file does not exist``, 401 naming the registry (and
the setting to fix when the registry asks for a key), 403, else a 502
:class:`RegistryError`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

import httpx

from corral import __version__
from corral.errors import CorralError, Forbidden, NotFound, Unauthorized
from corral.store.names import ModelName


class RegistryError(CorralError):
    """The registry was unreachable or answered with an error (502)."""

    status = 502


class RegistryUnauthorized(Unauthorized):
    """The registry answered 401. A 401 of this server's own, but with no challenge: the
    client of ``/api/pull`` did nothing wrong with its own key."""

    headers: Mapping[str, str] = {}


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


class Registry:
    """One registry host: base URL, an HTTP client, the host's API key and an optional bearer token.

    The key goes only to requests for the base URL's own origin (scheme, host and
    port), redirects included: the client's request hook adds it there and strips
    it from anything else (httpx drops it on a cross-origin redirect already; an
    upload ``Location`` on another host is covered too). A token from the Docker
    token flow, once there is one, is sent instead.
    """

    def __init__(
        self, name: ModelName, insecure: bool, transport: httpx.AsyncBaseTransport | None, key: str | None = None
    ) -> None:
        self.name = name
        self.base = f"{'http' if insecure else 'https'}://{name.host}"
        self.repo = f"{name.namespace}/{name.model}"
        self.token: str | None = None
        self._key = key or None
        self._bearer = f"Bearer {key}" if key else None
        self._origin = _origin(httpx.URL(self.base))
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, read=300.0, write=300.0),
            follow_redirects=True,
            transport=transport,
            headers={"User-Agent": f"corral/{__version__} (ollama compatible)"},
            event_hooks={"request": [self._authorize]},
        )

    @property
    def keyed(self) -> bool:
        """Whether an API key is configured for this registry."""
        return self._bearer is not None

    async def _authorize(self, request: httpx.Request) -> None:
        """Request hook (each hop of a redirect too): the key for this origin, and nowhere else."""
        if self._bearer is None:
            return
        if _origin(request.url) == self._origin:
            request.headers.setdefault("Authorization", self._bearer)
        elif request.headers.get("Authorization") == self._bearer:
            del request.headers["Authorization"]

    def url(self, kind: str, ref: str) -> str:
        return f"{self.base}/v2/{self.repo}/{kind}/{ref}"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def open(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        content: Any = None,
        ok: tuple[int, ...] = (),
    ) -> httpx.Response:
        """Send a request and return the (unread, streaming) response.

        Answers one bearer-token challenge; maps transport failures and error
        statuses (other than those in ``ok``) to CorralErrors prefixed by
        ``what``. The caller must ``aclose()`` the response.
        """
        for attempt in range(2):
            hdrs = dict(headers or {})
            if self.token:
                hdrs["Authorization"] = f"Bearer {self.token}"
            request = self.http.build_request(method, url, headers=hdrs, content=content)
            try:
                resp = await self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise RegistryError(f"{what}: {self.describe(exc)}") from None
            if resp.status_code < 400 or resp.status_code in ok:
                return resp
            with contextlib.suppress(httpx.TransportError):
                await resp.aread()
            await resp.aclose()
            replayable = content is None or isinstance(content, bytes)
            if resp.status_code == 401 and attempt == 0 and replayable and await self._authenticate(resp):
                continue
            raise status_error(resp, what, self.name.host, keyed=self.keyed and self.token is None, key=self._key)
        raise RegistryUnauthorized(f"{what}: unauthorized: access denied by registry {self.name.host}")

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        content: Any = None,
        ok: tuple[int, ...] = (),
    ) -> httpx.Response:
        resp = await self.open(method, url, what=what, headers=headers, content=content, ok=ok)
        try:
            await resp.aread()
        except httpx.TransportError as exc:
            raise RegistryError(f"{what}: {self.describe(exc)}") from None
        finally:
            await resp.aclose()
        return resp

    async def _authenticate(self, resp: httpx.Response) -> bool:
        """Anonymous Docker token flow for a ``WWW-Authenticate: Bearer`` challenge."""
        challenge = resp.headers.get("www-authenticate", "")
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            return False
        try:
            r = await self.http.get(realm, params=params)
            body = r.json() if r.status_code == 200 else {}
            token = body.get("token") or body.get("access_token")
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        self.token = token if isinstance(token, str) and token else None
        return self.token is not None

    def describe(self, exc: httpx.TransportError) -> str:
        if isinstance(exc, httpx.ConnectError):
            hint = ' (a plain-http registry needs "insecure")' if "SSL" in str(exc) else ""
            return f"could not connect to registry {self.base}: {exc or 'connection refused'}{hint}"
        if isinstance(exc, httpx.TimeoutException):
            return f"registry {self.base} timed out"
        return f"registry {self.base}: {type(exc).__name__}: {exc}"


def status_error(resp: httpx.Response, what: str, host: str, *, keyed: bool, key: str | None = None) -> CorralError:
    """Turn a registry error response into the CorralError the caller raises.

    ``keyed``: whether the configured key was what this request carried. A 401
    names the registry, and says what to configure when the registry asks for a
    key (a Bearer challenge with no token realm to fetch one from, as Corral's).
    ``key``, should the registry's own words echo it, is blanked out of them.
    """
    if resp.status_code == 404:
        return NotFound(f"{what}: file does not exist")
    detail = _error_detail(resp)
    if key:
        detail = detail.replace(key, "<key>")
    if resp.status_code == 401:
        if keyed:
            hint = f"registry {host} refused the key configured for it in CORRAL_REGISTRY_KEYS"
        elif _wants_key(resp):
            hint = f"registry {host} needs an API key: give this server one with CORRAL_REGISTRY_KEYS={host}=<key>"
        else:
            hint = f"access denied by registry {host}"
        return RegistryUnauthorized(f"{what}: unauthorized: {hint}" + (f" ({detail})" if detail else ""))
    if resp.status_code == 403:
        return Forbidden(f"{what}: forbidden by registry {host}: {detail or 'access denied'}")
    return RegistryError(f"{what}: {resp.status_code}: {detail}")


def _wants_key(resp: httpx.Response) -> bool:
    """A ``Bearer`` challenge whose realm is no token service (``Bearer realm="corral"``): send a key."""
    challenge = resp.headers.get("www-authenticate", "")
    if not challenge.lower().startswith("bearer"):
        return False
    realm = dict(re.findall(r'(\w+)="([^"]*)"', challenge)).get("realm", "")
    return not realm.startswith(("https://", "http://"))


def _error_detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except httpx.ResponseNotRead:
        return ""
    except ValueError:
        return resp.text[:500].strip()
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return "; ".join(
            f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in body["errors"] if isinstance(e, dict)
        )
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return resp.text[:500].strip()
