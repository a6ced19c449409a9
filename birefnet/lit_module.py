"""LightningModule wiring a segmentation network, its loss, the DIS metrics, optimiser and scheduler."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import lightning as L
import torch
from torch import nn

from birefnet.losses import DISLoss
from birefnet.metrics import DISMetrics
from birefnet.models.blocks import resize
from birefnet.models.checkpoint import model_card, model_description
from birefnet.models.hub import resolve_weights
from birefnet.models.state_dict import (
    CONFIG_METADATA_KEY,
    PREPROCESSING_METADATA_KEY,
    load_state_dict_strict,
    read_checkpoint,
)

log = logging.getLogger(__name__)

__all__ = ["DISLitModule"]


class DISLitModule(L.LightningModule):
    """Training, validation and test steps for any network returning a :class:`SegmentationOutput`.

    Args:
        net: the segmentation network (BiRefNet, U2Net, ISNet).
        loss: the training loss, a :class:`~birefnet.losses.SegmentationLoss` called as
            ``loss(output, mask, class_labels)``.
        optimizer: partial optimiser, completed with the parameters (Hydra ``_partial_: true``).
        scheduler: partial LR scheduler or ``None``; ``scheduler_interval`` is ``'epoch'`` or ``'step'``.
        compile: ``torch.compile`` the network in place (keeps state-dict keys clean).
        monitor: the validation metric used for "best" checkpoints (logged as ``val/<monitor>``).
        log_images: number of validation predictions logged as images per epoch (0: off).
        input_key: batch entry fed to the network: ``"image"``, or ``"mask"`` to train IS-Net's GT encoder.
        init_from: a checkpoint (official BiRefNet / U2-Net ``.pth``, HF safetensors, or this project's; a file, a
            folder or a Hub repo such as ``hf:ZhengPeng7/BiRefNet``) whose weights initialise the network before
            training: fine-tuning. Loaded strictly.
        channels_last: keep the network and its inputs in channels-last memory format (faster convolutions
            with tensor cores under bf16/fp16).
        worst_cases: how many images with the highest MAE the test results list per set.
        hce_convention: how HCE binarises predictions, ``"pysodmetrics"`` or ``"reference"`` (see
            :func:`birefnet.metrics.functional.image_scores`).
        matting_errors: also compute SAD, Grad and Conn on the soft ground truth (:mod:`birefnet.metrics.matting`);
            the Matting recipe turns them on.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        scheduler_interval: str = "epoch",
        compile: bool = False,
        monitor: str = "Sm",
        log_images: int = 4,
        input_key: str = "image",
        init_from: str | None = None,
        channels_last: bool = False,
        worst_cases: int = 10,
        hce_convention: str = "pysodmetrics",
        matting_errors: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        self.net = net
        if init_from:
            source = resolve_weights(init_from)
            sd = read_checkpoint(source.path).state_dict
            load_state_dict_strict(net, sd, source.label, looks_like=type(net).__name__)
            log.info("Initialised %s from %s.", type(net).__name__, source.label)
        self.loss_fn = loss if loss is not None else DISLoss()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_metrics = nn.ModuleDict()
        self.test_metrics = nn.ModuleDict()
        self._step_start = 0.0
        # the last computed test results per set (metrics, curves, worst images), for evaluate()
        self.final_test_results: dict = {}
        self.final_test_curves: dict = {}
        self.final_test_worst: dict = {}

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and stage == "fit":
            self.net.compile()
        dm = getattr(self._trainer, "datamodule", None)
        for names, store in (
            (getattr(dm, "val_sets", []), self.val_metrics),
            (getattr(dm, "test_sets", []), self.test_metrics),
        ):
            for name in names:
                if name not in store:
                    store[name] = DISMetrics(
                        hce_convention=self.hparams.hce_convention, with_matting=self.hparams.matting_errors
                    )

    def _set_names(self, stage: str) -> list[str]:
        dm = self.trainer.datamodule
        return list(dm.val_sets if stage == "val" else dm.test_sets)

    # -- training ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        return self.net(self._input(x))

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last and x.ndim == 4 else x

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        out = self.net(self._input(batch[self.hparams.input_key]))
        loss, parts = self.loss_fn(out, masks, batch.get("class_label"))
        if not torch.isfinite(loss):
            bad = [k for k, v in parts.items() if not torch.isfinite(v)]
            raise FloatingPointError(
                f"Non-finite training loss {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}); "
                f"non-finite terms: {bad or 'none individually (overflow in the sum)'}. Lower the learning rate, "
                "use bf16-mixed instead of 16-mixed, or enable gradient clipping (trainer.gradient_clip_val)."
            )
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        optimizers = self.optimizers(use_pl_optimizer=False) if self._trainer is not None else None
        if optimizers is not None:
            optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
            self.log("train/lr", optimizer.param_groups[0]["lr"], batch_size=batch["image"].shape[0])
        elapsed = time.perf_counter() - self._step_start
        if elapsed > 0:
            self.log("train/images_per_s", batch["image"].shape[0] / elapsed, batch_size=batch["image"].shape[0])

    # -- evaluation ----------------------------------------------------------------------------------------
    def _eval_step(self, batch: Mapping, dataloader_idx: int, stage: str) -> torch.Tensor:
        out = self.net(self._input(batch[self.hparams.input_key]))
        probs = torch.sigmoid(out.logits.float())
        store = self.val_metrics if stage == "val" else self.test_metrics
        # every evaluation batch comes from one set; the DataModule's sampler never pads under DDP
        full = [resize(p[None], m.shape[-2:])[0] for p, m in zip(probs, batch["mask_full"], strict=True)]
        store[batch["set"][0]].update(full, batch["mask_full"], names=batch["name"])
        if stage == "val" and dataloader_idx == 0 and self.hparams.log_images and not getattr(self, "_logged", True):
            self._log_predictions(batch, probs)
            self._logged = True
        return probs

    def validation_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "val")

    def test_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "test")

    def on_validation_epoch_start(self) -> None:
        self._logged = False

    def _log_epoch_metrics(self, stage: str) -> None:
        store = self.val_metrics if stage == "val" else self.test_metrics
        names = [n for n in self._set_names(stage) if n in store]
        per_set = {}
        for name in names:
            values = store[name].compute()
            per_set[name] = values
            if stage == "test":
                self.final_test_results[name] = {k: float(v) for k, v in values.items()}
                self.final_test_curves[name] = store[name].curves()
                self.final_test_worst[name] = store[name].worst(self.hparams.worst_cases)
            for key, value in values.items():
                self.log(f"{stage}/{name}/{key}", value.float(), add_dataloader_idx=False)
            store[name].reset()
        if per_set:
            for key in next(iter(per_set.values())):
                mean = torch.stack([v[key].float() for v in per_set.values()]).mean()
                self.log(f"{stage}/{key}", mean, add_dataloader_idx=False, prog_bar=key == self.hparams.monitor)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def _log_predictions(self, batch: Mapping, probs: torch.Tensor) -> None:
        n = min(self.hparams.log_images, probs.shape[0])
        grid = torch.cat([batch["mask"][:n].float(), probs[:n]], dim=3).clamp(0, 1)  # mask | prediction
        for logger in self.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_images"):
                exp.add_images("val/mask_vs_prediction", grid, self.global_step)
            elif hasattr(logger, "log_image"):
                logger.log_image("val/mask_vs_prediction", [g for g in grid], step=self.global_step)

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = (self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=1e-4)))(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }

    # -- checkpoints ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The network's constructor arguments and preprocessing card, so load_model() rebuilds it from the file alone.
        checkpoint[CONFIG_METADATA_KEY] = model_description(self.net)
        checkpoint[PREPROCESSING_METADATA_KEY] = model_card(self.net).to_dict()
        checkpoint["loss_weights"] = self.loss_fn.weights  # the fine-tune schedule re-derives them on resume

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        sd = checkpoint.get("state_dict", {})
        for key in [k for k in sd if "._orig_mod." in k]:
            sd[key.replace("._orig_mod.", ".")] = sd.pop(key)
        if checkpoint.get("loss_weights") is not None:
            self.loss_fn.set_weights(checkpoint["loss_weights"])
