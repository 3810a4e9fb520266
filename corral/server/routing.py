"""Route matching done once per request: a cache of matches and the router that reuses them.

Starlette's router tries each route's regular expression in turn on every
request, and the gateway middleware (which must know the route, its dialect
and scope before the endpoint runs) would do the same walk again. A
:class:`RouteTable` remembers the outcome per (method, path) — a route's
match depends on nothing else — and :class:`CachedRouter` is Starlette's
router reading from the same table, so a request is matched once, and a
path seen before costs one dict lookup. The table is bounded: when full it
starts again empty, so many distinct paths (blob digests, static files)
cannot grow it without limit. Paths no route matches are not remembered and
are left to Starlette's own code (404s, trailing-slash redirects). The table
and the router share one list of routes, so a route added to the app later
is seen by both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Router
from starlette.types import Receive, Scope, Send

Found = tuple[BaseRoute | None, Scope]
MAX_ENTRIES = 2048


class RouteTable:
    """The first route that fully matches a request (else the first partial match), remembered per path."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = list(routes)
        self._seen: dict[tuple[str, str, str, str], Found] = {}

    def match(self, scope: Scope) -> Found:
        """``(route, child_scope)`` (``(None, {})`` when nothing matches); the child scope is the caller's own."""
        key = (scope["type"], scope.get("method", ""), scope.get("root_path", ""), scope["path"])
        found = self._seen.get(key)
        if found is None:
            found = self._walk(scope)
            if found[0] is None:
                return found
            if len(self._seen) >= MAX_ENTRIES:
                self._seen.clear()
            self._seen[key] = found
        route, child = found
        if "path_params" in child:  # a fresh dict per request: nothing downstream can change the cached one
            child = {**child, "path_params": dict(child["path_params"])}
        return route, child

    def _walk(self, scope: Scope) -> Found:
        partial: Found = (None, {})
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return route, child
            if match is Match.PARTIAL and partial[0] is None:
                partial = (route, child)
        return partial


class CachedRouter(Router):
    """Starlette's router over a :class:`RouteTable` (same routes, same order, same outcome)."""

    def __init__(self, table: RouteTable, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.routes = table.routes
        self.table = table

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().app(scope, receive, send)
            return
        route, child = self.table.match(scope)
        if route is None:  # 404 or a trailing-slash redirect: Starlette decides
            await super().app(scope, receive, send)
            return
        scope.setdefault("router", self)
        scope["route"] = route
        scope.update(child)
        await route.handle(scope, receive, send)
