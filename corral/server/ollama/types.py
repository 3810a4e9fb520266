"""Wire types: pydantic models for Ollama's REST API, named after Ollama's.

Requests are validated here; field names, defaults and optionality follow
Ollama's ``api/types.go``. Streaming chunks on the hot path are written by
:mod:`corral.server.ollama.inference` without building these models per token.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral.errors import BadRequest

KeepAlive = str | int | float | None
Format = Literal["json", ""] | dict[str, Any] | None
Think = bool | Literal["high", "medium", "low"] | None


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
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


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    function: ToolCallFunction


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
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


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "function"
    function: dict[str, Any]


class GenerateRequest(_Req):
    model: str
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool | None = True
    raw: bool = False
    format: Format = None
    images: list[str] | None = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None
    think: Think = None
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)


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
    top_logprobs: int = Field(default=0, ge=0, le=20)


class EmbedRequest(_Req):
    model: str
    input: str | list[str] | list[int] | list[list[int]] = Field(default_factory=list)
    truncate: bool | None = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(_Req):
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


def parse_request(model_cls: type[_Req], body: Any) -> Any:
    """Validate a decoded JSON body into ``model_cls`` or raise a 400.

    The message names the field and the expected type, in the spirit of Go's
    ``json: cannot unmarshal ...`` errors that Ollama returns.
    """
    if not isinstance(body, dict):
        raise BadRequest("invalid request body: expected a JSON object")
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        if err.get("type") == "missing":
            raise BadRequest(f"{loc} is required", param=loc) from None
        raise BadRequest(f"invalid value for field {loc!r}: {err.get('msg', 'invalid')}", param=loc) from None
