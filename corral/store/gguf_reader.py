"""Fast GGUF header reader: metadata and tensor shapes without numpy memmaps.

``gguf.GGUFReader`` builds an array view per field part and takes seconds on
a vocabulary of 50k+ tokens; listing a models folder needs only the scalar
metadata, a few token strings and the tensor shapes, which this reads in a
single pass over the header.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

# GGUF value types
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    pass


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise GGUFFormatError("unexpected end of file")
    return data


def _string(fh: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", _read(fh, 8))
    if n > 1 << 30:
        raise GGUFFormatError("string too long")
    return _read(fh, n).decode("utf-8", errors="replace")


def _value(fh: BinaryIO, vtype: int, keep_array: bool) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, _read(fh, struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _string(fh)
    if vtype == _ARRAY:
        (itype,) = struct.unpack("<I", _read(fh, 4))
        (count,) = struct.unpack("<Q", _read(fh, 8))
        if itype in _SCALARS:
            size = struct.calcsize(_SCALARS[itype])
            raw = _read(fh, size * count)
            if not keep_array and count > 64:
                return _Skipped(count)
            return list(struct.unpack("<" + _SCALARS[itype][1] * count, raw))
        items = [_value(fh, itype, keep_array) for _ in range(count)]
        if not keep_array and count > 64:
            return _Skipped(count, items if itype == _STRING else None)
        return items
    raise GGUFFormatError(f"unknown GGUF value type {vtype}")


class _Skipped:
    """A long array we did not keep (strings are kept aside for lookups)."""

    def __init__(self, count: int, strings: list[str] | None = None) -> None:
        self.count = count
        self.strings = strings


def read_header(
    path: Path, *, keep_arrays: bool = False
) -> tuple[dict[str, Any], list[tuple[str, list[int], int]], dict[str, list[str]]]:
    """Return (metadata, tensors as (name, shape, ggml_type), long string arrays)."""
    with open(path, "rb") as fh:
        if _read(fh, 4) != b"GGUF":
            raise GGUFFormatError("bad magic")
        (version,) = struct.unpack("<I", _read(fh, 4))
        if version < 2:
            raise GGUFFormatError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = struct.unpack("<QQ", _read(fh, 16))
        if n_kv > 1 << 20 or n_tensors > 1 << 24:
            raise GGUFFormatError("implausible header counts")
        kv: dict[str, Any] = {}
        strings: dict[str, list[str]] = {}
        for _ in range(n_kv):
            key = _string(fh)
            (vtype,) = struct.unpack("<I", _read(fh, 4))
            value = _value(fh, vtype, keep_arrays)
            if isinstance(value, _Skipped):
                if value.strings is not None:
                    strings[key] = value.strings
                continue
            kv[key] = value
        tensors = []
        for _ in range(n_tensors):
            name = _string(fh)
            (n_dims,) = struct.unpack("<I", _read(fh, 4))
            dims = list(struct.unpack(f"<{n_dims}Q", _read(fh, 8 * n_dims)))
            ttype, _offset = struct.unpack("<IQ", _read(fh, 12))
            tensors.append((name, dims, ttype))
    return kv, tensors, strings
