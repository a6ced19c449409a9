"""The OmegaConf resolvers the configs use: named pure functions of their arguments, nothing else.

No resolver evaluates text: Hydra resolves ``${...}`` in command-line values and environment variables, so a
resolver that ran code would let a file name (``checkpoint='m${...}.pth'``) or ``PROJECT_ROOT`` run Python.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

from birefnet.errors import ConfigError
from birefnet.launch import rank_suffix, run_name

__all__ = ["PROJECT_ROOT", "epoch_milestones", "reference_lr", "register_resolvers"]

#: The repository root (parent of this package), used by configs/paths as ${project_root:}.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _positive_int(value, key: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a whole number >= 1, not {value!r}.") from None
    if number != int(number) or number < 1:
        raise ConfigError(f"{key} must be a whole number >= 1, not {value!r}.")
    return int(number)


def reference_lr(base: float, batch_size) -> float:
    """The reference learning-rate rule ``base * sqrt(batch_size / 4)`` (per-device batch size).

    Reference bases: 1e-4 for DIS5K, 1e-5 for the other tasks. ``${reference_lr:1e-4,${data.batch_size}}``.
    """
    return float(base) * math.sqrt(_positive_int(batch_size, "data.batch_size") / 4)


def epoch_milestones(max_epochs, *fractions: float) -> list[int]:
    """Epochs at the given fractions of ``max_epochs``: ``${epoch_milestones:${trainer.max_epochs},0.6,0.85}``."""
    epochs = _positive_int(max_epochs, "trainer.max_epochs")
    return [int(epochs * float(f)) for f in fractions]


def loss_preset(task: str) -> dict[str, float]:
    """The reference pixel-loss weights of a task (``birefnet.losses.LOSS_PRESETS``): ``${loss_preset:General}``."""
    from birefnet.losses import LOSS_PRESETS

    if task not in LOSS_PRESETS:
        raise ConfigError(f"No loss preset {task!r}; the presets are {', '.join(LOSS_PRESETS)}.")
    return dict(LOSS_PRESETS[task])


def monitor_mode(metric: str) -> str:
    """``"max"`` or ``"min"`` for a metric of the registry (``${monitor_mode:${model.monitor}}``), so choosing the
    monitored metric also chooses the direction."""
    from birefnet.metrics.registry import METRICS

    if metric not in METRICS:
        raise ConfigError(f"model.monitor={metric!r} is not a metric; choose one of {', '.join(METRICS)}.")
    return "max" if METRICS[metric].higher_is_better else "min"


def register_resolvers() -> None:
    """Register the project's resolvers (idempotent)."""
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("reference_lr", reference_lr, replace=True)
    OmegaConf.register_new_resolver("epoch_milestones", epoch_milestones, replace=True)
    OmegaConf.register_new_resolver("run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("rank_suffix", rank_suffix, replace=True)
    OmegaConf.register_new_resolver("loss_preset", loss_preset, replace=True)
    OmegaConf.register_new_resolver("monitor_mode", monitor_mode, replace=True)
