"""Prompts: turn an internal chat or generate call into the model's prompt.

Two template engines: the GGUF's Jinja ``tokenizer.chat_template`` (rendered
in a sandbox, as Hugging Face's ``apply_chat_template`` does) and Ollama's
Go ``TEMPLATE`` from a Modelfile (see :mod:`corral.templates.gotemplate.template`). A Modelfile
TEMPLATE written in Jinja is accepted too.
"""

from __future__ import annotations

import functools
import json
import logging
from datetime import datetime
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral.errors import BadRequest
from corral.store.records import ModelRecord, is_jinja

log = logging.getLogger(__name__)


def _raise(message: str) -> None:
    raise JinjaTemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


@functools.lru_cache(maxsize=32)
def _jinja(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except JinjaTemplateError as exc:
        raise BadRequest(f"invalid chat template: {exc}") from exc


def _call_id(n: int) -> str:
    """A made-up tool call id: 9 alphanumerics (Mistral's templates insist), stable per position."""
    return f"call{n:05d}"


def _hf_message(msg: dict[str, Any], first_call: int = 0) -> dict[str, Any]:
    """Ollama message dict -> the shape HF chat templates expect."""
    out: dict[str, Any] = {"role": msg["role"], "content": msg.get("content") or ""}
    if msg.get("thinking"):
        out["reasoning_content"] = msg["thinking"]
    if msg.get("tool_calls"):
        out["tool_calls"] = [
            {
                "type": "function",
                "id": tc.get("id") or _call_id(first_call + i),
                "function": {"name": tc["function"]["name"], "arguments": tc["function"].get("arguments") or {}},
            }
            for i, tc in enumerate(msg["tool_calls"])
        ]
    if msg.get("tool_name"):
        out["name"] = msg["tool_name"]
    if msg.get("tool_call_id"):
        out["tool_call_id"] = msg["tool_call_id"]
    return out


def _hf_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Convert a conversation, giving id-less tool calls ids and linking each tool result to its call.

    Ollama's /api/chat carries no call ids (a result names only its tool), but templates such as
    Mistral's print them and raise without them. A result with no ``tool_call_id`` answers the
    earliest unanswered call of the same tool name, else the earliest unanswered call.
    """
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of calls not answered yet
    calls = 0
    for msg in messages:
        hf = _hf_message(msg, calls)
        for tc in hf.get("tool_calls", ()):
            pending.append((tc["id"], tc["function"]["name"]))
            calls += 1
        if hf["role"] == "tool":
            if "tool_call_id" not in hf and pending:
                at = next((i for i, (_, name) in enumerate(pending) if name == hf.get("name")), 0)
                hf["tool_call_id"] = pending[at][0]
            pending = [p for p in pending if p[0] != hf.get("tool_call_id")]
        out.append(hf)
    return out


def render_jinja(
    source: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None,
    think: bool | None,
    bos: str,
    eos: str,
    add_generation_prompt: bool = True,
) -> str:
    template = _jinja(source)
    ctx: dict[str, Any] = {
        "messages": _hf_messages(messages),
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos,
        "eos_token": eos,
    }
    if tools:
        ctx["tools"] = tools
    if think is not None:
        ctx["enable_thinking"] = bool(think)
    try:
        return str(template.render(**ctx))
    except JinjaTemplateError as exc:
        raise BadRequest(f"chat template failed: {exc}") from exc


def _go_template(source: str) -> Any:
    from corral.templates.gotemplate.nodes import TemplateError
    from corral.templates.gotemplate.template import Template

    try:
        return Template(source)
    except TemplateError as exc:
        raise BadRequest(f"invalid template: {exc}") from exc


def render_chat(
    record: ModelRecord,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    think: bool | None = None,
    template: str | None = None,
    bos: str = "",
    eos: str = "",
) -> str:
    """Render a full chat prompt ending where the assistant should reply."""
    msgs = list(messages)
    if record.system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": record.system})
    if record.messages:
        msgs = [dict(m) for m in record.messages] + msgs
        if msgs and msgs[0]["role"] != "system" and any(m["role"] == "system" for m in msgs):
            system = [m for m in msgs if m["role"] == "system"]
            msgs = system[:1] + [m for m in msgs if m is not system[0]]
    source = template or record.effective_template
    if not source:
        # No template at all: plain concatenation, as a raw completion.
        return "".join(m.get("content") or "" for m in msgs)
    if is_jinja(source):
        return render_jinja(source, msgs, tools=tools, think=think, bos=bos, eos=eos)
    from corral.templates.gotemplate.prompt import render_chat_prompt

    return render_chat_prompt(_go_template(source), messages=msgs, tools=tools, think=think)


def render_generate(
    record: ModelRecord,
    prompt: str,
    *,
    system: str | None,
    suffix: str | None,
    template: str | None,
    think: bool | None,
    bos: str = "",
    eos: str = "",
) -> str:
    """Render /api/generate's prompt (not raw) through the model's template."""
    source = template or record.effective_template
    sys_text = system if system is not None else record.system
    if not source:
        return prompt
    if is_jinja(source):
        msgs: list[dict[str, Any]] = []
        if sys_text:
            msgs.append({"role": "system", "content": sys_text})
        msgs.append({"role": "user", "content": prompt})
        return render_jinja(source, msgs, tools=None, think=think, bos=bos, eos=eos)
    from corral.templates.gotemplate.prompt import render_chat_prompt

    tmpl = _go_template(source)
    if suffix is not None and tmpl.uses("Suffix"):
        return render_chat_prompt(tmpl, messages=[], system=sys_text, prompt=prompt, suffix=suffix, think=think)
    msgs = [{"role": "system", "content": sys_text}] if sys_text else []
    msgs.append({"role": "user", "content": prompt})
    return render_chat_prompt(tmpl, messages=msgs, system=sys_text, prompt=prompt, think=think)
