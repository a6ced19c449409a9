"""``evaluate(cfg)``: metrics of a checkpoint or of prediction folders on DIS-layout test sets.

Two modes (configs/eval.yaml):

* ``checkpoint=REF``: any model :func:`birefnet.models.load_model` reads (this project's ``.ckpt`` /
  ``.safetensors``, official BiRefNet ``.pth`` / HF ``model.safetensors``, a Hub repo ``hf:ZhengPeng7/BiRefNet``)
  runs through the same Lightning trainer config as training (``trainer=ddp trainer.devices=N`` evaluates on N
  GPUs, metrics synced), at the size and normalisation of its preprocessing card; predictions are resized back
  to each image's original size before the metrics, as the reference does.
* ``predictions={name: DIR}``: existing maps ``DIR/<set>/<stem>.png`` for every ground truth, the way the
  field evaluates other people's results. A missing prediction is an error that lists them; a prediction
  whose size differs from its mask is resized to the mask (bilinear) with a warning, as the reference does.

Outputs in the run directory: ``results.json`` (``{set: {method: {metric: value}}}``), ``.csv``, ``.md``,
``.tex``, ``published.md`` (measured rows next to published DIS5K numbers), per-set PR and F-threshold
curve plots and their values (``curves.json``), and ``worst_cases.json`` (the images with the highest MAE per set
and method). Under DDP every output covers all processes' images.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import cv2
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from birefnet.atomic import atomic_write_text
from birefnet.data.dataset import find_pairs, problem_listing
from birefnet.data.io import ImageReadError, read_mask, write_png
from birefnet.errors import ConfigError, UserError
from birefnet.lit_module import DISLitModule
from birefnet.metrics import DISMetrics
from birefnet.metrics.dis import score_image
from birefnet.metrics.kernels import compile_kernels
from birefnet.models import load_model
from birefnet.models.checkpoint import model_card
from birefnet.reporting import (
    add_group_means,
    full_size_uint8,
    plot_curves,
    print_table,
    select_best,
    write_curves,
    write_results,
    write_selection,
)
from birefnet.utils import save_config

log = logging.getLogger("birefnet")

__all__ = ["PUBLISHED", "evaluate", "evaluate_checkpoint", "evaluate_prediction_folders"]

#: Published DIS5K numbers (not measured here). BiRefNet DIS-VD maxFm/MAE/Sm and IS-Net DIS-VD Sm are
#: corroborated by third-party tables; the other entries are marked unverified in the reference notes.
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "DIS-VD": {
        "BiRefNet (paper)": {"maxFm": 0.891, "wFm": 0.854, "MAE": 0.038, "Sm": 0.898, "meanEm": 0.931, "HCE": 989},
        "IS-Net (paper)": {"maxFm": 0.791, "wFm": 0.717, "MAE": 0.074, "Sm": 0.813, "meanEm": 0.856, "HCE": 1116},
    },
    "DIS-TE1": {
        "BiRefNet (paper)": {"maxFm": 0.860, "wFm": 0.819, "MAE": 0.037, "Sm": 0.885, "meanEm": 0.911, "HCE": 106}
    },
    "DIS-TE2": {
        "BiRefNet (paper)": {"maxFm": 0.894, "wFm": 0.857, "MAE": 0.036, "Sm": 0.900, "meanEm": 0.930, "HCE": 266}
    },
    "DIS-TE3": {
        "BiRefNet (paper)": {"maxFm": 0.911, "wFm": 0.872, "MAE": 0.031, "Sm": 0.918, "meanEm": 0.940, "HCE": 569}
    },
    "DIS-TE4": {
        "BiRefNet (paper)": {"maxFm": 0.904, "wFm": 0.858, "MAE": 0.037, "Sm": 0.912, "meanEm": 0.929, "HCE": 2723}
    },
}


def _score_pair(job: tuple[str, str, str, str]):
    """Worker: read one prediction and its mask, resize the prediction if needed, score it.

    Returns ``(name, scores, resized, problem)``; an unreadable file is a problem string, not an exception, so
    the caller can list every bad file of a set in one message.
    """
    name, pred_path, gt_path, hce_convention, matting_errors = job
    try:
        gt = read_mask(gt_path)
        pred = read_mask(pred_path)
    except ImageReadError as err:
        return name, None, False, str(err).split(". ")[0]
    resized = pred.shape != gt.shape
    if resized:
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
    return name, score_image(pred, gt, hce_convention=hce_convention, with_matting=matting_errors), resized, None


def evaluate_prediction_folders(
    predictions: Mapping[str, str],
    data_root: str,
    sets: list[str],
    worst_cases: int = 10,
    workers: int | None = None,
    hce_convention: str = "pysodmetrics",
    matting_errors: bool = False,
) -> tuple[dict, dict, dict]:
    """Metrics of prediction folders ``{method: DIR}`` with ``DIR/<set>/<stem>.png`` against the masks
    (``matting_errors``: also SAD, Grad and Conn against the soft masks).

    Images are scored in ``workers`` processes (default: all cores) with a progress bar.
    """
    from concurrent.futures import ProcessPoolExecutor

    from rich.progress import Progress

    workers = workers or os.cpu_count() or 1
    results, curves, worst = {}, {}, {}
    compile_kernels()  # once here, so the workers load them from the cache
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for set_name in sets:
            samples, problems = find_pairs(data_root, set_name, check_files=False)
            if problems:
                raise UserError(
                    f"{len(problems)} problem(s) in the ground truth of {set_name} under {data_root}:\n"
                    f"{problem_listing(problems)}\nFix or remove these files; prediction folders are scored against "
                    "every image that has a mask."
                )
            for method, folder in predictions.items():
                pred_dir = Path(folder) / set_name
                if not pred_dir.is_dir():
                    raise FileNotFoundError(
                        f"Prediction folder {pred_dir} does not exist (method {method!r}); "
                        f"expected {folder}/<set>/<stem>.png for set {set_name}."
                    )
                missing = [s.name for s in samples if not (pred_dir / f"{s.name}.png").is_file()]
                if missing:
                    raise FileNotFoundError(
                        f"{len(missing)} of {len(samples)} predictions missing in {pred_dir} for method {method!r} "
                        f"(e.g. {', '.join(m + '.png' for m in missing[:5])}). Predict every image of {set_name} "
                        "first."
                    )
                metric = DISMetrics(keep_per_image=True, hce_convention=hce_convention, with_matting=matting_errors)
                jobs = [
                    (s.name, str(pred_dir / f"{s.name}.png"), str(s.mask), hce_convention, matting_errors)
                    for s in samples
                ]
                scored = pool.map(_score_pair, jobs, chunksize=4) if pool else map(_score_pair, jobs)
                resized, unreadable = 0, []
                with Progress(transient=True) as progress:
                    task = progress.add_task(f"{set_name} / {method}", total=len(jobs))
                    for name, scores, was_resized, problem in scored:
                        if problem:
                            unreadable.append(problem)
                        else:
                            metric.add_scores(scores[0], name, scores[1])
                            resized += was_resized
                        progress.advance(task)
                if unreadable:
                    raise UserError(
                        f"{len(unreadable)} file(s) of {set_name} / {method} cannot be read:\n  "
                        + "\n  ".join(unreadable[:50])
                        + "\nRe-create those predictions (or replace the masks); every image of the set is scored."
                    )
                if resized:
                    log.warning(
                        "%s / %s: %d prediction(s) differ in size from their mask; resized to the mask "
                        "(bilinear), as the reference evaluation does.",
                        set_name,
                        method,
                        resized,
                    )
                results.setdefault(set_name, {})[method] = {k: float(v) for k, v in metric.compute().items()}
                curves.setdefault(set_name, {})[method] = metric.curves()
                worst.setdefault(set_name, {})[method] = metric.worst(worst_cases)
    finally:
        if pool:
            pool.shutdown()
    return results, curves, worst


class _EvalModule(DISLitModule):
    """Test-only wrapper: fixed preprocessing is done by the data pipeline; optionally writes PNGs."""

    def __init__(
        self,
        net: torch.nn.Module,
        prediction_dir: str | None = None,
        worst_cases: int = 10,
        hce_convention: str = "pysodmetrics",
        matting_errors: bool = False,
    ) -> None:
        super().__init__(
            net,
            log_images=0,
            worst_cases=worst_cases,
            hce_convention=hce_convention,
            matting_errors=matting_errors,
        )
        self.prediction_dir = prediction_dir

    def setup(self, stage: str) -> None:
        super().setup(stage)
        for m in self.test_metrics.values():
            m.keep_per_image = True

    def test_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> None:
        probs = self._eval_step(batch, dataloader_idx, "test")
        if self.prediction_dir:
            set_name = batch["set"][0]
            out = Path(self.prediction_dir) / set_name
            out.mkdir(parents=True, exist_ok=True)
            for p, m, name in zip(probs, batch["mask_full"], batch["name"], strict=True):
                write_png(out / f"{name}.png", full_size_uint8(p, m.shape[-2:]).cpu().numpy())


def matting_errors(cfg: DictConfig) -> bool:
    """``cfg.matting_errors``, or when that is null, whether the data is a Matting task (soft alpha masks)."""
    asked = cfg.get("matting_errors")
    return bool(asked) if asked is not None else cfg.data.get("task") == "Matting"


def evaluate_checkpoint(cfg: DictConfig, method: str, checkpoint: str | None = None) -> tuple[dict, dict, dict]:
    """Run a checkpoint (``cfg.checkpoint`` unless given) over ``cfg.data.test_sets`` with the Lightning trainer
    from ``cfg.trainer``, preprocessed as its card says (``size`` / ``preprocessing`` override it)."""
    checkpoint = checkpoint or cfg.checkpoint
    net = load_model(checkpoint)
    normalization = cfg.get("preprocessing")
    try:
        card, asked = model_card(net).override(
            {"normalization": normalization} if normalization else None, cfg.get("size")
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"size / preprocessing: {err}") from None
    why = f"the model's card with {asked}" if asked else "the model's card"
    log.info("Evaluating %s (%s) with %s (%s).", checkpoint, type(net).__name__, card.describe(), why)
    overrides: dict = {"normalization": card.normalization, "interpolation": card.interpolation}
    if card.input_size is None:
        overrides.update(eval_size="original", eval_batch_size=1)
    else:
        overrides["eval_size"] = list(card.input_size)
    datamodule: L.LightningDataModule = instantiate(cfg.data, **overrides)
    pred_dir = str(Path(cfg.paths.output_dir) / "predictions" / method) if cfg.get("save_predictions") else None
    module = _EvalModule(
        net, pred_dir, cfg.get("worst_cases", 10), cfg.get("hce_convention", "pysodmetrics"), matting_errors(cfg)
    )
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    trainer.test(module, datamodule=datamodule)
    results, curves, worst = {}, {}, {}
    for set_name, _metric in module.test_metrics.items():
        results[set_name] = {method: {k: float(v) for k, v in module.final_test_results[set_name].items()}}
        curves[set_name] = {method: module.final_test_curves[set_name]}
        worst[set_name] = {method: module.final_test_worst[set_name]}
    if pred_dir and trainer.is_global_zero:
        log.info("Predictions written to %s", pred_dir)
    return results, curves, worst


def _measured(results: Mapping, metric: str) -> bool:
    return any(metric in values for methods in results.values() for values in methods.values())


def _prediction_folders(predictions) -> dict[str, str]:
    """``predictions`` as ``{method: folder}``; a bare folder or a list is a clear error, not a crash."""
    if not isinstance(predictions, (dict, DictConfig)) or not all(
        isinstance(v, str) and v for v in predictions.values()
    ):
        raise ConfigError(
            f"predictions must map method names to folders, e.g. 'predictions={{mine: /path/to/preds}}' or "
            f"'+predictions.mine=/path/to/preds', not {predictions!r}."
        )
    return {str(k): str(v) for k, v in predictions.items()}


def _candidates(spec) -> list[str]:
    """Checkpoint paths of ``candidates``: a glob (``run/checkpoints/epoch_*.ckpt``) or a list of paths/globs."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    paths = sorted({p for pattern in patterns for p in glob.glob(str(pattern))})
    if not paths:
        raise ConfigError(
            f"candidates={spec!r} matches no checkpoint; give the candidates of a run, e.g. "
            "'candidates=logs/train/runs/<run>/checkpoints/epoch_*.ckpt'."
        )
    return paths


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.checkpoint``, ``cfg.candidates`` (then choose the best as the reference does) and/or
    ``cfg.predictions``; write tables, plots and worst cases."""
    if not cfg.get("checkpoint") and not cfg.get("predictions") and not cfg.get("candidates"):
        raise ValueError(
            "Nothing to evaluate: pass checkpoint=FILE, candidates='<run>/checkpoints/epoch_*.ckpt' or "
            "predictions={name: DIR} (e.g. 'predictions={mine: /path/to/preds}')."
        )
    output_dir = Path(cfg.paths.output_dir)
    save_config(cfg, output_dir)
    results: dict = {}
    curves: dict = {}
    worst: dict = {}

    def merge(parts: tuple[dict, dict, dict]) -> None:
        for store, part in zip((results, curves, worst), parts, strict=True):
            for set_name, methods in part.items():
                store.setdefault(set_name, {}).update(methods)

    if cfg.get("checkpoint"):
        method = cfg.get("method") or Path(cfg.checkpoint).stem
        merge(evaluate_checkpoint(cfg, method))
    candidates = _candidates(cfg.candidates) if cfg.get("candidates") else []
    for path in candidates:
        merge(evaluate_checkpoint(cfg, Path(path).stem, path))
    if cfg.get("predictions"):
        merge(
            evaluate_prediction_folders(
                _prediction_folders(cfg.predictions),
                cfg.data.root,
                list(cfg.data.test_sets),
                cfg.get("worst_cases", 10),
                cfg.get("workers"),
                cfg.get("hce_convention", "pysodmetrics"),
                matting_errors(cfg),
            )
        )
    measured_sets = list(results)
    results = add_group_means(results, cfg.data.get("set_groups"))
    if (
        not torch.distributed.is_available()
        or not torch.distributed.is_initialized()
        or torch.distributed.get_rank() == 0
    ):
        json_path = write_results(results, output_dir)
        print_table(results, "measured here")
        if cfg.get("compare_published"):
            merged = {
                s: {**{f"{m} (measured)": v for m, v in ms.items()}, **PUBLISHED.get(s, {})}
                for s, ms in results.items()
            }
            write_results(merged, output_dir, stem="published")
            if any(s in PUBLISHED for s in results):
                print_table(
                    {s: merged[s] for s in results if s in PUBLISHED}, "measured vs published (not measured here)"
                )
        if candidates:
            criteria = [c for c in cfg.get("selection_criteria") or ["Sm", "wFm", "HCE"] if _measured(results, c)]
            selection = select_best(results, measured_sets, [Path(p).stem for p in candidates], criteria)
            for row in selection["best"].values():
                row["checkpoint"] = next(p for p in candidates if Path(p).stem == row["method"])
            write_selection(selection, output_dir)
        atomic_write_text(output_dir / "worst_cases.json", json.dumps(worst, indent=1))
        write_curves(curves, output_dir)
        plots = plot_curves(curves, output_dir)
        log.info(
            "Results in %s (json/csv/md/tex), published comparison in published.md, plots: %s, worst cases: "
            "worst_cases.json",
            json_path,
            ", ".join(p.name for p in plots),
        )
    return results
