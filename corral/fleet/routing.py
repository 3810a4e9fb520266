"""Routing: which upstream serves a request, under the fleet's policy.

Owns :class:`Router` (``route`` a request to an upstream, ``record`` that it
was served), :class:`PrefixIndex` (the cache-aware router's memory of which
upstream last served which prompt prefix) and the prefix text of a request
(:func:`prefix_of` for a raw request body, :func:`call_prefix` for an
internal call). Candidates are the upstreams that serve the model, are not
excluded (a failover retry excludes the one that failed) and whose circuit
is available.

Policies (``FleetConfig.routing``):

- ``cache-aware`` (default), following SGLang's and llm-d's prefix-cache-aware
  routers:

  1. prefer candidates that have the model loaded over ones that would load
     it cold -- unless the least loaded of those carries more than
     ``load_margin`` over the least loaded candidate overall, so a busy model
     spills onto a second upstream instead of staying pinned to one;
  2. among those, prefer the upstream that most recently served the longest
     shared prompt prefix: the request's prefix text (canonical JSON of the
     tools and messages, one line each, so turn 2 of a conversation extends
     turn 1's text) is cut into ``block_size``-character blocks whose hashes
     are chained (each covers everything before it), and a bounded LRU index
     maps each hash to the upstreams that served it and when. A match steers
     the request if it is the whole of a prompt served before (the request
     continues it: a conversation's next turn, however long the last answer
     was) or covers at least ``min_prefix_match`` of the prompt's blocks
     (SGLang's cache threshold: a long shared document). A short shared
     system prompt in front of new questions does not pin every conversation
     to one upstream;
  3. unless that upstream's load exceeds the least loaded one's by more than
     ``load_margin``; then take the least loaded.

  Load is outstanding requests divided by ``weight``; the least loaded is the
  one with the lowest ``(outstanding + 1) / weight`` (so weights count even
  when all are idle), ties going to the one chosen longest ago.
- ``least-loaded``: the least loaded candidate.
- ``round-robin``: smooth weighted round-robin (nginx's): over many requests
  each candidate gets its share of ``weight``, interleaved.

A decision's reason is the rule that decided it: ``only`` (one candidate),
``prefix`` (rule 2), ``loaded`` (rule 1 narrowed the choice, no prefix
applied), ``least-loaded`` (load decided, including a prefix overridden by
the margin) or ``round-robin``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from corral.backend.base import ChatCall, GenerateCall
from corral.errors import ModelNotFound, ServerBusy
from corral.fleet.config import Routing
from corral.fleet.state import FleetState, UpstreamState

Reason = Literal["prefix", "loaded", "least-loaded", "round-robin", "only"]
REASONS: tuple[Reason, ...] = ("prefix", "loaded", "least-loaded", "round-robin", "only")


class NoUpstreamAvailable(ServerBusy):
    """Upstreams serve the model, but none may take a request now (circuits open, or all excluded): 503."""

    def __init__(self, message: str, model: str) -> None:
        super().__init__(message, param="model")
        self.model = model


# ---- prefix text ------------------------------------------------------------------------


def _line(value: Any) -> str:
    """One message (or the tools, or the system prompt) as one line of the prefix text.

    A plain ``{"role", "content": str}`` message, the common case, is written
    as role, a unit separator and its content (~20x cheaper than JSON on a
    long history); anything else as canonical JSON. Either way the same
    message always renders the same, which is all the prefix needs.
    """
    if isinstance(value, dict):  # fields a client sends as null one turn and omits the next
        value = {k: v for k, v in value.items() if v is not None}
        if value.keys() <= {"role", "content"} and isinstance(value.get("content"), str):
            return f"{value.get('role')}\x1f{value['content']}\x1e\n"
    return json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n"


def chat_prefix(messages: Iterable[Any], *, tools: Any = None, system: Any = None) -> str:
    """A conversation's prefix text: system and tools first (templates render them first), then each message."""
    head = (_line({"system": system}) if system else "") + (_line({"tools": tools}) if tools else "")
    return head + "".join(_line(m) for m in messages)


