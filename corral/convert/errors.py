"""Errors raised by the conversion package (Hugging Face folder → GGUF, requantisation).

Owns: ``ConversionError`` (bad or unsupported input folder) and
``UnsupportedQuantization`` (a quantisation this package cannot produce or an
input it cannot requantise). Both are ``ValueError`` subclasses so callers that
only know about ``ValueError`` still treat them as bad input.
"""

from __future__ import annotations


class ConversionError(ValueError):
    """The source model cannot be converted (missing files, unsupported architecture, ...)."""


class UnsupportedQuantization(ValueError):
    """The requested quantisation is unknown, or the input GGUF cannot be requantised."""
