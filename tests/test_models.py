"""BiRefNet architecture parity with the reference fixtures, output contract, errors and checkpoints."""

from __future__ import annotations

import pytest
import torch

from birefnet.models import BiRefNet, SegmentationOutput, load_model, save_model
from birefnet.models.birefnet import image_to_patches, laplacian_k5
from birefnet.models.checkpoint import infer_birefnet_config
from birefnet.models.swin import SwinTransformer
from tests.conftest import fixture_state_dict, load_fixture, reference_keys

REFERENCE = ["swin_v1_t", "swin_v1_s", "swin_v1_b", "swin_v1_l", "pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b5"]


def _meta_model(**kwargs) -> BiRefNet:
    with torch.device("meta"):
        return BiRefNet(**kwargs)


@pytest.mark.parametrize("backbone", REFERENCE)
def test_keys_shapes_and_params_match_reference(backbone, fixtures_meta):
    model = _meta_model(backbone=backbone)
    sd = model.state_dict()
    ref = reference_keys(f"birefnet_{backbone}")
    assert list(sd) == list(ref)
    assert {k: tuple(v.shape) for k, v in sd.items()} == ref
    assert sum(p.numel() for p in model.parameters()) == fixtures_meta[f"birefnet_{backbone}"]["params"]
    fake = {k: torch.empty(s) for k, s in ref.items()}
    assert infer_birefnet_config(fake)["backbone"] == backbone
    assert infer_birefnet_config(fake)["layout"] == "current"


@pytest.mark.parametrize("backbone", ["swin_v1_l", "swin_v1_t"])
def test_legacy_layout_keys(backbone):
    ref = reference_keys(f"birefnet_{backbone}_legacy")
    sd = _meta_model(backbone=backbone, layout="legacy").state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == ref
    cfg = infer_birefnet_config({k: torch.empty(s) for k, s in ref.items()})
    assert (cfg["backbone"], cfg["layout"]) == (backbone, "legacy")


def test_pvt_v2_b0_eval_parity():
    data = load_fixture("birefnet_pvt_v2_b0_eval.safetensors")
    model = BiRefNet("pvt_v2_b0").eval()
    model.load_state_dict(fixture_state_dict(data))
    with torch.no_grad():
        for i in range(2):
            out = model(data[f"input.{i}"])
            assert isinstance(out, SegmentationOutput)
            assert out.logits.shape == data[f"output.{i}"].shape
            assert (out.logits - data[f"output.{i}"]).abs().max().item() <= 1e-4


def test_swin_tiny_window12_parity():
    data = load_fixture("swin_v1_tiny_w12.safetensors")
    swin = SwinTransformer(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=12).eval()
    swin.load_state_dict(fixture_state_dict(data))
    with torch.no_grad():
        for i in range(3):
            outs = swin(data[f"input.{i}"])
            for j, out in enumerate(outs):
                ref = data[f"output.{i}.{j}"]
                assert out.shape == ref.shape
                assert (out - ref).abs().max().item() <= 1e-4, (i, j)


def test_gradient_reference_target():
    data = load_fixture("gradient_reference.safetensors")
    lap = laplacian_k5(data["input"].mean(dim=1, keepdim=True))
    assert (lap - data["laplacian_k5"]).abs().max().item() <= 1e-5


def test_patch_orders_differ_and_invert():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    cur, leg = image_to_patches(x, 2, 2, "current"), image_to_patches(x, 2, 2, "legacy")
    assert cur.shape == leg.shape == (2, 12, 4, 4)
    assert not torch.equal(cur, leg)
    # current: channel index = (c * hg + i) * wg + j ; legacy: (j * hg + i) * c + c_idx
    assert torch.equal(cur[:, 1 * 4 + 1 * 2 + 0], x[:, 1, 4:, :4])
    assert torch.equal(leg[:, (0 * 2 + 1) * 3 + 1], x[:, 1, 4:, :4])


def _tiny(**kwargs) -> BiRefNet:
    defaults = dict(backbone="pvt_v2_b0", decoder_attention="")
    return BiRefNet(**{**defaults, **kwargs})


def test_train_and_eval_outputs_share_one_structure():
    torch.manual_seed(0)
    model = _tiny(num_classes=5)
    x = torch.randn(2, 3, 64, 96)
    out = model.train()(x)
    assert out.logits.shape == (2, 1, 64, 96)
    assert [t.shape[-2:] for t in out.side_logits] == [(2, 3), (4, 6), (8, 12)]
    assert len(out.gradient_preds) == len(out.gradient_targets) == 3
    assert all(t.shape[-2:] == (64, 96) for t in out.gradient_targets)
    assert out.class_logits.shape == (2, 5)
    out = model.eval()(x)
    assert out.logits.shape == (2, 1, 64, 96)
    assert out.side_logits == [] and out.gradient_preds == [] and out.class_logits is None


