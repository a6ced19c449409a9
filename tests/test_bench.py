"""The benchmark command runs on CPU (tiny settings) and reports sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from birefnet.bench import bench_data, bench_metric_parts, bench_metrics, bench_model
from tests.conftest import ROOT


def test_model_bench_tiny_cpu():
    rows = bench_model(
        "birefnet", "pvt_v2_b0", size=64, batch=2, precision="bf16", warmup=1, iters=1, decoder_attention=""
    )
    assert [r["mode"] for r in rows] == ["train", "infer"]
    assert all(r["ms"] > 0 and r["images/s"] > 0 and r["TFLOP/s"] > 0 for r in rows)
    rows = bench_model("u2netp", size=64, batch=1, precision="fp32", warmup=1, iters=1, modes=("infer",))
    assert rows[0]["model"] == "U2-Netp" and rows[0]["params M"] < 1.2


def test_metrics_and_data_bench_small():
    rows = bench_metrics(images=2, size=128, workers=1)
    assert rows[0]["ms / image"] > 0
    masks = ROOT / "data" / "sample" / "ECSSD-TE" / "gt"
    rows = bench_metrics(images=3, workers=1, pred_dir=str(masks), gt_dir=str(masks))  # saved predictions
    assert len(rows) == 2 and rows[1]["ms / image"] > 0
    with pytest.raises(FileNotFoundError, match="has a mask"):
        bench_metrics(images=3, workers=1, pred_dir=str(masks), gt_dir=str(masks.parent / "im"))
    parts = {row["stage"]: row["ms / image"] for row in bench_metric_parts(images=1, size=64)}
    assert parts["skeleton (kernel)"] > 0 and "skimage.morphology.skeletonize" in parts
    rows = bench_data(samples=3)
    assert rows[0]["samples/s per core"] > 0


def test_cli_writes_json(tmp_path):
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "birefnet.bench",
            "model",
            "--size",
            "64",
            "--batch",
            "1",
            "--iters",
            "1",
            "--decoder-attention",
            "",
            "--modes",
            "infer",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["machine"] and data["rows"][0]["mode"] == "infer"
