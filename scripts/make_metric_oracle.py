"""Record PySODMetrics 1.6.2 values on real ECSSD masks, for tests/test_metrics.py.

pysodmetrics pins an older numpy, so it is not a project dependency. Run this once in a separate
environment (``python -m venv /tmp/sod && /tmp/sod/bin/pip install pysodmetrics==1.6.2``):

    /tmp/sod/bin/python scripts/make_metric_oracle.py ../shared/data/ECSSD-TE tests/data/metric_oracle.json

Predictions are synthesised from each mask (blur + shift + structured error, uint8) by ``synth_prediction``
and written next to the JSON as PNGs, so the test reads exactly the maps the oracle saw. Eight more
("speckled") add salt-and-pepper noise, whose isolated pixels HCE counts one by one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np


def synth_prediction(gt: np.ndarray, seed: int) -> np.ndarray:
    """A realistic soft prediction for a uint8 mask: blurred, shifted, with blobs of error and noise."""
    rng = np.random.default_rng(seed)
    h, w = gt.shape
    p = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), sigmaX=1.0 + 4.0 * rng.random())
    shift = np.float32([[1, 0, rng.integers(-4, 5)], [0, 1, rng.integers(-4, 5)]])
    p = cv2.warpAffine(p, shift, (w, h), borderMode=cv2.BORDER_REFLECT)
    field = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigmaX=12.0)
    p = p + 900.0 * field
    return np.clip(p, 0, 255).astype(np.uint8)


def speckle(pred: np.ndarray, seed: int, fraction: float = 0.03) -> np.ndarray:
    """Salt-and-pepper noise on a prediction: isolated wrong pixels, the case HCE counts one by one."""
    rng = np.random.default_rng(1000 + seed)
    out = pred.copy()
    hit = rng.random(pred.shape) < fraction
    out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255)
    return out


def _last_values(metrics: dict) -> dict:
    """The per-image values of the image each metric saw last."""
    return {
        "mae": float(metrics["mae"].maes[-1]),
        "sm": float(metrics["sm"].sms[-1]),
        "wfm": float(metrics["wfm"].weighted_fms[-1]),
        "adp_fm": float(metrics["fm"].adaptive_fms[-1]),
        "fm_curve": [float(v) for v in metrics["fm"].changeable_fms[-1]],
        "adp_em": float(metrics["em"].adaptive_ems[-1]),
        "em_curve": [float(v) for v in metrics["em"].changeable_ems[-1]],
        "hce": int(metrics["hce"].hces[-1]),
    }


def main(root: str, out: str, count: int = 16) -> None:
    import py_sod_metrics as M

    gts = sorted((Path(root) / "gt").glob("*.png"))[:count]
    (Path(out).parent / "metric_preds").mkdir(parents=True, exist_ok=True)
    metrics = dict(
        mae=M.MAE(),
        sm=M.Smeasure(),
        wfm=M.WeightedFmeasure(),
        fm=M.Fmeasure(),
        em=M.Emeasure(),
        hce=M.HumanCorrectionEffortMeasure(),
    )
    per_image = []
    for i, path in enumerate(gts):
        gt = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        pred = synth_prediction(gt, seed=i)
        cv2.imwrite(str(Path(out).parent / "metric_preds" / path.name), pred)
        row = {"name": path.name, "seed": i}
        for _name, m in metrics.items():
            m.step(pred, gt)
        row.update(_last_values(metrics))
        per_image.append(row)
    fm, em = metrics["fm"].get_results(), metrics["em"].get_results()
    dataset = {
        "MAE": float(metrics["mae"].get_results()["mae"]),
        "Sm": float(metrics["sm"].get_results()["sm"]),
        "wFm": float(metrics["wfm"].get_results()["wfm"]),
        "adpFm": float(fm["fm"]["adp"]),
        "maxFm": float(fm["fm"]["curve"].max()),
        "meanFm": float(fm["fm"]["curve"].mean()),
        "adpEm": float(em["em"]["adp"]),
        "maxEm": float(em["em"]["curve"].max()),
        "meanEm": float(em["em"]["curve"].mean()),
        "HCE": float(metrics["hce"].get_results()["hce"]),
    }
    # speckled predictions of the first masks: per-image values only (the dataset values above stay as they are)
    speckled = []
    for i, path in enumerate(gts[:8]):
        gt = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        pred = speckle(synth_prediction(gt, seed=i), seed=i)
        name = f"speckled_{path.name}"
        cv2.imwrite(str(Path(out).parent / "metric_preds" / name), pred)
        single = {key: type(m)() for key, m in metrics.items()}
        for m in single.values():
            m.step(pred, gt)
        speckled.append({"name": name, "gt": path.name, "seed": i, **_last_values(single)})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(
        json.dumps(
            {
                "source": "pysodmetrics 1.6.2",
                "root": Path(root).name,
                "images": per_image,
                "dataset": dataset,
                "speckled": speckled,
            }
        )
    )
    print(f"wrote {out}: {len(per_image)} images", dataset)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
