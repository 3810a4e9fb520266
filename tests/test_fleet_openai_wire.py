"""OpenAI's wire format as the fleet's client reads and writes it: what a real server is hard to make send."""

from __future__ import annotations

import json

import pytest

from corral.errors import BadGateway, BadRequest, ModelNotFound, TooManyRequests
from corral.fleet.openai_wire import SSEDecoder, StreamFolder, response_format, sampling, upstream_error

EVENTS = (
    b'data: {"a": 1}\n\n'
    b": a comment line\r\n"
    b'data: {"b":\r\ndata: 2}\r\n\r\n'  # CRLF, and one event's data over two lines
    b'event: message\ndata:{"c": 3}\n\n'  # no space after the colon
    b'error: {"message": "boom"}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("step", [1, 2, 5, 13, 1000])
def test_sse_events_cut_at_any_byte_arrive_whole(step: int) -> None:
    decoder = SSEDecoder()
    out: list[bytes] = []
    for i in range(0, len(EVENTS), step):
        out += decoder.feed(EVENTS[i : i + step])
    out += decoder.finish()
    assert [json.loads(p) if p != b"[DONE]" else p for p in out] == [
        {"a": 1},
        {"b": 2},
        {"c": 3},
        {"error": {"message": "boom"}},
        b"[DONE]",
    ]


def test_an_event_without_its_blank_line_is_kept_at_the_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a": 1}') == []
    assert decoder.finish() == [b'{"a": 1}'] and decoder.finish() == []


def test_tool_arguments_that_are_no_json_object_come_back_as_content() -> None:
    folder = StreamFolder("m", "up")
    folder.chunk(
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{not json"}}]
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        }
    )
    final = folder.final()
    assert final.tool_calls == [] and json.loads(final.content) == {"name": "f", "arguments": "{not json"}
    assert final.eval_count == 0 and final.prompt_eval_ns > 0  # no usage chunk: nothing counted, timings positive


def test_completion_logprobs_become_chat_style_entries_and_usage_can_ride_the_last_chunk() -> None:
    folder = StreamFolder("m", "up")
    piece = folder.chunk(
        {
            "choices": [
                {
                    "text": "Hi",
                    "logprobs": {
                        "tokens": ["Hi"],
                        "token_logprobs": [-0.5],
                        "top_logprobs": [{"Hi": -0.5, "Hey": -1.0}],
                    },
                }
            ]
        }
    )
    assert piece is not None and piece.logprobs == [
        {
            "token": "Hi",
            "logprob": -0.5,
            "top_logprobs": [{"token": "Hi", "logprob": -0.5}, {"token": "Hey", "logprob": -1.0}],
        }
    ]
    folder.chunk(
        {"choices": [{"text": "", "finish_reason": "length"}], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
    )
    final = folder.final()
    assert (final.done_reason, final.prompt_eval_count, final.eval_count) == ("length", 4, 1)


def test_a_vllm_error_object_mid_stream_is_a_bad_gateway() -> None:
    with pytest.raises(BadGateway, match="upstream up failed mid-answer: out of blocks"):
        StreamFolder("m", "up").chunk({"object": "error", "message": "out of blocks", "code": 500})


def test_upstream_error_statuses() -> None:
    assert isinstance(upstream_error(404, {"message": "no"}, "m", "up"), ModelNotFound)
    err = upstream_error(422, {"error": {"message": "bad field"}}, "m", "up")
    assert isinstance(err, BadRequest) and err.status == 422 and err.message == "bad field"
    assert isinstance(upstream_error(429, "slow down", "m", "up"), TooManyRequests)
    busy = upstream_error(503, "", "m", "up")
    assert isinstance(busy, BadGateway) and busy.status == 503 and busy.message == "upstream up failed: HTTP 503"
    assert upstream_error(500, "<html>oops</html>", "m", "up").status == 502


def test_options_and_formats_map_onto_openai_fields() -> None:
    assert sampling({"num_predict": -2, "stop": ["a", "b"], "mirostat": 1, "temperature": None}) == {"stop": ["a", "b"]}
    assert response_format("") is None and response_format(None) is None
    with pytest.raises(BadRequest, match="invalid format"):
        response_format("yaml")
