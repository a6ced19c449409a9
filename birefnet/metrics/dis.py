"""torchmetrics wrapper for the DIS metric suite, with DDP-safe sum/count tensor states built from the registry."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from birefnet.metrics.functional import HCE_CONVENTIONS, ImageScores, binary_gt, image_scores, quantise, soft_alpha
from birefnet.metrics.registry import METRICS, MetricSpec

__all__ = ["DISMetrics", "score_image", "to_numpy_map"]

#: Per-image curves kept for the plots besides the metrics' own states.
PLOT_CURVES = ("fm_curve", "em_curve", "precision", "recall")


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


def _enabled(with_hce: bool, with_boundary: bool, with_matting: bool = False) -> list[MetricSpec]:
    wanted = {"hce": with_hce, "boundary": with_boundary, "matting": with_matting}
    return [m for m in METRICS.values() if m.group == "" or wanted.get(m.group, False)]


def score_image(
    pred: np.ndarray,
    gt: np.ndarray,
    with_hce: bool = True,
    with_boundary: bool = True,
    hce_convention: str = "pysodmetrics",
    with_matting: bool = False,
) -> tuple[ImageScores, dict[str, float | np.ndarray]]:
    """One image's :class:`ImageScores` and the scores of the metrics computed by functions (``{score: value}``).

    Functions of alpha (the matting errors) see the quantised prediction / 255 and the soft ground truth."""
    q, g = quantise(pred), binary_gt(gt)
    extras: dict[str, float | np.ndarray] = {}
    alphas = None
    for m in _enabled(with_hce, with_boundary, with_matting):
        if m.function is None:
            continue
        if m.alpha:
            alphas = alphas or (q / 255.0, soft_alpha(gt))
            extras[m.score] = m.function(*alphas)
        else:
            extras[m.score] = m.function(q, g)
    return image_scores(q, g, with_hce, with_boundary, hce_convention), extras


def _state(score: str) -> str:
    return score.replace(":", "_")


class DISMetrics(Metric):
    """Dataset-level DIS metrics: per-image scores summed in tensor states, reduced in ``compute``.

    The metrics, their per-image scores and reductions come from :data:`birefnet.metrics.registry.METRICS`.
    ``update(preds, targets)`` takes batches ``(B, 1, H, W)`` / ``(B, H, W)`` or lists of maps of different
    sizes, at the original image size: predictions as probabilities in [0, 1] or uint8 maps, masks as bool,
    uint8 (> 128 is foreground) or float. ``compute()`` returns the built-in ``maxFm wFm MAE Sm meanEm HCE maxEm
    meanFm adpEm adpFm mBA maxBIoU meanBIoU IoU Dice MSE``, with ``with_matting`` the matting errors ``SAD Grad
    Conn`` on the soft ground truth (:mod:`birefnet.metrics.matting`), and every registered one; max/mean F, E and
    BIoU are taken on the image-averaged 256-threshold curves (PySODMetrics). "maxFm" is the maximum of the mean F curve
    (PySODMetrics, the DIS and BiRefNet papers); the other convention in the literature, the mean of per-image
    maxima, is :meth:`mean_of_max_fm`. HCE binarises as ``hce_convention`` says: PySODMetrics' normalised
    prediction > 0.5 (default) or the reference's raw prediction > 128. MSE is the reference's (normalised
    prediction against the binary mask). mBA and BIoU follow BiRefNet's evaluation (mBA skips images whose
    mask has no boundary instead of returning NaN).
    ``curves()`` and ``worst()`` cover every process's images under DDP, as ``compute()`` does.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(
        self,
        keep_per_image: bool = False,
        with_hce: bool = True,
        with_boundary: bool = True,
        hce_convention: str = "pysodmetrics",
        with_matting: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if hce_convention not in HCE_CONVENTIONS:
            raise ValueError(f"hce_convention must be one of {HCE_CONVENTIONS}, not {hce_convention!r}.")
        self.with_hce, self.with_boundary, self.hce_convention = with_hce, with_boundary, hce_convention
        self.with_matting = with_matting
        self.specs = _enabled(with_hce, with_boundary, with_matting)
        #: keep (name, MAE, Sm) per image for worst-case listings (gathered from every process by :meth:`worst`)
        self.keep_per_image = keep_per_image
        self.per_image: list[tuple[str, float, float]] = []
        self._scores: dict[str, MetricSpec] = {}
        for spec in self.specs:
            self._scores.setdefault(spec.score, spec)
        curves = set(PLOT_CURVES) | {s for s, spec in self._scores.items() if spec.is_curve}
        for score in [*self._scores, *PLOT_CURVES]:
            if hasattr(self, _state(score)):
                continue
            shape = (256,) if score in curves else ()
            self.add_state(_state(score), default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
            if score in self._scores and self._scores[score].reduction == "mean_defined":
                # undefined (NaN) for some images, e.g. mBA for a mask without boundary: those are not counted
                self.add_state(f"{_state(score)}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
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
            scores, extras = score_image(
                to_numpy_map(pred),
                to_numpy_map(target),
                self.with_hce,
                self.with_boundary,
                self.hce_convention,
                with_matting=self.with_matting,
            )
            self._accumulate(scores, extras, names[i] if names else None)

    def add_scores(self, s: ImageScores, name: str | None = None, extras: dict | None = None) -> None:
        """Accumulate one image's scores (computed elsewhere with :func:`score_image`, e.g. in a worker process).

        Counts as an update for torchmetrics: a cached ``compute()`` result is dropped.
        """
        self._update_count += 1
        self._computed = None
        self._accumulate(s, extras or {}, name)

    def _accumulate(self, s: ImageScores, extras: dict, name: str | None) -> None:
        if self.keep_per_image:
            self.per_image.append((name or str(len(self.per_image)), s.mae, s.sm))
        for score in dict.fromkeys([*self._scores, *PLOT_CURVES]):
            spec = self._scores.get(score)
            value = extras[score] if spec is not None and spec.function is not None else getattr(s, score)
            state = getattr(self, _state(score))
            if spec is not None and spec.reduction == "mean_defined":
                if value == value:  # not NaN
                    state += float(value)
                    getattr(self, f"{_state(score)}_count").add_(1)
            elif state.ndim:
                state += torch.as_tensor(np.asarray(value), dtype=state.dtype)
            else:
                state += float(value)
        self.max_fm_sum += float(s.fm_curve.max())
        self.count += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        out = {}
        for spec in self.specs:
            state = getattr(self, _state(spec.score))
            if spec.reduction == "mean":
                out[spec.name] = state / n
            elif spec.reduction == "curve_max":
                out[spec.name] = (state / n).max()
            elif spec.reduction == "curve_mean":
                out[spec.name] = (state / n).mean()
            else:  # mean_defined
                out[spec.name] = state / getattr(self, f"{_state(spec.score)}_count").clamp(min=1)
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
