"""Output parsers: split model output into thinking, content and tool calls.

:class:`ThinkingSplitter` separates ``<think>...</think>`` incrementally while
tokens stream. :class:`ToolCallParser` watches the content stream for the
start of a tool call (``<tool_call>``, ``[TOOL_CALLS]``, ``<|python_tag|>`` or
a bare JSON object), holds it back, and parses it into Ollama's
``tool_calls`` shape when generation ends.
"""

from __future__ import annotations

import json
import re
from typing import Any

TOOL_MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "<function_call>", "```json")
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a prefix of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ThinkingSplitter:
    """Incrementally route text between thinking and content."""

    def __init__(self, open_tag: str = "<think>", close_tag: str = "</think>", *, started: bool = False) -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self.state = "thinking" if started else "start"
        self.buf = ""
        self.fresh = True  # strip whitespace right after the opening tag

    def feed(self, text: str) -> tuple[str, str]:
        """Return (thinking, content) newly decided by this piece of text."""
        self.buf += text
        thinking, content = "", ""
        while self.buf:
            if self.state == "start":
                stripped = self.buf.lstrip()
                if stripped.startswith(self.open_tag):
                    self.buf = stripped[len(self.open_tag) :].lstrip("\n")
                    self.state = "thinking"
                elif self.open_tag.startswith(stripped):
                    break  # could still become <think>
                else:
                    self.state = "content"
                    self.fresh = False
            elif self.state == "thinking":
                if self.fresh:
                    self.buf = self.buf.lstrip()
                    if not self.buf:
                        break
                    self.fresh = False
                idx = self.buf.find(self.close_tag)
                if idx >= 0:
                    thinking += self.buf[:idx]
                    self.buf = self.buf[idx + len(self.close_tag) :]
                    self.state = "content"
                    self.fresh = True
                else:
                    keep = _partial_suffix(self.buf, self.close_tag)
                    thinking += self.buf[: len(self.buf) - keep]
                    self.buf = self.buf[len(self.buf) - keep :]
                    break
            else:
                if self.fresh:
                    self.buf = self.buf.lstrip()
                    if not self.buf:
                        break
                    self.fresh = False
                content += self.buf
                self.buf = ""
        return thinking, content

    def flush(self) -> tuple[str, str]:
        rest, self.buf = self.buf, ""
        return (rest, "") if self.state == "thinking" else ("", rest)


def _normalise_call(obj: Any, names: set[str] | None) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    if "function" in obj and isinstance(obj["function"], dict):
        obj = obj["function"]
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            args = {"value": args}
    if not isinstance(name, str) or not isinstance(args, dict):
        return None
    if names and name not in names:
        return None
    return {"function": {"name": name, "arguments": args}}


def _json_values(text: str) -> list[Any]:
    """Decode consecutive JSON values from text (objects or arrays)."""
    dec = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    text = text.strip()
    while i < len(text):
        while i < len(text) and text[i] in " \n\r\t,;":
            i += 1
        if i >= len(text):
            break
        try:
            value, i = dec.raw_decode(text, i)
        except ValueError:
            break
        out.append(value)
    return out


def parse_tool_calls(text: str, names: set[str] | None) -> list[dict[str, Any]]:
    """Parse every tool call in a model's output; [] when there are none."""
    body = text.strip()
    candidates: list[Any] = []
    if "<tool_call>" in body:
        for block in _BLOCK.findall(body):
            candidates.extend(_json_values(block))
    else:
        for marker in ("[TOOL_CALLS]", "<|python_tag|>", "<function_call>"):
            if marker in body:
                body = body.split(marker, 1)[1]
                break
        body = body.replace("```json", "").replace("```", "")
        candidates = _json_values(body)
    calls: list[dict[str, Any]] = []
    for cand in candidates:
        for item in cand if isinstance(cand, list) else [cand]:
            call = _normalise_call(item, names)
            if call is not None:
                call["function"]["index"] = len(calls)
                calls.append(call)
    return calls


class ToolCallParser:
    """Stream filter: passes content through until a tool call may start."""

    def __init__(self, names: set[str] | None) -> None:
        self.names = names
        self.held = ""
        self.capturing = False
        self.seen_text = False

    def feed(self, text: str) -> str:
        if self.capturing:
            self.held += text
            return ""
        self.held += text
        probe = self.held.lstrip()
        if not self.seen_text and probe[:1] in ("{", "["):
            self.capturing = True
            return ""
        for marker in TOOL_MARKERS:
            idx = self.held.find(marker)
            if idx >= 0:
                out, self.held = self.held[:idx], self.held[idx:]
                self.capturing = True
                return out
        keep = max((_partial_suffix(self.held, m) for m in TOOL_MARKERS), default=0)
        if not probe:
            return ""
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(self.held) - keep :]
        if out.strip():
            self.seen_text = True
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """(leftover content, tool calls) once generation has ended."""
        held, self.held = self.held, ""
        if not self.capturing:
            return held, []
        calls = parse_tool_calls(held, self.names)
        if not calls:
            return held, []
        return "", calls
