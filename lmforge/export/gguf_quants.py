"""Q4_K and Q6_K quantization (llama.cpp's reference algorithms) in numpy.

The `gguf` package quantizes F16/BF16/Q4_0/Q5_0/Q8_0 itself but can only *de*quantize the K-quants, which
Q4_K_M needs; these are ports of llama.cpp's `quantize_row_q4_K_ref` / `quantize_row_q6_K_ref` (ggml-quants.c),
vectorized over blocks. Their output is checked against the package's own dequantizers in the tests.
"""
from __future__ import annotations

import numpy as np

QK_K = 256
GROUP_MAX_EPS = 1e-15


def _nearest_int(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int32)  # llama.cpp's nearest_int rounds half to even as well (magic-number trick)


def _make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                      nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``x`` (groups of values): (scale, the_min, levels) minimising the weighted squared error of
    x ~ scale * L - the_min, L in [0, nmax]; llama.cpp's make_qkx2_quants (use_mad = false)."""
    xmin = np.minimum(x.min(axis=1), 0.0)
    xmax = x.max(axis=1)
    sum_w = weights.sum(axis=1)
    sum_x = (weights * x).sum(axis=1)
    flat = xmax == xmin
    rng = np.where(flat, 1.0, xmax - xmin)
    iscale = nmax / rng
    scale = 1.0 / iscale
    levels = np.clip(_nearest_int(iscale[:, None] * (x - xmin[:, None])), 0, nmax)
    best_err = (weights * (scale[:, None] * levels + xmin[:, None] - x) ** 2).sum(axis=1)
    best_min = xmin.copy()
    for step in range(nstep + 1):
        isc = (rmin + rdelta * step + nmax) / rng
        laux = np.clip(_nearest_int(isc[:, None] * (x - xmin[:, None])), 0, nmax).astype(np.float32)
        sum_l = (weights * laux).sum(axis=1)
        sum_l2 = (weights * laux * laux).sum(axis=1)
        sum_xl = (weights * laux * x).sum(axis=1)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe_det = np.where(ok, det, 1.0)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe_det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe_det
        positive = this_min > 0
        this_min = np.where(positive, 0.0, this_min)
        this_scale = np.where(positive, sum_xl / np.where(sum_l2 > 0, sum_l2, 1.0), this_scale)
        err = (weights * (this_scale[:, None] * laux + this_min[:, None] - x) ** 2).sum(axis=1)
        better = ok & (err < best_err)
        levels = np.where(better[:, None], laux.astype(levels.dtype), levels)
        best_err = np.where(better, err, best_err)
        scale = np.where(better, this_scale, scale)
        best_min = np.where(better, this_min, best_min)
    scale = np.where(flat, 0.0, scale)
    best_min = np.where(flat, xmin, best_min)
    levels = np.where(flat[:, None], 0, levels)
    return scale.astype(np.float32), (-best_min).astype(np.float32), levels


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 144) uint8 Q4_K blocks: d, dmin (fp16), 12 bytes of 6-bit scales/mins, 128 bytes of
    4-bit levels; 8 sub-blocks of 32 values, x ~ d*sc*q - dmin*m."""
    blocks = blocks.astype(np.float32)
    n = blocks.shape[0]
    sub = blocks.reshape(n * 8, 32)
    av_x = np.sqrt((sub ** 2).sum(axis=1, keepdims=True) / 32)
    weights = av_x + np.abs(sub)
    scales, mins, _ = _make_qkx2_quants(sub, weights, 15, -1.0, 0.1, 20)
    scales = scales.reshape(n, 8)
    mins = mins.reshape(n, 8)
    max_scale = scales.max(axis=1)
    max_min = mins.max(axis=1)
    inv_scale = np.where(max_scale > 0, 63.0 / np.where(max_scale > 0, max_scale, 1.0), 0.0)
    inv_min = np.where(max_min > 0, 63.0 / np.where(max_min > 0, max_min, 1.0), 0.0)
    ls = np.minimum(63, _nearest_int(inv_scale[:, None] * scales)).astype(np.uint8)
    lm = np.minimum(63, _nearest_int(inv_min[:, None] * mins)).astype(np.uint8)
    d = (max_scale / 63.0).astype(np.float16)
    dmin = (max_min / 63.0).astype(np.float16)

    packed = np.zeros((n, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, 0:4]
    packed[:, 4:8] = lm[:, 0:4]
    packed[:, 8:12] = (ls[:, 4:8] & 0x0F) | ((lm[:, 4:8] & 0x0F) << 4)
    packed[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    packed[:, 4:8] |= (lm[:, 4:8] >> 4) << 6

    dl = d.astype(np.float32)[:, None] * ls.astype(np.float32)  # (n, 8)
    ml = dmin.astype(np.float32)[:, None] * lm.astype(np.float32)
    x = blocks.reshape(n, 8, 32)
    safe = np.where(dl == 0, 1.0, dl)
    q = np.clip(_nearest_int((x + ml[:, :, None]) / safe[:, :, None]), 0, 15)
    q = np.where((dl == 0)[:, :, None], 0, q).astype(np.uint8)
    # bytes 32*c .. 32*c+31 hold sub-block 2c in the low nibbles and 2c+1 in the high ones
    q = q.reshape(n, 4, 2, 32)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(n, 128)
    return np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8), packed, qs], axis=1)


def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (scale, levels in [0, 2*nmax)) with x ~ scale * (L - nmax), weighted by x^2; llama.cpp's
    make_qx_quants with rmse_type = 1 and no importance weights."""
    idx = np.abs(x).argmax(axis=1)
    xmax = x[np.arange(x.shape[0]), idx]
    amax = np.abs(xmax)
    zero = amax < GROUP_MAX_EPS
    safe_max = np.where(zero, 1.0, xmax)
    w = x * x

    def attempt(iscale):
        lv = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        sumlx = (w * x * lv).sum(axis=1)
        suml2 = (w * lv * lv).sum(axis=1)
        return lv, sumlx, suml2

    levels, sumlx, suml2 = attempt(-nmax / safe_max)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, 1.0), 0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        lv, slx, sl2 = attempt(-(nmax + 0.1 * step) / safe_max)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        levels = np.where(better[:, None], lv, levels)
        new_scale = slx / np.where(sl2 > 0, sl2, 1.0)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, new_scale * slx, best)
    scale = np.where(zero, 0.0, scale)
    levels = np.where(zero[:, None], 0, levels) + nmax
    return scale.astype(np.float32), levels


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 210) uint8 Q6_K blocks: 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8
    scales (one per 16 values), d (fp16); x ~ d * scale * (q - 32)."""
    blocks = blocks.astype(np.float32)
    n = blocks.shape[0]
    sub = blocks.reshape(n * 16, 16)
    scales, _ = _make_qx_quants(sub, 32)
    scales = scales.reshape(n, 16)
    pick = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(n), pick]
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = np.where(zero, 0.0, -128.0 / np.where(zero, 1.0, max_scale))
    d = np.where(zero, 0.0, 1.0 / np.where(iscale == 0, 1.0, iscale)).astype(np.float16)
    sc = np.minimum(127, _nearest_int(iscale[:, None] * scales)).astype(np.int8)
    dl = d.astype(np.float32)[:, None] * sc.astype(np.float32)  # (n, 16)
    x = blocks.reshape(n, 16, 16)
    safe = np.where(dl == 0, 1.0, dl)
    lv = np.clip(_nearest_int(x / safe[:, :, None]), -32, 31) + 32
    lv = np.where((dl == 0)[:, :, None], 32, lv)  # llama.cpp leaves the zero-scale groups' levels as 0 - (-32)
    L = lv.reshape(n, 2, 4, 32).astype(np.uint8)  # two halves of 128: four runs of 32
    ql = np.concatenate([L[:, :, 0] & 0x0F | ((L[:, :, 2] & 0x0F) << 4),
                         L[:, :, 1] & 0x0F | ((L[:, :, 3] & 0x0F) << 4)], axis=2).reshape(n, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) |
          ((L[:, :, 3] >> 4) << 6)).reshape(n, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(n, 1).view(np.uint8)], axis=1)
    out[zero] = 0
    return out


def quantize_rows(data: np.ndarray, kind: str) -> np.ndarray:
    """A 2-D float array whose rows are multiples of 256 long -> GGUF bytes (rows, row_bytes) for 'q4_k'/'q6_k'."""
    rows, cols = data.shape
    assert cols % QK_K == 0, cols
    blocks = data.reshape(-1, QK_K)
    out = []
    for start in range(0, blocks.shape[0], 4096):  # bounded memory for large tensors
        chunk = blocks[start:start + 4096]
        out.append(quantize_q4_k(chunk) if kind == 'q4_k' else quantize_q6_k(chunk))
    packed = np.concatenate(out, axis=0)
    return packed.reshape(rows, -1)
