"""Per-image SOD/DIS metrics with the PySODMetrics conventions (lartpang/PySODMetrics 1.6.2, MIT).

Written from the metric definitions (Fan et al. ICCV 2017 S-measure, IJCAI 2018 E-measure; Achanta et al.
CVPR 2009 F-measure; Margolin et al. CVPR 2014 weighted F-measure). Conventions:

* gt is binarised as ``gt > 128`` (of 255); float masks as ``gt > 128/255``.
* a uint8 prediction is divided by 255 and min-max stretched per image when not constant. A float
  prediction in [0, 1] is first quantised as an 8-bit PNG would be (``floor(255 p)``, the reference saves
  ``mul(255).byte()``), so evaluating probabilities equals evaluating the saved PNGs.
* curves have 256 entries in descending threshold order (index 0: ``>= 255``, index 255: ``>= 0``).
* dataset results are means over images; max/mean F and E are taken on the image-averaged curves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import convolve, distance_transform_edt

__all__ = [
    "EPS",
    "ImageScores",
    "e_measure",
    "f_measure",
    "image_scores",
    "mae",
    "prepare",
    "s_measure",
    "weighted_f_measure",
]

EPS = np.spacing(1)
BETA2 = 0.3


def prepare(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pred float64 in [0, 1] min-max stretched, gt bool)`` from uint8/float/bool inputs."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape; resize first.")
    if pred.dtype != np.uint8:
        pred = np.floor(np.clip(pred.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    if gt.dtype == bool:
        gt_bool = gt
    elif gt.dtype == np.uint8:
        gt_bool = gt > 128
    else:
        gt_bool = gt.astype(np.float64) > 128.0 / 255.0
    p = pred / 255.0
    lo, hi = p.min(), p.max()
    if hi != lo:
        p = (p - lo) / (hi - lo)
    return p, gt_bool


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - gt)))


def _object_score(x: np.ndarray) -> float:
    mean = np.mean(x)
    std = np.std(x, ddof=1) if x.size > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    n = pred.size
    x, y = np.mean(pred), np.mean(gt)
    sx = np.sum((pred - x) ** 2) / (n - 1 + EPS)
    sy = np.sum((gt - y) ** 2) / (n - 1 + EPS)
    sxy = np.sum((pred - x) * (gt - y)) / (n - 1 + EPS)
    a = 4 * x * y * sxy
    b = (x**2 + y**2) * (sx + sy)
    if a != 0:
        return a / (b + EPS)
    return 1.0 if b == 0 else 0.0


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure (object- and region-aware) of a prepared pair."""
    y = np.mean(gt)
    if y == 0:
        return float(1 - np.mean(pred))
    if y == 1:
        return float(np.mean(pred))
    gt_f = gt.astype(np.float64)
    obj = y * _object_score(pred[gt]) + (1 - y) * _object_score(1 - pred[~gt])
    h, w = gt.shape
    cy, cx = np.argwhere(gt).mean(axis=0).round()
    cx, cy = int(cx) + 1, int(cy) + 1
    area = h * w
    weights = [cx * cy / area, cy * (w - cx) / area, (h - cy) * cx / area]
    weights.append(1 - sum(weights))
    quads = [
        (slice(0, cy), slice(0, cx)),
        (slice(0, cy), slice(cx, w)),
        (slice(cy, h), slice(0, cx)),
        (slice(cy, h), slice(cx, w)),
    ]
    region = sum(wt * _ssim(pred[q], gt_f[q]) for wt, q in zip(weights, quads))
    return float(max(0.0, alpha * obj + (1 - alpha) * region))


