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

    def __init__(self, keep_per_image: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        #: keep (name, MAE, Sm) per image on this process for worst-case listings (not synchronised)
        self.keep_per_image = keep_per_image
        self.per_image: list[tuple[str, float, float]] = []
        for name in SCALARS:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fm_curve", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("em_curve", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("precision", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("recall", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        preds: torch.Tensor | Sequence[torch.Tensor],
        targets: torch.Tensor | Sequence[torch.Tensor],
        names: Sequence[str] | None = None,
    ) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions but {len(targets)} targets.")
        for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            s = image_scores(to_numpy_map(pred), to_numpy_map(target))
            if self.keep_per_image:
                self.per_image.append((names[i] if names else str(len(self.per_image)), s.mae, s.sm))
            for name in SCALARS:
                setattr(self, name, getattr(self, name) + float(getattr(s, name)))
            self.fm_curve += torch.from_numpy(s.fm_curve).to(self.fm_curve)
            self.em_curve += torch.from_numpy(s.em_curve).to(self.em_curve)
            self.precision += torch.from_numpy(s.precision).to(self.precision)
            self.recall += torch.from_numpy(s.recall).to(self.recall)
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
        """Image-averaged F, E, precision and recall curves (256 thresholds, descending)."""
        n = self.count.clamp(min=1)
        return {
            "fm": self.fm_curve / n,
            "em": self.em_curve / n,
            "precision": self.precision / n,
            "recall": self.recall / n,
        }

    def worst(self, k: int = 10) -> list[dict]:
        """The ``k`` images with the highest MAE seen by this process (needs ``keep_per_image=True``)."""
        rows = sorted(self.per_image, key=lambda r: -r[1])[:k]
        return [{"name": n, "MAE": m, "Sm": s} for n, m, s in rows]

    def reset(self) -> None:
        super().reset()
        self.per_image = []
