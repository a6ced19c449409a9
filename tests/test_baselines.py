"""U2-Net / U2-Netp / IS-Net: reference parity, official key layouts, loading, and training through the pipeline."""

from __future__ import annotations

import pytest
import torch

from birefnet.data import DISDataset
from birefnet.data.transforms import eval_transform
from birefnet.losses import MultiBCELoss
from birefnet.models import ISNet, ISNetGTEncoder, U2Net, load_model, save_model
from tests.conftest import SAMPLE, compose_config, fixture_state_dict, load_fixture, reference_keys


def test_u2netp_reproduces_all_seven_reference_maps():
    data = load_fixture("u2netp_eval.safetensors")
    model = U2Net("u2netp").eval()
    model.load_state_dict(fixture_state_dict(data))
    with torch.no_grad():
        for i in range(2):
            out = model(data[f"input.{i}"])
            maps = [out.logits, *out.side_logits]  # d0 (fused), d1..d6
            assert len(maps) == 7
            for j, m in enumerate(maps):
                ref = data[f"output.{i}.{j}"]
                assert m.shape == ref.shape
                assert (torch.sigmoid(m) - ref).abs().max().item() <= 1e-5, (i, j)


@pytest.mark.parametrize("variant", ["u2net", "u2netp"])
def test_official_key_layout_and_variant_inference(variant, tmp_path, fixtures_meta):
    ref = reference_keys(variant)
    with torch.device("meta"):
        model = U2Net(variant)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ref
    assert sum(p.numel() for p in model.parameters()) == fixtures_meta[variant]["params"]
    # an official file written by PyTorch 0.4.0 has no num_batches_tracked: tolerated, nothing else is
    sd = {k: torch.zeros(s) for k, s in ref.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / f"{variant}.pth"
    torch.save(sd, path)
    loaded = load_model(path)
    assert isinstance(loaded, U2Net) and loaded.config["variant"] == variant
    sd.pop("side6.bias")
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"1 missing \(e\.g\. side6\.bias\)"):
        load_model(path)


def test_isnet_layout_and_loading(tmp_path):
    model = ISNet().eval()
    keys = model.state_dict()
    assert len(keys) == 798 and "conv_in.weight" in keys and "outconv.weight" not in keys
    assert tuple(keys["stage1.rebnconvin.conv_s1.weight"].shape) == (64, 64, 3, 3)
    assert sum(p.numel() for p in model.parameters()) == 44_046_790
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert out.logits.shape == (1, 1, 64, 64) and len(out.side_logits) == 5
    assert [f.shape[1] for f in out.features] == [64, 64, 128, 256, 512, 512]
    torch.save(model.state_dict(), tmp_path / "isnet.pth")
    loaded = load_model(tmp_path / "isnet.pth")
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, out.logits)
    gt_feats = ISNetGTEncoder().eval()(torch.rand(1, 1, 64, 64)).features
    assert [tuple(f.shape) for f in gt_feats] == [tuple(f.shape) for f in out.features]


def _real_batch(size: int = 64, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    ds = DISDataset(SAMPLE, "ECSSD-TR", eval_transform((size, size)))
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])


@pytest.mark.parametrize("name", ["u2netp", "u2net", "isnet"])
def test_training_steps_overfit_a_fixed_real_batch(name):
    torch.manual_seed(0)
    net = {"u2netp": lambda: U2Net("u2netp"), "u2net": lambda: U2Net("u2net"), "isnet": ISNet}[name]()
    images, masks = _real_batch()
    loss_fn = MultiBCELoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, _ = loss_fn(net.train()(images), masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_isnet_feature_supervision_uses_a_frozen_gt_encoder(tmp_path):
    torch.manual_seed(0)
    encoder = ISNetGTEncoder()
    save_model(encoder, tmp_path / "gt_encoder.safetensors")
    loss_fn = MultiBCELoss(
        feature_weight=1.0, gt_encoder=ISNetGTEncoder.from_checkpoint(tmp_path / "gt_encoder.safetensors")
    ).train()
    assert not loss_fn.gt_encoder.training and not any(p.requires_grad for p in loss_fn.gt_encoder.parameters())
    images, masks = _real_batch(n=2)
    total, parts = loss_fn(ISNet().train()(images), masks)
    assert parts["feature_mse"] > 0 and torch.isclose(
        total, parts["bce_final"] + parts["bce_sides"] + parts["feature_mse"]
    )


@pytest.mark.parametrize("model", ["u2net", "u2netp", "isnet", "isnet_gt_encoder"])
def test_baseline_configs_carry_their_recipe(model, tmp_path):
    from birefnet.train import build_data_and_model

    cfg = compose_config("train", tmp_path, [f"model={model}"])
    dm, module = build_data_and_model(cfg)
    # the normalisation comes from the network's card, the size from the recipe; the card records both
    assert dm.normalization == ("u2net" if model.startswith("u2net") else "isnet")
    assert dm.size == ((320, 320) if model.startswith("u2net") else (1024, 1024))
    assert module.net.preprocessing.normalization == dm.normalization
    assert module.net.preprocessing.input_size == dm.size and module.net.preprocessing.task == "SOD"
    assert isinstance(module.loss_fn, MultiBCELoss)
    assert module.configure_optimizers().defaults["lr"] == 1e-3


def test_evaluate_official_u2netp_file_with_its_preprocessing(tmp_path, caplog):
    from birefnet.evaluate import evaluate

    torch.manual_seed(0)
    torch.save(U2Net("u2netp").state_dict(), tmp_path / "u2netp.pth")
    cfg = compose_config("eval", tmp_path / "out", [f"checkpoint={tmp_path / 'u2netp.pth'}"])
    with caplog.at_level("INFO"):
        results = evaluate(cfg)
    values = results["ECSSD-TE"]["u2netp"]
    assert 0 <= values["MAE"] <= 1 and 0 <= values["Sm"] <= 1
    assert "(U2Net) with 320x320 (HxW), u2net normalisation" in caplog.text


def test_isnet_fs_config_injects_the_trained_gt_encoder(tmp_path):
    from omegaconf.errors import MissingMandatoryValue

    from birefnet.train import build_data_and_model

    torch.manual_seed(0)
    encoder = ISNetGTEncoder()
    save_model(encoder, tmp_path / "gt_encoder.safetensors")
    path = tmp_path / "gt_encoder.safetensors"
    cfg = compose_config("train", tmp_path, ["model=isnet_fs", f"model.loss.gt_encoder.name_or_path={path}"])
    _, module = build_data_and_model(cfg)
    injected = module.loss_fn.gt_encoder
    assert isinstance(injected, ISNetGTEncoder) and not any(p.requires_grad for p in injected.parameters())
    for key, value in encoder.state_dict().items():
        assert torch.equal(injected.state_dict()[key], value), key
    with pytest.raises(MissingMandatoryValue, match="name_or_path"):
        build_data_and_model(compose_config("train", tmp_path / "missing", ["model=isnet_fs"]))
