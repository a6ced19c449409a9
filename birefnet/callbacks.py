"""Training callbacks."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L

__all__ = ["FinetuneLossSchedule", "finetune_loss_weights"]


def finetune_loss_weights(
    base: Mapping[str, float],
    epoch: int,
    epochs: int,
    finetune_last_epochs: int,
    mode: str = "compounding",
    matting: bool = False,
) -> dict[str, float]:
    """Loss weights at 1-based ``epoch`` under the reference's final-epochs fine-tune phase.

    The phase covers epochs ``> epochs + finetune_last_epochs`` (``finetune_last_epochs`` is negative, e.g.
    -40 for DIS5K). The reference multiplies the weights at the start of every such epoch, so they compound:
    after k phase epochs bce is 0, iou is ``0.5**k`` and mae ``0.9**k`` times the base (Matting: mse and ssim
    ``0.9**k``). ``mode="once"`` applies a single step (k = 1) for the whole phase. A pure function of the
    epoch, so a resumed run gets the same weights as an uninterrupted one.
    """
    if mode not in ("compounding", "once"):
        raise ValueError(f"mode must be 'compounding' (reference) or 'once', not {mode!r}.")
    start = epochs + finetune_last_epochs
    k = max(0, epoch - start) if finetune_last_epochs < 0 else 0
    if k and mode == "once":
        k = 1
    w = dict(base)
    if not k:
        return w
    factors = {"mse": 0.9**k, "ssim": 0.9**k} if matting else {"bce": 0.0, "iou": 0.5**k, "mae": 0.9**k}
    return {name: value * factors.get(name, 1.0) for name, value in w.items()}


class FinetuneLossSchedule(L.Callback):
    """Sets ``pl_module.loss_weights`` at the start of every training epoch from the epoch number alone.

    Args:
        epochs: total epochs of the run (the reference's ``--epochs``).
        finetune_last_epochs: negative length of the phase (DIS5K -40, COD/HRSOD/General -20, Matting -10);
            0 disables it.
        mode: ``"compounding"`` (reference, default) or ``"once"``.
        matting: use the Matting rule (mse and ssim decay) instead of the default one.
    """

    def __init__(
        self, epochs: int, finetune_last_epochs: int = -40, mode: str = "compounding", matting: bool = False
    ) -> None:
        self.epochs, self.finetune_last_epochs, self.mode, self.matting = epochs, finetune_last_epochs, mode, matting

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        base = pl_module.loss_fn.weights
        weights = finetune_loss_weights(
            base, trainer.current_epoch + 1, self.epochs, self.finetune_last_epochs, self.mode, self.matting
        )
        pl_module.loss_weights = weights
        for name, value in weights.items():
            pl_module.log(f"loss_weight/{name}", float(value), on_step=False, on_epoch=True)