def _histograms(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse-cumulative counts of gt-foreground / gt-background pixels with quantised pred >= 255 - i."""
    q = (pred * 255).astype(np.uint8)
    fg = np.bincount(q[gt], minlength=256)
    bg = np.bincount(q[~gt], minlength=256)
    return np.cumsum(fg[::-1]), np.cumsum(bg[::-1])


def _adaptive_binary(pred: np.ndarray) -> np.ndarray:
    return pred >= min(2 * pred.mean(), 1)


def f_measure(
    pred: np.ndarray, gt: np.ndarray, hist: tuple | None = None
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """``(adaptive F, F curve, precision curve, recall curve)`` with beta^2 = 0.3 (curves: 256 thresholds)."""
    binary = _adaptive_binary(pred)
    inter = np.count_nonzero(binary[gt])
    if inter == 0:
        adp = 0.0
    else:
        p, r = inter / np.count_nonzero(binary), inter / np.count_nonzero(gt)
        adp = (1 + BETA2) * p * r / (BETA2 * p + r)
    tp, fp = hist if hist is not None else _histograms(pred, gt)
    ps = tp + fp
    ps[ps == 0] = 1
    precision = tp / ps
    recall = tp / max(np.count_nonzero(gt), 1)
    num = (1 + BETA2) * precision * recall
    den = np.where(num == 0, 1, BETA2 * precision + recall)
    return float(adp), num / den, precision, recall


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
    parts = [(fg_fg, 1 - mp, 1 - mg), (fg_bg, 1 - mp, -mg), (bg_fg, -mp, 1 - mg), (bg_bg, -mp, -mg)]
    total = 0
    for count, a, b in parts:
        align = 2 * a * b / (a**2 + b**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * count
    return total


def e_measure(pred: np.ndarray, gt: np.ndarray, hist: tuple | None = None) -> tuple[float, np.ndarray]:
    """``(adaptive E, 256-curve)`` enhanced-alignment measure."""
    n = gt.size
    gt_fg = int(np.count_nonzero(gt))
    binary = _adaptive_binary(pred)
    fg_fg, fg_bg = np.count_nonzero(binary & gt), np.count_nonzero(binary & ~gt)
    adp = _enhanced_sum(fg_fg, fg_bg, gt_fg, n) / (n - 1 + EPS)
    tp, fp = hist if hist is not None else _histograms(pred, gt)
    curve = _enhanced_sum(tp.astype(np.float64), fp.astype(np.float64), gt_fg, n) / (n - 1 + EPS)
    return float(adp), np.asarray(curve, dtype=np.float64)


def _matlab_gauss(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    m = (size - 1) / 2
    y, x = np.ogrid[-m : m + 1, -m : m + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h / h.sum()


_GAUSS_7 = _matlab_gauss()


def weighted_f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float = 1.0) -> float:
    """Weighted F-measure (Margolin et al.); 0 for an empty gt."""
    if not gt.any():
        return 0.0
    dst, idx = distance_transform_edt(~gt, return_indices=True)
    e = np.abs(pred - gt)
    et = e.copy()
    bg = ~gt
    et[bg] = et[idx[0][bg], idx[1][bg]]
    ea = convolve(et, weights=_GAUSS_7, mode="constant", cval=0)
    min_e_ea = np.where(gt & (ea < e), ea, e)
    b = np.where(bg, 2 - np.exp(np.log(0.5) / 5 * dst), np.ones_like(dst))
    ew = min_e_ea * b
    tpw = np.sum(gt) - np.sum(ew[gt])
    fpw = np.sum(ew[bg])
    r = 1 - np.mean(ew[gt])
    p = tpw / (tpw + fpw + EPS)
    return float((1 + beta2) * r * p / (r + beta2 * p + EPS))


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


def image_scores(pred: np.ndarray, gt: np.ndarray) -> ImageScores:
    """Every metric for one image, sharing the preparation and the threshold histograms."""
    p, g = prepare(pred, gt)
    hist = _histograms(p, g)
    adp_fm, fm_curve, precision, recall = f_measure(p, g, hist)
    adp_em, em_curve = e_measure(p, g, hist)
    return ImageScores(
        mae(p, g), s_measure(p, g), weighted_f_measure(p, g), adp_fm, fm_curve, adp_em, em_curve, precision, recall
    )
