"""Losses for dichotomous segmentation. Every loss takes logits and computes in fp32 (autocast-safe).

The reference (ZhengPeng7/BiRefNet @ 25cb930, ``loss.py``) applies a sigmoid and then ``nn.BCELoss``, which
fails under autocast; here the BCE is taken on logits, which is the same value without that failure.
:class:`PixelLoss` with ``iou_reduction="sum"`` (the default) reproduces the reference ``PixLoss`` exactly,
including its IoU summed (not averaged) over the batch; ``iou_reduction="mean"`` makes the IoU weight
independent of the batch size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from birefnet.models.blocks import autocast_off, resize
from birefnet.models.outputs import SegmentationOutput

__all__ = [
    "LOSS_PRESETS",
    "DISLoss",
    "MultiBCELoss",
    "PixelLoss",
    "SegmentationLoss",
    "bce_loss",
    "contour_loss",
    "gradient_loss",
    "iou_loss",
    "mae_loss",
    "mse_loss",
    "patch_iou_loss",
    "reg_loss",
    "ssim_loss",
    "structure_loss",
]

#: Reference loss weights per task (``lambdas_pix_last``; configs read them with ``${loss_preset:<task>}``).
LOSS_PRESETS: dict[str, dict[str, float]] = {
    "DIS5K": {"bce": 30, "iou": 0.5, "ssim": 10},
    "COD": {"bce": 30, "iou": 0.5, "ssim": 10},
    "HRSOD": {"bce": 30, "iou": 0.5, "ssim": 10},
    "General": {"bce": 30, "iou": 0.5, "ssim": 10, "mae": 100},
    "General-2K": {"bce": 30, "iou": 0.5, "ssim": 10, "mae": 100},
    "Matting": {"bce": 30, "ssim": 10, "mae": 100},
}


def _fp32(fn: Callable) -> Callable:
    """Run a criterion in fp32 with autocast off, whatever the caller's precision."""

    @functools.wraps(fn)
    def wrapper(logits: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with autocast_off(logits.device):
            return fn(logits.float(), target.float(), *args, **kwargs)

    return wrapper


@_fp32
def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy on logits (soft targets allowed)."""
    return F.binary_cross_entropy_with_logits(logits, target)


@_fp32
def iou_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Per-sample soft IoU loss ``1 - sum(pg) / (sum(p) + sum(g) - sum(pg))``, summed (reference) or averaged."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    union = p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) - inter
    per_sample = 1.0 - inter / union
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


@_fp32
def patch_iou_loss(logits: torch.Tensor, target: torch.Tensor, patch: int = 64) -> torch.Tensor:
    """IoU loss over non-overlapping ``patch x patch`` windows, averaged over windows and samples.

    The reference's version had wrong loop bounds (windows never covered the map); this one tiles the map,
    with a partial last row/column, and skips windows where prediction and target are both empty.
    """
    p = torch.sigmoid(logits)
    inter = F.avg_pool2d(p * target, patch, ceil_mode=True) * patch * patch
    union = F.avg_pool2d(p + target, patch, ceil_mode=True) * patch * patch - inter
    valid = union > 1e-6
    return (1.0 - inter[valid] / union[valid]).mean() if valid.any() else logits.sum() * 0.0


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] @ g[None, :])[None, None]


@_fp32
def ssim_loss(logits: torch.Tensor, target: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """``1 - (1 + SSIM) / 2`` with an 11x11 Gaussian (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2, zero padding."""
    p = torch.sigmoid(logits)
    c = p.shape[1]
    win = _gaussian_window(window_size, 1.5, p.device).expand(c, 1, window_size, window_size)
    pad = window_size // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, win, padding=pad, groups=c)

    mu1, mu2 = blur(p), blur(target)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = blur(p * p) - mu1_sq, blur(target * target) - mu2_sq, blur(p * target) - mu12
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return 1.0 - (1.0 + ssim.mean()) / 2.0


@_fp32
def mae_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(logits) - target).abs().mean()


@_fp32
def mse_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((torch.sigmoid(logits) - target) ** 2).mean()


@_fp32
def reg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binarisation regulariser ``mean(1 - (p^2 + (p - 1)^2))``: 0 for a binary map, 0.5 at p = 0.5."""
    p = torch.sigmoid(logits)
    return (1.0 - (p**2 + (p - 1.0) ** 2)).mean()


@_fp32
def structure_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """F3Net/MVANet structure loss: boundary-weighted BCE + weighted IoU, on logits (the reference fed it
    probabilities)."""
    weight = 1.0 + 5.0 * (F.avg_pool2d(target, 31, stride=1, padding=15) - target).abs()
    wbce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    wbce = (weight * wbce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    p = torch.sigmoid(logits)
    inter = (p * target * weight).sum(dim=(2, 3))
    union = ((p + target) * weight).sum(dim=(2, 3))
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return (wbce + wiou).mean()


@_fp32
def contour_loss(logits: torch.Tensor, target: torch.Tensor, length_weight: float = 10.0) -> torch.Tensor:
    """Chan-Vese style active-contour loss: ``length_weight * curve length + region fit``."""
    p = torch.sigmoid(logits)
    dr = (p[:, :, 1:, :] - p[:, :, :-1, :])[:, :, 1:, :-2] ** 2
    dc = (p[:, :, :, 1:] - p[:, :, :, :-1])[:, :, :-2, 1:] ** 2
    length = torch.sqrt((dr + dc).abs() + 1e-8).mean()
    region = (p * (target - 1.0) ** 2).mean() + ((1.0 - p) * target**2).mean()
    return length_weight * length + region


CRITERIA = {
    "bce": bce_loss,
    "iou": iou_loss,
    "iou_patch": patch_iou_loss,
    "ssim": ssim_loss,
    "mae": mae_loss,
    "mse": mse_loss,
    "reg": reg_loss,
    "cnt": contour_loss,
    "structure": structure_loss,
}


class PixelLoss(nn.Module):
    """Weighted sum of pixel criteria over every prediction, each upsampled to the target size first.

    Args:
        weights: criterion name -> weight (names: bce, iou, iou_patch, ssim, mae, mse, reg, cnt, structure);
            zero weights are skipped. Reference DIS5K: ``{"bce": 30, "iou": 0.5, "ssim": 10}``.
        iou_reduction: ``"sum"`` over the batch (reference) or ``"mean"``.

    ``forward(preds, target)`` returns ``(total, parts)``: total = sum over preds and criteria of weighted values;
    ``parts[name]`` = that criterion's weighted value averaged over the preds (what the reference logs).
    """

    def __init__(self, weights: Mapping[str, float] = LOSS_PRESETS["DIS5K"], iou_reduction: str = "sum") -> None:
        super().__init__()
        unknown = {k for k, v in weights.items() if v} - set(CRITERIA)  # zero weights (e.g. 'triplet') are ignored
        if unknown:
            raise ValueError(f"Unknown loss terms {sorted(unknown)}; choose from {sorted(CRITERIA)}.")
        if iou_reduction not in ("sum", "mean"):
            raise ValueError(f"iou_reduction must be 'sum' (reference) or 'mean', not {iou_reduction!r}.")
        self.weights = {k: float(v) for k, v in weights.items() if v}
        self.iou_reduction = iou_reduction

    def forward(
        self, preds: Sequence[torch.Tensor], target: torch.Tensor, weights: Mapping[str, float] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weights = self.weights if weights is None else {k: float(v) for k, v in weights.items() if v}
        target = target.float().clamp(0, 1)
        parts = {name: target.new_zeros(()) for name in weights}
        for logits in preds:
            logits = resize(logits.float(), target.shape[2:])
            for name, w in weights.items():
                if name == "iou":
                    value = iou_loss(logits, target, self.iou_reduction)
                else:
                    value = CRITERIA[name](logits, target)
                parts[name] = parts[name] + w * value
        total = sum(parts.values(), target.new_zeros(()))
        return total, {k: v / len(preds) for k, v in parts.items()}


def gradient_loss(preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Outward-reference loss: sum over stages of BCE(up(pred), sigmoid(target)); targets keep their gradient."""
    total = None
    for pred, target in zip(preds, targets, strict=True):
        value = F.binary_cross_entropy_with_logits(
            resize(pred.float(), target.shape[2:]), torch.sigmoid(target.float())
        )
        total = value if total is None else total + value
    return total


class SegmentationLoss(nn.Module):
    """The protocol the LightningModule and the fine-tune schedule use.

    ``forward(output, target, class_labels=None)`` returns ``(total, {name: part})`` for a
    :class:`SegmentationOutput` and a ``(B, 1, H, W)`` target in [0, 1]. ``base_weights`` are the configured
    weights of the terms a schedule may change, ``weights`` the ones in use, and ``set_weights`` replaces them
    (``None``: back to the base).
    """

    def __init__(self) -> None:
        super().__init__()
        self._weights: dict[str, float] | None = None

    @property
    def base_weights(self) -> dict[str, float]:
        return {}

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights) if self._weights is not None else self.base_weights

    def set_weights(self, weights: Mapping[str, float] | None) -> None:
        self._weights = None if weights is None else {k: float(v) for k, v in weights.items()}


class DISLoss(SegmentationLoss):
    """Full BiRefNet training loss: pixel loss over side + final maps, gradient loss, classification loss.

    Args:
        weights: pixel-loss weights (see :class:`PixelLoss`).
        gradient_weight: weight of the outward-reference loss (reference 1.0).
        class_weight: weight of the auxiliary classification cross-entropy (reference 5.0).
        iou_reduction: see :class:`PixelLoss`.
    """

    def __init__(
        self,
        weights: Mapping[str, float] = LOSS_PRESETS["DIS5K"],
        gradient_weight: float = 1.0,
        class_weight: float = 5.0,
        iou_reduction: str = "sum",
    ) -> None:
        super().__init__()
        self.pixel = PixelLoss(weights, iou_reduction)
        self.gradient_weight, self.class_weight = gradient_weight, class_weight

    @property
    def base_weights(self) -> dict[str, float]:
        return dict(self.pixel.weights)

    def forward(self, output: SegmentationOutput, target: torch.Tensor, class_labels: torch.Tensor | None = None):
        """Returns the total loss and its named parts (``pix/<term>``, ``gdt``, ``cls``) for logging."""
        total, parts = self.pixel(output.all_logits, target, self.weights)
        parts = {f"pix/{k}": v for k, v in parts.items()}
        if output.gradient_preds and self.gradient_weight:
            g = self.gradient_weight * gradient_loss(output.gradient_preds, output.gradient_targets)
            total, parts["gdt"] = total + g, g
        if output.class_logits is not None and class_labels is not None and self.class_weight:
            c = self.class_weight * F.cross_entropy(output.class_logits.float(), class_labels)
            total, parts["cls"] = total + c, c
        return total, parts


class MultiBCELoss(SegmentationLoss):
    """U2-Net / IS-Net loss: sum of mean BCEs over the final and every side map (all at input size).

    With ``gt_encoder`` (IS-Net's intermediate supervision, a pre-trained
    :class:`~birefnet.models.ISNetGTEncoder` or any module whose output has ``features``), ``feature_weight``
    times the sum of MSEs between the encoder's features of the mask and the network's decoder features
    (``output.features``) is added. The encoder is frozen here: no gradients, BatchNorm statistics fixed. The
    config builds it from its checkpoint (``configs/model/isnet_fs.yaml``).
    """

    def __init__(self, feature_weight: float = 1.0, gt_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.feature_weight = feature_weight
        self.gt_encoder = gt_encoder.eval().requires_grad_(False) if gt_encoder is not None else None

    @property
    def base_weights(self) -> dict[str, float]:
        return {"bce": 1.0}

    def train(self, mode: bool = True) -> MultiBCELoss:
        super().train(mode)
        if self.gt_encoder is not None:
            self.gt_encoder.eval()  # frozen: BatchNorm statistics must not move
        return self

    def forward(self, output: SegmentationOutput, target: torch.Tensor, class_labels: torch.Tensor | None = None):
        target = target.float().clamp(0, 1)
        maps = output.all_logits
        terms = [bce_loss(resize(m.float(), target.shape[2:]), target) for m in maps]
        total = sum(terms[1:], terms[0])
        parts = {"bce_final": terms[-1], "bce_sides": total - terms[-1]}
        if self.gt_encoder is not None and self.feature_weight and output.features:
            with torch.no_grad():
                reference = self.gt_encoder(target).features
            feat = sum(F.mse_loss(f.float(), r.float()) for f, r in zip(output.features, reference, strict=True))
            total = total + self.feature_weight * feat
            parts["feature_mse"] = feat
        return total, parts
