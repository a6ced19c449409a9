"""Training callbacks, and the checkpoint writer that makes every checkpoint file appear complete or not at all."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from birefnet.atomic import atomic_path
from birefnet.errors import CheckpointError, ConfigError
from birefnet.models.state_dict import read_state_dict

__all__ = [
    "AtomicCheckpointIO",
    "EpochWindowCheckpoint",
    "FinetuneLossSchedule",
    "RNGStateCheckpoint",
    "check_resume_path",
    "ema_callback",
    "finetune_loss_weights",
    "read_training_checkpoint",
]


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
    """Sets the loss weights (``pl_module.loss_fn.set_weights``, see :class:`~birefnet.losses.SegmentationLoss`) at
    the start of every training epoch from the epoch number alone.

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
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"trainer.max_epochs must be a whole number >= 1, not {epochs!r}.")
        if isinstance(finetune_last_epochs, bool) or not isinstance(finetune_last_epochs, int):
            raise ConfigError(
                f"callbacks.loss_schedule.finetune_last_epochs must be a whole number (e.g. -40), "
                f"not {finetune_last_epochs!r}."
            )
        if mode not in ("compounding", "once"):
            raise ConfigError(f"callbacks.loss_schedule.mode must be 'compounding' or 'once', not {mode!r}.")
        self.epochs, self.finetune_last_epochs, self.mode, self.matting = epochs, finetune_last_epochs, mode, matting

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss_fn = pl_module.loss_fn
        weights = finetune_loss_weights(
            loss_fn.base_weights,
            trainer.current_epoch + 1,
            self.epochs,
            self.finetune_last_epochs,
            self.mode,
            self.matting,
        )
        loss_fn.set_weights(weights)
        for name, value in weights.items():
            pl_module.log(f"loss_weight/{name}", float(value), on_step=False, on_epoch=True)


class EpochWindowCheckpoint(L.Callback):
    """Keeps the reference's checkpoint candidates: ``epoch_NNN.ckpt`` at every ``every``-th epoch of the last
    ``last_epochs`` (1-based epoch ``e`` is kept when ``e >= epochs - last_epochs`` and ``e % every == 0``, as the
    reference's ``train.py``). ``evaluate.py candidates=...`` then picks the best ones.

    Args:
        dirpath: the checkpoint folder.
        epochs: total epochs of the run.
        last_epochs / every: the window and the step (DIS5K/COD/HRSOD/General/Matting 50 and 5, General-2K 30 and 2).
    """

    def __init__(self, dirpath: str, epochs: int, last_epochs: int = 50, every: int = 5) -> None:
        for key, value, smallest in (("epochs", epochs, 1), ("last_epochs", last_epochs, 0), ("every", every, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
                raise ConfigError(f"callbacks.epoch_window.{key} must be a whole number >= {smallest}, not {value!r}.")
        self.dirpath, self.epochs, self.last_epochs, self.every = Path(dirpath), epochs, last_epochs, every

    def keeps(self, epoch: int) -> bool:
        """Whether 1-based ``epoch`` is a candidate."""
        return epoch >= self.epochs - self.last_epochs and epoch % self.every == 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.keeps(epoch) and not trainer.sanity_checking:
            trainer.save_checkpoint(self.dirpath / f"epoch_{epoch:03d}.ckpt")


class RNGStateCheckpoint(L.Callback):
    """Saves Python, NumPy, torch (and CUDA) RNG states in checkpoints and restores them on resume.

    Lightning restores model, optimizer, scheduler and loop state but not the global RNGs, which drive data
    shuffling and (through :class:`~birefnet.data.DISDataset`'s per-sample seeding) augmentations. With this
    callback a run resumed from an epoch-end checkpoint continues exactly as the uninterrupted run.
    """

    def state_dict(self) -> dict:
        state = {
            "python": random.getstate(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        random.setstate(_as_python_state(state_dict["python"]))
        name, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _numpy_state_to_plain(state: tuple) -> tuple:
    # tensors and plain numbers only, so checkpoints stay loadable with torch.load(weights_only=True)
    name, keys, pos, has_gauss, gauss = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))


def _as_python_state(state) -> tuple:
    # random.getstate() is (version, tuple_of_ints, gauss_next); a checkpoint round trip may turn tuples into lists
    return (state[0], tuple(state[1]), state[2])


def ema_callback(decay: float | None = None, update_starting_at_epoch: int | None = None) -> L.Callback | None:
    """An EMA-of-weights callback (Lightning's ``EMAWeightAveraging``) when ``decay`` is set, else ``None`` (off).

    Validation, test and the saved checkpoints use the averaged weights.
    """
    if not decay:
        return None
    from lightning.pytorch.callbacks import EMAWeightAveraging

    return EMAWeightAveraging(decay=decay, update_starting_at_epoch=update_starting_at_epoch)


def check_resume_path(path) -> str:
    """``ckpt_path`` as a local file, checked before anything is built; a URL or a name Lightning would look up
    (``last``, ``best``) is refused with what to pass instead."""
    text = str(path)
    if "://" in text:
        raise CheckpointError(
            f"ckpt_path={text}: checkpoints are read from local files only, never fetched (a downloaded training "
            "checkpoint would be unpickled). Download it yourself and pass the local path."
        )
    if not Path(text).is_file():
        hint = (
            f" ({text!r} is not looked up: every run writes a new folder) "
            if text in ("last", "best", "hpc", "registry")
            else " "
        )
        raise CheckpointError(
            f"ckpt_path={text} is not a file{hint}; pass the checkpoint to resume, e.g. "
            "ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt."
        )
    return text


def read_training_checkpoint(path) -> dict:
    """A Lightning training checkpoint (to resume from), read with the project's weights-only reader.

    Nothing is unpickled and nothing is fetched: a URL is refused before any request (Lightning would download it
    and unpickle it), and so is a file that is not a local Lightning checkpoint.

    Raises:
        CheckpointError: a URL, a missing, unreadable or malicious file, or a weights file without training state
            (the message says to use ``model.init_from`` for that).
    """
    text = check_resume_path(path)
    content = read_state_dict(text)
    if not isinstance(content, dict) or "state_dict" not in content or "loops" not in content:
        raise CheckpointError(
            f"ckpt_path={text} is not a Lightning training checkpoint (it holds no training state to resume). To "
            f"start training from its weights, pass model.init_from={text} instead."
        )
    return content


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer, made safe: reading goes through :func:`read_training_checkpoint`
    (weights only, local files only), and the file is written beside its target and renamed over it when complete.

    A run killed while saving leaves the previous ``last.ckpt`` intact (Lightning's own writer stages through the
    system temporary folder and copies, which a kill can cut short), so resuming always finds a whole file.
    """

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return read_training_checkpoint(path)

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            torch.save(checkpoint, tmp)
        return None
