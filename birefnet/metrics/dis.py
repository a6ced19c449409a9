"""torchmetrics wrapper for the DIS metric suite, with DDP-safe sum/count tensor states."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from birefnet.metrics.functional import image_scores

__all__ = ["DISMetrics", "to_numpy_map"]

SCALARS = ("mae", "sm", "wfm", "adp_fm", "adp_em")


def to_numpy_map(x: torch.Tensor) -> np.ndarray:
    """``(1, H, W)`` or ``(H, W)`` tensor -> 2-D numpy array (uint8 kept, bool kept, floats as float32)."""
    x = x.detach()
    if x.ndim == 3:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"expected a single map (H x W or 1 x H x W), got shape {tuple(x.shape)}")
    if x.dtype in (torch.uint8, torch.bool):
        return x.cpu().numpy()
    return x.float().cpu().numpy()


class DISMetrics(Metric):
    """Dataset-level DIS metrics: per-image scores summed in tensor states, averaged in ``compute``.

    ``update(preds, targets)`` takes batches ``(B, 1, H, W)`` / ``(B, H, W)`` or lists of maps of different
    sizes, at the original image size: predictions as probabilities in [0, 1] or uint8 maps, masks as bool,
    uint8 (> 128 is foreground) or float. ``compute()`` returns ``maxFm meanFm adpFm wFm MAE Sm meanEm maxEm
    adpEm``; max/mean F and E are taken on the image-averaged 256-threshold curves (PySODMetrics).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in SCALARS:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fm_curve", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("em_curve", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self, preds: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor | Sequence[torch.Tensor]
    ) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions but {len(targets)} targets.")
        for pred, target in zip(preds, targets, strict=True):
            s = image_scores(to_numpy_map(pred), to_numpy_map(target))
            for name in SCALARS:
                setattr(self, name, getattr(self, name) + float(getattr(s, name)))
            self.fm_curve += torch.from_numpy(s.fm_curve).to(self.fm_curve)
            self.em_curve += torch.from_numpy(s.em_curve).to(self.em_curve)
            self.count += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        fm, em = self.fm_curve / n, self.em_curve / n
        return {
            "maxFm": fm.max(),
            "meanFm": fm.mean(),
            "adpFm": self.adp_fm / n,
            "wFm": self.wfm / n,
            "MAE": self.mae / n,
            "Sm": self.sm / n,
            "meanEm": em.mean(),
            "maxEm": em.max(),
            "adpEm": self.adp_em / n,
        }

    def curves(self) -> dict[str, torch.Tensor]:
        """Image-averaged F-measure and E-measure curves (256 thresholds, descending)."""
        n = self.count.clamp(min=1)
        return {"fm": self.fm_curve / n, "em": self.em_curve / n}
