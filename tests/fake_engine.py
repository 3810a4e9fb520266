"""A controllable stand-in for llama.cpp behind the real app (see ``inproc`` in conftest).

It implements the engine seam of ``corral.engine.base`` (``Engine`` and
``LoadedModel``) without running a model, so tests of what sits above the
engine (scheduler, service, HTTP layer, error handling) run in milliseconds
and can make the engine do what a real one only does by accident: load
slowly, fail to load, crash half-way through a stream, hold a slot for as
long as the test wants.

What a completion produces, deterministically:

* the tokens of ``engine.reply`` when set, else an echo of the prompt's text
  parts (so a test can see what the template rendered); with
  ``engine.endless`` the reply repeats until ``num_predict``, a stop string or
  the client going away;
* a token is a word with its leading whitespace (``" world"``);
* ``num_predict`` >= 0 ends the stream with done_reason ``"length"``;
  ``stop`` strings end it with ``"stop"`` and are not emitted (text that may
  be the start of a stop string is held back, as llama.cpp does);
* ``tokenize`` is byte-level (like ``tests.tiny_gguf.tiny_llama``): one id
  per UTF-8 byte, so ``prompt_eval_count`` of a prompt is its byte length;
* ``embed`` returns unit vectors of ``embed_dim`` floats derived from a hash
  of each input.

Knobs, all plain attributes that may be changed while the app runs:
``token_delay`` and ``load_delay`` (seconds), ``gate`` (an ``asyncio.Event``:
every completion waits for it before its first token, holding its slot),
``fail_load`` (an exception raised by the next loads), ``fail_after`` with
``fail_error`` (raise after that many tokens). Counters for assertions:
``loads``/``closes`` (the LoadSpecs), ``max_loaded`` (models resident at
once), ``requests``, ``running`` /
``max_running`` (completions in progress), ``cancelled`` (completions closed
before they finished, e.g. by a client disconnect), ``embeds``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from corral.engine.base import CompletionRequest, DoneEvent, Event, LoadSpec, TokenEvent
from corral.errors import EngineError

_WORD = re.compile(r"\s*\S+|\s+")


def words(text: str) -> list[str]:
    """The fake's tokens: each word with the whitespace before it."""
    return _WORD.findall(text)


def prompt_text(prompt: list[int | str]) -> str:
    return "".join(p for p in prompt if isinstance(p, str))


def prompt_tokens(prompt: list[int | str]) -> int:
    return sum(1 if isinstance(p, int) else len(p.encode()) for p in prompt)


