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


def _pair(name: str, gt_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    gt = cv2.imread(str(SHARED / "data" / ORACLE["root"] / "gt" / (gt_name or name)), cv2.IMREAD_GRAYSCALE)
    pred = cv2.imread(str(DATA / "metric_preds" / name), cv2.IMREAD_GRAYSCALE)
    return pred, gt


@pytest.mark.parametrize("row", ORACLE["images"] + ORACLE["speckled"], ids=lambda r: r["name"])
def test_per_image_values_equal_pysodmetrics(row):
    s = image_scores(*_pair(row["name"], row.get("gt")))
    for key in ("mae", "sm", "wfm", "adp_fm", "adp_em"):
        assert abs(getattr(s, key) - row[key]) <= 1e-6, key
    assert s.hce == row["hce"]  # exactly
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


def _square(size: int = 100, lo: int = 30, hi: int = 70) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[lo:hi, lo:hi] = 255
    return m


def test_boundary_metrics_and_iou_dice_on_known_cases():
    gt = _square()
    perfect = image_scores(gt, gt)
    assert perfect.mba == 1.0 and perfect.biou_curve.max() == 1.0 and perfect.iou == 1.0 and perfect.dice == 1.0
    assert perfect.hce == 0
    inverse = image_scores(255 - gt, gt)
    assert inverse.mba == 0.0 and inverse.iou == 0.0
    shifted = image_scores(np.roll(gt, 3, axis=1), gt)
    assert 0 < shifted.biou_curve.max() < 1 and 0.5 < shifted.mba < 1
    assert shifted.iou == pytest.approx(37 * 40 / (43 * 40)) and shifted.dice == pytest.approx(2 * 37 / 80)
    empty = image_scores(np.zeros_like(gt), np.zeros_like(gt))
    assert np.isnan(empty.mba)  # no boundary: undefined, skipped in dataset means


def test_dis_metrics_keys_hce_and_conventions():
    metric = DISMetrics()
    for row in ORACLE["images"]:
        pred, gt = _pair(row["name"])
        metric.update([torch.from_numpy(pred)], [torch.from_numpy(gt)])
    metric.update([torch.zeros(50, 50)], [torch.zeros(50, 50, dtype=torch.bool)])  # empty gt: mBA skipped
    result = metric.compute()
    assert set(result) == {
        "maxFm",
        "meanFm",
        "adpFm",
        "wFm",
        "MAE",
        "Sm",
        "meanEm",
        "maxEm",
        "adpEm",
        "HCE",
        "mBA",
        "maxBIoU",
        "meanBIoU",
        "IoU",
        "Dice",
        "MSE",
    }
    n = len(ORACLE["images"])
    assert result["HCE"].item() == pytest.approx(ORACLE["dataset"]["HCE"] * n / (n + 1))
    assert torch.isfinite(result["mBA"]) and metric.mba_count.item() == n
    assert metric.mean_of_max_fm() >= result["maxFm"]


def _kernel_masks(seed: int = 0):
    """Random masks of every texture (noise, blobs, thin structures, sparse points) plus real ECSSD masks."""
    rng = np.random.default_rng(seed)
    for t in range(400):
        s = int(rng.integers(3, 48))
        kind = t % 4
        if kind == 0:
            yield rng.random((s, s + int(rng.integers(0, 9)))) < rng.random()
        elif kind == 1:
            f = cv2.GaussianBlur(rng.standard_normal((s, s)).astype(np.float32), (0, 0), 1 + 4 * rng.random())
            yield f > np.quantile(f, rng.random())
        elif kind == 2:
            yield rng.random((s, 2 * s)) < 0.9
        else:
            yield rng.random((s, s)) < 0.02
    for path in sorted((SHARED / "data" / "ECSSD-TE" / "gt").glob("*.png"))[:12]:
        yield cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 128


def test_compiled_skeleton_equals_scikit_image():
    from skimage.morphology import skeletonize as reference

    from birefnet.metrics.kernels import skeletonize

    masks = list(_kernel_masks())
    for mask in masks:
        assert np.array_equal(skeletonize(mask), reference(mask)), mask.shape
    assert sum(m.size > 10_000 for m in masks) == 12  # the real masks were found


def test_compiled_feature_transform_equals_scipy_including_ties():
    from scipy.ndimage import distance_transform_edt

    from birefnet.metrics.kernels import nearest_foreground

    for mask in _kernel_masks(seed=1):
        rows, cols, dist2 = nearest_foreground(mask)
        if not mask.any():
            assert (rows == -1).all() and (cols == -1).all()
            continue
        distances, (ref_rows, ref_cols) = distance_transform_edt(~mask, return_indices=True)
        assert np.array_equal(rows, ref_rows) and np.array_equal(cols, ref_cols), mask.shape
        assert np.array_equal(np.sqrt(dist2.astype(np.float64)), distances)


def _weighted_f_reference(pred: np.ndarray, gt: np.ndarray) -> float:
    """Margolin et al.'s weighted F-measure written out with scipy, as PySODMetrics computes it."""
    from scipy.ndimage import convolve, distance_transform_edt

    if not gt.any():
        return 0.0
    dist, (iy, ix) = distance_transform_edt(~gt, return_indices=True)
    e = np.abs(pred - gt)
    et = e.copy()
    et[~gt] = e[iy[~gt], ix[~gt]]
    x = np.arange(7) - 3.0
    k = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / 50.0)
    ea = convolve(et, k / k.sum(), mode="constant", cval=0)
    min_e_ea = np.where(gt & (ea < e), ea, e)
    b = np.where(gt, 1.0, 2 - np.exp(np.log(0.5) / 5 * dist))
    ew = min_e_ea * b
    tpw = gt.sum() - ew[gt].sum()
    fpw = ew[~gt].sum()
    r = 1 - ew[gt].mean()
    p = tpw / (tpw + fpw + np.spacing(1))
    return 2 * r * p / (r + p + np.spacing(1))


