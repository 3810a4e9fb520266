"""Wire types: pydantic models for Ollama's REST API, named after Ollama's.

Requests are validated here; field names, defaults and optionality follow
Ollama's ``api/types.go``. Types are strict where Go's decoder is strict: a
``"stream": "yes"`` or a ``"top_logprobs": 2.5`` is a 400 worded as Go's
``json: cannot unmarshal ...``, and ``images`` must be valid base64 (Go
decodes them into ``[]byte``: ``illegal base64 data at input byte N``).
Streaming chunks on the hot path are written by
:mod:`corral.server.ollama.inference` without building these models per token.
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
    model_config = ConfigDict(extra="ignore", strict=True)


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)
    go_name: ClassVar[str] = ""  # the Go struct Ollama decodes this body into (default: the class name)


Token = Annotated[int, Field(ge=-(2**31), lt=2**31)]


class ToolCallFunction(_Strict):
    index: int | None = None
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

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
    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("images")
    @classmethod
    def _images(cls, v: list[str] | None) -> list[str] | None:
        return _check_images(v)


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str = "function"
    function: dict[str, Any]


class GenerateRequest(_Req):
    model: str
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[Token] | None = None
    stream: bool | None = True
    raw: bool = False
    format: Format = None
    images: list[str] | None = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None
    think: Think = None
    logprobs: bool = False
    top_logprobs: int = 0

    @field_validator("images")
    @classmethod
    def _images(cls, v: list[str] | None) -> list[str] | None:
        return _check_images(v)

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v: int) -> int:
        return _check_top_logprobs(v)


class ChatRequest(_Req):
    model: str
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = None
    stream: bool | None = True
    format: Format = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None
    think: Think = None
    logprobs: bool = False
    top_logprobs: int = 0

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v: int) -> int:
        return _check_top_logprobs(v)


class EmbedRequest(_Req):
    model: str
    input: str | list[str] | list[int] | list[list[int]] = Field(default_factory=list)
    truncate: bool | None = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(_Req):
    go_name = "EmbeddingRequest"
    model: str
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class ShowRequest(_Req):
    model: str = ""
    name: str = ""
    verbose: bool = False

    @property
    def target(self) -> str:
        return self.model or self.name


class DeleteRequest(_Req):
    model: str = ""
    name: str = ""

    @property
    def target(self) -> str:
        return self.model or self.name


class CopyRequest(_Req):
    source: str
    destination: str


class CreateRequest(_Req):
    model: str = ""
    name: str = ""
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    license: str | list[str] | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None
    stream: bool | None = True
    modelfile: str | None = None  # legacy form

    @property
    def target(self) -> str:
        return self.model or self.name


class PullRequest(_Req):
    model: str = ""
    name: str = ""
    insecure: bool = False
    stream: bool | None = True

    @property
    def target(self) -> str:
        return self.model or self.name


PushRequest = PullRequest


_GO_TYPES = {"bool_type": "bool", "int_type": "int", "int_from_float": "int", "string_type": "string",
             "float_type": "float64", "list_type": "[]interface {}", "dict_type": "map[string]interface {}"}


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
            raise BadRequest(f"json: cannot unmarshal {_json_kind(err.get('input'))} into Go struct field "
                             f"{struct}.{'.'.join(names)} of type {_GO_TYPES[kind]}", param=loc) from None
        if fields != names:  # no member of a union took it
            field = ".".join(fields)
            raise BadRequest(f"invalid value for field {field!r}: a JSON {_json_kind(err.get('input'))} is not "
                             "accepted here", param=field) from None
        raise BadRequest(f"invalid value for field {loc!r}: {err.get('msg', 'invalid')}", param=loc) from None


def _union_tag(name: str) -> bool:
    """pydantic's name for the member of a union in an error location (``str``, ``literal['json','']``...)."""
    return not name.isidentifier() or name in ("str", "int", "float", "bool", "none")
