"""Compiled (numba) kernels for the metrics whose reference implementations are slow loops.

Each kernel reproduces the exact result of the library PySODMetrics relies on, including tie-breaking,
because HCE and the weighted F-measure depend on it to the last pixel:

* :func:`skeletonize` is scikit-image's Zhang-Suen thinning, ``skimage.morphology.skeletonize`` for 2-D
  masks (the lookup table of scikit-image 0.25.2 and 0.26.0, the versions checked). Instead of rescanning
  the whole image every sub-iteration, it examines only the pixels whose neighbourhood can have changed,
  so the cost follows the number of removals, not the area times the object thickness.
* :func:`nearest_foreground` is scipy's exact Euclidean feature transform
  (``scipy.ndimage.distance_transform_edt(~mask, return_indices=True)``, Maurer et al. 2003 as scipy
  implements it): a column pass that keeps the upper of two equidistant features, then a row pass with
  the same lower-envelope pruning and the same "earlier site wins a tie" query, in exact integer
  arithmetic.
* :func:`weighted_f_terms` fuses the weighted F-measure (Margolin et al. 2014, PySODMetrics'
  ``WeightedFmeasure``) around that transform.

:func:`foreground_profile` and :func:`quadrant_histograms` give the S-measure's centroid and the joint
prediction/ground-truth histograms every other pixel-wise metric is computed from, in one pass each
without full-size temporaries.

Kernels are compiled on first use and cached on disk next to this file (``cache=True``).
"""

from __future__ import annotations

import math

import cv2
import numba
import numpy as np

__all__ = [
    "compile_kernels",
    "foreground_profile",
    "nearest_foreground",
    "quadrant_histograms",
    "quantise_probabilities",
    "skeletonize",
    "weighted_f_terms",
]

# Zhang-Suen removal classes of scikit-image's lookup table, indexed by the 8-neighbourhood code
# NW=1, N=2, NE=4, E=8, SE=16, S=32, SW=64, W=128: class 1 is removed in the first sub-iteration, 2 in
# the second, 3 in both. This is the table of scikit-image 0.25.2 / 0.26.0; older releases published a table
# that also removed codes 48 (S+SE, class 2) and 129 (W+NW, class 1), so their skeletons, and HCE computed
# with them, can differ at such line ends.
_REMOVAL_CODES = {
    1: (3, 6, 11, 12, 14, 131, 134, 143, 159, 161, 194, 198, 207, 227, 231, 243),
    2: (24, 26, 56, 62, 63, 96, 104, 108, 126, 176, 192, 224, 248, 249, 252),
    3: (7, 10, 15, 28, 30, 31, 40, 60, 112, 120, 124, 130, 135, 160, 193, 195, 199, 225, 240, 241),
}
ZHANG_SUEN_LUT = np.zeros(256, np.uint8)
for _cls, _codes in _REMOVAL_CODES.items():
    ZHANG_SUEN_LUT[list(_codes)] = _cls


@numba.njit(cache=True, nogil=True, inline="always")
def _neighbour_code(flat: np.ndarray, i: int, w: int) -> int:
    """8-neighbourhood code of pixel i of a 0/1 image: NW=1, N=2, NE=4, E=8, SE=16, S=32, SW=64, W=128."""
    return (
        flat[i - w - 1]
        | (flat[i - w] << 1)
        | (flat[i - w + 1] << 2)
        | (flat[i + 1] << 3)
        | (flat[i + w + 1] << 4)
        | (flat[i + w] << 5)
        | (flat[i + w - 1] << 6)
        | (flat[i - 1] << 7)
    )


@numba.njit(cache=True, nogil=True)
def _thin(img: np.ndarray, lut: np.ndarray, border: np.ndarray) -> None:
    """Zhang-Suen thinning in place on a 0/1 uint8 image whose one-pixel border is zero.

    Each sub-iteration decides on the image as it found it, then removes. Only listed pixels are examined:
    at first ``border``, the flat indices of the set pixels that touch the background (a pixel with eight
    set neighbours is never removed), later also every set neighbour of a removed pixel. A pixel kept by
    both kinds of sub-iteration with an unchanged neighbourhood leaves the list until a neighbour is
    removed: its decisions cannot change.
    """
    h, w = img.shape
    flat = img.ravel()
    offsets = np.array([-w - 1, -w, -w + 1, 1, w + 1, w, w - 1, -1], np.int32)
    # state per pixel: bit 0 listed, bits 1-2 consecutive keeps since the neighbourhood last changed
    state = np.zeros(h * w, np.uint8)
    candidates = np.empty(h * w, np.int32)
    n = border.shape[0]
    candidates[:n] = border
    for k in range(n):
        state[border[k]] = 1
    removed = np.empty(h * w, np.int32)
    idle = 0  # consecutive sub-iterations without a removal
    bit = 1
    while idle < 2 and n > 0:
        n_removed = 0
        kept = 0
        for k in range(n):
            i = candidates[k]
            if lut[_neighbour_code(flat, i, w)] & bit:
                removed[n_removed] = i
                n_removed += 1
            elif state[i] >= 3:  # kept twice in a row: settled
                state[i] = 0
            else:
                state[i] += 2
                candidates[kept] = i
                kept += 1
        n = kept
        if n_removed == 0:
            idle += 1
        else:
            idle = 0
            for k in range(n_removed):
                flat[removed[k]] = 0
                state[removed[k]] = 0
            for k in range(n_removed):
                i = removed[k]
                for j in range(8):
                    m = i + offsets[j]
                    if flat[m]:
                        if state[m] == 0:
                            candidates[n] = m
                            n += 1
                        state[m] = 1
        bit = 3 - bit


