"""OpenAI wire types: pydantic models for the ``/v1`` request bodies.

Field names, defaults and ranges follow OpenAI's API reference, plus the two
fields Ollama adds (``reasoning_effort`` values beyond OpenAI's and
``reasoning.effort``). Unknown fields (``user``, ``logit_bias``,
``parallel_tool_calls``, ...) are ignored, as Ollama ignores them.
Responses are written by :mod:`corral.server.openai.routes` as plain dicts and
precomputed SSE prefixes, never built from models per token; the response
models at the end describe them for the OpenAPI document
(:mod:`corral.server.openapi`), and field docstrings are its descriptions.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from corral.server.ollama.types import parse_request

__all__ = [
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionRequest",
    "ChatMessage",
    "Completion",
    "CompletionRequest",
    "CreateEmbeddingResponse",
    "Embedding",
    "EmbeddingRequest",
    "Model",
    "ModelList",
    "OpenAIError",
    "Reasoning",
    "ResponseCreateParams",
    "ResponseFormat",
    "ResponseObject",
    "ResponseReasoning",
    "ResponseText",
    "StreamOptions",
    "Usage",
    "parse",
]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True, use_attribute_docstrings=True)


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
    """Name of the model to use"""
    stream: bool | None = False
    """Stream server-sent events (``data: {...}``, ending ``data: [DONE]``); default false"""
    stream_options: StreamOptions | None = None
    """``{"include_usage": true}`` adds a last chunk with token usage"""
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature, 0-2"""
    top_p: float | None = Field(default=None, ge=0, le=1)
    """Nucleus sampling threshold, 0-1"""
    seed: int | None = None
    """Random seed, for reproducible output"""
    stop: str | list[str] | None = None
    """Text(s) that end generation"""
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    """Penalty for tokens already present, -2 to 2"""
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    """Penalty by how often tokens appeared, -2 to 2"""
    n: int | None = None
    """Number of choices; only 1 is served"""


class ChatCompletionRequest(_Sampling):
    """OpenAI's chat completions (``openai.chat.completions.create``)."""

    messages: list[ChatMessage]
    """The conversation: ``{role, content}`` objects, roles ``system``/``developer``, ``user``, ``assistant``,
    ``tool``"""
    max_tokens: int | None = Field(default=None, ge=1)
    """Maximum tokens to generate"""
    max_completion_tokens: int | None = Field(default=None, ge=1)
    """Newer spelling of ``max_tokens``"""
    logprobs: bool | None = None
    """Return log probabilities of the output tokens"""
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    """Alternatives per token with ``logprobs`` (0-20)"""
    tools: list[dict[str, Any]] | None = None
    """Functions the model may call"""
    tool_choice: str | dict[str, Any] | None = None
    """``auto``, ``none``, ``required``, or a named function (forced calls are schema-constrained)"""
    response_format: ResponseFormat | None = None
    """``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {...}}``"""
    reasoning_effort: str | None = None
    """For thinking models: ``high``, ``medium``, ``low`` or ``none``"""
    reasoning: Reasoning | None = None
    """Ollama's spelling: ``{"effort": ...}``"""


