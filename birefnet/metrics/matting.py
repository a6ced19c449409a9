"""Alpha-matting errors on soft ground truth: SAD, gradient and connectivity errors.

The definitions are those of the alpha-matting benchmark (Rhemann et al., "A Perceptually Motivated Online
Benchmark for Image Matting", CVPR 2009), as the portrait and animal matting benchmarks (P3M-500-NP, AM-2k)
report them: over the whole image (no trimap), with the prediction ``a`` and the ground truth ``b`` as alpha
values in [0, 1], each error divided by 1000.

- **SAD**, the sum of absolute differences: ``sum |a - b| / 1000``.
- **Grad**, the gradient error: ``sum (|grad a| - |grad b|)^2 / 1000``. The gradients are first-order
  Gaussian-derivative filters with sigma 1.4: the kernel is ``g(u) * g'(v)`` (``g`` the normal density, ``g'``
  its derivative, ``u`` across and ``v`` along the derivative's direction) on a square of half-size
  ``ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma 0.01)))`` (= 4 for sigma 1.4), scaled to unit L2 norm, applied as a
  convolution with replicated borders; ``|grad|`` is the magnitude of the x and y responses.
- **Conn**, the connectivity error: for thresholds ``t_i = i / 10`` (``i = 1..10``), ``omega_i`` is the largest
  4-connected component of ``(a >= t_i) & (b >= t_i)``. A pixel's level ``l`` is ``t_{i-1}`` for the first ``i``
  at which it is outside ``omega_i`` (1 if it never is). With ``d = alpha - l``, ``phi = 1 - d * [d >= 0.15]``
  for each map, and Conn is ``sum |phi_a - phi_b| / 1000``.

The reference's matting evaluation also reports MSE; that one is in the main suite (``MSE``).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

__all__ = ["connectivity_error", "gaussian_gradient_kernels", "gradient_error", "sad"]

#: The benchmark divides SAD, Grad and Conn by this, so that they read as small numbers.
SCALE = 1000.0


def sad(pred: np.ndarray, alpha: np.ndarray) -> float:
    """Sum of absolute differences / 1000 (``pred`` and ``alpha`` in [0, 1], ``H x W``)."""
    return float(np.abs(pred.astype(np.float64) - alpha.astype(np.float64)).sum() / SCALE)


@functools.lru_cache(maxsize=4)
def gaussian_gradient_kernels(sigma: float = 1.4, epsilon: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's x- and y-derivative-of-Gaussian kernels (unit L2 norm; ``ky`` is ``kx`` transposed)."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon)))
    u = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dgauss = -u * gauss / sigma**2
    kx = np.outer(gauss, dgauss)  # rows: smoothing; columns: derivative along x
    kx /= math.sqrt((kx**2).sum())
    return kx, np.ascontiguousarray(kx.T)


def _gradient_magnitude(x: np.ndarray, sigma: float) -> np.ndarray:
    kx, ky = gaussian_gradient_kernels(sigma)
    # cv2.filter2D correlates; a convolution is the correlation with the kernel flipped in both axes
    gx = cv2.filter2D(x, cv2.CV_64F, kx[::-1, ::-1].copy(), borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(x, cv2.CV_64F, ky[::-1, ::-1].copy(), borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx**2 + gy**2)


def gradient_error(pred: np.ndarray, alpha: np.ndarray, sigma: float = 1.4) -> float:
    """Gradient error / 1000: squared differences of the Gaussian-gradient magnitudes, summed."""
    a = _gradient_magnitude(pred.astype(np.float64), sigma)
    b = _gradient_magnitude(alpha.astype(np.float64), sigma)
    return float(((a - b) ** 2).sum() / SCALE)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def connectivity_error(pred: np.ndarray, alpha: np.ndarray, steps: int = 10) -> float:
    """Connectivity error / 1000 at thresholds ``1/steps, 2/steps, ..., 1`` (the benchmark: 10 steps)."""
    a, b = pred.astype(np.float64), alpha.astype(np.float64)
    level = np.full(a.shape, -1.0)
    for i in range(1, steps + 1):
        t = i / steps
        omega = _largest_component((a >= t) & (b >= t))
        level[(level == -1) & ~omega] = (i - 1) / steps
    level[level == -1] = 1.0
    da, db = a - level, b - level
    phi_a = 1 - da * (da >= 0.15)
    phi_b = 1 - db * (db >= 0.15)
    return float(np.abs(phi_a - phi_b).sum() / SCALE)
