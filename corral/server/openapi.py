"""``GET /api/openapi.json``: an OpenAPI 3.1 document drawn from the app's own route table.

:func:`openapi_document` walks the routes the app actually serves (so a
route added to :func:`corral.server.app.api_routes` appears by itself) and
describes each method with its entry in :mod:`corral.server.apidoc`: the
request and response schemas come from the pydantic wire types
(``corral/server/*/types.py``, field docstrings as descriptions), Ollama's
``options`` from :data:`corral.options.OPTION_TYPES`, errors in the route's
own dialect, and Corral's extensions on each operation:

``x-corral-scope``    ``open``, ``user`` or ``admin`` (the key it needs);
``x-corral-dialect``  the API family whose error shape it answers in;
``x-corral-stream``   ``ndjson`` or ``sse`` when the answer can stream;
``x-corral-route``    the route's own path template (``{model:path}``);
``x-undocumented``    a route with no :mod:`~corral.server.apidoc` entry.

``info.x-corral-timing`` names the timing headers, phases and stream marker
(:mod:`corral.gateway.timing`). The playground's API tab is built from this
document. It is built once per app; ``servers`` is this request's origin.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from corral import OLLAMA_COMPAT_VERSION, __version__
from corral.gateway.timing import PHASES, STREAM_TIMING_FIELD, TIMING_HEADERS
from corral.options import DEFAULTS, OPTION_TYPES
from corral.server.anthropic.types import AnthropicError
from corral.server.apidoc import Op, RegistryError, op_for
from corral.server.errors import OLLAMA, DialectRoute, route_factory, route_scope
from corral.server.http import JSON
from corral.server.ollama.types import ErrorResponse
from corral.server.openai.types import OpenAIError

route = route_factory(OLLAMA)

REF = "#/components/schemas/{model}"
_ERRORS: dict[str, type[BaseModel]] = {
    "ollama": ErrorResponse,
    "openai": OpenAIError,
    "anthropic": AnthropicError,
    "registry": RegistryError,
}
_STREAM_MEDIA = {"ndjson": "application/x-ndjson", "sse": "text/event-stream"}
_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string", list: "array"}

OPTION_DOCS = {
    "num_ctx": "Context window size in tokens (default 4096)",
    "num_batch": "Prompt tokens evaluated per batch",
    "num_gpu": "Layers to offload to the GPU",
    "main_gpu": "GPU for small tensors",
    "use_mmap": "Map the weights from disk instead of reading them",
    "num_thread": "CPU threads",
    "draft_num_predict": "Accepted for Ollama compatibility; no draft models yet",
    "num_keep": "Prompt tokens kept when the context is shifted",
    "seed": "Random seed, for reproducible output (-1: random)",
    "num_predict": "Maximum tokens to generate (-1 = unlimited)",
    "top_k": "Sample from the K most likely tokens only",
    "top_p": "Nucleus sampling threshold",
    "min_p": "Drop tokens below this fraction of the most likely one's probability",
    "typical_p": "Locally typical sampling threshold",
    "repeat_last_n": "How far back to look for repetitions",
    "temperature": "Controls randomness: 0 = deterministic, 2 = very random",
    "repeat_penalty": "Penalty for repeated tokens",
    "presence_penalty": "Penalty for tokens already present",
    "frequency_penalty": "Penalty by how often tokens appeared",
    "stop": "Texts that end generation",
}


def options_schema() -> dict[str, Any]:
    """Ollama's runtime ``options`` object, from the options table the server validates against."""
    props: dict[str, Any] = {}
    for name, kind in OPTION_TYPES.items():
        prop: dict[str, Any] = {"type": _JSON_TYPES[kind], "description": OPTION_DOCS.get(name, "")}
        if kind is list:
            prop["items"] = {"type": "string"}
        if name in DEFAULTS:
            prop["default"] = DEFAULTS[name]
        props[name] = prop
    return {
        "title": "Options",
        "type": "object",
        "properties": props,
        "additionalProperties": True,
        "description": "Runtime options; unknown ones are ignored, as Ollama ignores them",
    }