def fake_vector(item: list[int] | str, dim: int) -> list[float]:
    """A deterministic unit vector for one embedding input."""
    seed = item.encode() if isinstance(item, str) else bytes(str(item), "ascii")
    raw: list[float] = []
    counter = 0
    while len(raw) < dim:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        raw.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    vec = raw[:dim]
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec]


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class FakeModel:
    """One loaded fake model (the ``LoadedModel`` protocol)."""

    def __init__(self, engine: FakeEngine, spec: LoadSpec) -> None:
        self.engine = engine
        self.spec = spec
        self.n_ctx_per_slot = spec.num_ctx
        # The file plus one byte per KV cell, so /api/ps sizes differ by num_ctx.
        self.size_bytes = spec.path.stat().st_size + spec.num_ctx * spec.num_parallel
        self.closed = False

    async def complete(self, request: CompletionRequest) -> AsyncIterator[Event]:
        engine = self.engine
        if self.closed:
            raise EngineError("fake model used after close")
        engine.requests.append(request)
        engine.running += 1
        engine.max_running = max(engine.max_running, engine.running)
        start = time.monotonic_ns()
        done = False
        try:
            if engine.gate is not None:
                await engine.gate.wait()
            n_prompt = prompt_tokens(request.prompt)
            prompt_done = time.monotonic_ns()
            reply = engine.reply if engine.reply is not None else prompt_text(request.prompt)
            tokens = words(reply) or ["."]
            limit = int(request.options.get("num_predict", -1))
            stops = [s for s in request.options.get("stop") or [] if s]
            text = ""  # generated so far, from the first stop string on cut off
            sent = 0  # characters of ``text`` already emitted
            count = 0
            reason = "stop"
            while True:
                if engine.fail_after is not None and count >= engine.fail_after:
                    raise engine.fail_error
                if 0 <= limit <= count:
                    reason = "length"
                    break
                if count >= len(tokens) and not engine.endless:
                    break
                # A real engine yields to the loop between tokens; so does this one.
                await asyncio.sleep(engine.token_delay)
                text += tokens[count % len(tokens)]
                count += 1
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    break
                ready = len(text) - _held_back(text, stops)
                if ready > sent:
                    yield TokenEvent(text[sent:ready])
                    sent = ready
            if len(text) > sent:  # held back for a stop string that never came, or the text before one
                yield TokenEvent(text[sent:])
            now = time.monotonic_ns()
            done = True
            yield DoneEvent(
                reason,
                prompt_tokens=n_prompt,
                prompt_eval_ns=max(1, prompt_done - start),
                eval_count=count,
                eval_ns=max(1, now - prompt_done),
            )
        except (GeneratorExit, asyncio.CancelledError):  # closed early: the client went away
            if not done:
                engine.cancelled += 1
            raise
        finally:
            engine.running -= 1

    async def embed(self, inputs: list[list[int] | str], *, normalize: bool = True) -> tuple[list[list[float]], int]:
        if self.engine.fail_embed is not None:
            raise self.engine.fail_embed
        self.engine.embeds.append(list(inputs))
        await asyncio.sleep(0)
        n = sum(len(i) if isinstance(i, list) else len(i.encode()) for i in inputs)
        return [fake_vector(i, self.engine.embed_dim) for i in inputs], n

    async def tokenize(self, text: str, *, special: bool = True, add_special: bool = False) -> list[int]:
        return list(text.encode())

    async def detokenize(self, tokens: list[int]) -> str:
        return bytes(t for t in tokens if t < 256).decode(errors="replace")

    async def slots(self) -> list[dict[str, Any]]:
        return [{"id": i} for i in range(self.spec.num_parallel)]

    async def close(self) -> None:
        if self.closed:
            raise AssertionError("fake model closed twice")
        self.closed = True
        self.engine.closes.append(self.spec)


class FakeEngine:
    """The ``Engine`` protocol, with the knobs and counters described in the module docstring."""

    name = "fake"

    def __init__(
        self,
        *,
        reply: str | None = None,
        endless: bool = False,
        token_delay: float = 0.0,
        load_delay: float = 0.0,
        embed_dim: int = 8,
    ) -> None:
        self.reply = reply
        self.endless = endless
        self.token_delay = token_delay
        self.load_delay = load_delay
        self.embed_dim = embed_dim
        self.gate: asyncio.Event | None = None
        self.fail_load: BaseException | None = None
        self.fail_after: int | None = None
        self.fail_error: BaseException = EngineError("llama runner crashed: out of memory")
        self.fail_embed: BaseException | None = None
        self.loads: list[LoadSpec] = []
        self.closes: list[LoadSpec] = []
        self.models: list[FakeModel] = []
        self.requests: list[CompletionRequest] = []
        self.embeds: list[list[list[int] | str]] = []
        self.running = 0
        self.max_running = 0
        self.cancelled = 0
        self.max_loaded = 0

    async def load(self, spec: LoadSpec) -> FakeModel:
        if self.load_delay:
            await asyncio.sleep(self.load_delay)
        if self.fail_load is not None:
            raise self.fail_load
        self.loads.append(spec)
        model = FakeModel(self, spec)
        self.models.append(model)
        self.max_loaded = max(self.max_loaded, len(self.loaded))
        return model

    @property
    def loaded(self) -> list[LoadSpec]:
        """Specs of the models loaded and not yet closed."""
        return [m.spec for m in self.models if not m.closed]

    def hold(self) -> asyncio.Event:
        """Make every completion wait before its first token until the returned event is set."""
        self.gate = asyncio.Event()
        return self.gate


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the event loop until it holds (the app runs on the same loop)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
