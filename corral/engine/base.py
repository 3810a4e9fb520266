"""Engine seam: how the local backend drives an in-process model runtime.

An :class:`Engine` loads a model file into a :class:`LoadedModel`, which can
stream a completion of an already rendered prompt as events, embed, tokenize
and close. This seam sits below the store, the templates and the scheduler,
so it suits runtimes that take a file and a prompt (llama.cpp today). A
remote server (another Ollama, vLLM, a fleet) takes whole chat requests and
has its own catalog: it plugs in one level up, as a
:class:`corral.backend.base.Backend`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class LoadSpec:
    """What to load and with which load-time options (a change reloads)."""

    path: Path
    num_ctx: int
    num_parallel: int
    num_batch: int = 512
    num_thread: int = 0
    embedding: bool = True
    kv_cache_type: str = "f16"
    flash_attention: bool = False
    prompt_cache_mib: int = 0
    adapters: tuple[Path, ...] = ()
    projector: Path | None = None


@dataclass
class CompletionRequest:
    """One raw completion: a prompt (text and/or token ids) plus sampling."""

    prompt: list[int | str]
    options: dict[str, Any]
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None
    n_probs: int = 0
    want_logprobs: bool = False


@dataclass
class TokenEvent:
    text: str
    logprobs: list[dict[str, Any]] | None = None
    token_ids: list[int] | None = None


@dataclass
class DoneEvent:
    done_reason: str  # "stop" | "length"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prompt_eval_ns: int = 0
    eval_count: int = 0
    eval_ns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


Event = TokenEvent | DoneEvent


class LoadedModel(Protocol):
    spec: LoadSpec
    n_ctx_per_slot: int
    size_bytes: int

    def complete(self, request: CompletionRequest) -> AsyncIterator[Event]: ...

    async def embed(self, inputs: list[list[int] | str], *, normalize: bool = True) -> tuple[list[list[float]], int]:
        """Pooled vectors (L2-normalised unless ``normalize`` is False) and the number of tokens embedded."""
        ...

    async def tokenize(self, text: str, *, special: bool = True, add_special: bool = False) -> list[int]: ...

    async def detokenize(self, tokens: list[int]) -> str: ...

    async def slots(self) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


class Engine(Protocol):
    name: str

    async def load(self, spec: LoadSpec) -> LoadedModel: ...
