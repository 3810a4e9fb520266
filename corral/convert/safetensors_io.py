"""Lazy, dependency-light reader for Hugging Face ``*.safetensors`` checkpoints.

Owns: parsing the safetensors header, memory-mapping the data section, the
sharded ``model.safetensors.index.json`` layout, and decoding dtypes numpy lacks
(BF16 is widened to float32). Tensors are only materialised when asked for, so
converting a model never needs more than about one tensor in memory.

The ``safetensors`` package's numpy backend cannot return BF16 tensors, which
most modern checkpoints use, hence this small reader.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corral.convert.errors import ConversionError

log = logging.getLogger(__name__)

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # decoded to float32 in SafetensorsFolder.get
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype name, shape and byte range in the data section."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ConversionError(f"{path.name}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > _MAX_HEADER:
                raise ConversionError(f"{path.name}: not a safetensors file (bad header length {n})")
            header = json.loads(fh.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path.name}: cannot read safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ConversionError(f"{path.name}: malformed safetensors header")
    return header, 8 + n


class SafetensorsFolder:
    """All tensors of a checkpoint folder (single file or sharded), read lazily."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.entries: dict[str, TensorEntry] = {}
        self._maps: dict[Path, np.memmap] = {}
        self._offsets: dict[Path, int] = {}
        files = self._files(folder)
        for f in files:
            header, data_start = _read_header(f)
            self._offsets[f] = data_start
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                dtype = info.get("dtype")
                if dtype not in _DTYPES:
                    raise ConversionError(f"tensor {name!r} has unsupported dtype {dtype!r}")
                begin, end = info["data_offsets"]
                shape = tuple(int(d) for d in info["shape"])
                expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
                if end - begin != expected:
                    raise ConversionError(f"tensor {name!r}: byte size does not match its shape")
                self.entries[name] = TensorEntry(f, dtype, shape, int(begin), int(end))
        if not self.entries:
            raise ConversionError(f"no tensors found in {folder}")

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, KeyError, json.JSONDecodeError) as exc:
                raise ConversionError(f"cannot read {index.name}: {exc}") from exc
            files = sorted({folder / v for v in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ConversionError(f"missing safetensors shard(s): {', '.join(missing)}")
            return files
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
                raise ConversionError(f"{folder} has only PyTorch pickle weights; only *.safetensors are supported")
            raise ConversionError(f"no *.safetensors files in {folder}")
        return files

    def names(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def _map(self, path: Path) -> np.memmap:
        m = self._maps.get(path)
        if m is None:
            m = np.memmap(path, dtype=np.uint8, mode="r")
            self._maps[path] = m
        return m

    def get(self, name: str) -> np.ndarray:
        """Return the tensor as a read-only numpy array; BF16 comes back as float32."""
        e = self.entries[name]
        start = self._offsets[e.file]
        raw = self._map(e.file)[start + e.begin : start + e.end]
        arr = raw.view(_DTYPES[e.dtype]).reshape(e.shape)
        if e.dtype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr

    def close(self) -> None:
        self._maps.clear()
