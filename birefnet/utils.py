"""Small helpers shared by train() and evaluate(): named callback/logger dicts, saving and composing configs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from birefnet.atomic import atomic_write_text

log = logging.getLogger("birefnet")

__all__ = ["compose_config", "instantiate_dict", "log", "save_config", "split_logged_metrics"]


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiate every entry with a ``_target_`` in a named dict (callbacks, loggers); ``null`` entries skip."""
    if not cfg:
        return []
    built = [instantiate(c) for c in cfg.values() if isinstance(c, Mapping) and "_target_" in c]
    return [b for b in built if b is not None]  # factories return None for a switched-off entry


@rank_zero_only
def save_config(cfg: DictConfig, output_dir: str | Path) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(output_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def split_logged_metrics(metrics: Mapping[str, torch.Tensor], stage: str, method: str) -> dict:
    """``{'test/DIS-VD/Sm': v}`` -> ``{'DIS-VD': {method: {'Sm': v}}}``."""
    results: dict = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == stage:
            results.setdefault(parts[1], {}).setdefault(method, {})[parts[2]] = float(value)
    return results


def compose_config(
    config_name: str, overrides: list[str] | None = None, output_dir: str | Path | None = None
) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` outside ``@hydra.main`` (notebooks, tests, scripts).

    ``output_dir`` replaces Hydra's run directory (``paths.output_dir`` and ``paths.log_dir`` point there), and
    the Hydra config is registered so ``${hydra:...}`` interpolations resolve as in a command-line run.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from birefnet import PROJECT_ROOT

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name, return_hydra_config=True, overrides=list(overrides or []))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = cfg.paths.log_dir = cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.num, cfg.hydra.job.id = 0, 0
    HydraConfig().set_config(cfg)
    return cfg