def test_bf16_autocast_train_step_with_deformable_aspp():
    torch.manual_seed(0)
    model = BiRefNet("pvt_v2_b0", decoder_attention="ASPPDeformable").train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = sum(t.float().mean() for t in out.all_logits) + sum(t.float().mean() for t in out.gradient_preds)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    deform = model.decoder.decoder_block4.dec_att.aspp_deforms[2].atrous_conv.offset_conv.weight
    assert deform.grad is not None


@pytest.mark.parametrize("size", [(100, 64), (64, 70)])
def test_input_size_not_multiple_of_32_is_rejected(size):
    with pytest.raises(ValueError, match=r"not a multiple of 32.*Resize"):
        _tiny().eval()(torch.randn(1, 3, *size))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(multi_scale_input="add", context_num=1, decoder_block="ResBlk", decoder_attention="ASPP"),
        dict(multi_scale_input="", context_num=0, squeeze_block="ResBlk_x2", image_patches=False, out_ref=False),
        dict(split_patches=False, patch_order="legacy", decoder_channels="adap", norm="group", layout="legacy"),
        dict(backbone="timm/test_convnext", squeeze_block="ASPP_x2"),
        dict(backbone="resnet50", out_ref=False, ms_supervision=False),
    ],
)
def test_knob_variants_run_and_load_back(kwargs, tmp_path):
    torch.manual_seed(0)
    model = _tiny(**kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).logits
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, ref)


def test_from_checkpoint_reference_pth(tmp_path):
    data = load_fixture("birefnet_pvt_v2_b0_eval.safetensors")
    sd = fixture_state_dict(data)
    path = tmp_path / "BiRefNet-pvt-epoch_1.pth"
    torch.save({f"module._orig_mod.{k}": v for k, v in sd.items()}, path)
    model = BiRefNet.from_checkpoint(path)
    assert model.config["backbone"] == "pvt_v2_b0"
    with torch.no_grad():
        assert (model(data["input.0"]).logits - data["output.0"]).abs().max() <= 1e-4


def test_truncated_checkpoint_error(tmp_path):
    model = _tiny()
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"Could not read checkpoint .*model\.pth.*truncated"):
        BiRefNet.from_checkpoint(path)


def test_checkpoint_of_other_backbone_reports_mismatch(tmp_path):
    sd = _meta_model(backbone="pvt_v2_b0").state_dict()
    path = tmp_path / "b0.pth"
    torch.save({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in sd.items()}, path)
    with pytest.raises(ValueError, match=r"missing.*unexpected.*wrong-shape.*looks like a pvt_v2_b0"):
        BiRefNet.from_checkpoint(path, backbone="pvt_v2_b1")


def test_checkpoint_of_another_architecture_is_named(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, path)
    with pytest.raises(ValueError, match="neither BiRefNet"):
        load_model(path)


