"""The router's policies over a fleet's state (no I/O): what each rule decides and when it gives way."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from typing import Any

import pytest

from corral.backend.base import ChatCall, GenerateCall
from corral.errors import ModelNotFound
from corral.fleet.config import FleetConfig, Routing, UpstreamSpec
from corral.fleet.routing import Match, NoUpstreamAvailable, PrefixIndex, Router, block_hashes, call_prefix, prefix_of
from corral.fleet.state import FleetState

MODEL = "llama3:latest"
SYSTEM = {"role": "system", "content": "You are a patient tutor."}
DOCUMENT = {"role": "system", "content": "Answer from this manual only. " + "The pump primes in ten seconds. " * 60}


def make(
    names: str = "abc",
    *,
    routing: Routing = "cache-aware",
    loaded: str | None = None,
    margin: float = 4,
    weights: dict[str, float] | None = None,
) -> tuple[FleetState, Router]:
    specs = tuple(UpstreamSpec(n, f"http://{n}:1", weight=(weights or {}).get(n, 1.0)) for n in names)
    fleet = FleetState(
        FleetConfig(
            upstreams=specs, routing=routing, load_margin=margin, block_size=32, failure_threshold=1, cooldown=10
        )
    )
    for state in fleet:
        state.set_catalog([{"name": MODEL, "model": MODEL}, {"name": "other:1b", "model": "other:1b"}], 0.0)
        if loaded is None or state.name in loaded:
            state.set_running([{"name": MODEL, "model": MODEL}], 0.0)
    return fleet, Router(fleet)


def chat(*turns: str, system: dict[str, str] = SYSTEM) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [system]
    for i, text in enumerate(turns):
        messages.append({"role": "user", "content": text})
        if i < len(turns) - 1:
            messages.append({"role": "assistant", "content": f"A long answer to {text}. " * 10})
    return messages


def test_a_loaded_upstream_is_preferred_over_cold_ones() -> None:
    fleet, router = make(loaded="b")
    for _ in range(3):
        d = router.route(MODEL, prefix_of({"model": MODEL, "messages": chat("hello")}))
        assert (d.upstream, d.reason) == ("b", "loaded")
    assert fleet.get("b").decisions == Counter(loaded=3)


def test_a_busy_loaded_upstream_spills_onto_a_cold_one_past_the_margin() -> None:
    fleet, router = make("ab", loaded="b", margin=2)
    with ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(fleet.get("b").track())
        assert router.route(MODEL).upstream == "b"  # 2 - 0 is within the margin
        stack.enter_context(fleet.get("b").track())
        d = router.route(MODEL)
        assert (d.upstream, d.reason) == ("a", "least-loaded")


def test_a_conversation_sticks_to_the_upstream_that_served_its_earlier_turns() -> None:
    _, router = make()
    first = {}
    for topic in ("fractions", "photosynthesis", "the French revolution"):
        question = f"Teach me {topic}, step by step, with exercises at the end of each part."
        d = router.route(MODEL, prefix_of({"model": MODEL, "messages": chat(question)}))
        assert d.reason == "least-loaded"  # the short shared system prompt is too little to steer
        router.record(d)
        first[topic] = (question, d.upstream)
    assert sorted(u for _, u in first.values()) == ["a", "b", "c"]  # idle ties go to the one chosen longest ago
    for question, home in first.values():  # turn 2's text extends turn 1's: its own history is the longest match
        messages = chat(question, "Go on, with an example.")
        d = router.route(MODEL, prefix_of({"model": MODEL, "messages": messages}))
        assert (d.upstream, d.reason) == (home, "prefix")
        assert d.matched_chars >= len(prefix_of({"messages": chat(question)})) - 32
        assert d.matched_chars < 0.5 * len(prefix_of({"messages": messages}))  # the long answer is not indexed
        router.record(d)


def test_a_long_shared_document_draws_new_conversations_to_its_holder() -> None:
    _, router = make()
    d = router.route(MODEL, prefix_of({"messages": chat("How fast does it prime?", system=DOCUMENT)}))
    router.record(d)
    for question in ("Is it loud?", "What does it weigh?", "Can it run dry?"):
        again = router.route(MODEL, prefix_of({"messages": chat(question, system=DOCUMENT)}))
        assert (again.upstream, again.reason) == (d.upstream, "prefix")


def test_the_load_margin_overrides_prefix_affinity() -> None:
    fleet, router = make("ab", margin=3)
    text = prefix_of({"messages": chat("Teach me fractions.")})
    d = router.route(MODEL, text)
    router.record(d)
    home, other = d.upstream, "b" if d.upstream == "a" else "a"
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(fleet.get(home).track())
        assert router.route(MODEL, text).upstream == home  # 3 over the least loaded: still within
        stack.enter_context(fleet.get(home).track())
        d2 = router.route(MODEL, text)
        assert (d2.upstream, d2.reason) == (other, "least-loaded")


def test_record_can_index_the_prompt_with_its_answer() -> None:
    _, router = make("ab")
    turn1 = chat("Teach me fractions.")
    d = router.route(MODEL, prefix_of({"messages": turn1}))
    answer = {"role": "assistant", "content": "A long answer to Teach me fractions.. " * 10}
    router.record(d, prefix_of({"messages": [*turn1, answer]}))
    d2 = router.route(MODEL, prefix_of({"messages": chat("Teach me fractions.", "More.")}))
    assert d2.upstream == d.upstream and d2.matched_chars > d.matched_chars + 32


def test_prefixes_of_one_model_do_not_steer_another_but_its_spellings_share_them() -> None:
    _, router = make("ab")
    text = prefix_of({"messages": chat("Teach me fractions.")})
    router.record(router.route(MODEL, text))
    assert router.route("other:1b", text).reason != "prefix"
    assert router.route("llama3", text).reason == "prefix"


def test_excluded_and_ejected_upstreams_are_skipped() -> None:
    fleet, router = make()
    text = prefix_of({"messages": chat("Teach me fractions.")})
    d = router.route(MODEL, text)
    router.record(d)
    retry = router.route(MODEL, text, exclude={d.upstream})  # failover: anywhere but there
    assert retry.upstream != d.upstream
    fleet.get("a").failed("refused")  # threshold 1: open
    for _ in range(6):
        assert router.route(MODEL, exclude={"b"}).upstream == "c"
    with pytest.raises(NoUpstreamAvailable) as err:
        router.route(MODEL, exclude={"b", "c"})
    assert err.value.status == 503 and "a: open" in err.value.message and "b: excluded" in err.value.message


def test_a_half_open_upstream_gets_exactly_one_probe() -> None:
    clock = [0.0]
    specs = (UpstreamSpec("a", "http://a:1"),)
    fleet = FleetState(FleetConfig(upstreams=specs, failure_threshold=1, cooldown=5), clock=lambda: clock[0])
    fleet.get("a").set_catalog([{"name": MODEL}], 0)
    router = Router(fleet)
    fleet.get("a").failed("timeout")
    with pytest.raises(NoUpstreamAvailable):
        router.route(MODEL)
    clock[0] = 5
    assert router.route(MODEL).reason == "only"  # the probe
    with pytest.raises(NoUpstreamAvailable):
        router.route(MODEL)
    fleet.get("a").succeeded()
    assert router.route(MODEL).upstream == "a"


def test_no_upstream_serving_the_model_is_model_not_found() -> None:
    _, router = make()
    with pytest.raises(ModelNotFound) as err:
        router.route("missing:7b", "anything")
    assert err.value.status == 404 and err.value.model == "missing:7b"


def test_least_loaded_weights_and_ties() -> None:
    fleet, router = make("ab", routing="least-loaded", weights={"a": 3})
    got = Counter()
    with ExitStack() as stack:
        for _ in range(8):
            d = router.route(MODEL)
            assert d.reason == "least-loaded"
            got[d.upstream] += 1
            stack.enter_context(fleet.get(d.upstream).track())
    assert got == Counter(a=6, b=2)
    _, even = make("ab", routing="least-loaded")
    assert [even.route(MODEL).upstream for _ in range(4)] == ["a", "b", "a", "b"]  # idle: alternate


def test_round_robin_rotates_by_weight() -> None:
    _, router = make("abc", routing="round-robin")
    assert [router.route(MODEL).upstream for _ in range(6)] == list("abcabc")
    _, weighted = make("ab", routing="round-robin", weights={"a": 2})
    picks = [weighted.route(MODEL) for _ in range(30)]
    assert Counter(d.upstream for d in picks) == Counter(a=20, b=10) and {d.reason for d in picks} == {"round-robin"}
    assert "aaa" not in "".join(d.upstream for d in picks)  # smooth: interleaved, not in bursts


def test_one_candidate_is_only() -> None:
    _, router = make("ab")
    d = router.route(MODEL, exclude={"a"})
    assert (d.upstream, d.reason) == ("b", "only")


def test_block_hashes_chain_over_the_whole_prefix() -> None:
    text = "x" * 100 + "y" * 60
    hashes = block_hashes(text, 32, "m")
    assert len(hashes) == 5  # 160 chars: five full blocks, no partial one
    assert block_hashes(text[:96], 32, "m") == hashes[:3]
    assert block_hashes("z" + text[1:], 32, "m")[1:] != hashes[1:]  # a change early changes every later hash
    assert block_hashes(text, 32, "n") != hashes and block_hashes("short", 32) == []


def test_the_prefix_index_is_a_bounded_lru_that_knows_where_prompts_ended() -> None:
    index = PrefixIndex(capacity=4)
    index.insert([1, 2, 3], "a", 1.0)
    index.insert([1, 2], "b", 2.0)
    assert index.longest([1, 2, 3, 7], {"a", "b"}) == Match("a", 3, True)
    assert index.longest([1, 2, 9], {"a", "b"}) == Match("b", 2, True)  # b's prompt ended at block 2
    assert index.longest([1, 2, 9], {"a"}) == Match("a", 2, False)  # a's went on: a shared prefix only
    index.insert([1, 2, 5], "a", 3.0)
    assert index.longest([1, 2, 9], {"a", "b"}) == Match("b", 2, True)  # an ended prompt beats a later pass
    index.insert([4, 6], "c", 4.0)  # 6 entries: the least recently touched (3, then 1) go
    assert len(index) == 4 and index.longest([1, 2, 3], {"a"}) == Match("a", 2, False)
    index.forget("b")
    assert index.longest([1, 2], {"a", "b"}) == Match("a", 2, False) and len(index) == 4
    index.forget("c")
    assert len(index) == 2


def test_prefix_text_is_the_same_for_each_dialect_and_the_internal_call() -> None:
    messages = chat("Teach me fractions.")
    ollama = prefix_of({"model": MODEL, "messages": messages, "stream": True, "options": {"temperature": 0}})
    openai = prefix_of({"model": MODEL, "messages": messages, "max_tokens": 5})
    assert ollama == openai == call_prefix(ChatCall(model=MODEL, messages=messages))
    assert prefix_of({"messages": messages, "tools": [{"type": "function"}]}).startswith('{"tools"')
    nulls = [{**m, "images": None} for m in messages]
    assert prefix_of({"messages": nulls}) == openai  # null fields a client sends on one turn only
    gen = prefix_of({"model": MODEL, "prompt": "Once upon a time", "system": "Be brief."})
    assert gen == call_prefix(GenerateCall(model=MODEL, prompt="Once upon a time", system="Be brief."))
    assert gen.endswith("Once upon a time") and prefix_of({"input": "embed me"}) == "" and prefix_of([]) == ""
