"""Output parsers: thinking split and tool-call extraction, fed token by token."""

from __future__ import annotations

import pytest

from corral.templates.parsers import ThinkingSplitter, ToolCallParser, parse_tool_calls


def feed_all(splitter: ThinkingSplitter, pieces: list[str]) -> tuple[str, str]:
    thinking, content = "", ""
    for piece in pieces:
        t, c = splitter.feed(piece)
        thinking, content = thinking + t, content + c
    t, c = splitter.flush()
    return thinking + t, content + c


def chars(text: str) -> list[str]:
    return list(text)


def test_thinking_split_across_tokens() -> None:
    text = "<think>\nLet me add 2 and 2.\n</think>\n\nThe answer is 4."
    thinking, content = feed_all(ThinkingSplitter(), chars(text))
    assert thinking == "Let me add 2 and 2.\n"
    assert content == "The answer is 4."


def test_no_thinking_passes_content_through() -> None:
    assert feed_all(ThinkingSplitter(), chars("Hello <b>world</b>")) == ("", "Hello <b>world</b>")


def test_unterminated_thinking_stays_thinking() -> None:
    assert feed_all(ThinkingSplitter(), ["<think>", "still going"]) == ("still going", "")


@pytest.mark.parametrize(
    "output",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '```json\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n```',
    ],
)
def test_tool_call_formats(output: str) -> None:
    calls = parse_tool_calls(output, {"get_weather"})
    assert calls == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}, "index": 0}}]


def test_multiple_calls_and_unknown_names() -> None:
    out = (
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "zzz", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>'
    )
    calls = parse_tool_calls(out, {"a", "b"})
    assert [c["function"]["name"] for c in calls] == ["a", "b"]
    assert [c["function"]["index"] for c in calls] == [0, 1]


def test_streaming_parser_holds_back_tool_call() -> None:
    parser = ToolCallParser({"f"})
    emitted = "".join(
        parser.feed(c) for c in chars('Sure. <tool_call>{"name": "f", "arguments": {"q": 1}}</tool_call>')
    )
    assert emitted == "Sure. "
    rest, calls = parser.finish()
    assert rest == "" and calls[0]["function"]["arguments"] == {"q": 1}


def test_streaming_parser_releases_plain_text() -> None:
    parser = ToolCallParser({"f"})
    emitted = "".join(parser.feed(c) for c in chars("Just a normal answer with <b>tags</b>."))
    rest, calls = parser.finish()
    assert emitted + rest == "Just a normal answer with <b>tags</b>." and calls == []


def test_streaming_parser_gives_back_bad_json() -> None:
    parser = ToolCallParser({"f"})
    emitted = "".join(parser.feed(c) for c in chars("{not really json"))
    rest, calls = parser.finish()
    assert emitted == "" and rest == "{not really json" and calls == []