class Payload:
    """An arbitrary class: unpickling it would run code from this module."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Payload()}, path)
    with pytest.raises(ValueError, match="holds Python objects besides tensors"):
        load_model(path)


def test_fused_head_equals_the_reference_head_in_value_and_gradient():
    torch.manual_seed(0)
    model = _tiny().train()
    x = torch.randn(2, 3, 64, 96)
    outs = {}
    for fused in (False, True):
        model.decoder.fused_head = fused
        model.zero_grad()
        torch.manual_seed(1)
        out = model(x)
        out.logits.square().mean().backward()
        outs[fused] = (out.logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(outs[True][0], outs[False][0], atol=1e-5)
    for a, b in zip(outs[True][1], outs[False][1], strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_fused_head_keeps_less_for_backward():
    from birefnet.bench import bench_activation_memory

    rows = bench_activation_memory("pvt_v2_b0", 256)
    reference, fused = (r["saved for backward, GiB / image (fp32)"] for r in rows)
    # the 240-channel concat of the reference at 256 px holds (32 + 8) channels x 256^2 fp32 per image here
    assert reference - fused >= 40 * 256 * 256 * 4 / 2**30 * 0.9


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = BiRefNet(
            "swin_v1_t", decoder_attention="", backbone_kwargs={"drop_path_rate": 0.0}, grad_checkpointing=enable
        ).train()
        out = model(torch.randn(2, 3, 64, 64))
        out.logits.mean().backward()
        grads.append(model.bb.patch_embed.proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_compile_smoke_eager_backend():
    torch.manual_seed(0)
    model = _tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).logits
        compiled = torch.compile(model, backend="eager")(x).logits
    assert torch.allclose(ref, compiled, atol=1e-6)


def test_backbone_weights_from_a_timm_file_reproduce_timm_features(tmp_path):
    import timm

    from birefnet.models.backbones import load_backbone_weights
    from birefnet.models.pvt_v2 import pvt_v2

    torch.manual_seed(0)
    reference = timm.create_model("pvt_v2_b0", pretrained=False).eval()
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "t.pth")  # a timm-layout weight file
    ours = pvt_v2("pvt_v2_b0").eval()
    load_backbone_weights(ours, tmp_path / "t.pth")
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        for a, b in zip(ours(x), reference.forward_intermediates(x, intermediates_only=True), strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_backbone_weights_of_another_model_are_refused(tmp_path):
    from birefnet.models.backbones import load_backbone_weights
    from birefnet.models.swin import swin_v1

    torch.save({"model": {"fc.weight": torch.zeros(3, 3)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="share no key"):
        load_backbone_weights(swin_v1("swin_v1_t"), tmp_path / "other.pth")


def test_hugging_face_style_safetensors_without_metadata(tmp_path):
    from safetensors.torch import save_file

    data = load_fixture("birefnet_pvt_v2_b0_eval.safetensors")
    save_file({k: v.contiguous() for k, v in fixture_state_dict(data).items()}, str(tmp_path / "model.safetensors"))
    model = BiRefNet.from_checkpoint(tmp_path / "model.safetensors")
    with torch.no_grad():
        assert (model(data["input.1"]).logits - data["output.1"]).abs().max() <= 1e-4


def _trained_like_batchnorm(model: torch.nn.Module) -> None:
    """Statistics and affine terms away from their initial values, as in a trained network."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("family", ["birefnet", "u2netp"])
def test_fold_batchnorm_keeps_the_function(family):
    from birefnet.models import U2Net
    from birefnet.models.blocks import DeformableConv2d
    from birefnet.models.fusion import fold_batchnorm

    torch.manual_seed(0)
    model = BiRefNet("pvt_v2_b0") if family == "birefnet" else U2Net("u2netp")
    _trained_like_batchnorm(model)
    for m in model.modules():
        if isinstance(m, DeformableConv2d):  # fractional offsets: the folded kernel runs on real samples
            torch.nn.init.normal_(m.offset_conv.weight, std=0.05)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x).logits
        batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert fold_batchnorm(model) == batchnorms > 0
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert torch.allclose(model(x).logits, before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_deformable_conv_kernels_equal_torchvision(kernel):
    from birefnet.models.blocks import DeformableConv2d

    torch.manual_seed(0)
    conv = DeformableConv2d(8, 16, kernel, padding=kernel // 2, bias=True)
    torch.nn.init.normal_(conv.offset_conv.weight, std=0.3)  # offsets of several pixels, some outside the map
    torch.nn.init.normal_(conv.modulator_conv.weight, std=0.3)
    x = torch.randn(2, 8, 12, 10, requires_grad=True)
    results = []
    for impl in ("torchvision", "grid_sample", "gather"):
        conv.impl = impl
        conv.zero_grad()
        x.grad = None
        y = conv(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads = (x.grad.clone(), conv.offset_conv.weight.grad.clone(), conv.regular_conv.weight.grad.clone())
        grads += (conv.modulator_conv.weight.grad.clone(),)
        results.append((y.detach(), *grads))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("with_bias", [False, True])
def test_pointwise_conv_equals_conv2d_and_keeps_the_layout(layout, with_bias):
    import torch.nn.functional as F

    from birefnet.models.blocks import pointwise_conv

    torch.manual_seed(0)
    x = torch.randn(2, 12, 5, 7).to(memory_format=layout).requires_grad_()
    weight = torch.randn(6, 16, 1, 1)[:, 2:14].requires_grad_()  # a channel slice, as the ASPP fusion passes
    bias = torch.randn(6, requires_grad=True) if with_bias else None
    results = []
    for conv in (pointwise_conv, F.conv2d):
        y = conv(x, weight, bias)
        tensors = (x, weight) + ((bias,) if with_bias else ())
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), tensors)
        results.append((y.detach(), *grads))
        if conv is pointwise_conv:
            assert y.is_contiguous(memory_format=layout)
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
