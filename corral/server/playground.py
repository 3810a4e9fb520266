"""The playground page: static files from ``corral/playground/static``, served at ``/playground/``.

The page is plain ES modules and vendored libraries (no build step, nothing
from a CDN). Its routes are ``open``: a browser cannot attach a key to a
page or a ``<script src>``; every API call the page makes sends the key
itself. ``GET /playground`` redirects to ``/playground/`` so relative URLs
resolve inside it, and ``GET /`` redirects a browser there
(:func:`wants_html`, used by the root handler).

The HTML carries a strict ``Content-Security-Policy`` (scripts and styles
from this origin only, no inline script, no plugins, no framing) as a second
wall behind the page's sanitiser: model output is rendered as Markdown and
must never run. API calls may go to any server the user names
(``connect-src *``). Files are revalidated on each load (``no-cache`` with
an ``ETag``). Asset fetches are not written to the request log
(:data:`corral.server.context.UNLOGGED`), which is for API calls.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from corral.errors import NotFound
from corral.server.context import UNLOGGED, context_of
from corral.server.errors import OLLAMA, route_factory

route = route_factory(OLLAMA)

STATIC = Path(__file__).resolve().parent.parent / "playground" / "static"
PAGE = "/playground/"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src *; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}


def wants_html(request: Request) -> bool:
    """A browser navigating here (it asks for HTML); API clients ask for anything else."""
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


def static_file(rel: str) -> Path | None:
    """The file under :data:`STATIC` that ``rel`` names, or None (missing, a folder, or outside it)."""
    if not rel or any(part.startswith(".") for part in rel.split("/")):
        return None
    path = (STATIC / rel).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file():
        return None
    return path


async def to_page(request: Request) -> Response:
    return RedirectResponse(PAGE, status_code=308)


async def asset(request: Request) -> Response:
    context_of(request).extra[UNLOGGED] = True
    rel = request.path_params["path"] or "index.html"
    path = static_file(rel)
    if path is None:
        raise NotFound(f"playground file {rel!r} not found")
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {"Cache-Control": "no-cache", "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if path.suffix == ".html":
        headers.update({"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return FileResponse(
        path, headers=headers, media_type=_TYPES.get(path.suffix, "application/octet-stream"), stat_result=stat
    )


routes = [
    route("/playground", to_page, methods=["GET", "HEAD"], scope="open"),
    route("/playground/{path:path}", asset, methods=["GET", "HEAD"], scope="open"),
]
