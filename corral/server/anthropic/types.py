"""Anthropic wire types: pydantic models for the Messages API request bodies, named after the SDK's.

Field names, defaults and ranges follow Anthropic's API reference
(``MessageCreateParams``, ``MessageCountTokensParams``). Content blocks stay
dicts: :mod:`corral.server.anthropic.routes` translates them block by block,
naming the offending block in its 400s. Unknown fields (``metadata``,
``service_tier``, ``container``, ...) are ignored. Field docstrings are the
OpenAPI document's descriptions (:mod:`corral.server.openapi`); the response
models at the end describe what the routes write as plain dicts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.server.ollama.types import parse_request

__all__ = [
    "AnthropicError",
    "AnthropicMessage",
    "MessageCountTokensParams",
    "MessageCreateParams",
    "MessageParam",
    "MessageTokensCount",
    "OutputConfig",
    "ThinkingConfig",
    "ToolChoice",
    "ToolParam",
    "parse",
]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), use_attribute_docstrings=True)


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
    """Name of the model to use"""
    messages: list[MessageParam]
    """The conversation: ``{role: user|assistant, content}``; content is text or a list of blocks"""
    system: str | list[dict[str, Any]] | None = None
    """System prompt: text, or a list of text blocks"""
    tools: list[ToolParam] | None = None
    """Tools the model may use: ``{name, description, input_schema}``"""
    tool_choice: ToolChoice | None = None
    """``auto``, ``any``, ``tool`` (with ``name``) or ``none``; ``any``/``tool`` are schema-constrained"""
    thinking: ThinkingConfig | None = None
    """``{"type": "enabled", "budget_tokens": N}`` for thinking models"""
    output_config: OutputConfig | None = None
    """``{"format": {"type": "json_schema", "schema": {...}}}`` for structured output"""


class MessageCreateParams(MessageCountTokensParams):
    """``POST /v1/messages``."""

    max_tokens: int = Field(ge=0)
    """Maximum tokens to generate (required)"""
    stream: bool = False
    """Stream server-sent events (``message_start``, ``content_block_delta``, ..., ``message_stop``)"""
    temperature: float | None = Field(default=None, ge=0, le=1)
    """Sampling temperature, 0-1"""
    top_p: float | None = Field(default=None, ge=0, le=1)
    """Nucleus sampling threshold"""
    top_k: int | None = Field(default=None, ge=0)
    """Sample from the K most likely tokens only"""
    stop_sequences: list[str] | None = None
    """Texts that end generation"""


def parse(model_cls: type[BaseModel], body: Any) -> Any:
    """Validate a decoded body into ``model_cls`` or raise a 400 (``BadRequest``)."""
    return parse_request(model_cls, body)


# ---- response shapes (the OpenAPI document's; routes write plain dicts) ----------------------------


class _Resp(BaseModel):
    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)


class AnthropicError(_Resp):
    """Every ``/v1/messages`` error: ``{"type": "error", "error": {"type", "message"}}``."""

    type: str
    error: dict[str, Any]


class AnthropicMessage(_Resp):
    """A Messages API answer, the SDK's ``Message`` (streamed: ``message_start`` ... ``message_stop`` events)."""

    id: str
    type: str
    """``message``"""
    role: str
    """``assistant``"""
    model: str
    content: list[dict[str, Any]]
    """Content blocks: ``text``, ``thinking``, ``tool_use``"""
    stop_reason: str | None = None
    """``end_turn``, ``max_tokens``, ``stop_sequence`` or ``tool_use``"""
    stop_sequence: str | None = None
    usage: dict[str, Any]
    """``{"input_tokens", "output_tokens"}``"""


class MessageTokensCount(_Resp):
    input_tokens: int
    """Tokens the prompt (messages, system and tools) takes"""
