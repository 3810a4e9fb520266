"""Wire types: pydantic models for Ollama's REST API, named after Ollama's.

Requests are validated here; field names, defaults and optionality follow
Ollama's ``api/types.go``. Types are strict where Go's decoder is strict: a
``"stream": "yes"`` or a ``"top_logprobs": 2.5`` is a 400 worded as Go's
``json: cannot unmarshal ...``, and ``images`` must be valid base64 (Go
decodes them into ``[]byte``: ``illegal base64 data at input byte N``).
Streaming chunks on the hot path are written by
:mod:`corral.server.ollama.inference` without building these models per token.

Each field's docstring is its description in the OpenAPI document
(``/api/openapi.json``, :mod:`corral.server.openapi`), which the playground's
API reference is drawn from. The response models at the end (``ListResponse``,
``GenerateResponse``, ...) exist for that document only: handlers write
plain dicts, and ``tests/test_openapi.py`` checks real answers against these
models, so neither can drift from the other.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral.errors import BadRequest

KeepAlive = str | int | float | None
Format = Literal["json", ""] | dict[str, Any] | None
Think = bool | Literal["high", "medium", "low"] | None


_PAD = ord("=")
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_NEWLINES = frozenset(b"\r\n")


def go_base64_error(text: str) -> int | None:
    """Where Go's ``base64.StdEncoding`` would reject ``text`` (its CorruptInputError offset), or None."""
    try:
        base64.b64decode(text, validate=True)
        return None  # the common case, at C speed
    except (binascii.Error, ValueError):
        pass
    src = text.encode("utf-8", "surrogatepass")
    si, n = 0, len(src)
    while True:  # one quantum of four characters per turn, as Go's decodeQuantum
        j = 0
        while j < 4:
            if si == n:
                if j == 0:
                    return None
                return si - j
            c = src[si]
            si += 1
            if c in _B64:
                j += 1
                continue
            if c in _NEWLINES:
                continue
            if c != _PAD or j in (0, 1):
                return si - 1
            if j == 2:  # "==" expected, the first "=" consumed
                while si < n and src[si] in _NEWLINES:
                    si += 1
                if si == n:
                    return n
                if src[si] != _PAD:
                    return si - 1
                si += 1
            while si < n and src[si] in _NEWLINES:
                si += 1
            return si if si < n else None


def _check_top_logprobs(value: int) -> int:
    if not 0 <= value <= 20:
        raise ValueError("top_logprobs must be between 0 and 20")  # Ollama's words
    return value


def _check_images(images: list[str] | None) -> list[str] | None:
    for image in images or ():
        at = go_base64_error(image)
        if at is not None:
            raise ValueError(f"illegal base64 data at input byte {at}")
    return images


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, use_attribute_docstrings=True)


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True, use_attribute_docstrings=True)
    go_name: ClassVar[str] = ""  # the Go struct Ollama decodes this body into (default: the class name)


Token = Annotated[int, Field(ge=-(2**31), lt=2**31)]


class ToolCallFunction(_Strict):
    index: int | None = None
    """Position of this call among the message's tool calls"""
    name: str
    """Name of the function to call"""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """Arguments, as a JSON object"""

    @field_validator("arguments", mode="before")
    @classmethod
    def _args(cls, v: Any) -> Any:
        if isinstance(v, str):
            import json

            try:
                return json.loads(v) if v.strip() else {}
            except ValueError:
                return {"value": v}
        return v if v is not None else {}


class ToolCall(_Strict):
    id: str | None = None
    function: ToolCallFunction


class Message(_Strict):
    """One chat message."""

    role: str
    """``system``, ``user``, ``assistant`` or ``tool``"""
    content: str = ""
    """The message text"""
    thinking: str | None = None
    """An assistant's reasoning, when the model thinks"""
    images: list[str] | None = None
    """Base64-encoded images, for multimodal models"""
    tool_calls: list[ToolCall] | None = None
    """Tool calls an assistant made"""
    tool_name: str | None = None
    """For a ``tool`` message: the tool whose result this is"""
    tool_call_id: str | None = None
    """For a ``tool`` message: the call it answers"""

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("images")
    @classmethod
    def _images(cls, v: list[str] | None) -> list[str] | None:
        return _check_images(v)


