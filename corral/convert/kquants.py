"""Numpy implementations of ggml's Q4_K and Q6_K block quantisers (gguf-py can only decode them).

Owns: ``quantize_q4_k`` and ``quantize_q6_k``, vectorised ports of ggml's
reference ``quantize_row_q4_K_ref`` (with ``make_qkx2_quants``) and
``quantize_row_q6_K_ref`` (with ``make_qx_quants``) for the no-imatrix case.
The byte layouts are ggml's ``block_q4_K`` (d, dmin, 12 packed 6-bit
scales/mins, 128 nibbles) and ``block_q6_K`` (128 low nibbles, 64 high 2-bit
pairs, 16 int8 scales, d). Results are not guaranteed bit-identical to ggml
(float rounding order differs), but they follow the same algorithm and decode
with gguf-py's and llama.cpp's dequantisers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, QK_K, GGMLQuantizationType

Q4_K_BYTES = GGML_QUANT_SIZES[GGMLQuantizationType.Q4_K][1]  # 144
Q6_K_BYTES = GGML_QUANT_SIZES[GGMLQuantizationType.Q6_K][1]  # 210
_GROUP_MAX_EPS = 1e-15
_CHUNK_BLOCKS = 4096  # super-blocks (of 256 values) handled per vectorised step


def _make_qkx2(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised ``make_qkx2_quants`` (use_mad=false) over rows of ``x``; returns (scale, -min, L)."""
    xmin = np.minimum(x.min(axis=1), 0.0)
    xmax = x.max(axis=1)
    flat = xmax == xmin
    sum_w = w.sum(axis=1)
    sum_x = (w * x).sum(axis=1)
    rng = np.where(flat, 1.0, xmax - xmin).astype(np.float32)
    iscale = nmax / rng
    scale = 1.0 / iscale
    L = np.clip(np.rint(iscale[:, None] * (x - xmin[:, None])), 0, nmax)
    best = (w * np.square(scale[:, None] * L + xmin[:, None] - x)).sum(axis=1)
    mn = xmin
    for step in range(nstep + 1):
        denom = xmax - mn
        denom = np.where(denom > 0, denom, 1.0).astype(np.float32)
        iscale = (rmin + rdelta * step + nmax) / denom
        laux = np.clip(np.rint(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        wl = w * laux
        sum_l = wl.sum(axis=1)
        sum_l2 = (wl * laux).sum(axis=1)
        sum_xl = (wl * x).sum(axis=1)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = np.where(ok, D, 1.0)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        this_min = np.where(pos, 0.0, this_min)
        this_scale = np.where(pos, sum_xl / np.where(sum_l2 > 0, sum_l2, 1.0), this_scale)
        err = (w * np.square(this_scale[:, None] * laux + this_min[:, None] - x)).sum(axis=1)
        better = ok & (err < best) & ~flat
        L = np.where(better[:, None], laux, L)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    scale = np.where(flat, 0.0, scale)
    L = np.where(flat[:, None], 0.0, L)
    return scale.astype(np.float32), (-mn).astype(np.float32), L


def _q4_k_blocks(x: np.ndarray) -> np.ndarray:
    """Quantise ``x`` of shape (nb, 256) to (nb, 144) Q4_K blocks."""
    nb = x.shape[0]
    sub = x.reshape(nb * 8, 32)
    av_x = np.sqrt((sub * sub).sum(axis=1) / 32.0)
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, L = _make_qkx2(sub, weights, 15, -1.0, 0.1, 20)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(axis=1), 0.0)
    max_min = np.maximum(mins.max(axis=1), 0.0)
    inv_scale = np.where(max_scale > 0, 63.0 / np.where(max_scale > 0, max_scale, 1.0), 0.0)
    inv_min = np.where(max_min > 0, 63.0 / np.where(max_min > 0, max_min, 1.0), 0.0)
    ls = np.clip(np.rint(inv_scale[:, None] * scales), 0, 63).astype(np.uint8)
    lm = np.clip(np.rint(inv_min[:, None] * mins), 0, 63).astype(np.uint8)
    d = (max_scale / 63.0).astype(np.float16)
    dmin = (max_min / 63.0).astype(np.float16)

    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)

    dl = d.astype(np.float32)[:, None] * ls.astype(np.float32)  # (nb, 8)
    ml = dmin.astype(np.float32)[:, None] * lm.astype(np.float32)
    xs = x.reshape(nb, 8, 32)
    nz = dl != 0
    q = np.clip(np.rint((xs + ml[..., None]) / np.where(nz, dl, 1.0)[..., None]), 0, 15)
    q = np.where(nz[..., None], q, L.reshape(nb, 8, 32)).astype(np.uint8)
    q = q.reshape(nb, 4, 2, 32)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(nb, 128)

    out = np.empty((nb, Q4_K_BYTES), dtype=np.uint8)
    out[:, 0:2] = d.reshape(nb, 1).view(np.uint8)
    out[:, 2:4] = dmin.reshape(nb, 1).view(np.uint8)
    out[:, 4:16] = packed
    out[:, 16:] = qs
    return out


