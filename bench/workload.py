"""The workload every peer gets: requests, prompts, phases and their figures.

A :class:`Req` is one streamed completion (a raw prompt, or chat messages);
each peer turns it into its own wire format and returns a :class:`Res` with
client-side timestamps (``time.perf_counter``, i.e. CLOCK_MONOTONIC, which
is comparable across processes on Linux). Phases are small coroutines that
take any object with ``async run(req) -> Res``; the driver interleaves them
across peers. Prompts are deterministic filler text made unique by a nonce
at the very start, so no request reuses another's prompt cache except the
second chat turn, which is meant to.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

# Identical explicit sampling for every peer: greedy (temperature 0) with
# Ollama's default penalties, so no peer runs a cheaper sampler chain.
SAMPLING: dict[str, float | int] = {
    "temperature": 0.0,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "repeat_penalty": 1.1,
    "repeat_last_n": 64,
}

_WORDS = [
    "the",
    "river",
    "carried",
    "old",
    "boats",
    "past",
    "quiet",
    "villages",
    "where",
    "farmers",
    "grew",
    "wheat",
    "and",
    "barley",
    "under",
    "a",
    "pale",
    "sky",
    "merchants",
    "argued",
    "about",
    "prices",
    "while",
    "children",
    "chased",
    "dogs",
    "across",
    "the",
    "square",
    "and",
    "a",
    "bell",
    "rang",
    "twice",
    "in",
    "the",
    "evening",
    "the",
    "lamps",
    "were",
    "lit",
    "one",
    "by",
    "one",
    "and",
    "travellers",
    "told",
    "stories",
    "of",
    "mountains",
    "cities",
    "and",
    "storms",
    "a",
    "young",
    "engineer",
    "measured",
    "the",
    "bridge",
    "again",
    "because",
    "the",
    "numbers",
    "did",
    "not",
    "agree",
    "with",
    "the",
    "drawings",
    "she",
    "wrote",
    "a",
    "careful",
    "report",
    "about",
    "the",
    "timber",
    "the",
    "stone",
    "the",
    "iron",
    "bolts",
    "and",
    "the",
    "cost",
    "of",
    "every",
    "repair",
    "meanwhile",
    "the",
    "council",
    "met",
    "in",
    "a",
    "cold",
    "hall",
    "to",
    "decide",
    "whether",
    "the",
    "market",
    "should",
    "move",
    "closer",
    "to",
    "the",
    "harbour",
    "nobody",
    "expected",
    "the",
    "winter",
    "to",
    "be",
    "so",
    "long",
    "yet",
    "the",
    "granaries",
    "held",
    "enough",
    "grain",
    "for",
    "everyone",
    "until",
    "spring",
]

# Openings that SmolLM2-135M continues past 96 tokens at temperature 0
# (checked over 40 nonces each): Corral's API has no ignore_eos.
_STORY_STARTS = (
    "Once upon a time, in a small village by the sea, there lived",
    "In the city of glass towers, a curious robot decided one morning to",
    "Here is a long numbered list of animals and where they live:\n1. The lion lives in",
    "The following is a detailed travel diary, day by day.\nDay 1: We arrived in",
    "Chapter 1\n\nThe storm had been raging for three days when",
    "Recipe notes, step by step:\nStep 1: Take a large bowl and",
)


def filler(words: int, seed: int) -> str:
    """Deterministic English-like text of ``words`` words."""
    rng = random.Random(seed)
    out: list[str] = []
    sentence = 0
    while len(out) < words:
        n = rng.randint(8, 18)
        chunk = [rng.choice(_WORDS) for _ in range(n)]
        chunk[0] = chunk[0].capitalize()
        chunk[-1] += "."
        out.extend(chunk)
        sentence += 1
    return " ".join(out[:words]).rstrip(".") + "."


@dataclass
class Req:
    """One streamed request; ``n_predict`` tokens are asked for."""

    kind: Literal["generate", "chat"]
    n_predict: int
    prompt: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    count_prompt: bool = False  # the peer should report prompt tokens even if its stream doesn't

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Req:
        return cls(**d)


@dataclass
class Res:
    """Client-side timings of one request (seconds, perf_counter clock)."""

    t_start: float
    t_first: float = 0.0  # first chunk carrying text
    t_last: float = 0.0  # last chunk carrying text
    t_end: float = 0.0  # response fully read
    n_tokens: int = 0  # generated tokens (server-reported when available)
    n_chunks: int = 0  # chunks carrying text
    prompt_tokens: int = 0  # 0 when the peer does not report it
    text: str = ""
    error: str | None = None
    cut: bool = False  # the stream ended without the server's final marker (request abandoned)
    round: int = 0  # concurrency phase: which of the client's back-to-back requests this was
    t_chunks: list[float] = field(default_factory=list)  # arrival of each text chunk (dropped after the phase)
    window_s: float = 0.0  # concurrency phase: length of the measurement window
    window_tokens: float = 0.0  # concurrency phase: this request's tokens that arrived inside the window

    def chunk(self, now: float) -> None:
        """Record one text chunk arriving at ``now``."""
        if not self.n_chunks:
            self.t_first = now
        self.t_last = now
        self.n_chunks += 1
        self.t_chunks.append(now)

    @property
    def ttft(self) -> float:
        return self.t_first - self.t_start

    @property
    def latency(self) -> float:
        return self.t_end - self.t_start

    @property
    def decode_tps(self) -> float:
        span = self.t_last - self.t_first
        return (self.n_tokens - 1) / span if span > 0 and self.n_tokens > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Res:
        return cls(**d)


class Runner(Protocol):
    async def run(self, req: Req) -> Res: ...


@dataclass
class Workload:
    """Sizes of everything; ``quick()`` is the CI-sized variant."""

    n_predict: int = 96
    levels: tuple[int, ...] = (1, 2, 4, 8, 16)
    window_s: float = 10.0  # concurrency phase: seconds of sustained load measured per level
    repeats: int = 5
    single_requests: int = 2  # sequential single-stream requests per repeat
    long_prompt_words: int = 890  # ~1,000 tokens with SmolLM2's tokenizer
    prompt_eval_predict: int = 8
    chat_history_words: int = 1250  # ~1,500 tokens of history incl. template
    chat_turn_predict: int = 32
    seed: int = 7
    phases: tuple[str, ...] = ("single", "prompt_eval", "concurrency", "chat")
    _nonce: itertools.count = field(default_factory=lambda: itertools.count(random.SystemRandom().randrange(10**6)))

    @classmethod
    def quick(cls) -> Workload:
        return cls(
            n_predict=32,
            levels=(1, 4),
            window_s=2.0,
            repeats=1,
            single_requests=1,
            long_prompt_words=180,
            prompt_eval_predict=4,
            chat_history_words=280,
            chat_turn_predict=8,
        )

    @classmethod
    def smoke(cls) -> Workload:
        """Quick mode cut to the bone: every phase still runs on every peer, the figures mean nothing."""
        return replace(
            cls.quick(), n_predict=8, window_s=0.5, long_prompt_words=40, chat_history_words=40, chat_turn_predict=4
        )

    def describe(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if not k.startswith("_")}

    def nonce(self) -> int:
        return next(self._nonce)

    # ---- requests ---------------------------------------------------------------
    def short_generate(self) -> Req:
        n = self.nonce()
        start = _STORY_STARTS[n % len(_STORY_STARTS)]
        return Req("generate", self.n_predict, prompt=f"Story {n}. {start}")

    def long_generate(self) -> Req:
        n = self.nonce()
        text = filler(self.long_prompt_words, self.seed + n)
        return Req(
            "generate",
            self.prompt_eval_predict,
            prompt=f"Report {n}.\n{text}\n\nIn one sentence, the report above is about",
            count_prompt=True,
        )

    def chat_first_turn(self) -> Req:
        n = self.nonce()
        messages = [{"role": "system", "content": f"Session {n}. You are a concise, helpful assistant."}]
        per_turn = max(20, self.chat_history_words // 8)
        for i in range(4):
            messages.append(
                {"role": "user", "content": "Please summarise this note: " + filler(per_turn, self.seed + n * 10 + i)}
            )
            messages.append({"role": "assistant", "content": filler(per_turn, self.seed + n * 10 + i + 5)})
        messages.append({"role": "user", "content": "Now write a short story about the harbour town."})
        return Req("chat", self.chat_turn_predict, messages=messages)

    def chat_second_turn(self, first: Req, reply: str) -> Req:
        messages = list(first.messages) + [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "Continue the story with one more paragraph."},
        ]
        return Req("chat", self.chat_turn_predict, messages=messages)


# ---- phases ---------------------------------------------------------------------------


async def phase_single(peer: Runner, wl: Workload) -> list[Res]:
    """Sequential single-stream requests: decode tokens/s and short-prompt TTFT."""
    return [await peer.run(wl.short_generate()) for _ in range(wl.single_requests)]


async def phase_prompt_eval(peer: Runner, wl: Workload) -> list[Res]:
    """One cold ~1,000-token prompt: prompt tokens / TTFT."""
    return [await peer.run(wl.long_generate())]


async def phase_concurrency(peer: Runner, wl: Workload, level: int) -> list[Res]:
    """``level`` clients keep the peer under load for at least ``wl.window_s`` seconds.

    A closed loop, as real clients are: each client sends its next request
    as soon as the previous answer is in. The window closes at the first
    request end after ``wl.window_s`` once every client has had one answer
    (so a peer slower than the window still gets measured); until then all
    ``level`` clients keep going. Requests still running when it closes
    finish (their latencies count), but only tokens that arrived inside
    the window count for throughput. So the figure is the rate at which
    the peer serves ``level`` concurrent streams, without a tail where
    fewer are left, and a server that drops the running request whenever
    another one waits (llama-cpp-python's default) is measured as it
    behaves under that load.
    """
    t0 = time.perf_counter()
    deadline = t0 + wl.window_s
    answered = 0  # clients that have had their first answer
    closed_at = 0.0

    def window_open() -> bool:
        nonlocal closed_at
        if not closed_at and answered == level and time.perf_counter() >= deadline:
            closed_at = time.perf_counter()
        return not closed_at

    async def client() -> list[Res]:
        nonlocal answered
        out: list[Res] = []
        while not out or window_open():
            res = await peer.run(wl.short_generate())
            res.round = len(out)
            out.append(res)
            answered += res.round == 0
        return out

    results = [r for batch in await asyncio.gather(*(client() for _ in range(level))) for r in batch]
    for r in results:
        r.window_s = closed_at - t0
        inside = bisect.bisect_right(r.t_chunks, closed_at) - bisect.bisect_left(r.t_chunks, t0)
        r.window_tokens = r.n_tokens * inside / len(r.t_chunks) if r.t_chunks else 0.0
        r.t_chunks = []
    return results


async def phase_chat(peer: Runner, wl: Workload) -> list[Res]:
    """A long chat's first turn (cold) then its second turn (prompt-cache reuse)."""
    first = wl.chat_first_turn()
    r1 = await peer.run(first)
    r2 = await peer.run(wl.chat_second_turn(first, r1.text))
    return [r1, r2]


# ---- figures ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _rate(batch: list[Res], keep: bool | None = None) -> float:
    """Tokens per second of ``batch`` (only the requests where ``keep`` is true, if given).

    A windowed batch (concurrency phase) counts the tokens that arrived
    inside its window over the window's length; any other batch counts
    every token over its wall time.
    """
    chosen = [r for r in batch if keep is None or (r.error is None and not r.cut) == keep]
    window = max((r.window_s for r in batch), default=0.0)
    if window > 0:
        return sum(r.window_tokens for r in chosen) / window
    span = max(r.t_end for r in batch) - min(r.t_start for r in batch)
    return sum(r.n_tokens for r in chosen) / span if span > 0 else 0.0


def aggregate_tps(batch: list[Res]) -> float:
    """Every token received, abandoned requests' included, per second of the phase (or of its window)."""
    return _rate(batch)


def goodput_tps(batch: list[Res]) -> float:
    """Tokens of the answers received in full, per second: a cut answer is no answer."""
    return _rate(batch, keep=True)


def complete_share(batch: list[Res]) -> float:
    """Share of requests answered in full (no error, stream not cut)."""
    return sum(1 for r in batch if r.error is None and not r.cut) / len(batch) if batch else 0.0


def starvation(batch: list[Res], level: int, slots: int) -> float:
    """Worst latency in a batch over what FIFO service into ``slots`` predicts.

    All ``level`` requests start together; with continuous batching they
    finish in ceil(level/slots) waves, the first after about the batch's
    shortest latency. ~1 means every request was served in its turn; above
    1.5 some request waited well past its place in the queue (starved).
    """
    batch = [r for r in batch if r.round == 0] or batch  # only the first round starts together
    waves = math.ceil(level / max(1, slots))
    fastest = min(r.latency for r in batch)
    worst = max(r.latency for r in batch)
    return worst / (waves * fastest) if fastest > 0 else 0.0
