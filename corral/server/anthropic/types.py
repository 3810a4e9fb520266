"""Anthropic wire types: pydantic models for the Messages API request bodies, named after the SDK's.

Field names, defaults and ranges follow Anthropic's API reference
(``MessageCreateParams``, ``MessageCountTokensParams``). Content blocks stay
dicts: :mod:`corral.server.anthropic.routes` translates them block by block,
naming the offending block in its 400s. Unknown fields (``metadata``,
``service_tier``, ``container``, ...) are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.server.ollama.types import parse_request

__all__ = ["MessageCountTokensParams", "MessageCreateParams", "MessageParam", "OutputConfig", "ThinkingConfig",
           "ToolChoice", "ToolParam", "parse"]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class MessageParam(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class ToolParam(BaseModel):
    """A client tool (``type`` absent or ``"custom"``); Anthropic's server tools are not served."""

    model_config = ConfigDict(extra="ignore")
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    budget_tokens: int | None = None


class OutputConfig(BaseModel):
    """``output_config``: ``format`` is ``{"type": "json_schema", "schema": {...}}`` (structured output)."""

    model_config = ConfigDict(extra="ignore")
    format: dict[str, Any] | None = None
    effort: str | None = None


class MessageCountTokensParams(_Req):
    """``POST /v1/messages/count_tokens``: what makes up the prompt."""

    model: str
    messages: list[MessageParam]
    system: str | list[dict[str, Any]] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


class MessageCreateParams(MessageCountTokensParams):
    """``POST /v1/messages``."""

    max_tokens: int = Field(ge=0)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None


def parse(model_cls: type[BaseModel], body: Any) -> Any:
    """Validate a decoded body into ``model_cls`` or raise a 400 (``BadRequest``)."""
    return parse_request(model_cls, body)