def test_compiled_weighted_f_measure_equals_the_formula_on_odd_shapes():
    from birefnet.metrics.functional import weighted_f_measure

    rng = np.random.default_rng(2)
    for mask in _kernel_masks(seed=3):
        q = rng.integers(0, 256, mask.shape, dtype=np.uint8)
        q[rng.random(mask.shape) < 0.3] = 0  # exact zeros on the background are skipped by the kernel
        levels = np.arange(256) / 255.0
        ours = weighted_f_measure(q, levels, mask)
        assert abs(ours - _weighted_f_reference(levels[q], mask)) <= 1e-9, mask.shape


def test_contour_tree_components_match_connected_components():
    """HCE assigns every contour to its component through the RETR_TREE hierarchy instead of labelling."""
    from birefnet.metrics.functional import _component_of_contour

    rings = np.zeros((40, 40), bool)
    for k, width in enumerate((18, 14, 10, 6, 2)):  # nested rings: components inside holes inside components
        rings[20 - width : 20 + width, 20 - width : 20 + width] = k % 2 == 0
    for mask in [rings, *(_kernel_masks(seed=5))]:
        m8 = mask.astype(np.uint8)
        if not m8.any():
            continue
        contours, hierarchy = cv2.findContours(m8, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
        n_labels, labels = cv2.connectedComponents(m8, connectivity=8)
        component = _component_of_contour(hierarchy[0][:, 3])
        assert len(np.unique(component)) == n_labels - 1
        for contour, outer in zip(contours, component, strict=True):
            x, y = contour[:, 0, 0], contour[:, 0, 1]
            ox, oy = contours[outer][0, 0]
            assert (labels[y, x] == labels[oy, ox]).all()


def test_add_scores_counts_as_an_update(recwarn):
    """Scores from worker processes: no "compute before update" warning, and no stale cached compute()."""
    metric = DISMetrics()
    first = image_scores(*_pair(ORACLE["images"][0]["name"]))
    metric.add_scores(first)
    mae_one = float(metric.compute()["MAE"])
    metric.add_scores(image_scores(*_pair(ORACLE["images"][1]["name"])))
    mae_two = float(metric.compute()["MAE"])
    assert mae_one == pytest.approx(first.mae)
    assert mae_two == pytest.approx((ORACLE["images"][0]["mae"] + ORACLE["images"][1]["mae"]) / 2)
    assert not [w for w in recwarn if "before the ``update``" in str(w.message)]


def test_a_registered_metric_reaches_compute_tables_and_result_files(tmp_path):
    """Adding a metric is one registry entry plus its function: compute(), the DDP states, prediction-folder
    evaluation, the tables and the result files pick it up in registry order with its format."""
    import shutil

    from birefnet.evaluate import evaluate_prediction_folders
    from birefnet.metrics.registry import METRICS, register_metric, unregister_metric
    from birefnet.reporting import metrics_table, write_results
    from tests.conftest import SAMPLE

    register_metric("FGfrac", lambda q, g: float((q > 127).mean()), fmt=".4f", higher_is_better=False)
    try:
        assert list(METRICS)[-1] == "FGfrac"
        metric = DISMetrics()
        pred = torch.zeros(1, 10, 10)
        pred[0, :3] = 0.9  # 30 % foreground
        metric.update([pred, torch.ones(1, 10, 10)], [torch.ones(1, 10, 10), torch.ones(1, 10, 10)])
        assert float(metric.compute()["FGfrac"]) == pytest.approx((0.3 + 1.0) / 2)

        preds = tmp_path / "preds" / "ECSSD-TE"
        preds.mkdir(parents=True)
        for gt in sorted((SAMPLE / "ECSSD-TE" / "gt").glob("*.png")):
            shutil.copy(gt, preds / gt.name)
        results, _, _ = evaluate_prediction_folders(
            {"gt": str(tmp_path / "preds")}, str(SAMPLE), ["ECSSD-TE"], worst_cases=2, workers=1
        )
        expected = np.mean([(cv2.imread(str(p), 0) > 127).mean() for p in sorted(preds.glob("*.png"))])
        values = results["ECSSD-TE"]["gt"]
        assert values["FGfrac"] == pytest.approx(expected) and values["Sm"] == pytest.approx(1.0)
        table = metrics_table(results)
        header = table.splitlines()[0]
        assert header.endswith("| Dice | MSE | FGfrac |") and f"| {expected:.4f} |" in table
        write_results(results, tmp_path / "out")
        assert (tmp_path / "out" / "results.csv").read_text().splitlines()[0].endswith(",Dice,MSE,FGfrac")
    finally:
        unregister_metric("FGfrac")
    assert "FGfrac" not in DISMetrics().compute()


def test_mse_and_both_hce_conventions_follow_their_definitions():
    from birefnet.metrics.functional import hce, image_scores

    g = np.zeros((60, 80), bool)
    g[10:40, 15:60] = True
    pred = np.full(g.shape, 40, np.uint8)  # not full range: 40..200
    pred[10:40, 15:60] = 200
    pred[42:60, 2:40] = 125  # above the normalised 0.5 (raw 120), below the reference's raw 128
    pred[12:20, 20:30] = 110  # a hole under both conventions
    p = (pred.astype(np.float64) / 255 - 40 / 255) / (200 / 255 - 40 / 255)  # PySODMetrics' min-max stretch
    pysod = image_scores(pred, g, hce_convention="pysodmetrics")
    reference = image_scores(pred, g, hce_convention="reference")
    assert pysod.hce == hce(p > 0.5, g) and reference.hce == hce(pred > 128, g)
    assert pysod.hce != reference.hce
    assert pysod.mse == pytest.approx(np.mean((p - g) ** 2), abs=1e-12)  # the reference's MSE
    metric = DISMetrics(hce_convention="reference")
    metric.update([torch.from_numpy(pred)], [torch.from_numpy(g)])
    result = metric.compute()
    assert result["HCE"] == reference.hce and result["MSE"].item() == pytest.approx(pysod.mse)
    with pytest.raises(ValueError, match="hce_convention"):
        DISMetrics(hce_convention="skimage")


def test_matting_errors_on_hand_computed_cases():
    import math

    from birefnet.metrics.matting import connectivity_error, gradient_error, sad

    pred = np.array([[0.0, 0.5], [1.0, 1.0]])
    alpha = np.array([[0.0, 1.0], [0.25, 1.0]])
    assert sad(pred, alpha) == pytest.approx((0.5 + 0.75) / 1000)

    # Conn: alpha all 1; the 0.5 pixel leaves the largest component at t=0.6 (level 0.5) and cuts off the last
    # pixel with it, the first two stay connected (level 1). phi_pred = [1, 1, 1, 0.5], phi_alpha = [1, 1, 0.5, 0.5]
    assert connectivity_error(np.array([[1.0, 1.0, 0.5, 1.0]]), np.ones((1, 4))) == pytest.approx(0.5 / 1000)
    assert connectivity_error(alpha, alpha) == 0.0

    # Grad: each derivative kernel has unit L2 norm, so one isolated pixel of value v far from the borders (alpha
    # flat) has sum |grad|^2 = v^2 (1 + 1); two pixels far apart add up; a constant offset changes no gradient
    sigma = 1.4
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 0.01)))
    assert half == 4
    flat = np.zeros((41, 61))
    impulse = flat.copy()
    impulse[20, 15] = 1.0
    assert gradient_error(impulse, flat) == pytest.approx(2 / 1000)
    assert gradient_error(0.5 * impulse, flat) == pytest.approx(0.5 / 1000)
    other = flat.copy()
    other[20, 45] = 1.0
    assert gradient_error(impulse, other) == pytest.approx(4 / 1000)
    ramp = np.tile(np.linspace(0, 0.8, 61), (41, 1))
    assert gradient_error(ramp + 0.1, ramp) == pytest.approx(0.0, abs=1e-12)
    assert sad(ramp + 0.1, ramp) == pytest.approx(0.1 * ramp.size / 1000)


def test_dis_metrics_report_matting_errors_on_soft_ground_truth():
    from birefnet.metrics.matting import connectivity_error, gradient_error, sad

    _, gt = _pair(ORACLE["images"][0]["name"])
    soft = cv2.GaussianBlur(gt, (15, 15), 4)  # soft alpha edges
    assert len(np.unique(soft)) > 100
    pred = cv2.GaussianBlur(gt, (31, 31), 9)
    metric = DISMetrics(with_matting=True)
    metric.update(torch.from_numpy(pred)[None], torch.from_numpy(soft)[None])
    values = {k: float(v) for k, v in metric.compute().items()}
    a, b = pred / 255.0, soft / 255.0  # the ground truth is not binarised for these
    assert values["SAD"] == pytest.approx(sad(a, b))
    assert values["Grad"] == pytest.approx(gradient_error(a, b))
    assert values["Conn"] == pytest.approx(connectivity_error(a, b))
    assert values["SAD"] != pytest.approx(sad(a, (soft > 128).astype(float)))
    assert {"SAD", "Grad", "Conn"}.isdisjoint(spec.name for spec in DISMetrics().specs)
