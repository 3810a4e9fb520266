"""Convert a Hugging Face safetensors model folder into a GGUF file, in pure Python.

Owns: ``convert_hf_folder`` — validating the folder and ``config.json``,
dispatching on the ``architectures`` entry (BERT encoders, Llama/Mistral/Qwen2
decoders), choosing the output type and writing the result crash-safely. The
per-architecture work lives in ``bert.py`` and ``llama.py``; tensors are
streamed one at a time so memory stays near the size of the largest tensor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter, LlamaFileType

from corral.convert.bert import plan_bert
from corral.convert.errors import ConversionError
from corral.convert.gguf_out import ModelPlan, write_gguf
from corral.convert.llama import ARCHITECTURES as LLAMA_ARCHITECTURES
from corral.convert.llama import plan_llama
from corral.convert.safetensors_io import SafetensorsFolder

log = logging.getLogger(__name__)

OUTTYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType, str]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32, "F32"),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16, "F16"),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16, "BF16"),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0, "Q8_0"),
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("BertModel", *LLAMA_ARCHITECTURES)


def _read_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    if not path.is_file():
        raise ConversionError(f"{src} has no config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read config.json: {exc}") from exc
    if not isinstance(config, dict):
        raise ConversionError("config.json is not a JSON object")
    return config


def convert_hf_folder(
    src: Path, dst: Path, *, outtype: str = "f16", progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Convert the safetensors folder ``src`` into the GGUF file ``dst``.

    ``outtype`` is one of ``f32``, ``f16`` (default), ``bf16`` or ``q8_0``; 1-D
    tensors, norms, biases, position and token-type embeddings stay F32 as in
    llama.cpp's converter. Returns ``{"architecture", "n_params", "file_type",
    "n_tensors"}``. Raises ``ConversionError`` for anything unsupported.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConversionError(f"{src} is not a directory")
    key = outtype.lower()
    if key not in OUTTYPES:
        raise ConversionError(f"unsupported outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    want, ftype, ftype_name = OUTTYPES[key]
    config = _read_config(src)
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not archs:
        raise ConversionError("config.json has no 'architectures' entry")
    hf_arch = str(archs[0])
    if hf_arch not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(f"unsupported architecture {hf_arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if progress is not None:
        progress(f"reading {hf_arch} checkpoint")
    st = SafetensorsFolder(src)
    try:
        plan: ModelPlan
        if hf_arch == "BertModel":
            plan = plan_bert(src, config, st, want)
        else:
            plan = plan_llama(src, config, st, want, hf_arch)

        def fill(w: GGUFWriter) -> None:
            plan.fill_metadata(w)
            w.add_file_type(ftype)
            w.add_quantization_version(GGML_QUANT_VERSION)

        log.info("converting %s (%s, %d tensors) to %s", src, plan.arch, len(plan.tensors), dst)
        write_gguf(dst, plan.arch, fill, plan.tensors, progress=progress)
    finally:
        st.close()
    if progress is not None:
        progress(f"wrote {dst.name}")
    return {
        "architecture": plan.arch,
        "n_params": plan.n_params,
        "file_type": ftype_name,
        "n_tensors": len(plan.tensors),
    }
