"""train(cfg) / evaluate(cfg) through the real Hydra configs, on the bundled sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from birefnet.evaluate import evaluate
from birefnet.models import load_model
from birefnet.train import train
from tests.conftest import ROOT, compose_config

FAST = ["data.size=[64,64]", "data.batch_size=4", "data.eval_batch_size=4"]


def test_fast_dev_run(tmp_path):
    cfg = compose_config("train", tmp_path, [*FAST, "debug=fdr"])
    metrics, _objects = train(cfg)
    assert "train/loss" in metrics and torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (tmp_path / "config.yaml").is_file()


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_config("train", tmp_path, [f"experiment={experiment}", "model.net.backbone=pvt_v2_b0"])
    model = instantiate(cfg.model)
    assert model.net.config["backbone"] == "pvt_v2_b0"
    optimizer = model.configure_optimizers()
    assert optimizer is not None
    dm = instantiate(cfg.data)
    assert dm.size[0] % 32 == 0


@pytest.mark.parametrize("scheduler", ["cosine", "step", "warmup_cosine"])
def test_schedulers_instantiate(scheduler, tmp_path):
    cfg = compose_config("train", tmp_path, [f"scheduler={scheduler}", "model.net.backbone=pvt_v2_b0"])
    model = instantiate(cfg.model)
    conf = model.configure_optimizers()
    lr0 = conf["optimizer"].param_groups[0]["lr"]
    for _ in range(cfg.trainer.max_epochs):
        conf["optimizer"].step()
        conf["lr_scheduler"]["scheduler"].step()
    assert conf["optimizer"].param_groups[0]["lr"] < lr0


def test_cli_help_and_bad_override():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    recipes = "experiment: cod, dis5k, dis5k_8gpu, ecssd, general, general_2k, hrsod, matting"
    assert out.returncode == 0 and recipes in out.stdout
    out = subprocess.run(
        [sys.executable, "train.py", "model=no_such_model"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0 and "Could not find 'model/no_such_model'" in out.stderr


@pytest.mark.slow
def test_training_on_sample_lowers_loss_and_improves_sm_then_evaluates(tmp_path):
    cfg = compose_config(
        "train",
        tmp_path / "train",
        [
            "data.size=[128,128]",
            "data.augmentations=[flip]",
            "trainer.max_epochs=8",
            "seed=1",
            "trainer.log_every_n_steps=1",
            "logger=csv",
        ],
    )
    _metrics, objects = train(cfg)
    trainer = objects["trainer"]
    import csv

    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    sms = [float(r["val/Sm"]) for r in rows if r.get("val/Sm")]
    assert len(sms) == 8 and len(losses) == 8 * 12
    first_epoch, last_epoch = sum(losses[:12]) / 12, sum(losses[-12:]) / 12
    assert last_epoch < 0.8 * first_epoch, (first_epoch, last_epoch)
    assert max(sms[-3:]) > sms[0] + 0.05
    results = json.loads((tmp_path / "train" / "results.json").read_text())
    assert 0 < results["ECSSD-TE"]["train"]["Sm"] <= 1
    best = trainer.checkpoint_callback.best_model_path
    assert load_model(best).config["backbone"] == "pvt_v2_b0"

    ecfg = compose_config(
        "eval",
        tmp_path / "eval",
        [f"checkpoint={best}", "save_predictions=true", "method=tiny"],  # 128 px: its card
    )
    measured = evaluate(ecfg)
    assert measured["ECSSD-TE"]["tiny"]["Sm"] == pytest.approx(results["ECSSD-TE"]["train"]["Sm"], abs=1e-6)
    pred_dir = tmp_path / "eval" / "predictions" / "tiny"
    assert len(list((pred_dir / "ECSSD-TE").glob("*.png"))) == 16
    fcfg = compose_config("eval", tmp_path / "folders", [f"+predictions={{tiny_png: {pred_dir}}}"])
    from_folders = evaluate(fcfg)["ECSSD-TE"]["tiny_png"]
    assert from_folders["Sm"] == pytest.approx(measured["ECSSD-TE"]["tiny"]["Sm"], abs=1e-6)
    for name in (
        "results.json",
        "results.csv",
        "results.md",
        "results.tex",
        "published.md",
        "worst_cases.json",
        "curves_ECSSD-TE.png",
    ):
        assert (tmp_path / "folders" / name).is_file(), name


def test_evaluate_reports_missing_predictions(tmp_path):
    (tmp_path / "preds" / "ECSSD-TE").mkdir(parents=True)
    cfg = compose_config("eval", tmp_path / "out", [f"+predictions={{m: {tmp_path / 'preds'}}}"])
    with pytest.raises(FileNotFoundError, match=r"16 of 16 predictions missing .*0005\.png"):
        evaluate(cfg)
