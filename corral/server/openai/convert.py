"""OpenAI-family request translation shared by ``/v1/chat/completions`` and ``/v1/responses``.

Both speak in OpenAI chat messages underneath: the Responses API's input
items are mapped onto :class:`ChatMessage` (:mod:`corral.server.openai.responses`),
then both go through :func:`messages_in` to the internal (Ollama) messages
of a :class:`ChatCall`. Reasoning effort maps to ``think`` the same way in
both, and so does a tool choice (:func:`tool_choice_of`).
"""

from __future__ import annotations

from typing import Any

from corral.errors import BadRequest
from corral.server.chatmap import ToolChoiceMode, image_from_url, tool_arguments
from corral.server.openai.types import ChatMessage

# OpenAI reasoning effort -> Ollama ``think`` (openai.go thinkFromReasoningEffort).
# Corral's think levels stop at "high", so Ollama's "max" tier maps there.
EFFORT: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "high",
    "xhigh": "high",
    "ultra": "high",
}


def think_from_effort(effort: str | None, *, param: str = "reasoning_effort") -> bool | str | None:
    if not effort:
        return None
    if effort not in EFFORT:
        raise BadRequest(
            f'invalid reasoning value: {effort!r} (must be "minimal", "low", "medium", '
            '"high", "xhigh", "ultra", "max", or "none")',
            param=param,
        )
    return EFFORT[effort]


def _image(part: dict[str, Any]) -> str:
    """An ``image_url`` part -> the base64 payload Ollama messages carry."""
    ref = part.get("image_url")
    return image_from_url(ref.get("url") if isinstance(ref, dict) else ref, param="messages")


def _content(content: str | list[dict[str, Any]] | None) -> tuple[str, list[str]]:
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image(part))
        else:
            raise BadRequest(f"invalid message format: unsupported content part {kind!r}", param="messages")
    return "\n".join(texts), images


def _tool_call_in(tc: dict[str, Any]) -> dict[str, Any]:
    fn = tc.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadRequest("invalid tool call: function.name is required", param="messages")
    out: dict[str, Any] = {
        "function": {"name": fn["name"], "arguments": tool_arguments(fn.get("arguments"), param="messages")}
    }
    if tc.get("id"):
        out["id"] = tc["id"]
    return out


def messages_in(msgs: list[ChatMessage]) -> tuple[list[dict[str, Any]], list[str]]:
    """OpenAI messages -> Ollama message dicts, plus every image they carry."""
    names = {tc.get("id"): (tc.get("function") or {}).get("name") for m in msgs for tc in m.tool_calls or []}
    out: list[dict[str, Any]] = []
    images: list[str] = []
    for m in msgs:
        role = "system" if m.role == "developer" else m.role
        if role not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"invalid message role: {m.role!r}", param="messages")
        text, imgs = _content(m.content)
        msg: dict[str, Any] = {"role": role, "content": text}
        if imgs:
            msg["images"] = imgs
            images.extend(imgs)
        thinking = m.reasoning or m.reasoning_content
        if thinking:
            msg["thinking"] = thinking
        if m.tool_calls:
            msg["tool_calls"] = [_tool_call_in(tc) for tc in m.tool_calls]
        if role == "tool":
            tool_name = m.name or names.get(m.tool_call_id)
            if tool_name:
                msg["tool_name"] = tool_name
            if m.tool_call_id:
                msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out, images


def tool_choice_of(choice: str | dict[str, Any] | None, name_of: Any) -> tuple[ToolChoiceMode, str | None]:
    """An OpenAI ``tool_choice`` -> (mode, tool name). ``name_of`` reads the name out of the
    named-function object, whose shape differs between chat completions and Responses."""
    if choice is None or choice == "auto":
        return "auto", None
    if choice == "none":
        return "none", None
    if choice == "required":
        return "required", None
    if isinstance(choice, dict):
        name = name_of(choice)
        if choice.get("type") != "function" or not isinstance(name, str):
            raise BadRequest("tool_choice must be none, auto, required or name a function", param="tool_choice")
        return "named", name
    raise BadRequest(
        f"invalid tool_choice {choice!r}; expected none, auto, required or a named function", param="tool_choice"
    )
