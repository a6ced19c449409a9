"""Per-image SOD/DIS metrics with the PySODMetrics conventions (lartpang/PySODMetrics 1.6.2, MIT), fast.

Written from the metric definitions (Fan et al. ICCV 2017 S-measure, IJCAI 2018 E-measure; Achanta et al.
CVPR 2009 F-measure; Margolin et al. CVPR 2014 weighted F-measure; Qin et al. ECCV 2022 HCE; Cheng et al.
CVPR 2020 mBA; Cheng et al. CVPR 2021 boundary IoU as BiRefNet's evaluation computes it). Conventions:

* gt is binarised as ``gt > 128`` (of 255); float masks as ``gt > 128/255``.
* a uint8 prediction is divided by 255 and min-max stretched per image when not constant. A float
  prediction in [0, 1] is first quantised as an 8-bit PNG would be (``floor(255 p)``, the reference saves
  ``mul(255).byte()``), so evaluating probabilities equals evaluating the saved PNGs.
* curves have 256 entries in descending threshold order (index 0: ``>= 255``, index 255: ``>= 0``).
* dataset results are means over images; max/mean F, E and BIoU are taken on the image-averaged curves.

Speed: a uint8 prediction takes only 256 values, so every pixel-wise quantity except the weighted F-measure
and HCE is a function of a 512-bin joint histogram (prediction level x gt). MAE, S-measure (object and the
four region quadrants), adaptive/curve F and E, precision/recall, IoU/Dice come from the four quadrant
histograms of one pass. The weighted F-measure (with its exact feature transform) and HCE's skeleton are
compiled kernels (:mod:`birefnet.metrics.kernels`) that reproduce scipy's and scikit-image's results pixel
for pixel. About 26 ms per 1024x1024 image for everything (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from birefnet.metrics.allocator import keep_scratch_memory
from birefnet.metrics.kernels import (
    foreground_profile,
    quadrant_histograms,
    quantise_probabilities,
    skeletonize,
    weighted_f_terms,
)

__all__ = [
    "EPS",
    "HCE_CONVENTIONS",
    "ImageScores",
    "binary_gt",
    "boundary_iou_curve",
    "hce",
    "image_scores",
    "mba",
    "quantise",
]

EPS = np.spacing(1)
#: How HCE binarises the prediction (see :func:`image_scores`).
HCE_CONVENTIONS = ("pysodmetrics", "reference")
BETA2 = 0.3
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)  # skimage disk(1)


def quantise(pred: np.ndarray) -> np.ndarray:
    """A prediction as the uint8 map the metrics read: uint8 kept, bool as 0/255, probabilities in [0, 1] as
    ``floor(255 p)`` in float64 (values outside [0, 1] clipped, NaN as 0) in one compiled pass."""
    pred = np.asarray(pred)
    if pred.dtype == np.uint8:
        return np.ascontiguousarray(pred)
    if pred.dtype == bool:
        return pred.astype(np.uint8) * 255
    return quantise_probabilities(pred)


def binary_gt(gt: np.ndarray) -> np.ndarray:
    """A mask as bool foreground: uint8 ``> 128``, float ``> 128/255``, bool kept."""
    gt = np.asarray(gt)
    if gt.dtype == bool:
        return np.ascontiguousarray(gt)
    if gt.dtype == np.uint8:
        return gt > 128
    return gt.astype(np.float64) > 128.0 / 255.0


def soft_alpha(mask: np.ndarray) -> np.ndarray:
    """A map as alpha values in [0, 1] (float64), not binarised: uint8 / 255, bool as 0/1, floats clipped."""
    mask = np.asarray(mask)
    if mask.dtype == np.uint8:
        return mask / 255.0
    return np.clip(mask.astype(np.float64), 0.0, 1.0)


def _levels(lo: int, hi: int) -> np.ndarray:
    """Normalised value of every uint8 level, with PySODMetrics' float64 operations."""
    p = np.arange(256, dtype=np.float64) / 255.0
    if hi != lo:
        p = (p - lo / 255.0) / (hi / 255.0 - lo / 255.0)
    return p


