"""Model names: parsing and validation as Ollama does.

``[host/][namespace/]model[:tag]`` with defaults ``registry.ollama.ai``,
``library`` and ``latest``. Validation happens before any path is built, so
a bad name (``..``, absolute paths, odd characters) never touches the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from corral.errors import BadRequest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,349}(:[0-9]{1,5})?$")


@dataclass(frozen=True, order=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, raw: str) -> ModelName:
        """Parse and validate; raise BadRequest for an invalid name."""
        name = (raw or "").strip()
        if not name:
            raise BadRequest("model name is required", param="model")
        for scheme in ("https://", "http://"):
            name = name.removeprefix(scheme)
        if name.startswith("/") or "\\" in name or "//" in name:
            raise BadRequest(f"invalid model name {raw!r}", param="model")
        tag = DEFAULT_TAG
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            base, tag = name.rsplit(":", 1)
            name = base
        parts = name.split("/")
        if len(parts) == 1:
            host, ns, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
        elif len(parts) == 2:
            host, (ns, model) = DEFAULT_HOST, parts
        elif len(parts) == 3:
            host, ns, model = parts
        else:
            raise BadRequest(f"invalid model name {raw!r}", param="model")
        ok = (
            _HOST.match(host)
            and _PART.match(ns)
            and _PART.match(model)
            and _TAG.match(tag)
            and ".." not in host + ns + model + tag
        )
        if not ok:
            raise BadRequest(f"invalid model name {raw!r}", param="model")
        return cls(host.lower(), ns.lower(), model.lower(), tag)

    @property
    def display(self) -> str:
        """Short form, as ``ollama list`` prints it."""
        if self.host == DEFAULT_HOST and self.namespace == DEFAULT_NAMESPACE:
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def manifest_relpath(self) -> PurePosixPath:
        return PurePosixPath("manifests", self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        return self.display
