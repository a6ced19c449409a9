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
four region quadrants), adaptive/curve F and E, precision/recall, IoU/Dice come from a few ``bincount``s;
the weighted F-measure runs its exact nearest-foreground transform only over the foreground's bounding box
(plus the 7x7 window), and HCE skeletonises only ground-truth components that contain a missed pixel,
with an optional cache for skeletons of masks seen before.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.morphology import skeletonize

__all__ = ["EPS", "ImageScores", "SkeletonCache", "boundary_iou_curve", "hce", "image_scores", "mba"]

EPS = np.spacing(1)
BETA2 = 0.3
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)  # skimage disk(1)


def _quantise(pred: np.ndarray) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.dtype == np.uint8:
        return pred
    if pred.dtype == bool:
        return pred.astype(np.uint8) * 255
    return np.floor(np.clip(pred.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _binary_gt(gt: np.ndarray) -> np.ndarray:
    gt = np.asarray(gt)
    if gt.dtype == bool:
        return gt
    if gt.dtype == np.uint8:
        return gt > 128
    return gt.astype(np.float64) > 128.0 / 255.0


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


def _s_measure(codes: np.ndarray, fg: np.ndarray, bg: np.ndarray, p: np.ndarray, g: np.ndarray) -> float:
    n = g.size
    nf = fg.sum()
    y = nf / n
    if y == 0:
        return float(1 - (bg * p).sum() / n)
    if y == 1:
        return float((fg * p).sum() / n)
    obj = y * _object_score(fg, p) + (1 - y) * _object_score(bg, 1 - p)
    h, w = g.shape
    rows, cols = np.count_nonzero(g, axis=1), np.count_nonzero(g, axis=0)
    cy = int(np.round((rows * np.arange(h)).sum() / nf)) + 1
    cx = int(np.round((cols * np.arange(w)).sum() / nf)) + 1
    area = h * w
    weights = [cx * cy / area, cy * (w - cx) / area, (h - cy) * cx / area]
    weights.append(1 - sum(weights))
    region = 0.0
    for wt, (rs, cs) in zip(
        weights,
        [
            (slice(0, cy), slice(0, cx)),
            (slice(0, cy), slice(cx, w)),
            (slice(cy, h), slice(0, cx)),
            (slice(cy, h), slice(cx, w)),
        ],
        strict=True,
    ):
        hist = np.bincount(codes[rs, cs].ravel(), minlength=512)
        region += wt * _ssim_from_hist(hist[256:].astype(np.float64), hist[:256].astype(np.float64), p)
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


def _matlab_gauss(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    m = (size - 1) / 2
    y, x = np.ogrid[-m : m + 1, -m : m + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h / h.sum()


_GAUSS_7 = _matlab_gauss()


def weighted_f_measure(pmap: np.ndarray, g: np.ndarray, beta2: float = 1.0) -> float:
    """Weighted F-measure (Margolin et al.) of a prepared pair; 0 for an empty gt.

    The nearest-foreground indices (scipy's exact transform, whose tie-breaking the metric depends on) are
    needed only within 3 px of the foreground, so they are computed on the foreground's bounding box plus
    that margin; distances for the importance weights come from OpenCV's exact Euclidean transform.
    """
    if not g.any():
        return 0.0
    h, w = g.shape
    ys, xs = np.nonzero(g.any(axis=1))[0], np.nonzero(g.any(axis=0))[0]
    y0, y1 = max(0, ys[0] - 3), min(h, ys[-1] + 4)
    x0, x1 = max(0, xs[0] - 3), min(w, xs[-1] + 4)
    gc, pc = g[y0:y1, x0:x1], pmap[y0:y1, x0:x1]
    e = np.abs(pc - gc)
    idx = distance_transform_edt(~gc, return_distances=False, return_indices=True)
    et = e.copy()
    bgc = ~gc
    et[bgc] = e[idx[0][bgc], idx[1][bgc]]
    ea = cv2.filter2D(et, cv2.CV_64F, _GAUSS_7, borderType=cv2.BORDER_CONSTANT)
    min_e_ea = np.where(gc & (ea < e), ea, e)
    tpw = np.count_nonzero(g) - min_e_ea[gc].sum()
    r = 1 - min_e_ea[gc].mean()
    # background: Ew = |pred| * (2 - exp(ln(0.5) / 5 * dist)); only non-zero predictions contribute
    bg_err = ~g & (pmap > 0)
    if bg_err.any():
        dist = cv2.distanceTransform((~g).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        fpw = (pmap[bg_err] * (2 - np.exp(np.log(0.5) / 5 * dist[bg_err].astype(np.float64)))).sum()
    else:
        fpw = 0.0
    p = tpw / (tpw + fpw + EPS)
    return float((1 + beta2) * r * p / (r + beta2 * p + EPS))


class SkeletonCache:
    """LRU cache of ground-truth skeletons keyed by the mask's bytes (evaluations repeat the same masks)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._store: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def get(self, key: bytes) -> np.ndarray | None:
        if key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        return None

    def put(self, key: bytes, value: np.ndarray) -> None:
        self._store[key] = value
        if len(self._store) > self.size:
            self._store.popitem(last=False)


def _skeletonize_components(g: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``skeletonize(g)`` on the 8-connected components of ``g`` that contain a seed pixel, zero elsewhere.

    Zhang-Suen thinning looks at 3x3 neighbourhoods only, so 8-disconnected components never influence each
    other and the skeleton can be computed on the seeded components' bounding box alone.
    """
    out = np.zeros_like(g)
    if not seeds.any():
        return out
    n, labels = cv2.connectedComponents(g.astype(np.uint8), connectivity=8)
    wanted = np.zeros(n, bool)
    wanted[np.unique(labels[seeds & g])] = True
    wanted[0] = False
    sub = wanted[labels]
    ys, xs = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    out[y0:y1, x0:x1] = skeletonize(np.pad(sub[y0:y1, x0:x1], 1))[1:-1, 1:-1]
    return out


def _gt_skeleton(g: np.ndarray, fn: np.ndarray, cache: SkeletonCache | None) -> np.ndarray:
    """The gt skeleton where it can matter (components with a missed pixel); cached whole when a cache is given."""
    if cache is None:
        return _skeletonize_components(g, fn)
    key = hashlib.blake2b(np.packbits(g).tobytes() + str(g.shape).encode(), digest_size=16).digest()
    skeleton = cache.get(key)
    if skeleton is None:
        skeleton = _skeletonize_components(g, g)
        cache.put(key, skeleton)
    return skeleton


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
    contours, _ = cv2.findContours(m8, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    cond = cv2.dilate(condition.astype(np.uint8), _CROSS).ravel() > 0
    n_labels, labels = cv2.connectedComponents(m8, connectivity=8)
    lengths = np.fromiter((len(c) for c in contours), np.int64, len(contours))
    pts = np.concatenate(contours)[:, 0, :]
    flat = pts[:, 1].astype(np.int64) * mask.shape[1] + pts[:, 0]
    first = np.zeros(len(flat), bool)
    first[np.unique(flat, return_index=True)[1]] = True
    taken = cond[flat] & first
    dependent = np.zeros(n_labels, bool)
    dependent[labels.ravel()[flat[taken]]] = True
    independent = n_labels - 1 - int(dependent[1:].sum())
    if not taken.any():
        return independent
    # run boundaries: changes of `taken` and contour starts
    contour_id = np.repeat(np.arange(len(contours)), lengths)
    starts_mask = taken & np.concatenate([[True], ~taken[:-1] | (contour_id[1:] != contour_id[:-1])])
    ends_mask = taken & np.concatenate([~taken[1:] | (contour_id[1:] != contour_id[:-1]), [True]])
    run_start, run_end = np.nonzero(starts_mask)[0], np.nonzero(ends_mask)[0] + 1
    run_contour = contour_id[run_start]
    points = 0
    i, n_runs = 0, len(run_start)
    while i < n_runs:
        j = i
        while j + 1 < n_runs and run_contour[j + 1] == run_contour[i]:
            j += 1
        runs = [pts[run_start[k] : run_end[k]] for k in range(i, j + 1)]
        if len(runs) > 1:
            a, b = runs[0][0], runs[-1][-1]
            if max(abs(int(a[0]) - int(b[0])), abs(int(a[1]) - int(b[1]))) == 1:
                runs[-1] = np.concatenate([runs[-1], runs[0][::-1]])
                runs = runs[1:]
        for run in runs:
            points += (
                len(run)
                if len(run) <= 2
                else len(cv2.approxPolyDP(np.ascontiguousarray(run[:, None, :], dtype=np.int32), epsilon, False))
            )
        i = j + 1
    return points + independent


def hce(
    pred_bin: np.ndarray, g: np.ndarray, relax: int = 5, epsilon: float = 2.0, cache: SkeletonCache | None = None
) -> int:
    """Human correction efforts (Qin et al., DIS): polygon points + independent regions for FP and FN."""
    tp, fp, fn = pred_bin & g, pred_bin & ~g, ~pred_bin & g
    union = (g | pred_bin).astype(np.uint8)
    union_eroded = cv2.erode(union, _CROSS, iterations=relax) > 0
    fp_ = fp & union_eroded
    for _ in range(relax):
        fp_ = (cv2.dilate(fp_.astype(np.uint8), _CROSS) > 0) & ~g
    fp_ &= fp
    fn_ = fn & union_eroded
    for _ in range(relax):
        fn_ = (cv2.dilate(fn_.astype(np.uint8), _CROSS) > 0) & ~pred_bin
    fn_ &= fn
    fn_ |= _gt_skeleton(g, fn, cache) & ~tp
    return _correction_points(fp_, tp | fn_, epsilon) + _correction_points(fn_, ~(tp | fp_ | fn_), epsilon)


def mba(pred_raw: np.ndarray, g: np.ndarray) -> float:
    """Mean boundary accuracy (CascadePSP) as BiRefNet computes it: raw pred > 128, 5 radii; NaN without boundary."""
    h, w = g.shape
    seg = pred_raw > 128
    gt8 = g.astype(np.uint8)
    max_r = (w + h) / 300
    total = 0.0
    for i in range(5):
        r = 1 + int((max_r - 1) / 5 * i)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        band = cv2.morphologyEx(gt8, cv2.MORPH_GRADIENT, kernel) > 0
        n = np.count_nonzero(band)
        if n == 0:
            return float("nan")
        total += np.count_nonzero(seg[band] == g[band]) / n
    return total / 5


def _inner_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """``mask - erode(mask, 3x3, dilation times)`` with a zero border (boundary-iou-api's mask_to_boundary)."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)[1:-1, 1:-1]
    return mask - eroded


def boundary_iou_curve(q_norm: np.ndarray, g: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """BiRefNet's BIoU: boundary IoU over 256 thresholds of the grey boundary of the normalised prediction."""
    h, w = g.shape
    d = max(1, round(float(dilation_ratio * np.sqrt(h * h + w * w))))
    pb = _inner_boundary(q_norm, d)
    gb = _inner_boundary(g.astype(np.uint8) * 255, d) > 128
    fg = np.bincount(pb[gb], minlength=256)[::-1].cumsum()
    bg = np.bincount(pb[~gb], minlength=256)[::-1].cumsum()
    return fg / (max(np.count_nonzero(gb), 1) + bg)


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
    mba: float
    biou_curve: np.ndarray


def image_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    with_hce: bool = True,
    with_boundary: bool = True,
    skeleton_cache: SkeletonCache | None = None,
) -> ImageScores:
    """Every metric for one image from shared histograms.

    Args:
        pred: uint8 map (0..255) or float probabilities in [0, 1], H x W.
        gt: uint8 (> 128 is foreground), bool or float mask, H x W.
        with_hce / with_boundary: compute HCE / mBA and BIoU (the costlier ones).
        skeleton_cache: reuse gt skeletons across calls (HCE).
    """
    q = _quantise(pred)
    g = _binary_gt(gt)
    if q.shape != g.shape:
        raise ValueError(f"prediction {q.shape} and ground truth {g.shape} differ in shape; resize first.")
    n = g.size
    lo, hi, _, _ = cv2.minMaxLoc(q)
    p = _levels(int(lo), int(hi))
    codes = q.astype(np.intp) + (g.astype(np.intp) << 8)
    hist = np.bincount(codes.ravel(), minlength=512).astype(np.float64)
    bg, fg = hist[:256], hist[256:]
    nf = int(fg.sum())

    mae = ((bg * p).sum() + (fg * (1 - p)).sum()) / n
    sm = _s_measure(codes, fg, bg, p, g)

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

    pmap = p[q]
    wfm = weighted_f_measure(pmap, g)
    hce_value = float(hce(half[q], g, cache=skeleton_cache)) if with_hce else float("nan")
    if with_boundary:
        mba_value = mba(q, g)
        biou = boundary_iou_curve(qn[q], g)
    else:
        mba_value, biou = float("nan"), np.full(256, np.nan)
    return ImageScores(
        float(mae),
        sm,
        wfm,
        float(adp_fm),
        fm_curve,
        float(adp_em),
        em_curve,
        precision,
        recall,
        float(iou),
        float(dice),
        hce_value,
        mba_value,
        biou,
    )