def _ssim_from_hist(fg: np.ndarray, bg: np.ndarray, p: np.ndarray) -> float:
    """Region SSIM of one quadrant from its per-level counts of gt-foreground and gt-background pixels."""
    cnt = fg + bg
    n = cnt.sum()
    if n == 0:
        return 0.0
    nf = fg.sum()
    x = (cnt * p).sum() / n
    y = nf / n
    dx = p - x
    sx = (cnt * dx * dx).sum() / (n - 1 + EPS)
    sy = (nf * (1 - y) ** 2 + (n - nf) * y**2) / (n - 1 + EPS)
    sxy = ((fg * dx).sum() * (1 - y) + (bg * dx).sum() * (0 - y)) / (n - 1 + EPS)
    a = 4 * x * y * sxy
    b = (x**2 + y**2) * (sx + sy)
    if a != 0:
        return a / (b + EPS)
    return 1.0 if b == 0 else 0.0


def _object_score(cnt: np.ndarray, values: np.ndarray) -> float:
    n = cnt.sum()
    if n == 0:
        return float("nan")
    mean = (cnt * values).sum() / n
    std = np.sqrt((cnt * (values - mean) ** 2).sum() / (n - 1)) if n > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _centroid(per_row: np.ndarray, per_col: np.ndarray, nf: int) -> tuple[int, int]:
    """PySODMetrics' split point: the rounded foreground centroid plus one, (row, column)."""
    cy = int(np.round((per_row * np.arange(per_row.size)).sum() / nf)) + 1
    cx = int(np.round((per_col * np.arange(per_col.size)).sum() / nf)) + 1
    return cy, cx


def _s_measure(
    quadrants: np.ndarray, fg: np.ndarray, bg: np.ndarray, cy: int, cx: int, p: np.ndarray, shape: tuple[int, int]
) -> float:
    """S-measure (alpha 0.5) from the four quadrant joint histograms split at the centroid (cy, cx), whose
    sum over the quadrants is fg / bg (the per-level counts of foreground / background pixels)."""
    h, w = shape
    n = h * w
    nf = fg.sum()
    y = nf / n
    if y == 0:
        return float(1 - (bg * p).sum() / n)
    if y == 1:
        return float((fg * p).sum() / n)
    obj = y * _object_score(fg, p) + (1 - y) * _object_score(bg, 1 - p)
    area = n
    weights = [cx * cy / area, cy * (w - cx) / area, (h - cy) * cx / area]
    weights.append(1 - sum(weights))
    region = 0.0
    for wt, quadrant in zip(weights, quadrants.astype(np.float64), strict=True):
        region += wt * _ssim_from_hist(quadrant[256:], quadrant[:256], p)
    return float(max(0.0, 0.5 * obj + 0.5 * region))


