"""The one list of dataset metrics: name, per-image score, reduction over images, display format, table order.

:class:`~birefnet.metrics.DISMetrics` builds its states and ``compute()`` from it, and the tables, logs and
result files take their columns, order and number formats from it. Adding a metric is one
:func:`register_metric` call with its per-image function::

    register_metric("FGfrac", lambda q, g: float((q > 127).mean()), higher_is_better=False)

Per-image scores are either fields of :class:`~birefnet.metrics.functional.ImageScores` (computed together from
shared histograms) or the value of a registered function of the quantised prediction ``q`` (uint8, 0..255) and the
binary ground truth ``g`` (bool), both ``H x W``. Metrics marked ``alpha`` (the matting errors) get the prediction
and the soft ground truth as alpha values in [0, 1] instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from birefnet.metrics import matting

__all__ = ["METRICS", "REDUCTIONS", "MetricSpec", "format_value", "ordered", "register_metric", "unregister_metric"]

#: How per-image scores become the dataset value: ``mean`` over images; ``curve_max`` / ``curve_mean``, the max /
#: mean of the image-averaged 256-threshold curve (PySODMetrics); ``mean_defined``, the mean over the images
#: where the score is defined (not NaN), as mBA.
REDUCTIONS = ("mean", "curve_max", "curve_mean", "mean_defined")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One dataset metric.

    Attributes:
        name: as logged (``val/<set>/<name>``) and shown in tables.
        score: the per-image score it reduces (an ``ImageScores`` field, or the name of ``function``'s score).
        reduction: one of :data:`REDUCTIONS`.
        fmt: format spec of the value in tables (``".3f"``; HCE ``".0f"``).
        higher_is_better: for the reader of a table and for checkpoint selection.
        group: ``""`` always computed; ``"hce"`` / ``"boundary"`` / ``"matting"`` only when :class:`DISMetrics` is
            asked to.
        function: ``(q, g) -> float`` (or a 256-curve for the curve reductions) when the score is not an
            ``ImageScores`` field.
        alpha: ``function`` takes ``(prediction, ground truth)`` as float alpha in [0, 1] (the ground truth not
            binarised), as matting errors are defined.
    """

    name: str
    score: str
    reduction: str = "mean"
    fmt: str = ".3f"
    higher_is_better: bool = True
    group: str = ""
    function: Callable[[np.ndarray, np.ndarray], float | np.ndarray] | None = None
    alpha: bool = False

    @property
    def is_curve(self) -> bool:
        return self.reduction.startswith("curve_")


#: Every metric, in the column order of the reference's DIS5K tables (``eval_existingOnes.py``), then the rest.
METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("maxFm", "fm_curve", "curve_max"),
        MetricSpec("wFm", "wfm"),
        MetricSpec("MAE", "mae", higher_is_better=False),
        MetricSpec("Sm", "sm"),
        MetricSpec("meanEm", "em_curve", "curve_mean"),
        MetricSpec("HCE", "hce", fmt=".0f", higher_is_better=False, group="hce"),
        MetricSpec("maxEm", "em_curve", "curve_max"),
        MetricSpec("meanFm", "fm_curve", "curve_mean"),
        MetricSpec("adpEm", "adp_em"),
        MetricSpec("adpFm", "adp_fm"),
        MetricSpec("mBA", "mba", "mean_defined", group="boundary"),
        MetricSpec("maxBIoU", "biou_curve", "curve_max", group="boundary"),
        MetricSpec("meanBIoU", "biou_curve", "curve_mean", group="boundary"),
        MetricSpec("IoU", "iou"),
        MetricSpec("Dice", "dice"),
        MetricSpec("MSE", "mse", higher_is_better=False),
        *(
            MetricSpec(
                name, f"matting:{name}", fmt=".2f", higher_is_better=False, group="matting", function=f, alpha=True
            )
            for name, f in (
                ("SAD", matting.sad),
                ("Grad", matting.gradient_error),
                ("Conn", matting.connectivity_error),
            )
        ),
    )
}


def register_metric(
    name: str,
    function: Callable[[np.ndarray, np.ndarray], float | np.ndarray],
    reduction: str = "mean",
    fmt: str = ".3f",
    higher_is_better: bool = True,
) -> MetricSpec:
    """Add a metric computed by ``function(q, g)`` per image; metric objects created afterwards include it."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}.")
    if name in METRICS:
        raise ValueError(f"a metric named {name!r} exists already.")
    spec = MetricSpec(name, f"extra:{name}", reduction, fmt, higher_is_better, function=function)
    METRICS[name] = spec
    return spec


def unregister_metric(name: str) -> None:
    """Remove a metric added with :func:`register_metric`."""
    if METRICS.get(name) is None or METRICS[name].function is None:
        raise ValueError(f"{name!r} is not a registered extra metric.")
    del METRICS[name]


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in table order: registry order first, unknown names after, alphabetically."""
    order = {n: i for i, n in enumerate(METRICS)}
    return sorted(set(names), key=lambda n: (order.get(n, len(order)), n))


def format_value(name: str, value: float) -> str:
    """A value as the tables show it (the metric's ``fmt``; ``.3f`` for names not in the registry)."""
    spec = METRICS.get(name)
    return format(value, spec.fmt if spec else ".3f")
