"""Llama-family decoders (``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``) → GGUF.

Owns: the llama/qwen2 hyper-parameter keys (GQA heads, RoPE base and scaling,
RMS-norm epsilon, head dim), llama.cpp's Q/K row permutation for the ``llama``
architecture (HF stores rotate-half RoPE layouts, GGML's llama RoPE is
interleaved), the llama3 ``rope_freqs`` tensor, and tensor renaming through
gguf-py's ``TensorNameMap``. Qwen2 keeps HF's layout (NeoX RoPE) and its Q/K/V biases.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, GGMLQuantizationType, GGUFWriter, RopeScalingType, get_tensor_name_map

from corral.convert.errors import ConversionError
from corral.convert.gguf_out import ModelPlan, PlannedTensor, encode, model_name, storage_type
from corral.convert.safetensors_io import SafetensorsFolder
from corral.convert.tokenizer import llama_family_vocab

log = logging.getLogger(__name__)

ARCHITECTURES: dict[str, MODEL_ARCH] = {
    "LlamaForCausalLM": MODEL_ARCH.LLAMA,
    "MistralForCausalLM": MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": MODEL_ARCH.QWEN2,
}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows → GGML interleaved rows (``LlamaModel.permute`` in convert_hf_to_gguf.py)."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _int(config: dict[str, Any], key: str) -> int:
    if key not in config or config[key] is None:
        raise ConversionError(f"config.json is missing {key!r}")
    return int(config[key])


def _rope(config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    params = config.get("rope_parameters") or {}
    if isinstance(params, dict) and "full_attention" in params:
        params = params["full_attention"]
    scaling = config.get("rope_scaling") or params or {}
    theta = config.get("rope_theta") or params.get("rope_theta") or 10000.0
    return float(theta), dict(scaling)


def llama3_rope_factors(scaling: dict[str, Any], theta: float, head_dim: int) -> np.ndarray:
    """Per-frequency factors llama.cpp reads from ``rope_freqs.weight`` for llama3 RoPE scaling."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / float(f)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def plan_llama(
    folder: Path, config: dict[str, Any], st: SafetensorsFolder, want: GGMLQuantizationType, hf_arch: str
) -> ModelPlan:
    """Build the GGUF plan for a Llama/Mistral/Qwen2 checkpoint."""
    model_arch = ARCHITECTURES[hf_arch]
    arch = MODEL_ARCH_NAMES[model_arch]
    if config.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"hidden_act {config.get('hidden_act')!r} is not supported (only silu)")
    n_layer = _int(config, "num_hidden_layers")
    hidden = _int(config, "hidden_size")
    n_head = _int(config, "num_attention_heads")
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or hidden // n_head)
    theta, scaling = _rope(config)
    rope_type = str(scaling.get("rope_type") or scaling.get("type") or "default").lower()
    vocab = llama_family_vocab(folder, config)
    tied = bool(config.get("tie_word_embeddings", False))
    tmap = get_tensor_name_map(model_arch, n_layer)
    permute = model_arch == MODEL_ARCH.LLAMA

    tensors: list[PlannedTensor] = []
    for name in st.names():
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ConversionError(f"cannot map tensor {name!r} to a GGUF {arch} tensor")
        heads = None
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            heads = n_head
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = n_head_kv
        shape = st.shape(name)
        qtype = storage_type(new, shape, want)
        tensors.append(PlannedTensor(new, shape, qtype, _loader(st, name, qtype, heads)))
    if rope_type == "llama3":
        factors = llama3_rope_factors(scaling, theta, head_dim)
        tensors.append(PlannedTensor("rope_freqs.weight", factors.shape, GGMLQuantizationType.F32, lambda: factors))
    names = {t.name for t in tensors}
    for needed in ("token_embd.weight", "output_norm.weight"):
        if needed not in names:
            raise ConversionError(f"checkpoint lacks the tensor that becomes {needed}")
    embd = next(t for t in tensors if t.name == "token_embd.weight")
    if embd.shape[0] != len(vocab.tokens):
        raise ConversionError(f"embedding has {embd.shape[0]} rows but the vocabulary has {len(vocab.tokens)}")

    def fill(w: GGUFWriter) -> None:
        w.add_type("model")
        w.add_name(model_name(folder, config))
        w.add_vocab_size(len(vocab.tokens))
        w.add_context_length(_int(config, "max_position_embeddings"))
        w.add_embedding_length(hidden)
        w.add_feed_forward_length(_int(config, "intermediate_size"))
        w.add_block_count(n_layer)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_rope_freq_base(theta)
        w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        w.add_rope_dimension_count(head_dim)
        if config.get("head_dim"):
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        _add_rope_scaling(w, rope_type, scaling)
        vocab.apply(w)

    return ModelPlan(arch, fill, tensors)


def _add_rope_scaling(w: GGUFWriter, rope_type: str, scaling: dict[str, Any]) -> None:
    if rope_type in ("default", "llama3"):
        return
    if rope_type == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    elif rope_type == "yarn":
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(scaling["factor"]))
        if "original_max_position_embeddings" in scaling:
            w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    else:
        log.warning("RoPE scaling type %r is not carried over to the GGUF", rope_type)


def _loader(
    st: SafetensorsFolder, name: str, qtype: GGMLQuantizationType, heads: int | None
) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        data = st.get(name)
        if heads is not None:
            data = permute_qk(data, heads)
        return encode(data, qtype)

    return load
