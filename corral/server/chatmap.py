"""What every chat dialect shares when it maps its wire types onto a :class:`ChatCall`.

OpenAI's chat completions and Responses and Anthropic's Messages all carry
tool definitions, tool calls with ids, tool results that refer to those ids,
base64 images and a "tool choice". Their wire shapes differ; what is done
with them does not, and lives here: ids, argument parsing, image checks,
linking a tool result to its tool's name, and turning a tool choice into the
tools a :class:`ChatCall` offers and the ones it forces
(:attr:`ChatCall.force_tool`).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import string
from typing import Any, Literal

from corral.errors import BadRequest

_ID_CHARS = string.ascii_lowercase + string.digits
_IMAGE_PREFIXES = ("data:;base64,",) + tuple(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp"))

ToolChoiceMode = Literal["auto", "none", "required", "named"]


def new_id(prefix: str, nbytes: int = 12) -> str:
    return prefix + secrets.token_hex(nbytes)


def tool_call_id() -> str:
    """9 lowercase alphanumerics: Mistral's chat templates reject any other tool call id."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(9))


def tool_arguments(args: Any, *, param: str) -> dict[str, Any]:
    """A tool call's arguments as given on the wire (a JSON string or an object) -> a dict; else a 400."""
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise BadRequest("invalid tool call arguments", param=param) from None
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise BadRequest("invalid tool call arguments", param=param)
    return args


def base64_image(data: Any, *, param: str) -> str:
    """Check that ``data`` is base64 and return it (what internal messages carry as an image)."""
    if not isinstance(data, str):
        raise BadRequest("invalid image input", param=param)
    try:
        base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        raise BadRequest("invalid image input", param=param) from None
    return data


def image_from_url(url: Any, *, param: str) -> str:
    """A ``data:image/...;base64,`` URL -> its base64 payload; remote URLs are not fetched (a 400)."""
    if not isinstance(url, str):
        raise BadRequest("invalid message format: an image needs a url", param=param)
    if url.startswith(("http://", "https://")):
        raise BadRequest("image URLs are not currently supported, please use base64 encoded data instead", param=param)
    for prefix in _IMAGE_PREFIXES:
        if url.startswith(prefix):
            return base64_image(url[len(prefix) :], param=param)
    raise BadRequest("invalid image input", param=param)


def function_tool(name: Any, description: Any, parameters: Any, *, param: str = "tools") -> dict[str, Any]:
    """One tool in the internal (Ollama) shape."""
    if not isinstance(name, str) or not name:
        raise BadRequest("every tool needs a name", param=param)
    fn: dict[str, Any] = {"name": name}
    if description:
        fn["description"] = description
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest(f"tool {name!r}: its parameters must be a JSON schema object", param=param)
    fn["parameters"] = parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": fn}


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or [] if isinstance(t.get("function"), dict)]


def apply_tool_choice(
    tools: list[dict[str, Any]] | None, mode: ToolChoiceMode, name: str | None = None, *, param: str = "tool_choice"
) -> tuple[list[dict[str, Any]] | None, list[str] | None]:
    """A tool choice -> (the tools the call offers, the names it forces one call of).

    ``none`` offers no tools; ``auto`` offers them all and forces nothing;
    ``required`` forces a call of any of them; ``named`` offers and forces only
    that tool. Forcing is done by the backend (constrained sampling).
    """
    tools = tools or None
    if mode == "none":
        return None, None
    if mode == "auto":
        return tools, None
    if not tools:
        raise BadRequest(f"tool_choice {mode!r} needs tools to choose from", param=param)
    if mode == "required":
        return tools, tool_names(tools)
    picked = [t for t in tools if (t.get("function") or {}).get("name") == name]
    if not picked:
        raise BadRequest(f"tool_choice names {name!r}, which is not in tools", param=param)
    return picked, [str(name)]


def link_tool_names(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each tool result without a ``tool_name`` the name of the call its ``tool_call_id`` answers
    (templates print the tool's name; the wire often carries only the call id)."""
    names: dict[str, str] = {}
    for msg in messages:
        for tc in msg.get("tool_calls") or ():
            if tc.get("id"):
                names[tc["id"]] = tc["function"]["name"]
        if msg.get("role") == "tool" and not msg.get("tool_name") and msg.get("tool_call_id") in names:
            msg["tool_name"] = names[msg["tool_call_id"]]
    return messages


def images_of(messages: list[dict[str, Any]]) -> list[str] | None:
    """Every image the messages carry (the backend checks the model's vision capability with them)."""
    return [img for m in messages for img in m.get("images") or ()] or None