def prefix_of(body: Any) -> str:
    """The prefix text of a raw request body: Ollama and OpenAI chat (``messages``, ``tools``; Anthropic's
    ``system``), Ollama generate (``system`` then ``prompt``), OpenAI completions (``prompt``); else ``""``."""
    if not isinstance(body, dict):
        return ""
    if isinstance(body.get("messages"), list):
        return chat_prefix(body["messages"], tools=body.get("tools"), system=body.get("system"))
    prompt = body.get("prompt")
    head = _line({"system": body["system"]}) if body.get("system") else ""
    if isinstance(prompt, str):
        return head + prompt
    if isinstance(prompt, list):
        return head + _line(prompt)
    return ""


def call_prefix(call: ChatCall | GenerateCall) -> str:
    """The same prefix text for an internal call, as :func:`prefix_of` gives for its Ollama body."""
    if isinstance(call, ChatCall):
        return chat_prefix(call.messages, tools=call.tools)
    return prefix_of({"prompt": call.prompt, "system": call.system})


def block_hashes(text: str, block_size: int, seed: str = "") -> list[int]:
    """Chained hashes of ``text``'s full blocks: hash *i* covers ``text[:(i + 1) * block_size]`` (and ``seed``,
    the model, so two models never share a prefix). A trailing partial block is not hashed.

    Python's own (SipHash) string hash, ~5x cheaper than hashlib per block: the
    values differ between processes, which is fine for an index that lives
    in one gateway process.
    """
    h = hash(seed)
    out: list[int] = []
    for start in range(0, len(text) - block_size + 1, block_size):
        h = hash((h, text[start : start + block_size]))
        out.append(h)
    return out


@dataclass(frozen=True)
class Match:
    """The longest indexed prefix of a prompt: who served it, how many blocks, and whether it is the whole
    of a prompt served before (the request continues that one, as a conversation's next turn does)."""

    upstream: str
    blocks: int
    continuation: bool