def skeletonize(mask: np.ndarray) -> np.ndarray:
    """``skimage.morphology.skeletonize`` (Zhang-Suen, scikit-image 0.25.2 / 0.26.0) of a 2-D mask, as bool."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"skeletonize expects a 2-D mask, got shape {mask.shape}")
    img = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8)
    img[1:-1, 1:-1] = mask != 0
    interior = cv2.erode(img, np.ones((3, 3), np.uint8))
    border = np.flatnonzero(img > interior).astype(np.int32)
    _thin(img, ZHANG_SUEN_LUT, border)
    return img[1:-1, 1:-1].view(bool)


@numba.njit(cache=True, nogil=True)
def _column_features(feature: np.ndarray, rows: np.ndarray) -> None:
    """Pass 1 along columns: row of the nearest feature in the same column, the upper one on a tie; -1 if none."""
    h, w = feature.shape
    last = np.full(w, -1, np.int64)
    for r in range(h):
        for c in range(w):
            if feature[r, c]:
                last[c] = r
            rows[r, c] = last[c]
    nxt = np.full(w, -1, np.int64)
    for r in range(h - 1, -1, -1):
        for c in range(w):
            if feature[r, c]:
                nxt[c] = r
            up, down = rows[r, c], nxt[c]
            if up < 0 or (down >= 0 and down - r < r - up):
                rows[r, c] = down


@numba.njit(cache=True, nogil=True)
def _row_features(r, column_rows, envelope, out_row, out_col, out_dist2) -> None:
    """Pass 2 along row r (scipy's _VoronoiFT for the last axis): nearest feature of every pixel of the row.

    A site is a column c whose pass-1 feature lies at row column_rows[r, c], at squared vertical distance
    height. Sites not on the lower envelope are dropped with scipy's test (in exact integers), then each
    pixel walks the envelope while the next site is strictly closer, so the earlier site wins a tie.
    ``envelope`` is a 4 x w int64 workspace (site column, height, feature row; envelope index of each
    foreground column).
    """
    w = column_rows.shape[1]
    env_col, env_height, env_row, own_site = envelope[0], envelope[1], envelope[2], envelope[3]
    top = -1
    for c in range(w):
        fr = column_rows[r, c]
        if fr < 0:
            continue
        height = (fr - r) * (fr - r)
        while top >= 1:
            a = env_col[top] - env_col[top - 1]
            b = c - env_col[top]
            ab = a + b
            if ab * env_height[top] - b * env_height[top - 1] - a * height - a * b * ab <= 0:
                break
            top -= 1
        top += 1
        env_col[top] = c
        env_height[top] = height
        env_row[top] = fr
        if height == 0:  # a pixel of the foreground: never dropped, it is its own nearest feature
            own_site[c] = top
    if top < 0:
        for c in range(w):
            out_row[c] = -1
            out_col[c] = -1
            out_dist2[c] = -1
        return
    k = 0
    for c in range(w):
        if column_rows[r, c] == r:
            k = own_site[c]  # where the walk would stop: the unique site at distance 0
            out_row[c] = r
            out_col[c] = c
            out_dist2[c] = 0
            continue
        d1 = (env_col[k] - c) * (env_col[k] - c) + env_height[k]
        while k < top:
            d2 = (env_col[k + 1] - c) * (env_col[k + 1] - c) + env_height[k + 1]
            if d1 <= d2:
                break
            d1 = d2
            k += 1
        out_row[c] = env_row[k]
        out_col[c] = env_col[k]
        out_dist2[c] = d1


@numba.njit(cache=True, nogil=True)
def _feature_transform(feature: np.ndarray, rows: np.ndarray, cols: np.ndarray, dist2: np.ndarray) -> None:
    """Nearest feature pixel of every pixel (scipy's tie-breaking) and its squared distance; -1 without features."""
    h, w = feature.shape
    column_rows = np.empty((h, w), np.int32)
    _column_features(feature, column_rows)
    envelope = np.empty((4, w), np.int64)
    for r in range(h):
        _row_features(r, column_rows, envelope, rows[r], cols[r], dist2[r])


def nearest_foreground(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and squared distance of the nearest foreground pixel of every pixel (itself on the foreground).

    Equals ``scipy.ndimage.distance_transform_edt(~mask, return_indices=True)`` (indices, and distances
    squared) including which of several equidistant pixels is chosen. All three arrays are int32; they are
    -1 everywhere for an empty mask.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    rows = np.empty(mask.shape, np.int32)
    cols = np.empty(mask.shape, np.int32)
    dist2 = np.empty(mask.shape, np.int32)
    _feature_transform(mask, rows, cols, dist2)
    return rows, cols, dist2


def _matlab_gaussian_1d(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)``: the 2-D kernel is its outer product."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


_GAUSS_1D = _matlab_gaussian_1d()
_DECAY = math.log(0.5) / 5  # importance of background errors: 2 - exp(ln(0.5) / 5 * distance)
_TABLE_D2 = 1 << 16  # background weights for squared distances below this come from a table
_BG_WEIGHT = 2 - np.exp(_DECAY * np.sqrt(np.arange(_TABLE_D2, dtype=np.float64)))


@numba.njit(cache=True, nogil=True)
def _weighted_f_terms(q, levels, fg, gauss, bg_weight, decay):
    """Streams the rows: feature transform of row rr, its propagated error Et and horizontal smoothing into
    a ring of 2 radius + 1 rows, then the vertical smoothing and the sums for row rr - radius.

    The smoothing adds the taps in a different order than a direct 2-D convolution (scipy), which moves
    the result by a few ulp; that cannot move the metric by more than about 1e-12.
    """
    h, w = q.shape
    size = gauss.shape[0]
    radius = size // 2
    reach = radius * radius
    column_rows = np.empty((h, w), np.int32)
    _column_features(fg, column_rows)
    envelope = np.empty((4, w), np.int64)
    near_row = np.empty(w, np.int64)
    near_col = np.empty(w, np.int64)
    near_dist2 = np.empty(w, np.int64)
    et = np.zeros(w)
    ring = np.zeros((size, w))
    padded = np.zeros(w + 2 * radius)
    smoothed = np.empty(w)
    slot = np.empty(size, np.int64)
    table = bg_weight.shape[0]
    fg_sum = 0.0
    fg_count = 0
    bg_sum = 0.0
    for rr in range(h + radius):
        if rr < h:
            _row_features(rr, column_rows, envelope, near_row, near_col, near_dist2)
            for c in range(w):
                d2 = near_dist2[c]
                # EA is read on the foreground only: Et matters within `radius` rows and columns of it
                et[c] = 1.0 - levels[q[near_row[c], near_col[c]]] if d2 <= 2 * reach else 0.0
                if not fg[rr, c]:
                    p = levels[q[rr, c]]
                    if p > 0:
                        weight = bg_weight[d2] if d2 < table else 2.0 - math.exp(decay * math.sqrt(d2))
                        bg_sum += p * weight
            # horizontal pass over the zero-padded row (branch-free, so it vectorises)
            padded[radius : radius + w] = et
            line = ring[rr % size]
            line[:] = 0.0
            for k in range(size):
                weight = gauss[k]
                for c in range(w):
                    line[c] += weight * padded[c + k]
        r = rr - radius
        if r < 0:
            continue
        lo, hi = max(0, radius - r), min(size, h - r + radius)  # taps whose row lies inside the image
        for k in range(size):
            slot[k] = (r - radius + k) % size
        smoothed[:] = 0.0
        for k in range(lo, hi):
            weight = gauss[k]
            source = ring[slot[k]]
            for c in range(w):
                smoothed[c] += weight * source[c]
        for c in range(w):
            if fg[r, c]:
                e = 1.0 - levels[q[r, c]]
                fg_sum += smoothed[c] if smoothed[c] < e else e
                fg_count += 1
    return fg_sum, fg_count, bg_sum


def weighted_f_terms(q: np.ndarray, levels: np.ndarray, fg: np.ndarray) -> tuple[float, int, float]:
    """The three sums of the weighted F-measure of a uint8 prediction with a non-empty foreground.

    ``levels[q]`` is the prepared (normalised) prediction. Returns ``(sum of min(E, EA) over the
    foreground, foreground pixel count, weighted background error)`` where E = |pred - gt|, EA is E
    propagated from each background pixel's nearest foreground pixel (scipy's choice among equidistant
    ones) and smoothed with MATLAB's 7x7, sigma 5 Gaussian (zero padding), and background errors are
    weighted by ``2 - exp(ln(0.5) / 5 * distance to the foreground)``.
    """
    fg = np.ascontiguousarray(fg, dtype=bool)
    if not fg.any():
        raise ValueError("weighted_f_terms needs a non-empty foreground (the measure is 0 without one).")
    return _weighted_f_terms(
        np.ascontiguousarray(q, dtype=np.uint8),
        np.ascontiguousarray(levels, dtype=np.float64),
        fg,
        _GAUSS_1D,
        _BG_WEIGHT,
        _DECAY,
    )


@numba.njit(cache=True, nogil=True)
def _foreground_profile(fg: np.ndarray, per_row: np.ndarray, per_col: np.ndarray) -> None:
    h, w = fg.shape
    for r in range(h):
        n = 0
        for c in range(w):
            if fg[r, c]:
                n += 1
                per_col[c] += 1
        per_row[r] = n


def foreground_profile(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground pixel count of every row and of every column (int64)."""
    fg = np.ascontiguousarray(fg, dtype=bool)
    per_row, per_col = np.zeros(fg.shape[0], np.int64), np.zeros(fg.shape[1], np.int64)
    _foreground_profile(fg, per_row, per_col)
    return per_row, per_col


@numba.njit(cache=True, nogil=True)
def _quadrant_histograms(q: np.ndarray, fg: np.ndarray, cy: int, cx: int, out: np.ndarray) -> None:
    h, w = q.shape
    split = min(max(cx, 0), w)
    for r in range(h):
        left = out[0] if r < cy else out[2]
        right = out[1] if r < cy else out[3]
        for c in range(split):
            left[(fg[r, c] << 8) | q[r, c]] += 1
        for c in range(split, w):
            right[(fg[r, c] << 8) | q[r, c]] += 1


def quadrant_histograms(q: np.ndarray, fg: np.ndarray, cy: int, cx: int) -> np.ndarray:
    """Joint histogram (prediction level + 256 x foreground) of each quadrant split at row cy, column cx.

    Returns a 4 x 512 int64 array for the quadrants rows < cy / cols < cx, rows < cy / cols >= cx,
    rows >= cy / cols < cx and rows >= cy / cols >= cx: the S-measure's regions, whose sum is the whole
    image's histogram.
    """
    out = np.zeros((4, 512), np.int64)
    fg = np.ascontiguousarray(fg, dtype=bool).view(np.uint8)
    _quadrant_histograms(np.ascontiguousarray(q, dtype=np.uint8), fg, cy, cx, out)
    return out


@numba.njit(cache=True, nogil=True)
def _quantise_probabilities(flat: np.ndarray, out: np.ndarray) -> None:
    for i in range(flat.size):
        v = float(flat[i])
        if not v > 0.0:  # also NaN
            v = 0.0
        elif v > 1.0:
            v = 1.0
        out[i] = np.uint8(math.floor(v * 255.0))


def quantise_probabilities(pred: np.ndarray) -> np.ndarray:
    """``floor(255 clip(p, 0, 1))`` with the product in float64, as uint8, in one pass (NaN becomes 0): what
    ``np.floor(np.clip(p.astype(np.float64), 0, 1) * 255).astype(np.uint8)`` gives, without four full-size
    temporaries."""
    pred = np.ascontiguousarray(pred)
    if pred.dtype not in (np.float32, np.float64):
        pred = pred.astype(np.float64)
    out = np.empty(pred.shape, np.uint8)
    _quantise_probabilities(pred.reshape(-1), out.reshape(-1))
    return out


def compile_kernels() -> None:
    """Compile (or load from the on-disk cache) every kernel once, e.g. before starting worker processes,
    so that they load the cached machine code instead of each compiling it (a few seconds, once per install)."""
    fg = np.zeros((9, 9), bool)
    fg[3:6, 2:7] = True
    q = np.arange(81, dtype=np.uint8).reshape(9, 9)
    skeletonize(fg)
    nearest_foreground(fg)
    weighted_f_terms(q, np.arange(256) / 255.0, fg)
    quadrant_histograms(q, fg, *(int(v) for v in np.argwhere(fg).mean(axis=0)))
    foreground_profile(fg)
    for dtype in (np.float32, np.float64):
        quantise_probabilities(q.astype(dtype) / 255)
