"""Fused CPU loops for the mask decoder's upscaling and for mask thresholding, compiled by numba
when it is installed (`pip install grounded[cpu]`).

The upscaling's elementwise work (LayerNorm, two GELUs over 3M values per prompt, the hypernetwork
product) is memory-bound as separate torch operations, and torch's exact GELU costs about seven
times a multiply. Here each tile's values pass through once: LayerNorm and the first GELU in one
loop, the second GELU in the same loop as the hypernetwork product. The matrix products stay with
torch (oneDNN/MKL). Thresholding (masks.py) takes its window extremes, sure pixels
and contour pixels each in one loop instead of a dozen tensor passes.

GELU is exact (erf, not tanh), with erf as a rational function fitted to float64 erf on [0, 4]
(beyond that erf is 1 in float32): at most 1.2e-6 from float64 GELU over [-8, 8], about 2 ulp
where it is largest, against torch's 3.8e-7. Thresholding makes the torch path's decisions bit for
bit (tests/test_sam_cpu_kernels.py, tests/test_sam_paths.py).

`load()` returns None when numba is missing: callers keep their torch path.
"""

import threading
from types import SimpleNamespace
from typing import Optional

import numpy as np

# erf(u) = u * P(u^2) / Q(u^2) on |u| <= 4, coefficients from the constant term up; least squares
# with Lawson reweighting towards the minimax fit, in float64, on 200001 points of [0, 4].
ERF_P = (1.1283789782498785, 0.19620984713711742, 0.05346323145530545, 0.004002219045081036,
         0.00028805143129220084, 1.9756813228466452e-06)
ERF_Q = (1.0, 0.5072176212888192, 0.11646108211813899, 0.015441539552907233, 0.001216092049416112,
         3.749021489268811e-05)
ERF_CLAMP = 4.0

# Contraction and reassociation let LLVM vectorise the loops; no-NaN/no-inf are left out, so NaN
# and inf still propagate. error_model="numpy" drops the zero-division check that blocks vectorising.
_FLAGS = dict(nogil=True, cache=True, error_model="numpy", fastmath={"contract", "arcp", "reassoc", "nsz", "afn"})

# Without fast-math: the same roundings as torch's elementwise operations, no fused multiply-adds.
_EXACT = dict(nogil=True, cache=True, error_model="numpy")

_lock = threading.Lock()
_kernels: Optional[SimpleNamespace] = None
_tried = False


def load() -> Optional[SimpleNamespace]:
    """The compiled kernels (`gelu`, `layer_norm_gelu`, `gelu_hyper`, `threshold_clear`,
    `threshold_contours`), or None without numba. Each compiles on first call, once per machine:
    numba caches it next to this file (or in NUMBA_CACHE_DIR)."""
    global _kernels, _tried
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    _kernels = _compile()
                except ImportError:
                    _kernels = None
                _tried = True
    return _kernels


def _compile() -> SimpleNamespace:
    from numba import njit

    gelu_value, gelu, layer_norm_gelu, gelu_hyper = _upscaling_kernels(njit)
    return SimpleNamespace(gelu=gelu, layer_norm_gelu=layer_norm_gelu, gelu_hyper=gelu_hyper,
                           threshold_clear=_threshold_clear_kernel(njit), threshold_contours=_threshold_contours_kernel(njit))


def _upscaling_kernels(njit):
    """GELU's value (inlined), GELU over an array, LayerNorm + GELU, and GELU + hypernetwork product."""
    from numba import float32

    p0, p1, p2, p3, p4, p5 = (float32(c) for c in ERF_P)
    q0, q1, q2, q3, q4, q5 = (float32(c) for c in ERF_Q)
    clamp, half, one, sqrt_half = float32(ERF_CLAMP), float32(0.5), float32(1.0), float32(0.7071067811865476)

    @njit(inline="always", **_FLAGS)
    def gelu_value(x):
        u = x * sqrt_half
        u = u if u < clamp else clamp
        u = u if u > -clamp else -clamp
        t = u * u
        p = ((((p5 * t + p4) * t + p3) * t + p2) * t + p1) * t + p0
        q = ((((q5 * t + q4) * t + q3) * t + q2) * t + q1) * t + q0
        return half * x * (one + u * p / q)

    @njit(**_FLAGS)
    def gelu(x, out):
        """out = GELU(x) for 1-D float32 arrays."""
        for i in range(x.shape[0]):
            out[i] = gelu_value(x[i])

    @njit(**_FLAGS)
    def layer_norm_gelu(y, weight, bias, eps, out):
        """y (T x 4C): T tokens of rows = gw tokens each, channels ordered (a, b, c); out (rows x 2 x
        gw x 2 x C), spatial (2r + a, 2j + b): out[r, a, j, b] = GELU(LayerNorm(y[r*gw + j, (a, b)]))."""
        tokens, c = y.shape[0], weight.shape[0]
        width = out.shape[2]
        inv_c = float32(1.0) / float32(c)
        for token in range(tokens):
            r = token // width
            j = token - r * width
            for sub in range(4):
                a = sub // 2
                b = sub - 2 * a
                base = sub * c
                mean = float32(0.0)
                for k in range(c):
                    mean += y[token, base + k]
                mean *= inv_c
                var = float32(0.0)
                for k in range(c):
                    d = y[token, base + k] - mean
                    var += d * d
                rstd = one / np.sqrt(var * inv_c + eps)
                for k in range(c):
                    out[r, a, j, b, k] = gelu_value((y[token, base + k] - mean) * rstd * weight[k] + bias[k])

    @njit(**_FLAGS)
    def gelu_hyper(z, bias, hyper, out):
        """out[s, m, p] = sum_c hyper[m, c] * GELU(z[s*C + c, p] + bias[s*C + c]): z (S*C x P) the
        second upscaling product before its bias, hyper (M x C), out (S x M x P)."""
        masks, c = hyper.shape
        points = z.shape[1]
        g = np.empty(points, np.float32)
        for s in range(out.shape[0]):
            for m in range(masks):
                for p in range(points):
                    out[s, m, p] = 0.0
            for k in range(c):
                row = s * c + k
                shift = bias[row]
                for p in range(points):
                    g[p] = gelu_value(z[row, p] + shift)
                for m in range(masks):
                    h = hyper[m, k]
                    for p in range(points):
                        out[s, m, p] += h * g[p]

    return gelu_value, gelu, layer_norm_gelu, gelu_hyper


