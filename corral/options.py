"""Options: Ollama's runtime ``options`` table, validation and defaults.

One table (:data:`OPTION_TYPES`) says which options exist and their types;
requests, Modelfile ``PARAMETER`` lines and stored params layers are all
checked against it. Unknown options are ignored with a warning, as Ollama
does; a value of the wrong type is a 400, and so is an integer that does not
fit Go's 64-bit ``int`` (a ``seed`` of 2**64) or a ``num_ctx`` below 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from corral.errors import BadRequest

log = logging.getLogger(__name__)

OPTION_TYPES: dict[str, type] = {
    # load-time options (a change reloads the model)
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    "draft_num_predict": int,  # accepted for Ollama compatibility; no draft models yet
    # sampling / prediction options
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
}

# Ollama's defaults (api.DefaultOptions), used when neither the request nor
# the model's params layer gives a value.
DEFAULTS: dict[str, Any] = {
    "num_keep": 4,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "num_predict": -1,
    "seed": -1,
}


_INT64 = (-(2**63), 2**63 - 1)


def _int_in_range(name: str, value: int) -> int:
    if not _INT64[0] <= value <= _INT64[1]:
        raise BadRequest(
            f"json: cannot unmarshal number {value} into Go struct field Options.{name} of type int",
            param=f"options.{name}",
        )
    if name == "num_ctx" and value < 1:
        raise BadRequest(
            f"invalid option num_ctx {value}: the context length must be at least 1", param="options.num_ctx"
        )
    return value


def coerce_option(name: str, value: Any, *, strict: bool = True) -> Any:
    """Check/convert one option value; raise BadRequest on a wrong type."""
    want = OPTION_TYPES[name]
    if want is int:
        number = _coerce_int(value, strict)
        if number is not None:
            return _int_in_range(name, number)
    return _coerce(name, want, value, strict)


def _coerce_int(value: Any, strict: bool) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not strict and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    return None


def _coerce(name: str, want: type, value: Any, strict: bool) -> Any:
    if want is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    elif want is bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if math.isfinite(number):
                return number
        if not strict and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
    type_name = {int: "int", float: "float", bool: "bool", list: "[]string"}[want]
    raise BadRequest(f'option "{name}" must be of type {type_name}', param=f"options.{name}")


def validate_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a request's options dict; unknown keys are dropped."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise BadRequest("options must be an object")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in OPTION_TYPES:
            log.warning("invalid option provided: %s", key)
            continue
        if value is None:
            continue
        out[key] = coerce_option(key, value)
    return out


def merge_options(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults, then each layer in order (later wins)."""
    merged: dict[str, Any] = dict(DEFAULTS)
    for layer in layers:
        if layer:
            merged.update(layer)
    return merged
