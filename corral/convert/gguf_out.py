"""Streaming, crash-safe GGUF writing shared by the converter and the quantiser.

Owns: ``PlannedTensor`` (name, logical shape, target GGML type and a loader that
produces the encoded bytes on demand), ``ModelPlan``, the per-tensor storage-type rules shared
by the converters, and ``write_gguf`` which writes header, metadata and tensor
data one tensor at a time to ``dst.with_suffix('.tmp-<random>')``, fsyncs it and
renames it over ``dst``. A failure leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import quant_shape_to_byte_shape, quantize

from corral.store.store import fsync_dir

log = logging.getLogger(__name__)

Progress = Callable[[str], None] | None

_PLAIN = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}

# Tensors kept in F32 whatever the requested type (mirrors convert_hf_to_gguf.py).
_ALWAYS_F32_NAMES = ("position_embd.weight", "token_types.weight", "ffn_gate_inp.weight")


@dataclass
class PlannedTensor:
    """One output tensor: ``load()`` returns float data (F32/F16) or uint8 blocks (others)."""

    name: str
    shape: tuple[int, ...]  # numpy order (rows, cols); GGUF stores it reversed
    qtype: GGMLQuantizationType
    load: Callable[[], np.ndarray]

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.qtype]
        return self.n_elements // block * size


@dataclass
class ModelPlan:
    """A converted model ready to be written: GGUF architecture, metadata filler, tensors."""

    arch: str
    fill_metadata: Callable[[GGUFWriter], None]
    tensors: list[PlannedTensor]

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)


def model_name(folder: Path, config: dict[str, Any]) -> str:
    """``general.name`` for a converted folder: the repo id's last part, else the folder name."""
    hint = str(config.get("_name_or_path") or "").rstrip("/")
    return hint.rsplit("/", 1)[-1] if hint else Path(folder).resolve().name


def storage_type(name: str, shape: tuple[int, ...], want: GGMLQuantizationType) -> GGMLQuantizationType:
    """Type a freshly converted tensor is stored as, given the requested output type."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return GGMLQuantizationType.F32
    if name.endswith(_ALWAYS_F32_NAMES):
        return GGMLQuantizationType.F32
    block = GGML_QUANT_SIZES[want][0]
    if shape[-1] % block != 0:
        log.warning("%s: row length %d not divisible by %d; storing as F16", name, shape[-1], block)
        return GGMLQuantizationType.F16
    return want


def encode(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Encode float data as ``qtype`` (numpy float array for F32/F16, uint8 blocks otherwise)."""
    if qtype in _PLAIN:
        return np.ascontiguousarray(data, dtype=_PLAIN[qtype])
    return quantize(np.asarray(data, dtype=np.float32), qtype)


def _tmp_path(dst: Path) -> Path:
    return dst.with_suffix(f".tmp-{secrets.token_hex(6)}")


def write_gguf(
    dst: Path,
    arch: str,
    fill_metadata: Callable[[GGUFWriter], None],
    tensors: list[PlannedTensor],
    *,
    progress: Progress = None,
    alignment: int | None = None,
) -> None:
    """Write a GGUF with the metadata ``fill_metadata`` adds and ``tensors`` (in order)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(dst)
    writer = GGUFWriter(tmp, arch)
    if alignment is not None:
        writer.data_alignment = alignment
    try:
        fill_metadata(writer)
        for t in tensors:
            if t.qtype in _PLAIN:
                writer.add_tensor_info(t.name, t.shape, np.dtype(_PLAIN[t.qtype]), t.nbytes)
            else:
                byte_shape = quant_shape_to_byte_shape(t.shape, t.qtype)
                writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        n = len(tensors)
        for i, t in enumerate(tensors, 1):
            if progress is not None:
                progress(f"writing tensor {i}/{n}: {t.name} ({t.qtype.name})")
            data = t.load()
            if data.nbytes != t.nbytes:
                raise RuntimeError(f"{t.name}: produced {data.nbytes} bytes, expected {t.nbytes}")
            writer.write_tensor_data(np.ascontiguousarray(data))
            del data
        assert writer.fout is not None
        for fh in writer.fout:
            fh.flush()
            os.fsync(fh.fileno())
        writer.close()
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
