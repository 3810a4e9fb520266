"""Registry: the Docker registry v2 protocol Ollama speaks for pull and push.

* :mod:`corral.registry.client` pulls models from and pushes models to any
  such registry (``registry.ollama.ai``, another Corral, a Docker
  distribution server), streaming Ollama's progress statuses. Downloads
  resume from ``blobs/partial-sha256-<hex>`` files and are verified before
  they are renamed into place; a manifest is written only once every blob it
  references is.
* :mod:`corral.registry.remote` is one remote registry host for the client:
  its HTTP client, the API key sent to it alone, its errors.
* :mod:`corral.registry.server` holds the framework-free pieces of Corral's
  own registry (name mapping, manifest validation, upload sessions); the
  HTTP routes live in :mod:`corral.server.registry_v2`.
"""

from __future__ import annotations

from corral.registry.client import partial_path, pull_model, push_model
from corral.registry.remote import RegistryError

__all__ = ["RegistryError", "partial_path", "pull_model", "push_model"]