class Tool(BaseModel):
    """A function the model may call: ``{"type": "function", "function": {"name", "description", "parameters"}}``."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str = "function"
    function: dict[str, Any]


class GenerateRequest(_Req):
    """Generate a completion of one prompt. With ``prompt`` empty, only loads the model
    (``keep_alive: 0`` unloads it)."""

    model: str
    """Name of the model to use, e.g. ``smollm2:135m``"""
    prompt: str = ""
    """The prompt to generate a response for"""
    suffix: str | None = None
    """Text after the response, for fill-in-the-middle models"""
    system: str | None = None
    """System prompt (overrides the model's default)"""
    template: str | None = None
    """Prompt template (overrides the model's)"""
    context: list[Token] | None = None
    """The ``context`` of a previous response, to continue that conversation"""
    stream: bool | None = True
    """Stream NDJSON objects as tokens are generated (default true); false returns one object"""
    raw: bool = False
    """Send the prompt as it is, without the template"""
    format: Format = None
    """``"json"``, or a JSON schema the output must match"""
    images: list[str] | None = None
    """Base64-encoded images, for multimodal models"""
    keep_alive: KeepAlive = None
    """How long the model stays loaded after this request (``"30m"``, seconds, ``0`` unloads, negative: forever)"""
    options: dict[str, Any] | None = None
    """Runtime options (``temperature``, ``num_predict``, ``top_p``, ``num_ctx``, ``seed``, ``stop``, ...)"""
    think: Think = None
    """Let a thinking model reason first (true/false, or ``high``/``medium``/``low``)"""
    logprobs: bool = False
    """Return the log probability of each output token"""
    top_logprobs: int = 0
    """With ``logprobs``: how many most likely alternatives to return per token (0-20)"""

    @field_validator("images")
    @classmethod
    def _images(cls, v: list[str] | None) -> list[str] | None:
        return _check_images(v)

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v: int) -> int:
        return _check_top_logprobs(v)


class ChatRequest(_Req):
    """Generate the next message of a chat. With no ``messages``, only loads the model."""

    model: str
    """Name of the model to use"""
    messages: list[Message] = Field(default_factory=list)
    """The conversation so far: ``{role, content}`` objects, roles ``system``, ``user``, ``assistant``, ``tool``"""
    tools: list[Tool] | None = None
    """Functions the model may call (needs a model whose template takes tools)"""
    stream: bool | None = True
    """Stream NDJSON objects as tokens are generated (default true)"""
    format: Format = None
    """``"json"``, or a JSON schema the reply must match"""
    keep_alive: KeepAlive = None
    """How long the model stays loaded after this request (``"30m"``, ``0`` unloads)"""
    options: dict[str, Any] | None = None
    """Runtime options (``temperature``, ``num_predict``, ``top_p``, ``num_ctx``, ``seed``, ``stop``, ...)"""
    think: Think = None
    """Let a thinking model reason first"""
    logprobs: bool = False
    """Return the log probability of each output token"""
    top_logprobs: int = 0
    """With ``logprobs``: alternatives per token (0-20)"""

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v: int) -> int:
        return _check_top_logprobs(v)


class EmbedRequest(_Req):
    """Embed one or more texts."""

    model: str
    """Name of the embedding model"""
    input: str | list[str] | list[int] | list[list[int]] = Field(default_factory=list)
    """A text or a list of texts (or token ids) to embed"""
    truncate: bool | None = True
    """Cut inputs longer than the context (default); false makes them an error"""
    dimensions: int | None = Field(default=None, ge=1)
    """Keep only the first N dimensions of each vector"""
    options: dict[str, Any] | None = None
    """Runtime options"""
    keep_alive: KeepAlive = None
    """How long the model stays loaded after this request"""


class EmbeddingsRequest(_Req):
    """Embed one text (the older endpoint; ``/api/embed`` supersedes it)."""

    go_name = "EmbeddingRequest"
    model: str
    """Name of the model to generate embeddings with"""
    prompt: str = ""
    """Text to generate embeddings for"""
    options: dict[str, Any] | None = None
    """Runtime options"""
    keep_alive: KeepAlive = None
    """How long the model stays loaded after this request"""


class ShowRequest(_Req):
    """Show a model's details, Modelfile, template, parameters and metadata."""

    model: str = ""
    """Name of the model"""
    name: str = ""
    """Older spelling of ``model``"""
    verbose: bool = False
    """Include every metadata value (long arrays such as the tokenizer's)"""

    @property
    def target(self) -> str:
        return self.model or self.name


class DeleteRequest(_Req):
    """Delete a model and the blobs no other model uses."""

    model: str = ""
    """Name of the model to delete"""
    name: str = ""
    """Older spelling of ``model``"""

    @property
    def target(self) -> str:
        return self.model or self.name


class CopyRequest(_Req):
    """Copy a model under a new name (the blobs are shared)."""

    source: str
    """Name of the model to copy"""
    destination: str
    """The new name"""