class PrefixIndex:
    """Bounded LRU map: prefix-block hash -> {upstream: (when it last served a prompt with that prefix,
    whether a served prompt ended at that block)}."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, dict[str, tuple[float, bool]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def insert(self, hashes: Sequence[int], upstream: str, now: float) -> None:
        """Index one served prompt's block hashes; its last full block is marked as a prompt's end."""
        last = len(hashes) - 1
        for i, h in enumerate(hashes):
            seen = self._entries.get(h)
            if seen is None:
                self._entries[h] = {upstream: (now, i == last)}
                if len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
            else:
                seen[upstream] = (now, i == last or seen.get(upstream, (0.0, False))[1])
                self._entries.move_to_end(h)

    def longest(self, hashes: Sequence[int], allowed: Collection[str]) -> Match | None:
        """The longest indexed prefix served by an allowed upstream; among those that served that same
        prefix, one whose prompt ended there first, then the most recent."""
        for i in range(len(hashes) - 1, -1, -1):
            seen = self._entries.get(hashes[i])
            if seen:
                best = max(((end, when, name) for name, (when, end) in seen.items() if name in allowed), default=None)
                if best is not None:
                    return Match(best[2], i + 1, best[0])
        return None

    def forget(self, upstream: str) -> None:
        """Drop an upstream from the index (it restarted, its caches are gone)."""
        for h in [h for h, seen in self._entries.items() if seen.pop(upstream, None) is not None and not seen]:
            del self._entries[h]


def _seed(model: str) -> str:
    """The model as a hash seed, one spelling for ``llama3`` and ``llama3:latest``."""
    return model if ":" in model.rsplit("/", 1)[-1] else model + ":latest"


# ---- the router -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """Where one request goes and why; ``matched_chars`` is the prefix length that decided a ``prefix`` choice."""

    model: str
    upstream: str
    reason: Reason
    matched_chars: int = 0
    hashes: tuple[int, ...] = field(default=(), repr=False, compare=False)


class Router:
    """Routes requests over a fleet's states under its policy (see module docstring); one per gateway process."""

    def __init__(self, fleet: FleetState, *, policy: Routing | None = None) -> None:
        self.fleet = fleet
        self.policy: Routing = policy or fleet.config.routing
        self.block_size = fleet.config.block_size
        self.margin = fleet.config.load_margin
        self.min_match = fleet.config.min_prefix_match
        self.index = PrefixIndex(fleet.config.prefix_index_size)
        self._current: dict[str, float] = {}  # smooth weighted round-robin state
        self._seq = 0
        self._chosen_at: dict[str, int] = {}

    def candidates(self, model: str, exclude: Collection[str] = ()) -> list[UpstreamState]:
        """Upstreams that may take a request for ``model`` now; raises if there are none."""
        serving = self.fleet.serving(model)
        if not serving:
            raise ModelNotFound(model)
        ok = [s for s in serving if s.name not in exclude and s.available()]
        if not ok:
            states = ", ".join(f"{s.name}: {'excluded' if s.name in exclude else s.breaker.state}" for s in serving)
            raise NoUpstreamAvailable(f'no upstream can take a request for model "{model}" now ({states})', model)
        return ok

    def route(self, model: str, prefix_text: str = "", *, exclude: Collection[str] = ()) -> Decision:
        """Pick the upstream for one request. ``exclude`` names upstreams not to use (a failover retry).

        Raises :class:`ModelNotFound` when no upstream serves ``model``, and
        :class:`NoUpstreamAvailable` (503) when those that do cannot take it.
        The chosen upstream's half-open probe, if it has one, is taken.
        """
        cands = self.candidates(model, exclude)
        hashes: tuple[int, ...] = ()
        if self.policy == "cache-aware" and prefix_text:
            hashes = tuple(block_hashes(prefix_text, self.block_size, _seed(model)))
        if len(cands) == 1:
            decision = Decision(model, cands[0].name, "only", hashes=hashes)
        elif self.policy == "round-robin":
            decision = Decision(model, self._round_robin(cands).name, "round-robin")
        elif self.policy == "least-loaded":
            decision = Decision(model, self._least(cands).name, "least-loaded")
        else:
            decision = self._cache_aware(model, cands, hashes)
        chosen = self.fleet.get(decision.upstream)
        chosen.breaker.claim()
        chosen.decisions[decision.reason] += 1
        self._seq += 1
        self._chosen_at[chosen.name] = self._seq
        return decision

    def record(self, decision: Decision, prefix_text: str | None = None) -> None:
        """The request was served: index its prefix under the upstream (the decision's own prefix, or
        ``prefix_text`` if given, e.g. the prompt with the answer appended), and note the model as loaded there."""
        state = self.fleet.get(decision.upstream)
        state.note_loaded(decision.model)
        if self.policy != "cache-aware":
            return
        hashes = (
            decision.hashes
            if prefix_text is None
            else block_hashes(prefix_text, self.block_size, _seed(decision.model))
        )
        self.index.insert(hashes, decision.upstream, self.fleet.clock())

    # ---- policies ---------------------------------------------------------------------------
    def _least(self, cands: list[UpstreamState]) -> UpstreamState:
        return min(cands, key=lambda s: ((s.outstanding + 1) / s.spec.weight, self._chosen_at.get(s.name, 0)))

    def _round_robin(self, cands: list[UpstreamState]) -> UpstreamState:
        total = sum(s.spec.weight for s in cands)
        for s in cands:
            self._current[s.name] = self._current.get(s.name, 0.0) + s.spec.weight
        best = max(cands, key=lambda s: self._current[s.name])
        self._current[best.name] -= total
        return best

    def _cache_aware(self, model: str, cands: list[UpstreamState], hashes: tuple[int, ...]) -> Decision:
        least_all = self._least(cands)
        loaded = [s for s in cands if s.has_loaded(model)]
        pool = loaded or cands
        least = self._least(pool)
        if loaded and least.load - least_all.load > self.margin:  # rule 1's spill-over
            pool, least = cands, least_all
        if hashes:
            hit = self.index.longest(hashes, {s.name for s in pool})
            if hit is not None and (hit.continuation or hit.blocks >= self.min_match * len(hashes)):
                target = self.fleet.get(hit.upstream)
                if target.load - least.load <= self.margin:
                    return Decision(model, target.name, "prefix", hit.blocks * self.block_size, hashes)
                return Decision(model, least.name, "least-loaded", 0, hashes)
        narrowed = len(pool) < len(cands)
        return Decision(model, least.name, "loaded" if narrowed else "least-loaded", 0, hashes)
