"""Shared fixtures: paths to the read-only shared data and composed Hydra configs for fast runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from birefnet.utils import compose_config as birefnet_compose

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


@pytest.fixture(autouse=True, scope="session")
def _no_caches_in_the_home_folder(tmp_path_factory):
    """Tests (and the commands they start) keep this project's caches, e.g. the onnxruntime graphs of Hub
    checkpoints, in a temporary folder, not in the user's home."""
    patch = pytest.MonkeyPatch()
    patch.setenv("BIREFNET_CACHE", str(tmp_path_factory.mktemp("birefnet_cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def fixtures_meta() -> dict:
    return json.loads((FIXTURES / "fixtures_meta.json").read_text())


def compose_config(config_name: str, tmp_path: Path, overrides: list[str] | None = None):
    """The real config with test-friendly settings (CPU, no workers, no logger); outputs go to ``tmp_path``."""
    overrides = list(overrides or [])
    keep_logger = config_name != "train" or any(o.startswith("logger=") for o in overrides)
    test_settings = [*([] if keep_logger else ["~logger"]), "trainer.accelerator=cpu", "data.num_workers=0"]
    return birefnet_compose(config_name, [*test_settings, *overrides], tmp_path)
