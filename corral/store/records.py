"""Model records: everything the server needs to run one stored model.

A :class:`ModelRecord` joins a manifest's layers (template, system, params,
messages, license, adapters, projector) with the GGUF's metadata, and derives
the model's capabilities the way Ollama does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import BadRequest
from corral.store.gguf_meta import GGUFInfo, read_gguf
from corral.store.store import LocalModel, Store


def is_jinja(template: str) -> bool:
    """A TEMPLATE is Jinja (HF chat template) when it uses ``{%`` blocks."""
    return "{%" in template or (
        "{{" in template and "{{ ." not in template and "{{." not in template and "{{-" not in template
    )


@dataclass
class ModelRecord:
    name: str  # display name
    digest: str  # manifest digest (hex)
    local: LocalModel
    gguf_path: Path
    info: GGUFInfo
    template: str | None  # Modelfile TEMPLATE layer, if any
    system: str | None
    params: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    adapters: list[Path] = field(default_factory=list)
    projector: Path | None = None

    @property
    def effective_template(self) -> str | None:
        """The template used to render chats: TEMPLATE layer, else GGUF Jinja."""
        return self.template if self.template is not None else self.info.chat_template

    @property
    def capabilities(self) -> list[str]:
        caps: list[str] = []
        tmpl = self.effective_template or ""
        if self.info.pooling and self.info.architecture in (
            "bert",
            "nomic-bert",
            "jina-bert-v2",
            "modern-bert",
            "neo-bert",
            "t5encoder",
        ):
            caps.append("embedding")
        else:
            caps.append("completion")
        if ".Tools" in tmpl or ("tools" in tmpl and "{%" in tmpl):
            caps.append("tools")
        if self.info.fim is not None or ".Suffix" in tmpl:
            caps.append("insert")
        if self.projector is not None or self.info.has_vision:
            caps.append("vision")
        if ".Think" in tmpl or "<think>" in tmpl or "enable_thinking" in tmpl or "reasoning_content" in tmpl:
            caps.append("thinking")
        return caps

    def require(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise BadRequest(f'"{self.name}" does not support {capability}')


def load_record(store: Store, name: str) -> ModelRecord:
    local = store.get(name)
    path = local.model_path
    if path is None or not path.is_file():
        raise BadRequest(f'model "{local.name.display}" has no model weights layer')
    info = read_gguf(path)
    params = local.json("params") or {}
    messages = local.json("messages") or []
    licenses = [store.blob_path(layer.digest).read_text(encoding="utf-8") for layer in local.layers_of("license")]
    adapters = [store.blob_path(layer.digest) for layer in local.layers_of("adapter")]
    projector = local.layer("projector")
    return ModelRecord(
        name=local.name.display,
        digest=local.digest,
        local=local,
        gguf_path=path,
        info=info,
        template=local.text("template"),
        system=local.text("system"),
        params=params if isinstance(params, dict) else {},
        messages=messages if isinstance(messages, list) else [],
        license=licenses,
        adapters=adapters,
        projector=store.blob_path(projector.digest) if projector else None,
    )