def _make_qx_scales(x: np.ndarray, nmax: int) -> np.ndarray:
    """Vectorised ``make_qx_quants`` (rmse_type=1, no weights) over rows of ``x``; returns scales."""
    idx = np.abs(x).argmax(axis=1)
    mx = x[np.arange(x.shape[0]), idx]
    zero = np.abs(mx) < _GROUP_MAX_EPS
    mx_safe = np.where(zero, 1.0, mx).astype(np.float32)
    w = x * x

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ll = np.clip(np.rint(iscale[:, None] * x), -nmax, nmax - 1)
        wl = w * ll
        return (wl * x).sum(axis=1), (wl * ll).sum(axis=1)

    sumlx, suml2 = fit(-nmax / mx_safe)
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, 1.0), 0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        sumlx, suml2 = fit(-(nmax + 0.1 * step) / mx_safe)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        new_scale = sumlx / np.where(suml2 > 0, suml2, 1.0)
        scale = np.where(upd, new_scale, scale)
        best = np.where(upd, new_scale * sumlx, best)
    return np.where(zero, 0.0, scale).astype(np.float32)


def _q6_k_blocks(x: np.ndarray) -> np.ndarray:
    """Quantise ``x`` of shape (nb, 256) to (nb, 210) Q6_K blocks."""
    nb = x.shape[0]
    scales = _make_qx_scales(x.reshape(nb * 16, 16), 32).reshape(nb, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), idx]
    empty = np.abs(max_scale) < _GROUP_MAX_EPS
    iscale = np.where(empty, 0.0, -128.0 / np.where(empty, 1.0, max_scale)).astype(np.float32)
    d = np.where(empty, 0.0, 1.0 / np.where(empty, 1.0, iscale)).astype(np.float16)
    sc = np.minimum(127, np.rint(iscale[:, None] * scales)).astype(np.int8)
    sc[empty] = 0
    dl = d.astype(np.float32)[:, None] * sc.astype(np.float32)  # (nb, 16)
    nz = dl != 0
    xs = x.reshape(nb, 16, 16)
    q = np.clip(np.rint(xs / np.where(nz, dl, 1.0)[..., None]), -32, 31) + 32
    q = np.where(nz[..., None], q, 32).astype(np.uint8)
    q = np.where(empty[:, None, None], 0, q).astype(np.uint8)  # ggml zeroes the whole block
    L = q.reshape(nb, 2, 4, 32)  # (half of 128, quarter, lane)
    ql = np.empty((nb, 2, 2, 32), dtype=np.uint8)
    ql[:, :, 0, :] = (L[:, :, 0, :] & 0xF) | ((L[:, :, 2, :] & 0xF) << 4)
    ql[:, :, 1, :] = (L[:, :, 1, :] & 0xF) | ((L[:, :, 3, :] & 0xF) << 4)
    qh = (L[:, :, 0, :] >> 4) | ((L[:, :, 1, :] >> 4) << 2) | ((L[:, :, 2, :] >> 4) << 4) | ((L[:, :, 3, :] >> 4) << 6)

    out = np.empty((nb, Q6_K_BYTES), dtype=np.uint8)
    out[:, 0:128] = ql.reshape(nb, 128)
    out[:, 128:192] = qh.reshape(nb, 64)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = d.reshape(nb, 1).view(np.uint8)
    return out


def _quantize(data: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], type_size: int) -> np.ndarray:
    data = np.asarray(data, dtype=np.float32)
    if data.shape[-1] % QK_K != 0:
        raise ValueError(f"row length {data.shape[-1]} is not a multiple of {QK_K}")
    flat = data.reshape(-1, QK_K)
    out = np.empty((flat.shape[0], type_size), dtype=np.uint8)
    for start in range(0, flat.shape[0], _CHUNK_BLOCKS):
        stop = start + _CHUNK_BLOCKS
        out[start:stop] = fn(np.ascontiguousarray(flat[start:stop]))
    return out.reshape(*data.shape[:-1], data.shape[-1] // QK_K * type_size)


def quantize_q4_k(data: np.ndarray) -> np.ndarray:
    """Float array (last dim a multiple of 256) → uint8 Q4_K bytes, shape (..., n/256*144)."""
    return _quantize(data, _q4_k_blocks, Q4_K_BYTES)


def quantize_q6_k(data: np.ndarray) -> np.ndarray:
    """Float array (last dim a multiple of 256) → uint8 Q6_K bytes, shape (..., n/256*210)."""
    return _quantize(data, _q6_k_blocks, Q6_K_BYTES)
