"""GGUF metadata: details, ``model_info`` and capabilities read from a file.

Everything ``/api/tags``, ``/api/show`` and ``/api/ps`` report about a
model's weights comes from here: architecture, parameter count, file type
(quantization), context length, the embedded Jinja chat template and the
fill-in-the-middle tokens. Results are cached per (path, mtime, size).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import BadRequest

log = logging.getLogger(__name__)

# llama_ftype values (general.file_type) to Ollama's quantization names.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}

_BIG_ARRAYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.added_tokens",
)

# Architectures llama.cpp in this build can run; anything else is a clear 400
# instead of an engine crash.
ENCODER_ARCHS = frozenset({"bert", "nomic-bert", "jina-bert-v2", "t5encoder", "modern-bert", "neo-bert"})


def human_number(n: int) -> str:
    """Ollama's ``format.HumanNumber`` (134515008 -> '134.52M')."""
    for unit, size, fmt in (("B", 1e9, "%.1f"), ("M", 1e6, "%.2f"), ("K", 1e3, "%.0f")):
        if n >= size:
            value = n / size
            if value == int(value):
                return f"{int(value)}{unit}"
            return (fmt % value) + unit
    return str(n)


@dataclass
class GGUFInfo:
    path: Path
    architecture: str
    file_type: str
    parameter_count: int
    context_length: int
    kv: dict[str, Any] = field(default_factory=dict)  # scalar metadata (and short arrays)
    chat_template: str | None = None
    fim: tuple[int, int, int] | None = None  # (prefix, suffix, middle) token ids
    pooling: bool = False
    has_vision: bool = False
    bos_text: str = ""
    eos_text: str = ""

    @property
    def family(self) -> str:
        return self.architecture

    @property
    def parameter_size(self) -> str:
        return human_number(self.parameter_count)

    def details(self, parent: str = "") -> dict[str, Any]:
        return {
            "parent_model": parent,
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.file_type,
        }

    def model_info(self, verbose: bool = False) -> dict[str, Any]:
        info = dict(self.kv)
        info["general.parameter_count"] = self.parameter_count
        for key in _BIG_ARRAYS:
            if verbose:
                info[key] = _read_array(self.path, key)
            elif key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
                info[key] = None
        info.pop("tokenizer.chat_template", None)
        return info


def _read_array(path: Path, key: str) -> Any:
    from corral.store.gguf_reader import read_header

    kv, _, _ = read_header(path, keep_arrays=True)
    return kv.get(key)


@functools.lru_cache(maxsize=64)
def _read(path: str, mtime: float, size: int) -> GGUFInfo:
    from corral.store.gguf_reader import GGUFFormatError, read_header

    try:
        kv, tensors, strings = read_header(Path(path))
    except (GGUFFormatError, OSError) as exc:
        raise BadRequest(f"invalid GGUF file: {exc}") from exc
    kv = {k: v for k, v in kv.items() if k not in _BIG_ARRAYS}
    arch = str(kv.get("general.architecture") or "")
    if not arch:
        raise BadRequest("invalid GGUF file: general.architecture is missing")
    n_params = kv.get("general.parameter_count")
    if not isinstance(n_params, int):
        n_params = sum(math.prod(dims) for _, dims, _ in tensors)
    ftype_raw = kv.get("general.file_type")
    file_type = FILE_TYPES.get(int(ftype_raw), "unknown") if isinstance(ftype_raw, int) else _guess_ftype(tensors)
    ctx = kv.get(f"{arch}.context_length")
    fim_keys = (
        ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id"),
        ("tokenizer.ggml.prefix_token_id", "tokenizer.ggml.suffix_token_id", "tokenizer.ggml.middle_token_id"),
    )
    fim: tuple[int, int, int] | None = None
    for keys in fim_keys:
        a, b, c = (kv.get(k) for k in keys)
        if isinstance(a, int) and isinstance(b, int) and isinstance(c, int):
            fim = (a, b, c)
            break
    vocab = strings.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str:
        tid = kv.get(key)
        return vocab[tid] if isinstance(tid, int) and 0 <= tid < len(vocab) else ""

    template = kv.get("tokenizer.chat_template")
    return GGUFInfo(
        path=Path(path),
        architecture=arch,
        file_type=file_type,
        parameter_count=n_params,
        context_length=int(ctx) if isinstance(ctx, int) else 2048,
        kv=kv,
        chat_template=template if isinstance(template, str) else None,
        fim=fim,
        pooling=f"{arch}.pooling_type" in kv or arch in ENCODER_ARCHS,
        has_vision=any(k.startswith(("clip.", f"{arch}.vision")) for k in kv),
        bos_text=token("tokenizer.ggml.bos_token_id"),
        eos_text=token("tokenizer.ggml.eos_token_id"),
    )


_GGML_TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    30: "BF16",
}


def _guess_ftype(tensors: list[tuple[str, list[int], int]]) -> str:
    counts: dict[str, int] = {}
    for _, dims, ttype in tensors:
        if len(dims) >= 2:
            name = _GGML_TYPE_NAMES.get(ttype, "unknown")
            counts[name] = counts.get(name, 0) + math.prod(dims)
    return max(counts, key=lambda k: counts[k]) if counts else "unknown"


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read (cached) metadata; raise BadRequest for a file that isn't GGUF."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise BadRequest(f"model file not found: {p}") from exc
    with open(p, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise BadRequest(f"invalid GGUF file {p.name}: bad magic")
    return _read(str(p), st.st_mtime, st.st_size)
