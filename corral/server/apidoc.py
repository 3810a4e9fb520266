"""What the OpenAPI document says about each route: summary, wire types, parameters, an example.

:mod:`corral.server.openapi` walks the app's route table and looks each
route up here by its path template and method (``"*"``: every method of that
path; a ``HEAD`` with no entry of its own borrows its ``GET``'s). A route
with no entry still appears, marked ``x-undocumented``; ``tests/test_openapi.py``
fails on any such route and on any entry here that no route has, so the two
cannot drift. Field descriptions come from the wire types' own docstrings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from corral.gateway.beacons import AnalyticsEvent
from corral.server.anthropic import types as anthropic
from corral.server.ollama import types as ollama
from corral.server.openai import types as openai

MODEL = "smollm2:135m"


@dataclass(frozen=True)
class Param:
    """A path or query parameter."""

    name: str
    where: Literal["path", "query"]
    description: str
    required: bool = False
    type: str = "string"
    example: str | None = None


@dataclass(frozen=True)
class Op:
    """One operation: its group (``tag``), text, wire types and an example request body."""

    tag: str
    summary: str
    description: str = ""
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    stream: Literal["ndjson", "sse"] | None = None  # the answer streams (by default or when asked to)
    example: dict[str, Any] | None = None
    params: tuple[Param, ...] = ()
    media: str = "application/json"  # of a 200 answer that is not JSON: text/plain, bytes
    status: int = 200


# ---- gateway and registry answers (routes write plain dicts) ---------------------------------------


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)


class Whoami(_Doc):
    key: str | None
    """Name of the key the request carried (null: none was needed)"""
    scope: Literal["user", "admin"]
    """What the caller may do: ``user`` (inference, list, show, ps, own usage) or ``admin`` (everything)"""
    auth: bool
    """Whether this server asks for a key at all"""


class RequestRow(_Doc):
    """One request-log row; phases in milliseconds."""

    id: str
    ts: float
    """Start, unix seconds"""
    key_name: str | None = None
    client: str | None = None
    method: str
    path: str
    route: str | None = None
    model: str | None = None
    status: int
    error: str | None = None
    stream: bool
    done_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    auth_ms: float | None = None
    queue_ms: float | None = None
    load_ms: float | None = None
    prompt_eval_ms: float | None = None
    ttft_ms: float | None = None
    generation_ms: float | None = None
    client_io_ms: float | None = None
    upstream_ms: float | None = None
    total_ms: float | None = None


class RequestsPage(_Doc):
    requests: list[RequestRow]
    """Newest first"""
    limit: int
    offset: int


class ModelStats(_Doc):
    model: str
    turns: int
    """Requests naming this model"""
    ok: int
    """Of them, answered without error"""
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    prompt_tokens: int
    output_tokens: int


class Stats(_Doc):
    since: float | None
    key_name: str | None
    requests: int
    models: list[ModelStats]
    statuses: dict[str, int]
    """HTTP status to count"""
    beacons: dict[str, Any]
    """Playground analytics events: ``{"total", "errors", "by_event"}``"""


class Accepted(_Doc):
    status: str
    """``accepted``"""


class RegistryError(_Doc):
    """Every registry error: ``{"errors": [{"code", "message", "detail"}]}``."""

    errors: list[dict[str, Any]]


class Manifest(_Doc):
    """An OCI/Docker image manifest: ``config`` and ``layers`` blobs by digest."""

    schemaVersion: int
    mediaType: str | None = None
    config: dict[str, Any]
    layers: list[dict[str, Any]]


# ---- the table ----------------------------------------------------------------------------------

_V2 = "/v2/{namespace}/{model}"
_REPO = (
    Param("namespace", "path", "Namespace, e.g. library", True, example="library"),
    Param("model", "path", "Model name, e.g. smollm2", True, example="smollm2"),
)
_UPLOAD = Param("upload_id", "path", "Upload session id, from the Location of the POST", True)
_DIGEST = Param("digest", "path", "sha256:<64 hex digits>", True, example="sha256:" + "0" * 64)
_SINCE = Param("since", "query", "Only rows newer than this period: 15m, 1h, 24h, 7d", example="1h")
_KEY = Param("key", "query", "Only this key's rows (an admin may name any key)")
_CHAT = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a coding assistant."},
        {"role": "user", "content": "Explain async/await"},
    ],
}
_PLAYGROUND = "Playground"

OPS: dict[tuple[str, str], Op] = {
    # -- Ollama: server and models
    ("GET", "/"): Op(
        "Ollama",
        "Liveness",
        "Answers `Ollama is running` as text; a browser (Accept: text/html) is redirected to the playground.",
        media="text/plain",
    ),
    ("GET", "/api/version"): Op(
        "Ollama", "Version", "The Ollama API version this server speaks.", response=ollama.VersionResponse
    ),
    ("GET", "/api/tags"): Op(
        "Ollama", "List models", "Returns all models installed on this server.", response=ollama.ListResponse
    ),
    ("POST", "/api/show"): Op(
        "Ollama",
        "Show model information",
        request=ollama.ShowRequest,
        response=ollama.ShowResponse,
        example={"model": MODEL},
    ),
    ("GET", "/api/ps"): Op(
        "Ollama",
        "List running models",
        "Models loaded in memory now, and when each will be unloaded.",
        response=ollama.ProcessResponse,
    ),
    ("POST", "/api/create"): Op(
        "Ollama",
        "Create a model",
        request=ollama.CreateRequest,
        response=ollama.ProgressResponse,
        stream="ndjson",
        example={"model": "terse", "from": MODEL, "system": "You are terse.", "parameters": {"temperature": 0.2}},
    ),
    ("POST", "/api/copy"): Op(
        "Ollama",
        "Copy a model",
        request=ollama.CopyRequest,
        example={"source": MODEL, "destination": "smollm2-copy"},
        media="none",
    ),
    ("DELETE", "/api/delete"): Op(
        "Ollama", "Delete a model", request=ollama.DeleteRequest, example={"model": "smollm2-copy"}, media="none"
    ),
    ("HEAD", "/api/blobs/{digest}"): Op(
        "Ollama",
        "Check if a blob exists",
        "200 when this server has the blob, 404 when not.",
        params=(_DIGEST,),
        media="none",
    ),
    ("POST", "/api/blobs/{digest}"): Op(
        "Ollama",
        "Push a blob",
        "Upload a file (GGUF, safetensors, adapter) as "
        "a blob, to name it in `POST /api/create`'s `files`. The body is the raw "
        "file; its sha256 must match.",
        params=(_DIGEST,),
        media="none",
        status=201,
    ),
    ("POST", "/api/pull"): Op(
        "Ollama",
        "Pull a model",
        "Download a model from a registry: Ollama's, or any "
        "Corral's own (`host:port/library/model:tag`, `insecure` for plain HTTP).",
        request=ollama.PullRequest,
        response=ollama.ProgressResponse,
        stream="ndjson",
        example={"model": "127.0.0.1:11434/library/smollm2:135m", "insecure": True},
    ),
    ("POST", "/api/push"): Op(
        "Ollama",
        "Push a model",
        "Upload a model to a registry.",
        request=ollama.PullRequest,
        response=ollama.ProgressResponse,
        stream="ndjson",
        example={"model": "127.0.0.1:11500/library/my-copy:latest", "insecure": True},
    ),
    # -- Ollama: inference
    ("POST", "/api/generate"): Op(
        "Ollama",
        "Generate a completion",
        "Generate a response for a prompt, streamed "
        "token by token as NDJSON unless `stream` is false. The last object carries the "
        "statistics and Corral's `corral_timing` marker.",
        request=ollama.GenerateRequest,
        response=ollama.GenerateResponse,
        stream="ndjson",
        example={
            "model": MODEL,
            "prompt": "Write a Python prime checker",
            "stream": True,
            "options": {"temperature": 0.7, "num_predict": 64},
        },
    ),
    ("POST", "/api/chat"): Op(
        "Ollama",
        "Chat completion",
        "The next message of a chat, streamed as NDJSON unless `stream` is false.",
        request=ollama.ChatRequest,
        response=ollama.ChatResponse,
        stream="ndjson",
        example={**_CHAT, "stream": False, "options": {"num_predict": 64}},
    ),
    ("POST", "/api/embed"): Op(
        "Ollama",
        "Generate embeddings",
        "Vectors for one or more texts.",
        request=ollama.EmbedRequest,
        response=ollama.EmbedResponse,
        example={"model": "all-minilm", "input": ["The quick brown fox", "A lazy dog"]},
    ),
    ("POST", "/api/embeddings"): Op(
        "Ollama",
        "Generate embedding (legacy)",
        "One vector for one text; `/api/embed` supersedes it.",
        request=ollama.EmbeddingsRequest,
        response=ollama.EmbeddingResponse,
        example={"model": "all-minilm", "prompt": "The quick brown fox"},
    ),
    # -- OpenAI
    ("POST", "/v1/chat/completions"): Op(
        "OpenAI",
        "Chat completions",
        "OpenAI-compatible chat: works with the openai SDK, LangChain, LlamaIndex, Continue.dev.",
        request=openai.ChatCompletionRequest,
        response=openai.ChatCompletion,
        stream="sse",
        example={**_CHAT, "max_tokens": 64},
    ),
    ("POST", "/v1/completions"): Op(
        "OpenAI",
        "Completions (legacy)",
        request=openai.CompletionRequest,
        response=openai.Completion,
        stream="sse",
        example={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 32},
    ),
    ("POST", "/v1/embeddings"): Op(
        "OpenAI",
        "Embeddings",
        request=openai.EmbeddingRequest,
        response=openai.CreateEmbeddingResponse,
        example={"model": "all-minilm", "input": ["hello", "world"]},
    ),
    ("GET", "/v1/models"): Op("OpenAI", "List models", response=openai.ModelList),
    ("GET", "/v1/models/{model:path}"): Op(
        "OpenAI",
        "Retrieve a model",
        response=openai.Model,
        params=(Param("model", "path", "Model name", True, example=MODEL),),
    ),
    ("POST", "/v1/responses"): Op(
        "OpenAI",
        "Create a response",
        "OpenAI's Responses API; responses are stored so `previous_response_id` continues a conversation.",
        request=openai.ResponseCreateParams,
        response=openai.ResponseObject,
        stream="sse",
        example={"model": MODEL, "input": "Hi, I'm Bob.", "instructions": "Be brief.", "max_output_tokens": 64},
    ),
    ("GET", "/v1/responses/{response_id}"): Op(
        "OpenAI",
        "Retrieve a stored response",
        response=openai.ResponseObject,
        params=(Param("response_id", "path", "resp_...", True),),
    ),
    ("DELETE", "/v1/responses/{response_id}"): Op(
        "OpenAI",
        "Delete a stored response",
        response=openai.ResponseObject,
        params=(Param("response_id", "path", "resp_...", True),),
    ),
    ("*", "/v1/{path:path}"): Op(
        "OpenAI",
        "Any other /v1 path",
        "Not served: 404 in OpenAI's error shape.",
        params=(Param("path", "path", "The rest of the path", True),),
        status=404,
    ),
    # -- Anthropic
    ("POST", "/v1/messages"): Op(
        "Anthropic",
        "Messages",
        "Anthropic's Messages API, for the anthropic SDK and Claude-Code-style tools (`ANTHROPIC_BASE_URL`).",
        request=anthropic.MessageCreateParams,
        response=anthropic.AnthropicMessage,
        stream="sse",
        example={"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello!"}]},
    ),
    ("POST", "/v1/messages/count_tokens"): Op(
        "Anthropic",
        "Count tokens",
        request=anthropic.MessageCountTokensParams,
        response=anthropic.MessageTokensCount,
        example={"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}]},
    ),
    # -- Corral's registry
    ("GET", "/v2/"): Op("Registry", "Registry API root", "Docker registry v2 version check: `{}`."),
    ("GET", "/v2"): Op("Registry", "Registry API root (no slash)", "Same as `/v2/`."),
    ("GET", _V2 + "/manifests/{reference}"): Op(
        "Registry",
        "Get a manifest",
        "A model's manifest; `/v2/library/smollm2/manifests/135m` is the local `smollm2:135m`.",
        response=Manifest,
        params=(*_REPO, Param("reference", "path", "Tag or digest", True, example="135m")),
    ),
    ("PUT", _V2 + "/manifests/{reference}"): Op(
        "Registry",
        "Put a manifest",
        "The last step of a push, once every blob it names is here.",
        params=(*_REPO, Param("reference", "path", "Tag", True)),
        media="none",
        status=201,
    ),
    ("POST", _V2 + "/blobs/uploads/"): Op(
        "Registry", "Start a blob upload", "202 with the upload's `Location`.", params=_REPO, media="none", status=202
    ),
    ("POST", _V2 + "/blobs/uploads"): Op(
        "Registry", "Start a blob upload (no slash)", params=_REPO, media="none", status=202
    ),
    ("PATCH", _V2 + "/blobs/uploads/{upload_id}"): Op(
        "Registry", "Upload a chunk", "Bytes at `Content-Range`.", params=(*_REPO, _UPLOAD), media="none", status=202
    ),
    ("PUT", _V2 + "/blobs/uploads/{upload_id}"): Op(
        "Registry",
        "Finish a blob upload",
        "`?digest=sha256:...`; verified before the blob is kept.",
        params=(*_REPO, _UPLOAD, Param("digest", "query", "sha256:...", True)),
        media="none",
        status=201,
    ),
    ("GET", _V2 + "/blobs/uploads/{upload_id}"): Op(
        "Registry",
        "Upload status",
        "204 with the `Range` received.",
        params=(*_REPO, _UPLOAD),
        media="none",
        status=204,
    ),
    ("DELETE", _V2 + "/blobs/uploads/{upload_id}"): Op(
        "Registry", "Cancel an upload", params=(*_REPO, _UPLOAD), media="none", status=204
    ),
    ("GET", _V2 + "/blobs/{digest}"): Op(
        "Registry",
        "Get a blob",
        "The bytes; `Range` requests resume a pull.",
        params=(*_REPO, _DIGEST),
        media="application/octet-stream",
    ),
    # -- gateway
    ("GET", "/metrics"): Op(
        "Gateway",
        "Prometheus metrics",
        "Requests by route, model and status, latency and "
        "time-to-first-token histograms, tokens, queue depth, slots, loaded models.",
        media="text/plain",
    ),
    ("GET", "/api/admin/requests"): Op(
        "Gateway",
        "Request log",
        "Request-log rows, newest first, with every timing phase. An admin key reads every row; a user key its own.",
        response=RequestsPage,
        params=(
            _SINCE,
            Param("model", "query", "Only this model"),
            Param("status", "query", "404, 5xx or a list such as 4xx,503"),
            _KEY,
            Param("limit", "query", "Rows per page (default 50)", type="integer", example="50"),
            Param("offset", "query", "Rows to skip", type="integer"),
        ),
    ),
    ("GET", "/api/admin/stats"): Op(
        "Gateway",
        "Usage statistics",
        "Per-model turns, OK, latency percentiles and "
        "tokens, status counts and playground beacons over a window (default 24h).",
        response=Stats,
        params=(_SINCE, _KEY),
    ),
    ("GET", "/api/whoami"): Op(
        "Gateway", "Who am I", "The name and scope of the key this request carries.", response=Whoami
    ),
    ("POST", "/api/playground/analytics"): Op(
        _PLAYGROUND,
        "Analytics beacon",
        "One playground analytics event "
        "(at most 64 KiB), stored with the caller's key name and counted in "
        "the admin stats.",
        request=AnalyticsEvent,
        response=Accepted,
        status=202,
        example={
            "event": "chat_turn",
            "model": MODEL,
            "status": 200,
            "timings": {"total": 812.5},
            "clientProfile": {"language": "en"},
        },
    ),
    # -- the page itself
    ("GET", "/api/openapi.json"): Op(
        _PLAYGROUND,
        "OpenAPI document",
        "This description of every route, drawn from the server's route table and wire types.",
    ),
    ("GET", "/playground"): Op(
        _PLAYGROUND, "Playground page", "Redirects to `/playground/`.", media="none", status=308
    ),
    ("GET", "/playground/{path:path}"): Op(
        _PLAYGROUND,
        "Playground files",
        "The page and its assets (no key needed; the page sends the key with each API call).",
        params=(Param("path", "path", "File path; empty for the page"),),
        media="text/html",
    ),
}


def op_for(path: str, method: str) -> Op | None:
    """The entry for one route method; a HEAD borrows its GET's."""
    return OPS.get((method, path)) or OPS.get(("*", path)) or (OPS.get(("GET", path)) if method == "HEAD" else None)
