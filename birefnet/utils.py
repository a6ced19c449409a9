"""Small helpers shared by train() and evaluate(): building named callback/logger dicts, result tables."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from birefnet.atomic import atomic_write_text

log = logging.getLogger("birefnet")

__all__ = ["instantiate_dict", "log", "metrics_table", "save_config", "write_results"]

#: Column order of the DIS5K tables in the reference (``eval_existingOnes.py``).
METRIC_ORDER = (
    "maxFm",
    "wFm",
    "MAE",
    "Sm",
    "meanEm",
    "HCE",
    "maxEm",
    "meanFm",
    "adpEm",
    "adpFm",
    "mBA",
    "maxBIoU",
    "meanBIoU",
)


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


def _fmt(key: str, value: float) -> str:
    return f"{value:.0f}" if key == "HCE" else f"{value:.3f}"


def metrics_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], fmt: str = "markdown") -> str:
    """``{set: {method: {metric: value}}}`` -> a markdown or LaTeX table (reference column order)."""
    keys = [k for k in METRIC_ORDER if any(k in m for s in results.values() for m in s.values())]
    rows = [
        [s, method, *(_fmt(k, vals[k]) if k in vals else "-" for k in keys)]
        for s, methods in results.items()
        for method, vals in methods.items()
    ]
    header = ["Dataset", "Method", *keys]
    if fmt == "latex":
        lines = [" & ".join(header) + r" \\ \hline"] + [" & ".join(r) + r" \\" for r in rows]
        return "\\begin{tabular}{ll" + "c" * len(keys) + "}\n" + "\n".join(lines) + "\n\\end{tabular}\n"
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


@rank_zero_only
def write_results(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], output_dir: str | Path, stem: str = "results"
) -> Path:
    """Write ``results.json``, ``.csv``, ``.md`` and ``.tex`` into ``output_dir``; returns the JSON path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = {s: {m: {k: float(v) for k, v in vals.items()} for m, vals in ms.items()} for s, ms in results.items()}
    atomic_write_text(out / f"{stem}.json", json.dumps(plain, indent=2))
    keys = sorted(
        {k for ms in plain.values() for vals in ms.values() for k in vals},
        key=lambda k: (METRIC_ORDER.index(k) if k in METRIC_ORDER else 99, k),
    )
    csv = ["dataset,method," + ",".join(keys)]
    csv += [
        f"{s},{m}," + ",".join(f"{vals.get(k, float('nan')):.6f}" for k in keys)
        for s, ms in plain.items()
        for m, vals in ms.items()
    ]
    atomic_write_text(out / f"{stem}.csv", "\n".join(csv) + "\n")
    atomic_write_text(out / f"{stem}.md", metrics_table(plain, "markdown"))
    atomic_write_text(out / f"{stem}.tex", metrics_table(plain, "latex"))
    return out / f"{stem}.json"


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
