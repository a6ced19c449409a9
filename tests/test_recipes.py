"""Every reference task as a recipe: the composed configs carry the reference's values
(../shared/docs/reference-recipes.md), checkpoints are kept in the reference's window, and "*" training sets
mean every set but the evaluation ones."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from birefnet.callbacks import EpochWindowCheckpoint
from birefnet.data import DISDataModule
from tests.conftest import SAMPLE, compose_config

# task: (recipe, epochs, window last N, every K, fine-tune epochs, LR base, (h, w), pixel-loss weights, test sets)
REFERENCE = {
    "DIS5K": ("dis5k", 500, 50, 5, -40, 1e-4, (1024, 1024), {"bce": 30, "iou": 0.5, "ssim": 10}, None),
    "COD": ("cod", 150, 50, 5, -20, 1e-5, (1024, 1024), {"bce": 30, "iou": 0.5, "ssim": 10},
            ["CHAMELEON", "NC4K", "TE-CAMO", "TE-COD10K"]),
    "HRSOD": ("hrsod", 150, 50, 5, -20, 1e-5, (1024, 1024), {"bce": 30, "iou": 0.5, "ssim": 10},
              ["DAVIS-S", "TE-HRSOD", "TE-UHRSD", "DUT-OMRON", "TE-DUTS"]),
    "General": ("general", 200, 50, 5, -20, 1e-5, (1024, 1024), {"bce": 30, "iou": 0.5, "mae": 100, "ssim": 10},
                ["DIS-VD", "TE-P3M-500-NP"]),
    "General-2K": ("general_2k", 250, 30, 2, -20, 1e-5, (1440, 2560), {"bce": 30, "iou": 0.5, "mae": 100, "ssim": 10},
                   ["DIS-VD", "TE-P3M-500-NP"]),
    "Matting": ("matting", 150, 50, 5, -10, 1e-5, (1024, 1024), {"bce": 30, "mae": 100, "ssim": 10},
                ["TE-P3M-500-NP", "TE-AM-2k"]),
}  # fmt: skip


@pytest.mark.parametrize("task", list(REFERENCE))
def test_recipe_carries_the_reference_values(task, tmp_path):
    recipe, epochs, last, every, finetune, base, size, weights, test_sets = REFERENCE[task]
    cfg = compose_config("train", tmp_path, [f"experiment={recipe}", "model.net.backbone=pvt_v2_b0"])
    assert cfg.trainer.max_epochs == epochs and cfg.callbacks.loss_schedule.finetune_last_epochs == finetune
    assert (cfg.callbacks.epoch_window.last_epochs, cfg.callbacks.epoch_window.every) == (last, every)
    assert cfg.callbacks.loss_schedule.matting == (task == "Matting")
    assert cfg.model.optimizer.lr == pytest.approx(base * math.sqrt(cfg.data.batch_size / 4))
    assert cfg.data.batch_size == 4 and cfg.seed == 7 and cfg.backbone_weights_required
    assert dict(cfg.model.loss.weights) == weights and cfg.model.net.backbone == "pvt_v2_b0"
    assert not cfg.data.fast_decode and cfg.trainer.limit_val_batches == 0  # no validation, as the reference
    dm = instantiate(cfg.data)
    assert dm.size == size and dm.task == task
    if test_sets:
        assert dm.test_sets == test_sets
    if task in ("General", "General-2K", "Matting"):
        assert cfg.data.train_sets == "*"


def test_eight_gpu_recipe_is_the_reference_default_launch(tmp_path):
    cfg = compose_config("train", tmp_path, ["experiment=dis5k_8gpu"])
    assert cfg.trainer.devices == 8 and cfg.trainer.strategy == "ddp" and cfg.data.batch_size == 8
    assert cfg.model.optimizer.lr == pytest.approx(1e-4 * math.sqrt(2))  # per-GPU batch 8


def test_epoch_window_keeps_the_reference_candidates(tmp_path):
    window = EpochWindowCheckpoint(str(tmp_path), epochs=500, last_epochs=50, every=5)
    assert [e for e in range(1, 501) if window.keeps(e)] == list(range(450, 501, 5))
    window = EpochWindowCheckpoint(str(tmp_path), epochs=250, last_epochs=30, every=2)
    assert [e for e in range(1, 251) if window.keeps(e)] == list(range(220, 251, 2))


def test_window_checkpoints_are_written_during_training(tmp_path):
    from birefnet.train import train

    overrides = [
        "data.size=[64,64]",
        "trainer.max_epochs=3",
        "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=0",
        "test=false",
        "+callbacks.epoch_window._target_=birefnet.callbacks.EpochWindowCheckpoint",
        f"+callbacks.epoch_window.dirpath={tmp_path / 'ckpt'}",
        "+callbacks.epoch_window.epochs=3",
        "+callbacks.epoch_window.last_epochs=1",
        "+callbacks.epoch_window.every=1",
    ]
    train(compose_config("train", tmp_path / "run", overrides))
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")) == ["epoch_002.ckpt", "epoch_003.ckpt"]
    state = torch.load(tmp_path / "ckpt" / "epoch_003.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["birefnet_preprocessing"]["input_size"] == [64, 64]


def test_star_trains_on_every_set_but_the_evaluation_sets(tmp_path):
    import shutil

    for name in ("A", "B", "TEST"):
        shutil.copytree(SAMPLE / "ECSSD-TE", tmp_path / name)
    (tmp_path / "notes").mkdir()  # not a set: no im/ folder
    dm = DISDataModule(str(tmp_path), train_sets="*", val_sets=["TEST"], test_sets=["TEST"], size=(64, 64))
    dm.setup("fit")
    assert dm.train_sets == ["A", "B"] and len(dm.train_set) == 32


def _two_sets(root, n=3):
    import shutil

    names = sorted(p.stem for p in (SAMPLE / "ECSSD-TE" / "im").glob("*.jpg"))
    for k, set_name in enumerate(("A", "B")):
        for sub, ext in (("im", "jpg"), ("gt", "png")):
            (root / set_name / sub).mkdir(parents=True)
            for name in names[k * n : (k + 1) * n]:
                shutil.copy(SAMPLE / "ECSSD-TE" / sub / f"{name}.{ext}", root / set_name / sub)


def test_candidates_are_evaluated_and_the_best_chosen_per_criterion_with_group_rows(tmp_path):
    import json

    from birefnet.evaluate import evaluate
    from birefnet.models import U2Net, save_model

    _two_sets(tmp_path / "data")
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_model(U2Net("u2netp").eval(), tmp_path / "run" / f"epoch_{seed:03d}.safetensors")
    cfg = compose_config(
        "eval",
        tmp_path / "out",
        [
            f"candidates={tmp_path / 'run'}/epoch_*.safetensors",
            f"data.root={tmp_path / 'data'}",
            "data.test_sets=[A,B]",
            "+data.set_groups={AB: [A, B]}",
            "size=[64,64]",
            "hce_convention=reference",
        ],
    )
    results = evaluate(cfg)
    for method in ("epoch_000", "epoch_001"):  # the group row is the mean of its sets
        for key in ("Sm", "HCE", "MSE"):
            mean = (results["A"][method][key] + results["B"][method][key]) / 2
            assert results["AB"][method][key] == pytest.approx(mean)
    selection = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert selection["sets"] == ["A", "B"] and selection["criteria"] == ["Sm", "wFm", "HCE"]
    for criterion, pick in (("Sm", max), ("wFm", max), ("HCE", min)):
        sums = {m: results["A"][m][criterion] + results["B"][m][criterion] for m in ("epoch_000", "epoch_001")}
        best = pick(sums, key=sums.get)
        assert selection["best"][criterion]["method"] == best
        assert selection["best"][criterion]["checkpoint"].endswith(f"{best}.safetensors")
    assert "AB" in (tmp_path / "out" / "results.md").read_text() and (tmp_path / "out" / "selection.md").is_file()


@pytest.mark.parametrize(("monitor", "mode"), [("Sm", "max"), ("MAE", "min"), ("HCE", "min")])
def test_model_monitor_chooses_the_checkpoint_metric_and_its_direction(monitor, mode, tmp_path):
    cfg = compose_config("train", tmp_path, [f"model.monitor={monitor}"])
    callback = instantiate(cfg.callbacks.model_checkpoint)
    assert callback.monitor == f"val/{monitor}" and callback.mode == mode


def _matting_sample(root, sizes=(("TR-ECSSD", 4), ("TE-P3M-500-NP", 2), ("TE-AM-2k", 2))):
    """A tiny matting dataset: ECSSD images at 1/4 size with their masks blurred into soft alpha mattes."""
    import cv2

    names = iter(sorted(p.stem for p in (SAMPLE / "ECSSD-TR" / "im").glob("*.jpg")))
    for set_name, n in sizes:
        (root / set_name / "im").mkdir(parents=True)
        (root / set_name / "gt").mkdir()
        for _ in range(n):
            name = next(names)
            image = cv2.imread(str(SAMPLE / "ECSSD-TR" / "im" / f"{name}.jpg"))
            mask = cv2.imread(str(SAMPLE / "ECSSD-TR" / "gt" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
            size = (image.shape[1] // 4, image.shape[0] // 4)
            cv2.imwrite(str(root / set_name / "im" / f"{name}.jpg"), cv2.resize(image, size))
            alpha = cv2.GaussianBlur(cv2.resize(mask, size, interpolation=cv2.INTER_AREA), (9, 9), 3)
            cv2.imwrite(str(root / set_name / "gt" / f"{name}.png"), alpha)


def test_matting_recipe_trains_on_soft_alpha_and_selects_the_three_bests(tmp_path):
    """The Matting recipe end to end on soft masks: 6 epochs, candidates every 2 epochs, then the reference's
    selection (best Sm, wFm, HCE) over the test sets, with the matting errors in the tables."""
    import json

    from birefnet.evaluate import evaluate
    from birefnet.train import build_data_and_model, train

    _matting_sample(tmp_path / "data" / "Matting")
    tiny = [
        f"paths.data_dir={tmp_path / 'data'}",
        "model.net.backbone=pvt_v2_b0",
        "model.net.backbone_weights=none",
        "model.net.decoder_attention=''",
        "data.size=[64,64]",
        "data.batch_size=2",
        "trainer.precision=32",
    ]
    cfg = compose_config(
        "train",
        tmp_path / "run",
        ["experiment=matting", *tiny, "trainer.max_epochs=6", "callbacks.epoch_window.last_epochs=6",
         "callbacks.epoch_window.every=2"],
    )  # fmt: skip
    dm, module = build_data_and_model(cfg)
    dm.setup("fit")
    assert dm.train_sets == ["TR-ECSSD"] and module.hparams.matting_errors
    masks = torch.cat([dm.train_set[i]["mask"].flatten() for i in range(len(dm.train_set))])
    assert ((masks > 0.05) & (masks < 0.95)).float().mean() > 0.02  # soft alpha, not binarised
    metrics, _ = train(cfg)
    assert math.isfinite(float(metrics["train/loss"]))
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    assert checkpoints == ["epoch_002.ckpt", "epoch_004.ckpt", "epoch_006.ckpt"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "epoch_006.ckpt", map_location="cpu", weights_only=True)
    assert state["birefnet_preprocessing"]["task"] == "Matting"

    results = evaluate(
        compose_config(
            "eval",
            tmp_path / "out",
            ["data=matting", tiny[0], f"candidates={tmp_path / 'run' / 'checkpoints'}/epoch_*.ckpt", "workers=1"],
        )
    )
    sets = ["TE-P3M-500-NP", "TE-AM-2k"]
    methods = [c.removesuffix(".ckpt") for c in checkpoints]
    for set_name in sets:
        for method in methods:
            assert {"SAD", "Grad", "Conn", "MSE", "Sm"} <= set(results[set_name][method])
    selection = json.loads((tmp_path / "out" / "selection.json").read_text())
    for criterion, pick in (("Sm", max), ("wFm", max), ("HCE", min)):
        sums = {m: sum(results[s][m][criterion] for s in sets) for m in methods}
        assert selection["best"][criterion]["method"] == pick(sums, key=sums.get)
    assert "SAD" in (tmp_path / "out" / "results.md").read_text()


def _recipe_table() -> dict[str, list[str]]:
    """The per-recipe rows of docs/recipes.md: ``{recipe: cells}``."""
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "recipes.md").read_text()
    table = text.split("## Per recipe", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].split("`")[1]] = cells
    return rows


@pytest.mark.parametrize("task", list(REFERENCE))
def test_recipe_table_in_the_docs_equals_the_composed_config(task, tmp_path):
    """docs/recipes.md cannot drift from the configs: each row is compared with the composed recipe."""
    recipe, *_ = REFERENCE[task]
    cells = _recipe_table()[recipe]
    cfg = compose_config("train", tmp_path, [f"experiment={recipe}"])
    dm = instantiate(cfg.data)
    epochs, window, finetune, base, size, loss, train_sets, test_sets = cells[1:]
    assert cells[0] == f"`{recipe}` ({task})"
    assert int(epochs) == cfg.trainer.max_epochs
    assert window == f"{cfg.callbacks.epoch_window.last_epochs}, {cfg.callbacks.epoch_window.every}"
    assert finetune.startswith(f"last {-cfg.callbacks.loss_schedule.finetune_last_epochs}")
    assert ("matting rule" in finetune) == cfg.callbacks.loss_schedule.matting
    assert cfg.model.optimizer.lr == pytest.approx(float(base) * math.sqrt(cfg.data.batch_size / 4))
    assert size == f"{dm.size[0]} x {dm.size[1]}"
    weights = dict(cfg.model.loss.weights)
    if loss == "as General":
        loss = _recipe_table()["general"][6]
    assert {k: float(v) for k, v in (part.split() for part in loss.split(", "))} == weights
    if cfg.data.train_sets == "*":
        assert train_sets.startswith("every set under") or train_sets == "as General"
    else:
        assert train_sets.split(", ") == list(cfg.data.train_sets)
    expected_tests = dm.test_sets
    if test_sets != "as General":
        expected = test_sets.replace("DIS-TE1..4", "DIS-TE1, DIS-TE2, DIS-TE3, DIS-TE4").split(", ")
        assert expected == expected_tests
