"""torchmetrics wrapper for the DIS metric suite, with DDP-safe sum/count tensor states."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from birefnet.metrics.functional import ImageScores, image_scores

__all__ = ["DISMetrics", "to_numpy_map"]

SCALARS = ("mae", "sm", "wfm", "adp_fm", "adp_em", "iou", "dice", "hce")


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
    adpEm HCE mBA maxBIoU meanBIoU IoU Dice``; max/mean F, E and BIoU are taken on the image-averaged
    256-threshold curves (PySODMetrics). "maxFm" is the maximum of the mean F curve (PySODMetrics, the DIS and
    BiRefNet papers); the other convention in the literature, the mean of per-image maxima, is
    :meth:`mean_of_max_fm`. HCE uses PySODMetrics' binarisation (normalised prediction > 0.5); mBA and
    BIoU follow BiRefNet's evaluation (mBA skips images whose mask has no boundary instead of returning NaN).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(
        self, keep_per_image: bool = False, with_hce: bool = True, with_boundary: bool = True, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.with_hce, self.with_boundary = with_hce, with_boundary
        #: keep (name, MAE, Sm) per image for worst-case listings (gathered from every process by :meth:`worst`)
        self.keep_per_image = keep_per_image
        self.per_image: list[tuple[str, float, float]] = []
        for name in SCALARS:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fm_curve", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("em_curve", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("precision", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("recall", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("biou_curve", default=torch.zeros(256, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("mba", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # mBA is undefined (NaN in the reference) for masks without boundary: those images are not counted
        self.add_state("mba_count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("max_fm_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
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
            scores = image_scores(to_numpy_map(pred), to_numpy_map(target), self.with_hce, self.with_boundary)
            self._accumulate(scores, names[i] if names else None)

    def add_scores(self, s: ImageScores, name: str | None = None) -> None:
        """Accumulate one image's scores (computed elsewhere, e.g. in a worker process).

        Counts as an update for torchmetrics: a cached ``compute()`` result is dropped.
        """
        self._update_count += 1
        self._computed = None
        self._accumulate(s, name)

    def _accumulate(self, s: ImageScores, name: str | None) -> None:
        if self.keep_per_image:
            self.per_image.append((name or str(len(self.per_image)), s.mae, s.sm))
        for key in SCALARS:
            setattr(self, key, getattr(self, key) + float(getattr(s, key)))
        for key in ("fm_curve", "em_curve", "precision", "recall"):
            state = getattr(self, key)
            state += torch.from_numpy(getattr(s, key)).to(state)
        if self.with_boundary:
            self.biou_curve += torch.from_numpy(s.biou_curve).to(self.biou_curve)
            if s.mba == s.mba:  # not NaN
                self.mba += s.mba
                self.mba_count += 1
        self.max_fm_sum += float(s.fm_curve.max())
        self.count += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        fm, em = self.fm_curve / n, self.em_curve / n
        out = {
            "maxFm": fm.max(),
            "meanFm": fm.mean(),
            "adpFm": self.adp_fm / n,
            "wFm": self.wfm / n,
            "MAE": self.mae / n,
            "Sm": self.sm / n,
            "meanEm": em.mean(),
            "maxEm": em.max(),
            "adpEm": self.adp_em / n,
            "IoU": self.iou / n,
            "Dice": self.dice / n,
        }
        if self.with_hce:
            out["HCE"] = self.hce / n
        if self.with_boundary:
            biou = self.biou_curve / n
            out.update(mBA=self.mba / self.mba_count.clamp(min=1), maxBIoU=biou.max(), meanBIoU=biou.mean())
        return out

    def curves(self) -> dict[str, torch.Tensor]:
        """Image-averaged F, E, precision and recall curves (256 thresholds, descending), over every process's
        images: the states are synchronised for the computation (a collective call under DDP, like ``compute``)."""
        with self.sync_context():
            n = self.count.clamp(min=1)
            return {
                "fm": self.fm_curve / n,
                "em": self.em_curve / n,
                "precision": self.precision / n,
                "recall": self.recall / n,
            }

    def mean_of_max_fm(self) -> torch.Tensor:
        """The other max-F convention: the mean over images of each image's best F (never below ``maxFm``)."""
        return self.max_fm_sum / self.count.clamp(min=1)

    def worst(self, k: int = 10) -> list[dict]:
        """The ``k`` images with the highest MAE over every process's images (needs ``keep_per_image=True``; a
        collective call under DDP, like ``compute``)."""
        rows = list(self.per_image)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        rows = sorted(rows, key=lambda r: (-r[1], r[0]))[:k]
        return [{"name": n, "MAE": m, "Sm": s} for n, m, s in rows]

    def reset(self) -> None:
        super().reset()
        self.per_image = []
