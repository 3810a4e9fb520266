"""Requantise an F32/F16/BF16 GGUF into Q8_0, Q4_K_M or Q6_K, in pure Python.

Owns: ``quantize_gguf`` and ``SUPPORTED_QUANTS``. The per-tensor type choice
follows llama.cpp's ``llama-quant.cpp`` for these file types:

* only tensors whose name ends in ``weight`` with 2+ dims are quantised; norms,
  ``position_embd``/``token_types`` (BERT) and ``ffn_gate_inp`` keep their type,
  1-D tensors are stored F32;
* ``q4_K_M``: Q4_K by default; ``output.weight`` — or ``token_embd.weight``
  when the model has no ``output.weight`` (tied embeddings) — becomes Q6_K;
  ``attn_v`` and ``ffn_down`` of the layers picked by llama.cpp's
  ``use_more_bits`` become Q6_K;
* ``q6_K``: Q6_K everywhere; ``q8_0``: Q8_0 everywhere;
* a row length that is not a multiple of 256 falls back as llama.cpp does
  (Q4_K → Q5_0, Q6_K → Q8_0; F16 if even that does not fit).

Not reproduced (they need types this module cannot produce): the 70B and
8-expert bumps to Q5_K/Q8_0, and Falcon's special cases. All metadata is copied
byte-for-byte, ``general.file_type`` and ``general.quantization_version`` are
set, and the output is written crash-safely (temp file, fsync, rename).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGML_QUANT_VERSION,
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    GGUFWriter,
    LlamaFileType,
    ReaderField,
    ReaderTensor,
)
from gguf.quants import dequantize

from corral.convert.errors import ConversionError, UnsupportedQuantization
from corral.convert.gguf_out import PlannedTensor, encode, write_gguf
from corral.convert.kquants import quantize_q4_k, quantize_q6_k

log = logging.getLogger(__name__)

Q = GGMLQuantizationType
SUPPORTED_QUANTS: tuple[str, ...] = ("q8_0", "q4_K_M", "q6_K")
_FTYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q4_k_m": (Q.Q4_K, LlamaFileType.MOSTLY_Q4_K_M),
    "q6_k": (Q.Q6_K, LlamaFileType.MOSTLY_Q6_K),
}
_INPUT_TYPES = (Q.F32, Q.F16, Q.BF16)
_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0, Q.Q8_0: Q.F16}
_SKIP_KEYS = ("general.file_type", "general.quantization_version", "split.no", "split.count", "split.tensors.count")
_NO_QUANT_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "time_mix_",
    "attn_rel_b.weight",
    ".position_embd",
    ".rel_pos",
    ".patch_embd",
)
_CHUNK_ELEMENTS = 1 << 22


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _allows_quantization(name: str, n_dims: int) -> bool:
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(s in name for s in _NO_QUANT_SUBSTRINGS)


def _layer_key(name: str) -> tuple[int, str]:
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def _fallback(qtype: GGMLQuantizationType, ncols: int, name: str) -> GGMLQuantizationType:
    while ncols % GGML_QUANT_SIZES[qtype][0] != 0:
        new = _FALLBACK.get(qtype, Q.F16)
        log.info("%s: %d columns not divisible by %s block; falling back to %s", name, ncols, qtype.name, new.name)
        qtype = new
    return qtype


def choose_types(
    tensors: list[tuple[str, tuple[int, ...], GGMLQuantizationType]], quant: str, n_layer: int
) -> dict[str, GGMLQuantizationType]:
    """Target type per tensor name. ``tensors`` holds (name, numpy shape, current type)."""
    default, _ = _FTYPES[quant]
    tied = not any(name == "output.weight" for name, _, _ in tensors)
    attn_v = [n for n, _, _ in tensors if any(s in n for s in ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight"))]
    n_attn_v, i_attn_v, i_ffn_down = len(attn_v), 0, 0
    out: dict[str, GGMLQuantizationType] = {}
    for name, shape, cur in sorted(tensors, key=lambda t: _layer_key(t[0])):
        if not _allows_quantization(name, len(shape)):
            out[name] = Q.F32 if len(shape) <= 1 else cur
            continue
        new = default
        ncols = shape[-1]
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            if ncols % GGML_QUANT_SIZES[new][0] != 0:
                new = Q.Q8_0
            elif new != Q.Q8_0:
                new = Q.Q6_K
        elif name == "token_embd.weight":
            pass
        elif any(s in name for s in ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")):
            if quant == "q4_k_m" and _use_more_bits(i_attn_v, n_attn_v):
                new = Q.Q6_K
            i_attn_v += 1
        elif "ffn_down" in name:
            m = re.match(r"blk\.(\d+)\.", name)
            i_layer = int(m.group(1)) if m else i_ffn_down
            if quant == "q4_k_m" and _use_more_bits(i_layer, n_layer):
                new = Q.Q6_K
            i_ffn_down += 1
        out[name] = _fallback(new, ncols, name)
    return out


def _field_value(f: ReaderField) -> tuple[object, GGUFValueType, GGUFValueType | None] | None:
    main = f.types[0]
    if main == GGUFValueType.ARRAY:
        if len(f.types) > 2 or not f.data:
            log.warning("skipping metadata key %s (nested or empty array)", f.name)
            return None
        sub = f.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(f.parts[i]) for i in f.data], main, sub
        return [v for i in f.data for v in f.parts[i].tolist()], main, sub
    if main == GGUFValueType.STRING:
        return bytes(f.parts[-1]), main, None
    return f.parts[-1].tolist()[0], main, None


def _to_f32(t: ReaderTensor, rows: slice) -> np.ndarray:
    data = t.data.reshape(-1, t.data.shape[-1])[rows]
    if t.tensor_type == Q.F32:
        return np.asarray(data, dtype=np.float32)
    if t.tensor_type == Q.F16:
        return np.asarray(data).astype(np.float32)
    return dequantize(np.asarray(data), t.tensor_type)


def _encode(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.Q4_K:
        return quantize_q4_k(data)
    if qtype == Q.Q6_K:
        return quantize_q6_k(data)
    return encode(data, qtype)


def _loader(t: ReaderTensor, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        if qtype == t.tensor_type:
            return np.asarray(t.data)
        ncols = shape[-1]
        nrows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        block, size = GGML_QUANT_SIZES[qtype]
        row_bytes = ncols // block * size
        out = np.empty((nrows, row_bytes), dtype=np.uint8)
        step = max(1, _CHUNK_ELEMENTS // max(ncols, 1))
        for a in range(0, nrows, step):
            b = min(nrows, a + step)
            enc = _encode(_to_f32(t, slice(a, b)).reshape(b - a, ncols), qtype)
            out[a:b] = enc.reshape(b - a, -1).view(np.uint8)
        if qtype in (Q.F32, Q.F16):
            return out.view(np.float32 if qtype == Q.F32 else np.float16).reshape(shape)
        return out

    return load


def normalize_quant(quant: str) -> str:
    """Canonical lower-case key for ``quant``; raises ``UnsupportedQuantization`` if unknown."""
    key = quant.strip().lower()
    if key not in _FTYPES:
        raise UnsupportedQuantization(f"unsupported quantization {quant!r}; supported: {', '.join(SUPPORTED_QUANTS)}")
    return key


def quantize_gguf(src: Path, dst: Path, quant: str, *, progress: Callable[[str], None] | None = None) -> None:
    """Write ``dst``: the F32/F16/BF16 GGUF ``src`` requantised to ``quant`` (see ``SUPPORTED_QUANTS``)."""
    key = normalize_quant(quant)
    _, ftype = _FTYPES[key]
    src, dst = Path(src), Path(dst)
    try:
        reader = GGUFReader(src, "r")
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read GGUF {src}: {exc}") from exc
    bad = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in _INPUT_TYPES})
    if bad:
        raise UnsupportedQuantization(
            f"quantization is only supported for F16 and F32 models (this one has {', '.join(bad)} tensors)"
        )
    fields = reader.fields
    arch_field = fields.get("general.architecture")
    if arch_field is None:
        raise ConversionError(f"{src} has no general.architecture")
    arch = str(arch_field.contents())
    block_field = fields.get(f"{arch}.block_count")
    n_layer = int(block_field.contents()) if block_field is not None else 0
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    targets = choose_types([(t.name, shapes[t.name], t.tensor_type) for t in reader.tensors], key, n_layer)
    planned = [
        PlannedTensor(t.name, shapes[t.name], targets[t.name], _loader(t, shapes[t.name], targets[t.name]))
        for t in reader.tensors
    ]
    alignment_field = fields.get("general.alignment")
    alignment = int(alignment_field.contents()) if alignment_field is not None else None

    def fill(w: GGUFWriter) -> None:
        for name, f in fields.items():
            if name.startswith("GGUF.") or name in _SKIP_KEYS or name == "general.architecture":
                continue
            value = _field_value(f)
            if value is not None:
                w.add_key_value(name, value[0], value[1], sub_type=value[2])
        w.add_file_type(ftype)
        w.add_quantization_version(GGML_QUANT_VERSION)

    if progress is not None:
        progress(f"quantizing {src.name} to {key} ({len(planned)} tensors)")
    log.info("quantizing %s -> %s (%s)", src, dst, key)
    write_gguf(dst, arch, fill, planned, progress=progress, alignment=alignment)
