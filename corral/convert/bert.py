"""BERT encoder (``BertModel``, e.g. sentence-transformers all-MiniLM-L6-v2) → GGUF arch ``bert``.

Owns: the BERT hyper-parameter keys, the sentence-transformers pooling type,
and the tensor selection/renaming that llama.cpp's ``convert_hf_to_gguf.py``
applies to BERT checkpoints (names come from gguf-py's ``TensorNameMap``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, GGMLQuantizationType, GGUFWriter, PoolingType, get_tensor_name_map

from corral.convert.errors import ConversionError
from corral.convert.gguf_out import ModelPlan, PlannedTensor, encode, model_name, storage_type
from corral.convert.safetensors_io import SafetensorsFolder
from corral.convert.tokenizer import wordpiece_vocab

log = logging.getLogger(__name__)

_SKIP = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def _require(config: dict[str, Any], key: str) -> Any:
    if key not in config:
        raise ConversionError(f"config.json is missing {key!r}")
    return config[key]


def pooling_type(folder: Path) -> PoolingType:
    """Pooling from the sentence-transformers ``modules.json``; MEAN when there is none."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        log.info("no modules.json; defaulting to MEAN pooling")
        return PoolingType.MEAN
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        path = next(m["path"] for m in modules if m.get("type") == "sentence_transformers.models.Pooling")
        pooling = json.loads((folder / path / "config.json").read_text(encoding="utf-8"))
    except StopIteration:
        return PoolingType.MEAN
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read the sentence-transformers pooling config: {exc}") from exc
    if pooling.get("pooling_mode_mean_tokens"):
        return PoolingType.MEAN
    if pooling.get("pooling_mode_cls_token"):
        return PoolingType.CLS
    if pooling.get("pooling_mode_lasttoken"):
        return PoolingType.LAST
    raise ConversionError("only MEAN, CLS and LAST sentence-transformers pooling are supported")


def _hf_name(name: str) -> str | None:
    name = name.removeprefix("bert.")
    if name.endswith(".gamma"):
        name = name[:-6] + ".weight"
    elif name.endswith(".beta"):
        name = name[:-5] + ".bias"
    if name in _SKIP or name.startswith(("cls.predictions", "cls.seq_relationship")):
        return None
    return name


def plan_bert(folder: Path, config: dict[str, Any], st: SafetensorsFolder, want: GGMLQuantizationType) -> ModelPlan:
    """Build the GGUF plan for a BERT encoder checkpoint."""
    arch = MODEL_ARCH_NAMES[MODEL_ARCH.BERT]
    if config.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"BERT hidden_act {config.get('hidden_act')!r} is not supported (only gelu)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError("only absolute position embeddings are supported for BERT")
    n_layer = int(_require(config, "num_hidden_layers"))
    hidden = int(_require(config, "hidden_size"))
    vocab = wordpiece_vocab(folder, config)
    pooling = pooling_type(folder)
    tmap = get_tensor_name_map(MODEL_ARCH.BERT, n_layer)

    tensors: list[PlannedTensor] = []
    for name in st.names():
        hf = _hf_name(name)
        if hf is None:
            continue
        new = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ConversionError(f"cannot map tensor {name!r} to a GGUF BERT tensor")
        shape = st.shape(name)
        qtype = storage_type(new, shape, want)
        tensors.append(PlannedTensor(new, shape, qtype, _loader(st, name, qtype)))
    names = {t.name for t in tensors}
    for needed in ("token_embd.weight", "position_embd.weight", "token_embd_norm.weight"):
        if needed not in names:
            raise ConversionError(f"checkpoint lacks the tensor that becomes {needed}")
    embd = next(t for t in tensors if t.name == "token_embd.weight")
    if embd.shape != (len(vocab.tokens), hidden):
        raise ConversionError(f"token embedding shape {embd.shape} does not match vocab {len(vocab.tokens)}")

    def fill(w: GGUFWriter) -> None:
        w.add_type("model")
        w.add_name(model_name(folder, config))
        w.add_context_length(int(_require(config, "max_position_embeddings")))
        w.add_embedding_length(hidden)
        w.add_feed_forward_length(int(_require(config, "intermediate_size")))
        w.add_block_count(n_layer)
        w.add_head_count(int(_require(config, "num_attention_heads")))
        w.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
        w.add_causal_attention(False)
        w.add_pooling_type(pooling)
        w.add_token_type_count(int(config.get("type_vocab_size", 1)))
        vocab.apply(w)

    return ModelPlan(arch, fill, tensors)


def _loader(st: SafetensorsFolder, name: str, qtype: GGMLQuantizationType) -> Callable[[], np.ndarray]:
    return lambda: encode(st.get(name), qtype)
