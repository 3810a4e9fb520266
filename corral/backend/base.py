"""Backend seam: what every API dialect calls, and the types that cross it.

A :class:`Backend` takes an internal :class:`ChatCall`, :class:`GenerateCall`
or :class:`EmbedCall` and answers with a stream of :class:`Piece` events and
one :class:`Final` (or :class:`Embeddings`), and keeps a model catalog
(list, show, what is running, load and unload). The dialects in
``corral.server`` only translate their wire types to and from these.

Today's one implementation is :class:`corral.backend.local.LocalBackend`: the
local store, the scheduler and the in-process llama.cpp engine. A gateway in
front of another server (``corral proxy``, a fleet of upstreams) is another
implementation of this same interface, not a fork of the service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from corral.errors import EngineError

# ---- calls -------------------------------------------------------------------

PhaseReport = Callable[[str, float], None]
"""``report(phase, ms)``: a phase of :data:`corral.gateway.timing.PHASES` known before the answer ends."""


@dataclass
class Common:
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    format: str | dict[str, Any] | None = None
    think: bool | str | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    keep_alive: float | None = None
    images: list[str] | None = None
    # Called once the request holds its slot, with "queue" and "load" in ms, so that a streamed
    # answer's headers (sent before the Final) can carry them. The Final has them too.
    report: PhaseReport | None = None
    arrived: float | None = None  # time.monotonic() when the request arrived: durations count from here


@dataclass
class ChatCall(Common):
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    # A forced tool choice: the names (from ``tools``) of which the model must call one. The backend
    # constrains sampling to that call's JSON schema unless ``format`` already constrains the reply.
    force_tool: list[str] | None = None


@dataclass
class GenerateCall(Common):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False


@dataclass
class EmbedCall:
    model: str
    inputs: list[str] | list[list[int]]
    truncate: bool = True
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | None = None
    normalize: bool = True  # L2-normalised as /api/embed answers; the legacy /api/embeddings gives the raw vector
    arrived: float | None = None  # time.monotonic() when the request arrived


# ---- answers ------------------------------------------------------------------


@dataclass
class Piece:
    content: str = ""
    thinking: str = ""
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Final:
    """How an answer ended, and what it cost.

    Durations are nanoseconds: ``queue_ns`` waiting for a slot of the model,
    ``load_ns`` loading it, ``prompt_eval_ns`` and ``eval_ns`` the engine's
    own. ``first_token_at`` is the :func:`time.perf_counter` reading when the
    first token came out of the engine (None when none did), so the gateway
    can compute time to first token from its own start of the request.
    """

    done_reason: str
    model: str
    total_ns: int = 0
    queue_ns: int = 0
    first_token_at: float | None = None
    load_ns: int = 0
    prompt_eval_count: int = 0
    prompt_eval_ns: int = 0
    eval_count: int = 0
    eval_ns: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    context: list[int] | None = None
    content: str = ""  # leftover content released at the end (e.g. a failed tool parse)
    stop_sequence: str | None = None  # the stop string that ended generation, when one did


@dataclass
class Collected:
    """A whole (non-streamed) answer: every piece folded into one."""

    content: str
    thinking: str
    logprobs: list[dict[str, Any]]
    final: Final


async def collect(events: AsyncIterator[Piece | Final]) -> Collected:
    content: list[str] = []
    thinking: list[str] = []
    logprobs: list[dict[str, Any]] = []
    final: Final | None = None
    async for ev in events:
        if isinstance(ev, Piece):
            content.append(ev.content)
            thinking.append(ev.thinking)
            logprobs.extend(ev.logprobs or [])
        else:
            content.append(ev.content)
            final = ev
    if final is None:  # the engine ended without a final event
        raise EngineError("generation ended without a result")
    return Collected("".join(content), "".join(thinking), logprobs, final)


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    load_ns: int
    total_ns: int
    queue_ns: int = 0


@dataclass
class Loaded:
    """The answer to a load-only request: the model's name, and whether it is now loaded or unloaded."""

    model: str
    loaded: bool


# ---- catalog ------------------------------------------------------------------------


@dataclass
class ModelSummary:
    """One model as a listing shows it (``/api/tags``, ``/v1/models``)."""

    name: str
    namespace: str
    modified_at: datetime
    size: int
    digest: str
    details: dict[str, Any]


@dataclass
class ModelInfo:
    """Everything ``/api/show`` reports about one model."""

    name: str
    modelfile: str
    parameters: dict[str, Any]
    template: str
    system: str | None
    license: list[str]
    details: dict[str, Any]
    messages: list[dict[str, Any]]
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: datetime


@dataclass
class RunningModel:
    """One loaded model (``/api/ps``)."""

    name: str
    digest: str
    size: int
    size_vram: int
    details: dict[str, Any]
    expires_at: datetime
    context_length: int


class Backend(Protocol):
    """The service-level seam: inference and the model catalog, whatever serves them."""

    def chat(self, call: ChatCall) -> AsyncIterator[Piece | Final]: ...

    def generate(self, call: GenerateCall) -> AsyncIterator[Piece | Final]: ...

    async def count_tokens(self, call: ChatCall) -> int:
        """How many tokens ``call``'s prompt is, as :meth:`chat` would send it to the model."""
        ...

    async def embed(self, call: EmbedCall) -> Embeddings: ...

    async def load(self, model: str, *, keep_alive: float | None, options: dict[str, Any] | None) -> Loaded:
        """Load a model without running anything (``keep_alive`` 0: unload it)."""
        ...

    async def unload(self, model: str) -> bool: ...

    async def models(self) -> list[ModelSummary]: ...

    async def model(self, name: str) -> ModelSummary:
        """One model of the listing; raises :class:`corral.errors.ModelNotFound`."""
        ...

    async def show(self, name: str, *, verbose: bool = False) -> ModelInfo: ...

    async def running(self) -> list[RunningModel]: ...

    async def close(self) -> None: ...
