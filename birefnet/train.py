"""``train(cfg)``: build data, model, callbacks, loggers and trainer from a Hydra config and fit.

``python train.py`` at the repository root is the command-line entry; tests and notebooks call
:func:`train` with a composed config.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from birefnet.callbacks import check_resume_path
from birefnet.errors import ConfigError
from birefnet.launch import process_index
from birefnet.models.checkpoint import model_card
from birefnet.reporting import add_group_means, write_results
from birefnet.utils import instantiate_dict, log, save_config, split_logged_metrics

__all__ = ["train"]


def _describe_model(net: torch.nn.Module) -> str:
    n = sum(p.numel() for p in net.parameters())
    config = getattr(net, "config", {})
    knobs = ", ".join(
        f"{k}={v}"
        for k, v in config.items()
        if k in ("backbone", "decoder_attention", "multi_scale_input", "variant", "layout")
    )
    return f"{type(net).__name__}({knobs}) with {n / 1e6:.2f} M parameters"


def check_backbone_weights(cfg: DictConfig) -> None:
    """A full-scale recipe (``backbone_weights_required: true``) refuses to start a BiRefNet from a randomly
    initialised backbone unless the user says so: hundreds of GPU-epochs are otherwise spent on a worse model."""
    net = cfg.get("model", {}).get("net", {})
    if not cfg.get("backbone_weights_required") or "backbone_weights" not in net or net.get("backbone_weights"):
        return
    raise ConfigError(
        f"This recipe ({cfg.get('task_name')}) trains a {net.get('backbone')} backbone, which the reference starts "
        "from ImageNet weights, but none are given. Pass model.net.backbone_weights=timm (downloaded once by timm "
        "into the Hugging Face cache) or model.net.backbone_weights=/path/to/the/release/file.pth; or "
        "model.net.backbone_weights=none to train from random initialisation on purpose."
    )


def build_data_and_model(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The DataModule and LightningModule of a training config. The network's preprocessing card decides the
    normalisation (``data.normalization`` overrides it); the card it will be saved with records the training
    size and task."""
    model: L.LightningModule = instantiate(cfg.model)
    card = model_card(model.net)
    normalization = cfg.data.get("normalization") or card.normalization
    datamodule: L.LightningDataModule = instantiate(cfg.data, normalization=normalization)
    why = "data.normalization" if cfg.data.get("normalization") else f"the {type(model.net).__name__} card"
    model.net.preprocessing = card.replace(
        input_size=None if datamodule.dynamic_size else tuple(datamodule.size),
        normalization=normalization,
        task=datamodule.task or card.task,
    )
    log.info("Preprocessing: %s (normalisation from %s).", model.net.preprocessing.describe(), why)
    return datamodule, model


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Fit (and optionally test) the model described by ``cfg``; returns ``(metrics, objects)``."""
    check_backbone_weights(cfg)
    if cfg.get("ckpt_path"):
        check_resume_path(cfg.ckpt_path)
    if cfg.get("seed") is not None:
        # one stream per process: DDP processes get seed + their index; DDP broadcasts rank 0's initial weights,
        # so only data order and augmentation differ
        L.seed_everything(cfg.seed + process_index(), workers=True)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    output_dir = Path(cfg.paths.output_dir)

    datamodule, model = build_data_and_model(cfg)
    log.info("Model: %s%s", _describe_model(model.net), f" - {cfg.model_note}" if cfg.get("model_note") else "")
    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        save_config(cfg, output_dir)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    results = {}
    if cfg.get("test") and datamodule.test_sets and not trainer.fast_dev_run:
        ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt or None, weights_only=True)
        test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        metrics.update(test_metrics)
        results = split_logged_metrics(test_metrics, "test", cfg.get("task_name", "birefnet"))
        results = add_group_means(results, datamodule.set_groups)
    if trainer.is_global_zero:
        if results:
            json_path = write_results(results, output_dir)
            log.info(
                "Test metrics written to %s (and .csv/.md/.tex):\n%s",
                json_path,
                (output_dir / "results.md").read_text(),
            )
        cb = trainer.checkpoint_callback
        if cb is not None and cb.dirpath:
            log.info(
                "Checkpoints in %s (best: %s, last: %s)",
                cb.dirpath,
                cb.best_model_path or "-",
                cb.last_model_path or "-",
            )
        log.info("Run directory: %s", output_dir)
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}