class CompletionRequest(_Sampling):
    """OpenAI's legacy text completions."""

    prompt: str | list[str] | list[int] | list[list[int]] = ""
    """The prompt"""
    suffix: str | None = None
    """Text after the completion, for fill-in-the-middle models"""
    max_tokens: int | None = Field(default=None, ge=0)
    """Maximum tokens to generate"""
    echo: bool | None = False
    """Not supported (ignored)"""
    logprobs: int | None = Field(default=None, ge=0, le=20)
    """Return this many alternatives per token"""
    best_of: int | None = None
    """Not supported (ignored)"""


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
    """Name of the model to use"""
    input: str | list[dict[str, Any]] = ""
    """A text, or a list of input items (messages, function call outputs)"""
    instructions: str | None = None
    """System instructions for this response"""
    max_output_tokens: int | None = Field(default=None, ge=1)
    """Maximum tokens to generate"""
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature, 0-2"""
    top_p: float | None = Field(default=None, ge=0, le=1)
    """Nucleus sampling threshold"""
    tools: list[dict[str, Any]] | None = None
    """Function tools the model may call"""
    tool_choice: str | dict[str, Any] | None = None
    """``auto``, ``none``, ``required`` or a named function"""
    parallel_tool_calls: bool | None = None
    """Allow several tool calls in one turn"""
    text: ResponseText | None = None
    """``{"format": {"type": "json_schema", ...}}`` for structured output"""
    reasoning: ResponseReasoning | None = None
    """``{"effort": ...}`` for thinking models"""
    store: bool | None = True
    """Keep the response, so ``previous_response_id`` can continue it (default true)"""
    previous_response_id: str | None = None
    """Continue the conversation of a stored response"""
    metadata: dict[str, Any] | None = None
    """Your own key-value pairs, stored with the response"""
    stream: bool | None = False
    """Stream typed server-sent events (``response.output_text.delta``, ...)"""


class EmbeddingRequest(_Req):
    """OpenAI's embeddings."""

    model: str
    """Name of the embedding model"""
    input: str | list[str] | list[int] | list[list[int]]
    """A text or a list of texts to embed"""
    encoding_format: str | None = None
    """``float`` (default) or ``base64``"""
    dimensions: int | None = Field(default=None, ge=1)
    """Keep only the first N dimensions"""


def parse(model_cls: type[BaseModel], body: Any) -> Any:
    """Validate a decoded body into ``model_cls`` or raise a 400 (``BadRequest``)."""
    return parse_request(model_cls, body)


# ---- response shapes (the OpenAPI document's; handlers write plain dicts) -------------------------


class _Resp(BaseModel):
    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)


class OpenAIError(_Resp):
    """Every ``/v1`` error: ``{"error": {"message", "type", "param", "code"}}``."""

    error: dict[str, Any]


class Usage(_Resp):
    prompt_tokens: int
    """Tokens in the prompt"""
    completion_tokens: int | None = None
    """Tokens generated"""
    total_tokens: int
    """Both together"""


class ChatCompletionChoice(_Resp):
    index: int
    message: dict[str, Any] | None = None
    """The assistant's message: ``role``, ``content``, ``tool_calls``, ``reasoning``"""
    delta: dict[str, Any] | None = None
    """In a streamed chunk: the next piece of the message"""
    finish_reason: str | None = None
    """``stop``, ``length`` or ``tool_calls``"""
    logprobs: dict[str, Any] | None = None


class ChatCompletion(_Resp):
    """A chat completion; streamed, a series of ``chat.completion.chunk`` objects with ``delta``s."""

    id: str
    object: str
    """``chat.completion`` (``chat.completion.chunk`` when streamed)"""
    created: int
    """Unix time"""
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None


class Completion(_Resp):
    """A text completion (``text_completion``); ``choices[].text`` holds the output."""

    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    """``{index, text, finish_reason, logprobs}``"""
    usage: Usage | None = None


class Embedding(_Resp):
    object: str
    embedding: list[float] | str
    """The vector (a base64 string with ``encoding_format: base64``)"""
    index: int


class CreateEmbeddingResponse(_Resp):
    object: str
    data: list[Embedding]
    model: str
    usage: Usage


class Model(_Resp):
    id: str
    """Model name"""
    object: str
    created: int
    """Unix time it was last modified"""
    owned_by: str
    """Its namespace (``library`` for most)"""


class ModelList(_Resp):
    object: str
    data: list[Model]


class ResponseObject(_Resp):
    """A Responses API response (streamed: typed events from ``response.created`` to ``response.completed``)."""

    id: str
    object: str
    """``response``"""
    created_at: int | float | None = None
    status: str | None = None
    """``completed``, ``incomplete``, ``in_progress``, ``failed``"""
    model: str | None = None
    output: list[dict[str, Any]] | None = None
    """Output items: ``message`` (with ``output_text`` parts), ``function_call``, ``reasoning``"""
    output_text: str | None = None
    """All output text, joined"""
    usage: dict[str, Any] | None = None
    deleted: bool | None = None
    """On delete: true"""
