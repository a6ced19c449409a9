"""Preprocessing cards and one loading API: local files, Hugging Face layout folders, Hub repo ids (from a Hub cache
folder built here, offline) and pretrained timm backbones. No test touches the network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from birefnet.errors import CheckpointError, ConfigError
from birefnet.models import BiRefNet, ISNet, PreprocessingCard, U2Net, load_model, save_model
from birefnet.predict import Predictor
from tests.conftest import ROOT, SAMPLE, compose_config, reference_keys

TINY = {"backbone": "pvt_v2_b0", "decoder_attention": ""}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def no_network(monkeypatch):
    """Any socket use fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, no_network) -> Path:
    """An empty Hugging Face Hub cache in offline mode, set the way a user sets it (environment), and mirrored
    into the constants huggingface_hub read when it was imported."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def add_repo(cache: Path, repo_id: str, files: dict[str, Path], revision: str = "main", commit: str = COMMIT) -> None:
    """Put files into ``cache`` the way ``huggingface_hub`` lays out a downloaded model repo."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for name, src in files.items():
        (snapshot / name).write_bytes(src.read_bytes())


def _equal_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int = 64) -> None:
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a.eval()(x).logits, b.eval()(x).logits)


def _official_file(model: torch.nn.Module, path: Path) -> Path:
    """The weights alone, keys as the official code names them (what the release files and Hub repos hold)."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# -- Hub repo ids, offline from the cache ---------------------------------------------------------------------------
def test_official_repo_id_loads_from_the_cache_with_its_zoo_card(hub_cache, tmp_path, caplog):
    torch.manual_seed(0)
    net = BiRefNet(**TINY).eval()
    weights = _official_file(net, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BiRefNet"], "bb_pretrained": False}))
    add_repo(
        hub_cache, "ZhengPeng7/BiRefNet_HR", {"model.safetensors": weights, "config.json": tmp_path / "config.json"}
    )
    with caplog.at_level("INFO"):
        loaded = BiRefNet.from_pretrained("ZhengPeng7/BiRefNet_HR")
    _equal_outputs(net, loaded)
    assert loaded.preprocessing == PreprocessingCard(input_size=(2048, 2048), task="General")
    assert "model zoo entry BiRefNet_HR" in caplog.text
    # the unambiguous form with a revision reaches the same snapshot
    assert load_model(f"hf:ZhengPeng7/BiRefNet_HR@{COMMIT}").preprocessing.input_size == (2048, 2048)


def test_saved_repo_round_trips_through_the_hub_cache_with_revision(hub_cache, tmp_path):
    torch.manual_seed(1)
    net = U2Net("u2netp").eval()
    net.preprocessing = PreprocessingCard(input_size=(288, 288), normalization="u2net", task="SOD")
    folder = net.save_pretrained(tmp_path / "export")
    files = {name: folder / name for name in ("model.safetensors", "config.json")}
    add_repo(hub_cache, "someone/u2netp-test", files, revision="v1")
    loaded = U2Net.from_pretrained("hf:someone/u2netp-test@v1")
    _equal_outputs(net, loaded)
    assert loaded.preprocessing == net.preprocessing and loaded.config["variant"] == "u2netp"


def test_missing_repo_offline_names_the_repo_and_what_to_do(hub_cache):
    with pytest.raises(
        CheckpointError, match=r"ZhengPeng7/BiRefNet_lite is not in the Hugging Face cache .*HF_HUB_OFF"
    ):
        BiRefNet.from_pretrained("ZhengPeng7/BiRefNet_lite")
    with pytest.raises(CheckpointError, match="write hf:<owner>/<name>"):
        load_model("hf:not a repo")


def test_local_path_wins_over_a_repo_id_of_the_same_name(hub_cache, tmp_path, monkeypatch):
    net = U2Net("u2netp").eval()
    net.save_pretrained(tmp_path / "owner" / "name")
    monkeypatch.chdir(tmp_path)
    _equal_outputs(net, U2Net.from_pretrained("owner/name"))  # the folder, not the (absent) repo
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        U2Net.from_pretrained("hf:owner/name")


def test_cli_predict_takes_a_repo_id_with_the_environment_offline(tmp_path):
    torch.manual_seed(0)
    cache = tmp_path / "hf-cache"
    net = U2Net("u2netp").eval()
    add_repo(cache, "someone/u2netp", {"model.safetensors": _official_file(net, tmp_path / "model.safetensors")})
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    image = sorted((SAMPLE / "ECSSD-TE" / "im").glob("*.jpg"))[0]
    cmd = [sys.executable, "-m", "birefnet.cli", "predict", str(image), "--output", str(tmp_path / "out")]
    out = subprocess.run([*cmd, "--checkpoint", "someone/u2netp"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / f"{image.stem}.png").is_file()
    missing = subprocess.run([*cmd, "--checkpoint", "hf:someone/absent"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "someone/absent is not in the Hugging Face cache" in missing.stderr


# -- timm backbones by name ------------------------------------------------------------------------------------------
def test_backbone_weights_timm_come_through_timms_pretrained_mechanism(hub_cache, tmp_path, caplog):
    import timm

    torch.manual_seed(2)
    source = timm.create_model("pvt_v2_b0", pretrained=False)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    add_repo(hub_cache, "timm/pvt_v2_b0.in1k", {"model.safetensors": tmp_path / "model.safetensors"})
    with caplog.at_level("INFO"):
        net = BiRefNet(**TINY, backbone_weights="timm")
    assert torch.equal(net.bb.patch_embed1.proj.weight, source.patch_embed.proj.weight)
    assert torch.equal(net.bb.block4[1].mlp.fc2.weight, source.stages[3].blocks[1].mlp.fc2.weight)
    assert "Backbone weights timm:pvt_v2_b0.in1k: loaded 176 tensors, 0 left at init" in caplog.text
    with pytest.raises(CheckpointError, match=r"pvt_v2_b1\.in1k .*HF_HUB_OFFLINE=1"):
        BiRefNet(backbone="pvt_v2_b1", decoder_attention="", backbone_weights="timm")


def test_full_scale_recipe_refuses_a_random_backbone_unless_told(tmp_path, caplog):
    from hydra.utils import instantiate

    from birefnet.train import train

    cfg = compose_config("train", tmp_path, ["experiment=dis5k"])
    with pytest.raises(ConfigError, match=r"backbone_weights=timm .*backbone_weights=none"):
        train(cfg)  # before any data or model is built
    cfg = compose_config("train", tmp_path, ["experiment=dis5k", "model.net.backbone_weights=none"])
    from birefnet.train import check_backbone_weights

    check_backbone_weights(cfg)
    with caplog.at_level("INFO"):
        instantiate({**cfg.model.net, "backbone": "pvt_v2_b0"})
    assert "random initialisation (backbone_weights=none)" in caplog.text


# -- save_pretrained / from_pretrained and the official key set --------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: BiRefNet(**TINY), lambda: U2Net("u2netp"), lambda: ISNet()])
def test_save_pretrained_round_trip_keeps_outputs_and_card(make, tmp_path):
    torch.manual_seed(3)
    net = make().eval()
    net.preprocessing = net.preprocessing.replace(input_size=(384, 512), interpolation="bicubic", task="Test")
    folder = net.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [type(net).__name__]
    loaded = type(net).from_pretrained(folder)
    _equal_outputs(net, loaded)
    assert loaded.preprocessing == net.preprocessing


def test_exported_birefnet_has_exactly_the_official_keys(tmp_path):
    net = BiRefNet(backbone="pvt_v2_b0")  # every reference default but the backbone
    net.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    assert keys == set(reference_keys("birefnet_pvt_v2_b0"))
    assert metadata["format"] == "pt"  # the Hugging Face loaders refuse safetensors without it


# -- the card decides preprocessing ----------------------------------------------------------------------------------
def test_card_is_written_into_every_saved_format_and_read_back(tmp_path):
    net = U2Net("u2netp")
    net.preprocessing = PreprocessingCard(input_size=(320, 320), normalization="u2net", task="SOD")
    for name in ("m.safetensors", "m.pth"):
        save_model(net, tmp_path / name)
        assert load_model(tmp_path / name).preprocessing == net.preprocessing
    official = _official_file(net, tmp_path / "u2netp.pth")  # no card stored: the zoo's, by file name
    assert load_model(official).preprocessing.task == "SOD"
    assert load_model(tmp_path / "m.pth", preprocessing={"input_size": (256, 256)}).preprocessing.input_size == (
        256,
        256,
    )


def test_a_checkpoint_trained_here_is_predicted_and_evaluated_at_its_training_size(tmp_path, caplog):
    from birefnet.evaluate import evaluate
    from birefnet.train import train

    overrides = ["data.size=[320,320]", "data.batch_size=2", "+trainer.max_steps=1", "+trainer.limit_val_batches=0"]
    cfg = compose_config("train", tmp_path / "train", [*overrides, "test=false", "logger=csv"])
    _, objects = train(cfg)
    ckpt = objects["trainer"].checkpoint_callback.last_model_path
    assert load_model(ckpt).preprocessing == PreprocessingCard(input_size=(320, 320), task="SOD")
    assert Predictor(ckpt, device="cpu").card.input_size == (320, 320)
    with caplog.at_level("INFO"):  # data=sample is 256 px; the card wins
        evaluate(compose_config("eval", tmp_path / "eval", [f"checkpoint={ckpt}", "data.test_sets=[ECSSD-TE]"]))
    assert "with 320x320 (HxW), imagenet normalisation" in caplog.text


def test_official_layout_file_is_evaluated_and_predicted_at_1024(tmp_path, caplog):
    from birefnet.data.datamodule import DISDataModule
    from birefnet.evaluate import evaluate

    torch.manual_seed(0)
    official = _official_file(BiRefNet(**TINY), tmp_path / "BiRefNet-custom.safetensors")
    assert Predictor(official, device="cpu").card.input_size == (1024, 1024)
    seen = {}
    real_setup = DISDataModule.setup

    def record(self, stage=None):  # evaluate at 1024 on two images only: the size is what this test checks
        seen["size"] = self.eval_size
        self.test_sets = self.test_sets[:1]
        real_setup(self, stage)
        self.test_datasets[0].samples = self.test_datasets[0].samples[:2]

    with caplog.at_level("INFO"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(DISDataModule, "setup", record)
        evaluate(compose_config("eval", tmp_path / "eval", [f"checkpoint={official}"]))
    assert seen["size"] == (1024, 1024)
    assert "with 1024x1024 (HxW), imagenet normalisation, bilinear resize (the model's card)" in caplog.text


def test_dynamic_card_predicts_each_image_at_its_own_size():
    card = PreprocessingCard(input_size=None)
    assert card.target_size(300, 470) == (288, 448) and card.target_size(20, 40) == (32, 32)  # floor, as the reference
    net = BiRefNet(**TINY).eval()
    net.preprocessing = card
    predictor = Predictor(model=net, device="cpu")
    image = (np.random.default_rng(0).random((100, 150, 3)) * 255).astype(np.uint8)
    (mask,) = predictor.masks([image])
    assert mask.shape == (100, 150)


def test_stored_metadata_is_plain_data_and_never_resolved_or_fetched(tmp_path, no_network):
    net = BiRefNet(**TINY)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    description = {
        "class": "BiRefNet",
        **TINY,
        "backbone_kwargs": {"pretrained": True, "pretrained_cfg_overlay": {"url": "https://example.com/w.pth"}},
        "backbone_weights": "timm",
    }
    card = {"input_size": [512, 512], "task": "${oc.env:HOME}"}
    save_file(
        sd,
        str(tmp_path / "m.safetensors"),
        {"birefnet_model": json.dumps(description), "birefnet_preprocessing": json.dumps(card)},
    )
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.preprocessing.task == "${oc.env:HOME}"  # kept as text, not resolved
    _equal_outputs(net, loaded)
    save_file(sd, str(tmp_path / "bad.safetensors"), {"birefnet_preprocessing": json.dumps({"input_size": "x"})})
    with pytest.raises(CheckpointError, match="preprocessing card is invalid"):
        load_model(tmp_path / "bad.safetensors")


def test_every_zoo_entry_has_a_valid_card_and_unique_names():
    from birefnet.models.zoo import MODEL_ZOO, find_zoo_entry, zoo_markdown

    files = [f for e in MODEL_ZOO.values() for f in e.files]
    assert len(files) == len(set(files))
    assert find_zoo_entry("/weights/BiRefNet_lite-general-2K-epoch_232.pth").card.input_size == (1440, 2560)
    assert find_zoo_entry("ZhengPeng7/BiRefNet_dynamic@main").card.input_size is None
    assert zoo_markdown() in (ROOT / "docs" / "model-zoo.md").read_text()  # the docs show the table the code uses


def test_push_to_hub_uploads_the_save_pretrained_folder(tmp_path, monkeypatch, no_network):
    """push_to_hub creates the repo and uploads exactly what save_pretrained writes (the client is recorded here,
    the test never reaches the Hub)."""
    import huggingface_hub

    calls = {}

    class RecordingApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["create"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["card"] = json.loads((Path(folder_path) / "config.json").read_text())["birefnet_preprocessing"]
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    net = U2Net("u2netp")
    url = net.push_to_hub("someone/u2netp", private=True)
    assert calls["create"] == ("someone/u2netp", True, True)
    assert calls["files"] == ["config.json", "model.safetensors"] and calls["card"]["input_size"] == [320, 320]
    assert url.endswith("someone/u2netp/commit/0")
