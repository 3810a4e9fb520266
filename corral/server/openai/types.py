"""OpenAI wire types: pydantic models for the ``/v1`` request bodies.

Field names, defaults and ranges follow OpenAI's API reference, plus the two
fields Ollama adds (``reasoning_effort`` values beyond OpenAI's and
``reasoning.effort``). Unknown fields (``user``, ``logit_bias``,
``parallel_tool_calls``, ...) are ignored, as Ollama ignores them.
Responses are written by :mod:`corral.server.openai.routes` as plain dicts and
precomputed SSE prefixes, never built from models per token.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from corral.server.ollama.types import parse_request

__all__ = [
    "ChatCompletionRequest", "ChatMessage", "CompletionRequest", "EmbeddingRequest", "Reasoning",
    "ResponseCreateParams", "ResponseFormat", "ResponseReasoning", "ResponseText", "StreamOptions", "parse",
]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: str
    json_schema: dict[str, Any] | None = None


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    effort: str | None = None


class ChatMessage(BaseModel):
    """One OpenAI message; content may be a string, null or a list of parts."""

    model_config = ConfigDict(extra="ignore", strict=True)
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    # Ollama reads an assistant turn's thinking from ``reasoning``; vLLM and
    # DeepSeek clients send ``reasoning_content``. Both are accepted.
    reasoning: str | None = None
    reasoning_content: str | None = None


class _Sampling(_Req):
    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: int | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    suffix: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = None


class ResponseText(BaseModel):
    """``text`` of a Responses request: ``format`` is ``{"type": "text" | "json_object" | "json_schema", ...}``,
    kept as given so the response can echo it."""

    model_config = ConfigDict(extra="ignore")
    format: dict[str, Any] | None = None


class ResponseReasoning(BaseModel):
    model_config = ConfigDict(extra="ignore")
    effort: str | None = None
    summary: str | None = None


class ResponseCreateParams(_Req):
    """``POST /v1/responses`` (the openai SDK's ``ResponseCreateParams``). ``input`` items are dicts,
    translated item by item in :mod:`corral.server.openai.responses`; tools are Responses' flat function
    tools (``{"type": "function", "name", "description", "parameters"}``)."""

    model: str
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: ResponseText | None = None
    reasoning: ResponseReasoning | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    metadata: dict[str, Any] | None = None
    stream: bool | None = False


class EmbeddingRequest(_Req):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str | None = None
    dimensions: int | None = Field(default=None, ge=1)


def parse(model_cls: type[BaseModel], body: Any) -> Any:
    """Validate a decoded body into ``model_cls`` or raise a 400 (``BadRequest``)."""
    return parse_request(model_cls, body)