class CreateRequest(_Req):
    """Create a model from another model, uploaded GGUF or safetensors blobs, and Modelfile settings."""

    model: str = ""
    """Name of the model to create"""
    name: str = ""
    """Older spelling of ``model``"""
    from_: str | None = Field(default=None, alias="from")
    """An existing model to build on"""
    files: dict[str, str] | None = None
    """File name to the sha256 digest of a blob uploaded with ``POST /api/blobs/{digest}``"""
    adapters: dict[str, str] | None = None
    """LoRA adapter files, as ``files``"""
    template: str | None = None
    """Prompt template"""
    license: str | list[str] | None = None
    """License text(s)"""
    system: str | None = None
    """System prompt"""
    parameters: dict[str, Any] | None = None
    """Default runtime options"""
    messages: list[Message] | None = None
    """Messages every conversation starts with"""
    quantize: str | None = None
    """Quantize the weights (``q8_0``, ``q4_K_M``, ...)"""
    stream: bool | None = True
    """Stream progress objects (default true)"""
    modelfile: str | None = None  # legacy form
    """Legacy Modelfile text; not supported, send the fields above"""

    @property
    def target(self) -> str:
        return self.model or self.name


class PullRequest(_Req):
    """Pull a model from a registry (or push one to it)."""

    model: str = ""
    """``[host/][namespace/]model[:tag]``, e.g. ``127.0.0.1:11434/library/smollm2:135m``"""
    name: str = ""
    """Older spelling of ``model``"""
    insecure: bool = False
    """Allow plain HTTP and unverified TLS to the registry"""
    stream: bool | None = True
    """Stream progress objects (default true)"""

    @property
    def target(self) -> str:
        return self.model or self.name


PushRequest = PullRequest


_GO_TYPES = {
    "bool_type": "bool",
    "int_type": "int",
    "int_from_float": "int",
    "string_type": "string",
    "float_type": "float64",
    "list_type": "[]interface {}",
    "dict_type": "map[string]interface {}",
}


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def parse_request(model_cls: type[BaseModel], body: Any) -> Any:
    """Validate a decoded JSON body into ``model_cls`` or raise a 400.

    A plain type mismatch is worded as Go's decoder words it, which is what
    Ollama answers (``json: cannot unmarshal string into Go struct field
    GenerateRequest.stream of type bool``); other problems name the field.
    """
    if not isinstance(body, dict):
        raise BadRequest("invalid request body: expected a JSON object")
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        parts = err.get("loc", ())
        loc = ".".join(str(p) for p in parts)
        kind = err.get("type", "")
        if kind == "missing":
            raise BadRequest(f"{loc} is required", param=loc) from None
        if kind == "value_error":
            raise BadRequest(str(err["ctx"]["error"]), param=loc) from None
        names = [str(p) for p in parts if not isinstance(p, int)]
        fields = [n for n in names if not _union_tag(n)]
        if kind in _GO_TYPES and fields == names:
            struct = getattr(model_cls, "go_name", "") or model_cls.__name__
            raise BadRequest(
                f"json: cannot unmarshal {_json_kind(err.get('input'))} into Go struct field "
                f"{struct}.{'.'.join(names)} of type {_GO_TYPES[kind]}",
                param=loc,
            ) from None
        if fields != names:  # no member of a union took it
            field = ".".join(fields)
            raise BadRequest(
                f"invalid value for field {field!r}: a JSON {_json_kind(err.get('input'))} is not accepted here",
                param=field,
            ) from None
        raise BadRequest(f"invalid value for field {loc!r}: {err.get('msg', 'invalid')}", param=loc) from None


def _union_tag(name: str) -> bool:
    """pydantic's name for the member of a union in an error location (``str``, ``literal['json','']``...)."""
    return not name.isidentifier() or name in ("str", "int", "float", "bool", "none")


# ---- response shapes (the OpenAPI document's; handlers write plain dicts) -------------------------


class _Resp(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), use_attribute_docstrings=True)


class ErrorResponse(_Resp):
    """Every Ollama-dialect error."""

    error: str
    """What went wrong"""


class VersionResponse(_Resp):
    version: str
    """The Ollama API version this server speaks"""


class ModelDetails(_Resp):
    parent_model: str = ""
    """The model this one was created from"""
    format: str = ""
    """File format of the weights (``gguf``)"""
    family: str = ""
    """Architecture family, e.g. ``llama``"""
    families: list[str] | None = None
    """Every family the model belongs to"""
    parameter_size: str = ""
    """Parameter count, e.g. ``134.52M``"""
    quantization_level: str = ""
    """Weight quantization, e.g. ``Q4_1``"""