def _threshold_clear_kernel(njit):
    @njit(**_FLAGS)
    def threshold_clear(logits, row_first, col_first, span_r, span_c, above_at, unsure_at, out, unsure):
        """The sure part of thresholding upsampled masks (masks.py): for each low-res
        pixel, the min and max over the span_r x span_c window starting there (the last row and column
        repeated past the edge); out[k, y, x] = min > above_at at (row_first[y], col_first[x]);
        unsure[k] = max >= unsure_at where min is not above. logits K x h x w, out K x H x W (bool)."""
        count, h, w = logits.shape
        width = out.shape[2]
        low = np.empty(w, np.float32)
        high = np.empty(w, np.float32)
        above = np.empty((h, w), np.bool_)
        above_count = np.empty(h, np.int64)
        n_unsure = 0
        for k in range(count):
            for i in range(h):
                for j in range(w):  # down the window's rows
                    low[j] = logits[k, i, j]
                    high[j] = logits[k, i, j]
                for a in range(1, span_r):
                    src = min(i + a, h - 1)
                    for j in range(w):
                        v = logits[k, src, j]
                        low[j] = np.minimum(low[j], v)  # np's min and max vectorise; Python's do not
                        high[j] = np.maximum(high[j], v)
                for b in range(1, span_c):  # then across its columns, left to right in place
                    for j in range(w - b):
                        low[j] = np.minimum(low[j], low[j + 1])
                        high[j] = np.maximum(high[j], high[j + 1])
                n_above = 0
                for j in range(w):
                    sure = low[j] > above_at
                    above[i, j] = sure
                    n_above += sure
                    open_ = (high[j] >= unsure_at) > sure
                    unsure[k, i, j] = open_
                    n_unsure += open_
                above_count[i] = n_above
            for y in range(out.shape[1]):
                i = row_first[y]
                if y > 0 and row_first[y - 1] == i:
                    out[k, y] = out[k, y - 1]
                elif above_count[i] == 0 or above_count[i] == w:  # most rows of a mask: one value
                    out[k, y] = above_count[i] == w
                else:  # a byte gather does not vectorise
                    for x in range(width):
                        out[k, y, x] = above[i, col_first[x]]
        return n_unsure

    return threshold_clear


def _threshold_contours_kernel(njit):
    @njit(inline="always", **_EXACT)
    def combine(a, b, c, d, wx0, wx1, wy0, wy1):  # F.interpolate's CPU order: along x in both rows, then y
        return (a * wx0 + b * wx1) * wy0 + (c * wx0 + d * wx1) * wy1

    @njit(inline="always", **_EXACT)
    def padded_pixel(logits, k, r, c, first_pass):  # the first pass's logit at (r, c)
        rows_cell, rows_w0, rows_w1, cols_cell, cols_w0, cols_w1 = first_pass
        h, w = logits.shape[1], logits.shape[2]
        a0, b0 = rows_cell[r], cols_cell[c]
        a1, b1 = min(a0 + 1, h - 1), min(b0 + 1, w - 1)
        return combine(logits[k, a0, b0], logits[k, a0, b1], logits[k, a1, b0], logits[k, a1, b1],
                       cols_w0[c], cols_w1[c], rows_w0[r], rows_w1[r])

    @njit(**_EXACT)
    def threshold_contours(logits, unsure, rows_start, rows_count, cols_start, cols_count, first_pass, second_pass,
                           crop_h, crop_w, threshold, out):
        """out[k, y, x] = (two-pass upsampled logit > threshold) for the output pixels of each unsure
        cell, with the reference's indices and weights: first_pass and second_pass are (cell, w0, w1) of
        the rows' then the columns' axis map, for the upsampling to the padded size and for the resize
        to the image (masks.axis_map)."""
        count, h, w = logits.shape
        rows_cell, rows_w0, rows_w1, cols_cell, cols_w0, cols_w1 = second_pass
        for k in range(count):
            for i in range(h):
                for j in range(w):
                    if not unsure[k, i, j]:
                        continue
                    for y in range(rows_start[i], rows_start[i] + rows_count[i]):
                        r0 = rows_cell[y]
                        r1 = min(r0 + 1, crop_h - 1)
                        for x in range(cols_start[j], cols_start[j] + cols_count[j]):
                            c0 = cols_cell[x]
                            c1 = min(c0 + 1, crop_w - 1)
                            value = combine(padded_pixel(logits, k, r0, c0, first_pass),
                                            padded_pixel(logits, k, r0, c1, first_pass),
                                            padded_pixel(logits, k, r1, c0, first_pass),
                                            padded_pixel(logits, k, r1, c1, first_pass),
                                            cols_w0[x], cols_w1[x], rows_w0[y], rows_w1[y])
                            out[k, y, x] = value > threshold

    return threshold_contours