def openapi_path(path: str) -> str:
    """Starlette's ``{name:conv}`` -> OpenAPI's ``{name}``."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _wire_types(ops: list[Op]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    """Every model the operations name. All in validation mode: the response models are plain field lists,
    and one mode keeps one schema per model (``Message`` is both asked and answered)."""
    wanted: list[type[BaseModel]] = [*_ERRORS.values()]
    for op in ops:
        wanted += [m for m in (op.request, op.response) if m is not None]
    return [(m, "validation") for m in dict.fromkeys(wanted)]


def _link_options(schemas: dict[str, Any]) -> None:
    """Point every ``options`` object property at the Options schema (the wire types say ``dict``)."""
    for schema in schemas.values():
        prop = schema.get("properties", {}).get("options")
        if prop is not None and "anyOf" in prop:
            prop["anyOf"] = [{"$ref": REF.format(model="Options")}, {"type": "null"}]


def _operation(route: Route, method: str, op: Op | None, refs: dict[Any, Any]) -> dict[str, Any]:
    scope = route_scope(route)
    dialect = route.dialect.name if isinstance(route, DialectRoute) else "ollama"
    out: dict[str, Any] = {
        "operationId": f"{method.lower()}_{route.name}",
        "x-corral-route": route.path,
        "x-corral-scope": scope,
        "x-corral-dialect": dialect,
        "security": [] if scope == "open" else [{"bearer": []}, {"apiKey": []}],
    }
    if op is None:
        doc = (getattr(route.endpoint, "__doc__", None) or "").strip()
        out.update(
            {
                "tags": ["Other"],
                "summary": route.name,
                "description": doc,
                "x-undocumented": True,
                "responses": {"200": {"description": "OK"}},
            }
        )
        return out
    out.update({"tags": [op.tag], "summary": op.summary, "description": op.description})
    if method == "HEAD" and op_for(route.path, "GET") is op:  # a GET's twin
        out["summary"] += " (headers only)"
    if op.stream:
        out["x-corral-stream"] = op.stream
    params = [
        {
            "name": p.name,
            "in": p.where,
            "required": p.where == "path" or p.required,
            "description": p.description,
            "schema": {"type": p.type},
            **({"example": p.example} if p.example is not None else {}),
        }
        for p in op.params
    ]
    named = {p["name"] for p in params}
    for name in route.param_convertors:  # a path parameter the entry forgot is still listed
        if name not in named:
            params.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
    if params:
        out["parameters"] = params
    if op.request is not None:
        body: dict[str, Any] = {"schema": refs[(op.request, "validation")]}
        if op.example is not None:
            body["example"] = op.example
        out["requestBody"] = {"required": True, "content": {"application/json": body}}
    ok: dict[str, Any] = {"description": "OK"}
    if op.response is not None:
        schema = refs[(op.response, "validation")]
        ok["content"] = {"application/json": {"schema": schema}}
        if op.stream:
            ok["content"][_STREAM_MEDIA[op.stream]] = {
                "schema": schema if op.stream == "ndjson" else {"type": "string"}
            }
    elif op.media != "none" and method != "HEAD":
        ok["content"] = {op.media: {"schema": {"type": "string"} if op.media != "application/json" else {}}}
    responses: dict[str, Any] = {str(op.status): ok}
    error = {
        "description": "Error, in this API's own shape",
        "content": {"application/json": {"schema": refs[(_ERRORS.get(dialect, ErrorResponse), "validation")]}},
    }
    if scope != "open":
        responses["401"] = {**error, "description": "Missing or invalid API key"}
        responses["403"] = {**error, "description": "The key may not use this route or model"}
        responses["429"] = {**error, "description": "The key's rate limit was reached (see Retry-After)"}
    responses["4XX"] = error
    responses["5XX"] = error
    out["responses"] = responses
    return out


def openapi_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (see module docstring); ``servers`` is left to the caller."""
    methods = [(r, m, op_for(r.path, m)) for r in routes if isinstance(r, Route) for m in sorted(r.methods or ())]
    key_map, defs = models_json_schema(_wire_types([op for _, _, op in methods if op is not None]), ref_template=REF)
    schemas = {**defs.get("$defs", {}), "Options": options_schema()}
    _link_options(schemas)
    paths: dict[str, dict[str, Any]] = {}
    for r, method, op in methods:
        paths.setdefault(openapi_path(r.path), {})[method.lower()] = _operation(r, method, op, key_map)
    tags = ["Ollama", "OpenAI", "Anthropic", "Registry", "Gateway", "Playground", "Other"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Corral API",
            "version": __version__,
            "x-ollama-version": OLLAMA_COMPAT_VERSION,
            "description": "Ollama's REST API, OpenAI's /v1 and Anthropic's Messages API, with Corral's gateway "
            "(API keys, request log, timing). Send the key as `Authorization: Bearer <key>`.",
            "x-corral-timing": {
                "headers": list(TIMING_HEADERS),
                "phases": list(PHASES),
                "stream_field": STREAM_TIMING_FIELD,
            },
        },
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


async def spec(request: Request) -> Response:
    document = getattr(request.app.state, "openapi", None)
    if document is None:
        document = request.app.state.openapi = openapi_document(request.app.routes)
    return JSON({**document, "servers": [{"url": str(request.base_url).rstrip("/")}]})


routes = [route("/api/openapi.json", spec, methods=["GET"], scope="open")]