class ListModelResponse(_Resp):
    name: str
    """Model identifier, e.g. ``smollm2:135m``"""
    model: str
    """Same as ``name``"""
    modified_at: str
    """ISO 8601 last modified timestamp"""
    size: int
    """Size on disk in bytes"""
    digest: str
    """SHA256 digest of the model's manifest"""
    details: ModelDetails


class ListResponse(_Resp):
    models: list[ListModelResponse]
    """The installed models"""


class ProcessModelResponse(_Resp):
    name: str
    """Model identifier"""
    model: str
    """Same as ``name``"""
    size: int
    """Memory the loaded model takes, in bytes"""
    digest: str
    """SHA256 digest of the model's manifest"""
    details: ModelDetails
    expires_at: str
    """When it will be unloaded if unused (ISO 8601)"""
    size_vram: int
    """Bytes of it in GPU memory"""
    context_length: int
    """Context size it was loaded with"""


class ProcessResponse(_Resp):
    models: list[ProcessModelResponse]
    """The models loaded now"""


class _Done(_Resp):
    done: bool
    """False on each streamed token; true on the last object, which carries the statistics"""
    done_reason: str | None = None
    """Why generation stopped: ``stop``, ``length``, ``load``, ``unload``"""
    total_duration: int | None = None
    """Time spent on the whole request, in nanoseconds"""
    load_duration: int | None = None
    """Time spent loading the model, in nanoseconds"""
    prompt_eval_count: int | None = None
    """Tokens in the prompt"""
    prompt_eval_duration: int | None = None
    """Time spent evaluating the prompt, in nanoseconds"""
    eval_count: int | None = None
    """Tokens in the response"""
    eval_duration: int | None = None
    """Time spent generating the response, in nanoseconds"""
    logprobs: list[dict[str, Any]] | None = None
    """Log probabilities of the output tokens, when asked for"""
    corral_timing: dict[str, float] | None = None
    """Corral's stream marker on the last object: phase name (``auth``, ``queue``, ``load``, ``prompt_eval``,
    ``ttft``, ``generation``, ``total``) to milliseconds"""


class GenerateResponse(_Done):
    """One NDJSON object per token while streaming, then the last one with ``done: true``."""

    model: str
    """The model that answered"""
    created_at: str
    """When this object was made (RFC 3339)"""
    response: str
    """The next piece of text (streaming), or the whole response"""
    thinking: str | None = None
    """The next piece of the model's reasoning, for thinking models"""
    context: list[int] | None = None
    """Tokens of this conversation, to send back as ``context`` to continue it"""


class ChatResponse(_Done):
    """One NDJSON object per token while streaming, then the last one with ``done: true``."""

    model: str
    """The model that answered"""
    created_at: str
    """When this object was made (RFC 3339)"""
    message: Message
    """The next piece of the assistant's message (streaming), or all of it"""


class EmbedResponse(_Resp):
    model: str
    """The model that answered"""
    embeddings: list[list[float]]
    """One vector per input"""
    total_duration: int | None = None
    """Nanoseconds for the whole request"""
    load_duration: int | None = None
    """Nanoseconds spent loading the model"""
    prompt_eval_count: int | None = None
    """Tokens embedded"""


class EmbeddingResponse(_Resp):
    embedding: list[float]
    """The vector"""


class ShowResponse(_Resp):
    license: str | None = None
    """The model's license text"""
    modelfile: str | None = None
    """A Modelfile that recreates the model"""
    parameters: str | None = None
    """Its default runtime options, one per line"""
    template: str | None = None
    """Its prompt template"""
    system: str | None = None
    """Its system prompt"""
    details: ModelDetails | None = None
    messages: list[Message] | None = None
    """Messages every conversation starts with"""
    model_info: dict[str, Any] | None = None
    """GGUF metadata (``general.architecture``, ``llama.context_length``, ...)"""
    capabilities: list[str] | None = None
    """``completion``, ``embedding``, ``tools``, ``thinking``, ``insert``, ``vision``"""
    modified_at: str | None = None
    """ISO 8601 last modified timestamp"""


class ProgressResponse(_Resp):
    """Progress of a pull, push or create: one NDJSON object per step, the last ``{"status": "success"}``."""

    status: str
    """``pulling manifest``, ``pulling <digest>``, ``verifying sha256 digest``, ``writing manifest``, ``success``"""
    digest: str | None = None
    """The blob being transferred"""
    total: int | None = None
    """Its size in bytes"""
    completed: int | None = None
    """Bytes of it done so far"""
