"""Shared fixtures: paths to the read-only shared data and composed Hydra configs for fast runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import birefnet  # noqa: F401  (registers the config resolvers)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
SAMPLE = ROOT / "data" / "sample"


def load_fixture(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / name))


def fixture_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict.*`` entries of a fixture as float32 (the stored fp16 values are exact)."""
    return {
        k[len("state_dict.") :]: (v.float() if v.is_floating_point() else v)
        for k, v in tensors.items()
        if k.startswith("state_dict.")
    }


def reference_keys(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (FIXTURES / "keys" / f"{name}.tsv").read_text().splitlines():
        key, shape, _ = line.split("\t")
        out[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return out


@pytest.fixture(scope="session")
def fixtures_meta() -> dict:
    return json.loads((FIXTURES / "fixtures_meta.json").read_text())


def compose_config(config_name: str, tmp_path: Path, overrides: list[str] | None = None):
    """Compose a real config with test-friendly settings; outputs go to ``tmp_path``."""
    GlobalHydra.instance().clear()
    overrides = list(overrides or [])
    keep_logger = config_name != "train" or any(o.startswith("logger=") for o in overrides)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            config_name,
            return_hydra_config=True,
            overrides=[
                *([] if keep_logger else ["~logger"]),
                "trainer.accelerator=cpu",
                "data.num_workers=0",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = 0
    HydraConfig().set_config(cfg)
    return cfg
