"""Ollama's prompt semantics: :func:`render_chat_prompt`, as Ollama's ``template.Execute``.

Fill-in-middle data when a prompt and suffix are given, the message list when
the template mentions ``.Messages``, otherwise the legacy per-turn rendering
through ``.System``/``.Prompt``/``.Response`` cut after the last ``.Response``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from corral.templates.gotemplate.data import (
    TemplateTools,
    convert_message,
    convert_tool,
)
from corral.templates.gotemplate.gojson import (
    NIL_SLICE,
)
from corral.templates.gotemplate.template import Template

log = logging.getLogger(__name__)


def _collate(messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's collate: join consecutive same-role turns (not tool) with a blank line; gather system text."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for msg in messages:
        role = str(msg.get("role") or "").lower()
        content = str(msg.get("content") or "")
        if role == "system":
            system.append(content)
        if out and out[-1]["role"] == role and role != "tool":
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({**msg, "role": role, "content": content})
    return "\n\n".join(system), out


def _think_values(think: bool | str | None) -> dict[str, Any]:
    if isinstance(think, str):
        enabled, level = think in ("high", "medium", "low", "max"), think
    else:
        enabled, level = bool(think), "medium" if think else ""
    return {"Think": enabled, "ThinkLevel": level, "IsThinkSet": think is not None}


def render_chat_prompt(
    template: Template | str,
    *,
    messages: Sequence[Mapping[str, Any]],
    system: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    think: bool | str | None = None,
    suffix: str | None = None,
    prompt: str | None = None,
    preserve_key_order: bool = False,
) -> str:
    """Render a prompt the way Ollama's ``template.Execute`` does.

    ``messages`` use Ollama's wire shape. ``system`` is prepended as a system
    message unless the first message already is one (Ollama's chat handler
    does this with the model's SYSTEM). With a non-empty ``suffix``, nothing is
    folded in and, when ``prompt`` is non-empty too, only Prompt/Suffix/Response
    are passed (fill-in-middle). Without a suffix, ``prompt`` becomes the user
    message only when ``messages`` is empty. ``think`` may be a bool or a level
    ("high"/"medium"/"low"). Tool-call arguments and top-level tool properties
    are Go maps, so ``json``/printing sorts their keys as Ollama does;
    ``preserve_key_order=True`` keeps the caller's order instead.
    """
    tmpl = template if isinstance(template, Template) else Template(template)
    thinking = _think_values(think)
    msgs = [dict(m) for m in messages]
    if suffix:
        if prompt:
            return tmpl._execute_ollama({"Prompt": prompt, "Suffix": suffix, "Response": "", **thinking})
    else:
        if system and (not msgs or str(msgs[0].get("role")).lower() != "system"):
            msgs.insert(0, {"role": "system", "content": system})
        if prompt and not msgs:
            msgs.append({"role": "user", "content": prompt})
    system_text, collated = _collate(msgs)
    if tmpl.uses("messages"):
        data = {
            "System": system_text,
            "Messages": [convert_message(m, preserve_key_order) for m in collated] or NIL_SLICE,
            "Tools": TemplateTools((convert_tool(t, preserve_key_order) for t in tools or ()), nil=tools is None),
            "Response": "",
            **thinking,
        }
        return tmpl._execute_ollama(data)
    # Legacy templates: one execution per system/user/assistant turn, then the
    # final turn rendered up to (and including) its {{ .Response }}.
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(tmpl._execute_ollama({**turn, **thinking}))
        turn.update(System="", Prompt="", Response="")

    for msg in collated:
        role, content = msg["role"], msg["content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    out.append(tmpl._execute_ollama({**turn, **thinking}, legacy_final=True))
    return "".join(out)
