"""Model conversion: Hugging Face safetensors folders → GGUF, and GGUF requantisation.

Owns the public conversion API used by model creation:

* ``convert_hf_folder(src, dst, *, outtype="f16", progress=None) -> dict``
* ``quantize_gguf(src, dst, quant, *, progress=None) -> None`` and ``SUPPORTED_QUANTS``
* the errors ``ConversionError`` and ``UnsupportedQuantization`` (both ``ValueError``)

Everything is pure Python on top of numpy and gguf-py; no torch or transformers.
"""

from __future__ import annotations

from corral.convert.errors import ConversionError, UnsupportedQuantization
from corral.convert.hf_folder import OUTTYPES, SUPPORTED_ARCHITECTURES, convert_hf_folder
from corral.convert.quantize import SUPPORTED_QUANTS, quantize_gguf

__all__ = [
    "OUTTYPES",
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_QUANTS",
    "ConversionError",
    "UnsupportedQuantization",
    "convert_hf_folder",
    "quantize_gguf",
]
