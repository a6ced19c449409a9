"""``birefnet bench`` runs on CPU (tiny settings) through the command line and reports sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys

from birefnet.cli import main
from tests.conftest import ROOT


def bench(tmp_path, *args: str) -> list[dict]:
    """Rows that ``birefnet bench ... --json`` writes, run in this process."""
    out = tmp_path / "rows.json"
    assert main(["bench", *args, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["machine"] and data["torch"]
    return data["rows"]


def test_model_bench_tiny_cpu(tmp_path):
    common = ["--size", "64", "--warmup", "1", "--iters", "1"]
    rows = bench(tmp_path, "model", "--backbone", "pvt_v2_b0", "--batch", "2", "--decoder-attention", "", *common)
    assert [r["mode"] for r in rows] == ["train", "infer"]
    assert all(r["ms"] > 0 and r["images/s"] > 0 and r["TFLOP/s"] > 0 for r in rows)
    rows = bench(tmp_path, "model", "--model", "u2netp", "--precision", "fp32", "--modes", "infer", *common)
    assert rows[0]["model"] == "U2-Netp" and rows[0]["params M"] < 1.2 and len(rows) == 1
    rows = bench(tmp_path, "model", "--model", "u2netp", "--modes", "infer", "--backend", "onnxruntime", *common)
    assert rows[0]["backend"] == "onnxruntime" and rows[0]["ms"] > 0 and rows[0]["peak RSS GB"] > 0
    args = ("--backbone", "pvt_v2_b0", "--decoder-attention", "", "--modes", "infer", "--backend", "onnxruntime")
    rows = bench(tmp_path, "model", *args, "--int8", *common)
    assert rows[0]["precision"] == "int8 MatMul" and rows[0]["ms"] > 0
    rows = bench(tmp_path, "model", "--model", "u2netp", "--modes", "infer", "--precision", "bf16", "--cast", *common)
    assert rows[0]["cast"] and rows[0]["precision"] == "bf16" and rows[0]["GFLOP / image"] > 0


def test_peak_bench_reports_both_dtypes(tmp_path):
    rows = bench(tmp_path, "peak", "--n", "256")
    assert [r["dtype"] for r in rows] == ["fp32", "bf16"] and all(r["GFLOP/s"] > 0 for r in rows)


def test_predict_bench_compares_the_backends_masks(tmp_path):
    sample = ROOT / "data" / "sample" / "ECSSD-TE"
    backends = "torch,onnxruntime,torch:bf16"
    args = ("--model", "u2netp", "--size", "64", "--images", "2", "--source", str(sample), "--backends", backends)
    rows = bench(tmp_path, "predict", *args)
    assert [r["backend"] for r in rows] == backends.split(",") and rows[0]["model"] == "U2Net u2netp 64x64 px"
    assert all(r["ms / image"] > 0 and 0 < r["MAE vs GT"] < 1 for r in rows)
    first, cached = (float(s) for s in rows[1]["setup s (first, cached)"].split(", "))
    assert rows[1]["% px within 1/255 of torch"] >= 99.9 and cached < first  # the second setup loads the graph
    assert rows[2]["max |diff|"] > 0 and rows[2]["% px same side of 0.5"] > 0  # bf16 differs, and is compared


def test_metrics_parts_memory_and_data_bench_small(tmp_path):
    rows = bench(tmp_path, "metrics", "--images", "2", "--size", "128", "--workers", "1")
    labels = [r["implementation"] for r in rows]
    assert labels[2:4] == [
        "DISMetrics.update, uint8 maps (1 process)",
        "DISMetrics.update, float probabilities (1 process)",
    ]
    assert all(r["ms / image"] > 0 for r in rows)
    masks = ROOT / "data" / "sample" / "ECSSD-TE" / "gt"
    rows = bench(
        tmp_path, "metrics", "--images", "3", "--workers", "1", "--pred-dir", str(masks), "--gt-dir", str(masks)
    )
    assert len(rows) == 6 and rows[1]["ms / image"] > 0  # saved predictions
    parts = {
        row["stage"]: row["ms / image"] for row in bench(tmp_path, "metric-parts", "--images", "1", "--size", "64")
    }
    assert parts["skeleton (kernel)"] > 0 and "skimage.morphology.skeletonize" in parts
    rows = bench(tmp_path, "memory", "--backbone", "pvt_v2_b0", "--size", "64")
    assert rows and all(v > 0 for r in rows for v in r.values() if isinstance(v, float))
    assert bench(tmp_path, "data", "--samples", "3")[0]["samples/s per core"] > 0  # synthetic sources, no data files


def test_bench_is_a_subcommand_of_the_console_command():
    proc = subprocess.run([sys.executable, "-m", "birefnet.cli", "bench", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert all(name in proc.stdout for name in ("model", "predict", "metrics", "metric-parts", "memory", "data"))