def _enhanced_sum(fg_fg, fg_bg, gt_fg: int, n: int):
    pred_fg = fg_fg + fg_bg
    pred_bg = n - pred_fg
    if gt_fg == 0:
        return pred_bg
    if gt_fg == n:
        return pred_fg
    bg_fg = gt_fg - fg_fg
    bg_bg = pred_bg - bg_fg
    mp, mg = pred_fg / n, gt_fg / n
    total = 0
    for count, a, b in ((fg_fg, 1 - mp, 1 - mg), (fg_bg, 1 - mp, -mg), (bg_fg, -mp, 1 - mg), (bg_bg, -mp, -mg)):
        align = 2 * a * b / (a**2 + b**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * count
    return total


def weighted_f_measure(q: np.ndarray, levels: np.ndarray, g: np.ndarray, beta2: float = 1.0) -> float:
    """Weighted F-measure (Margolin et al.) of ``levels[q]`` against ``g``; 0 for an empty gt (PySODMetrics).

    The nearest-foreground transform, the propagated and smoothed error and the distance weights run in one
    compiled kernel (:func:`birefnet.metrics.kernels.weighted_f_terms`) with scipy's exact tie-breaking.
    """
    if not g.any():
        return 0.0
    fg_error, n_fg, bg_error = weighted_f_terms(q, levels, g)
    r = 1 - fg_error / n_fg
    tpw = n_fg - fg_error
    p = tpw / (tpw + bg_error + EPS)
    return float((1 + beta2) * r * p / (r + beta2 * p + EPS))


def _component_of_contour(parent: np.ndarray) -> np.ndarray:
    """Index of the outer border each contour of a RETR_TREE hierarchy belongs to (itself for outer borders).

    Depth 0, 2, 4 ... are outer borders of components, odd depths their holes.
    """
    depth = np.zeros(len(parent), np.int64)
    ancestor = parent.copy()
    while (ancestor >= 0).any():
        inside = ancestor >= 0
        depth[inside] += 1
        ancestor[inside] = parent[ancestor[inside]]
    return np.where(depth % 2 == 0, np.arange(len(parent)), parent)


def _correction_points(mask: np.ndarray, condition: np.ndarray, epsilon: float) -> int:
    """Polygon points on the mask's boundary where it meets the condition map, plus independent regions.

    The DIS reference walks every contour point in OpenCV's order: a point counts when it lies on the dilated
    condition map and was not counted before; counted points form runs (the first and last run of a contour
    are joined when 8-adjacent, the first reversed); each run is simplified with approxPolyDP(epsilon, open).
    Components without any counted point are independent regions (one correction each). Because the
    condition is a property of the pixel, "not counted before" is "first occurrence of the pixel in the
    concatenated contour order", which lets all contours be processed at once.
    """
    if not mask.any():
        return 0
    m8 = mask.astype(np.uint8)
    # An isolated pixel is a one-point contour of its own component: counted as a point or, if it misses
    # the condition, as an independent region, it costs one correction either way. Counting those directly
    # spares findContours thousands of tiny contours on speckled maps.
    neighbourhood = cv2.boxFilter(m8, cv2.CV_8U, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    isolated = (neighbourhood == 1) & mask
    n_isolated = int(np.count_nonzero(isolated))
    if n_isolated:
        m8[isolated] = 0
        if n_isolated == np.count_nonzero(mask):
            return n_isolated
    contours, hierarchy = cv2.findContours(m8, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    cond = cv2.dilate(condition.view(np.uint8), _CROSS).ravel() > 0
    lengths = np.fromiter((len(c) for c in contours), np.int64, len(contours))
    pts = np.concatenate(contours)[:, 0, :]
    flat = pts[:, 1].astype(np.int64) * mask.shape[1] + pts[:, 0]
    first = np.zeros(len(flat), bool)
    first[np.unique(flat, return_index=True)[1]] = True
    taken = cond[flat] & first
    contour_id = np.repeat(np.arange(len(contours)), lengths)
    # The contour tree alternates outer borders (one per 8-connected component) and hole borders, whose
    # component is their parent's: a component is independent when none of its borders has a taken point.
    component = _component_of_contour(hierarchy[0][:, 3])
    dependent = np.zeros(len(contours), bool)
    dependent[component[contour_id[taken]]] = True
    independent = int((component == np.arange(len(contours))).sum() - dependent.sum()) + n_isolated
    if not taken.any():
        return independent
    # runs of taken points within a contour
    new_contour = np.concatenate([[True], contour_id[1:] != contour_id[:-1]])
    starts_mask = taken & (new_contour | ~np.concatenate([[False], taken[:-1]]))
    ends_mask = taken & np.concatenate([new_contour[1:] | ~taken[1:], [True]])
    run_start, run_end = np.nonzero(starts_mask)[0], np.nonzero(ends_mask)[0] + 1
    run_contour = contour_id[run_start]
    # the last run of a contour continues into its first (reversed) when their ends are 8-adjacent
    first_of = np.concatenate([[True], run_contour[1:] != run_contour[:-1]])
    last_of = np.concatenate([run_contour[1:] != run_contour[:-1], [True]])
    first_idx, last_idx = np.nonzero(first_of)[0], np.nonzero(last_of)[0]
    multi = last_idx > first_idx
    first_idx, last_idx = first_idx[multi], last_idx[multi]
    a, b = pts[run_start[first_idx]].astype(np.int64), pts[run_end[last_idx] - 1].astype(np.int64)
    joined = np.abs(a - b).max(axis=1) == 1
    first_idx, last_idx = first_idx[joined], last_idx[joined]
    keep = np.ones(len(run_start), bool)
    keep[first_idx] = False  # absorbed into the contour's last run
    length = run_end - run_start
    merged_len = length.copy()
    merged_len[last_idx] += length[first_idx]
    absorbed = np.full(len(run_start), -1)
    absorbed[last_idx] = first_idx
    # runs of one or two points stay as they are; longer ones are simplified (Douglas-Peucker)
    points = int(merged_len[keep & (merged_len <= 2)].sum())
    for k in np.nonzero(keep & (merged_len > 2))[0]:
        run = pts[run_start[k] : run_end[k]]
        if absorbed[k] >= 0:
            j = absorbed[k]
            run = np.concatenate([run, pts[run_start[j] : run_end[j]][::-1]])
        points += len(cv2.approxPolyDP(np.ascontiguousarray(run[:, None, :], dtype=np.int32), epsilon, False))
    return points + independent


def hce(pred_bin: np.ndarray, g: np.ndarray, relax: int = 5, epsilon: float = 2.0) -> int:
    """Human correction efforts (Qin et al., DIS): polygon points + independent regions for FP and FN."""
    pred_bin, g = np.ascontiguousarray(pred_bin, dtype=bool), np.ascontiguousarray(g, dtype=bool)
    not_g, not_pred = ~g, ~pred_bin
    tp, fp, fn = pred_bin & g, pred_bin & not_g, not_pred & g
    union = (g | pred_bin).view(np.uint8)
    union_eroded = cv2.erode(union, _CROSS, iterations=relax) > 0
    # errors deep inside the union, grown back by `relax` steps within the error region they belong to
    fp_ = fp & union_eroded
    for _ in range(relax if fp_.any() else 0):
        fp_ = (cv2.dilate(fp_.view(np.uint8), _CROSS) > 0) & not_g
    fp_ &= fp
    fn_ = fn & union_eroded
    for _ in range(relax if fn_.any() else 0):
        fn_ = (cv2.dilate(fn_.view(np.uint8), _CROSS) > 0) & not_pred
    fn_ &= fn
    fn_ |= skeletonize(g) & ~tp
    return _correction_points(fp_, tp | fn_, epsilon) + _correction_points(fn_, ~(tp | fp_ | fn_), epsilon)


def mba(pred_raw: np.ndarray, g: np.ndarray) -> float:
    """Mean boundary accuracy (CascadePSP) as BiRefNet computes it: raw pred > 128, 5 radii; NaN without boundary."""
    h, w = g.shape
    agree = (pred_raw > 128) == g
    gt8 = g.view(np.uint8)
    max_r = (w + h) / 300
    total = 0.0
    for i in range(5):
        r = 1 + int((max_r - 1) / 5 * i)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        band = cv2.morphologyEx(gt8, cv2.MORPH_GRADIENT, kernel) > 0
        n = np.count_nonzero(band)
        if n == 0:
            return float("nan")
        total += np.count_nonzero(band & agree) / n
    return total / 5


def _inner_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """``mask - erode(mask, 3x3, dilation times)`` with a zero border (boundary-iou-api's mask_to_boundary).

    Eroding ``dilation`` times with 3x3 is one erosion with a (2 dilation + 1) square, done as a row and a
    column pass (the minimum is separable): the same values, three times faster.
    """
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    size = 2 * dilation + 1
    eroded = cv2.erode(cv2.erode(padded, np.ones((1, size), np.uint8)), np.ones((size, 1), np.uint8))
    return mask - eroded[1:-1, 1:-1]


def boundary_iou_curve(q_norm: np.ndarray, g: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """BiRefNet's BIoU: boundary IoU over 256 thresholds of the grey boundary of the normalised prediction."""
    h, w = g.shape
    d = max(1, round(float(dilation_ratio * np.sqrt(h * h + w * w))))
    pb = _inner_boundary(q_norm, d)
    gb = _inner_boundary(g.view(np.uint8), d) > 0  # the reference's (255 g) boundary > 128
    hist = quadrant_histograms(pb, gb, 0, 0)[3]
    fg = hist[256:][::-1].cumsum()
    bg = hist[:256][::-1].cumsum()
    return fg / (max(int(fg[-1]), 1) + bg)


@dataclass
class ImageScores:
    """All per-image values; the curves are 256 long, descending thresholds."""

    mae: float
    sm: float
    wfm: float
    adp_fm: float
    fm_curve: np.ndarray
    adp_em: float
    em_curve: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    iou: float
    dice: float
    hce: float
    mse: float
    mba: float
    biou_curve: np.ndarray


def image_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    with_hce: bool = True,
    with_boundary: bool = True,
    hce_convention: str = "pysodmetrics",
) -> ImageScores:
    """Every metric for one image from shared histograms.

    Args:
        pred: uint8 map (0..255) or float probabilities in [0, 1], H x W.
        gt: uint8 (> 128 is foreground), bool or float mask, H x W.
        with_hce / with_boundary: compute HCE / mBA and BIoU (the costlier ones).
        hce_convention: ``"pysodmetrics"`` binarises the min-max-normalised prediction at > 0.5 (PySODMetrics);
            ``"reference"`` the raw prediction at > 128 (of 255), as BiRefNet's and the DIS evaluation code do.
            They differ on maps that do not span the full range.
    """
    keep_scratch_memory()
    q = quantise(pred)
    g = binary_gt(gt)
    if q.shape != g.shape:
        raise ValueError(f"prediction {q.shape} and ground truth {g.shape} differ in shape; resize first.")
    n = g.size
    lo, hi, _, _ = cv2.minMaxLoc(q)
    p = _levels(int(lo), int(hi))
    per_row, per_col = foreground_profile(g)
    nf = int(per_row.sum())
    cy, cx = _centroid(per_row, per_col, nf) if 0 < nf < n else (0, 0)
    quadrants = quadrant_histograms(q, g, cy, cx)
    hist = quadrants.sum(axis=0).astype(np.float64)
    bg, fg = hist[:256], hist[256:]

    mae = ((bg * p).sum() + (fg * (1 - p)).sum()) / n
    mse = ((bg * p * p).sum() + (fg * (1 - p) ** 2).sum()) / n  # the reference's MSE: normalised map, binary gt
    sm = _s_measure(quadrants, fg, bg, cy, cx, p, g.shape)

    # adaptive threshold: pred >= min(2 mean, 1)
    thr = min(2 * (hist[:256] + hist[256:]) @ p / n, 1)
    on = p >= thr
    a_tp, a_fp = fg[on].sum(), bg[on].sum()
    adp_fm = (
        0.0
        if a_tp == 0
        else (1 + BETA2) * (a_tp / (a_tp + a_fp)) * (a_tp / nf) / (BETA2 * a_tp / (a_tp + a_fp) + a_tp / nf)
    )
    adp_em = _enhanced_sum(a_tp, a_fp, nf, n) / (n - 1 + EPS)

    # 256-threshold curves on the re-quantised normalised map
    qn = (p * 255).astype(np.uint8)
    tp = np.bincount(qn, weights=fg, minlength=256)[::-1].cumsum()
    fp_ = np.bincount(qn, weights=bg, minlength=256)[::-1].cumsum()
    ps = tp + fp_
    ps[ps == 0] = 1
    precision = tp / ps
    recall = tp / max(nf, 1)
    num = (1 + BETA2) * precision * recall
    fm_curve = num / np.where(num == 0, 1, BETA2 * precision + recall)
    em_curve = np.asarray(_enhanced_sum(tp, fp_, nf, n) / (n - 1 + EPS), dtype=np.float64)

    half = p > 0.5
    b_tp, b_fp = fg[half].sum(), bg[half].sum()
    b_fn = nf - b_tp
    iou = b_tp / (b_tp + b_fp + b_fn) if b_tp + b_fp + b_fn else 0.0
    dice = 2 * b_tp / (2 * b_tp + b_fp + b_fn) if b_tp + b_fp + b_fn else 0.0

    wfm = weighted_f_measure(q, p, g)
    # p is non-decreasing in the level, so "p > 0.5" is "q >= the first level above one half"
    if hce_convention not in HCE_CONVENTIONS:
        raise ValueError(f"hce_convention must be one of {HCE_CONVENTIONS}, not {hce_convention!r}.")
    hce_bin = q >= np.searchsorted(p, 0.5, side="right") if hce_convention == "pysodmetrics" else q > 128
    hce_value = float(hce(hce_bin, g)) if with_hce else float("nan")
    if with_boundary:
        mba_value = mba(q, g)
        biou = boundary_iou_curve(cv2.LUT(q, qn), g)
    else:
        mba_value, biou = float("nan"), np.full(256, np.nan)
    return ImageScores(
        mae=float(mae),
        sm=sm,
        wfm=wfm,
        adp_fm=float(adp_fm),
        fm_curve=fm_curve,
        adp_em=float(adp_em),
        em_curve=em_curve,
        precision=precision,
        recall=recall,
        iou=float(iou),
        dice=float(dice),
        hce=hce_value,
        mse=float(mse),
        mba=mba_value,
        biou_curve=biou,
    )
