"""Metrics equal pysodmetrics (values recorded by scripts/make_metric_oracle.py) on real ECSSD masks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from birefnet.metrics import DISMetrics
from birefnet.metrics.functional import image_scores
from tests.conftest import SHARED

DATA = Path(__file__).parent / "data"
ORACLE = json.loads((DATA / "metric_oracle.json").read_text())


def _pair(name: str) -> tuple[np.ndarray, np.ndarray]:
    gt = cv2.imread(str(SHARED / "data" / ORACLE["root"] / "gt" / name), cv2.IMREAD_GRAYSCALE)
    pred = cv2.imread(str(DATA / "metric_preds" / name), cv2.IMREAD_GRAYSCALE)
    return pred, gt


@pytest.mark.parametrize("row", ORACLE["images"], ids=lambda r: r["name"])
def test_per_image_values_equal_pysodmetrics(row):
    s = image_scores(*_pair(row["name"]))
    for key in ("mae", "sm", "wfm", "adp_fm", "adp_em"):
        assert abs(getattr(s, key) - row[key]) <= 1e-6, key
    assert np.abs(s.fm_curve - np.array(row["fm_curve"])).max() <= 1e-6
    assert np.abs(s.em_curve - np.array(row["em_curve"])).max() <= 1e-6


def test_dataset_values_equal_pysodmetrics_through_torchmetrics():
    metric = DISMetrics()
    for row in ORACLE["images"]:
        pred, gt = _pair(row["name"])
        metric.update(torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None])
    result = {k: float(v) for k, v in metric.compute().items()}
    for key, ref in ORACLE["dataset"].items():
        if key in result:
            assert abs(result[key] - ref) <= 1e-6, key


def test_float_probabilities_equal_their_saved_png():
    pred, gt = _pair(ORACLE["images"][0]["name"])
    probs = (pred.astype(np.float64) + 0.5) / 255.0  # floor(255 p) gives back the uint8 map
    a, b = image_scores(pred, gt), image_scores(probs.astype(np.float32), gt > 128)
    assert a.sm == b.sm and a.mae == b.mae and np.array_equal(a.fm_curve, b.fm_curve)


def test_edge_cases_follow_pysodmetrics_conventions():
    gt = np.zeros((64, 64), np.uint8)
    s = image_scores(np.zeros_like(gt), gt)
    assert (s.mae, s.sm, s.wfm, s.adp_em, s.adp_fm) == (0.0, 1.0, 0.0, 0.0, 0.0)
    full = np.full((64, 64), 255, np.uint8)
    s = image_scores(full, full)
    # a full gt scores |B| / (N - 1): slightly above 1, as in PySODMetrics
    assert (s.mae, s.sm, s.adp_fm) == (0.0, 1.0, 1.0) and s.adp_em == pytest.approx(4096 / 4095, abs=1e-12)


def test_metric_merges_like_a_ddp_reduction():
    rows = ORACLE["images"][:6]
    whole, a, b = DISMetrics(), DISMetrics(), DISMetrics()
    for i, row in enumerate(rows):
        pred, gt = (torch.from_numpy(x)[None] for x in _pair(row["name"]))
        whole.update([pred], [gt])
        (a if i % 2 else b).update([pred], [gt])
    a.merge_state(b)
    wa, wb = whole.compute(), a.compute()
    for key in wa:
        assert torch.isclose(wa[key], wb[key], atol=1e-12), key
