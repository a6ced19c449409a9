"""Losses: reference PixLoss parity, minimum on perfect predictions, autocast safety, fine-tune schedule."""

from __future__ import annotations

import json

import pytest
import torch

from birefnet.callbacks import finetune_loss_weights
from birefnet.losses import CRITERIA, DISLoss, PixelLoss, gradient_loss
from birefnet.models.outputs import SegmentationOutput
from tests.conftest import FIXTURES, load_fixture


def test_pixloss_dis5k_fixture_reproduced():
    data = load_fixture("pixloss_dis5k.safetensors")
    from safetensors import safe_open

    with safe_open(str(FIXTURES / "pixloss_dis5k.safetensors"), "pt") as f:
        weights = json.loads(f.metadata()["lambdas"])
    total, parts = PixelLoss(weights, iou_reduction="sum")([data[f"pred.{i}"] for i in range(4)], data["gt"])
    assert abs(total.item() - data["total"].item()) <= 1e-4 * max(1.0, abs(data["total"].item()))
    for name in ("bce", "iou", "ssim"):
        assert abs(parts[name].item() - data[f"part.{name}"].item()) <= 1e-4, name


def _perfect(target: torch.Tensor) -> torch.Tensor:
    return torch.where(target > 0.5, 30.0, -30.0)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_each_loss_is_minimal_on_a_perfect_prediction(name):
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disk = (((yy - 30) ** 2 + (xx - 34) ** 2) < 18**2).float()
    target = torch.stack([disk, disk.flip(0)])[:, None]
    perfect = CRITERIA[name](_perfect(target), target).item()
    noisy = CRITERIA[name](torch.randn(2, 1, 64, 64), target).item()
    if name == "cnt":  # the contour loss keeps a length term (the disk's perimeter) at its minimum
        assert perfect < 0.5 * noisy
    else:
        assert abs(perfect) <= 1e-4
        assert noisy > perfect + 1e-3


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_losses_have_finite_grads_under_bf16_autocast(name):
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    logits = torch.randn(2, 1, 32, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv = torch.nn.Conv2d(1, 1, 1)
        value = CRITERIA[name](conv(logits), target)
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_iou_reduction_sum_vs_mean():
    torch.manual_seed(0)
    target = (torch.rand(4, 1, 16, 16) > 0.5).float()
    logits = torch.randn(4, 1, 16, 16)
    s = PixelLoss({"iou": 1.0}, "sum")([logits], target)[0]
    m = PixelLoss({"iou": 1.0}, "mean")([logits], target)[0]
    assert torch.allclose(s, 4 * m)


def test_gradient_loss_flows_into_targets_and_dis_loss_parts():
    torch.manual_seed(0)
    side = torch.randn(1, 1, 8, 8, requires_grad=True)
    target = torch.randn(1, 1, 32, 32) * torch.nn.functional.interpolate(side, size=(32, 32))
    pred = torch.randn(1, 1, 8, 8, requires_grad=True)
    gradient_loss([pred], [target]).backward()
    assert side.grad is not None and side.grad.abs().sum() > 0  # the reference does not detach the target
    out = SegmentationOutput(
        logits=torch.randn(1, 1, 32, 32),
        side_logits=[torch.randn(1, 1, 8, 8)],
        gradient_preds=[torch.randn(1, 1, 8, 8)],
        gradient_targets=[torch.randn(1, 1, 32, 32)],
        class_logits=torch.randn(1, 3),
    )
    total, parts = DISLoss()(out, torch.rand(1, 1, 32, 32), torch.tensor([1]))
    assert set(parts) == {"pix/bce", "pix/iou", "pix/ssim", "gdt", "cls"}
    assert torch.isclose(
        total, 2 * sum(v for k, v in parts.items() if k.startswith("pix/")) + parts["gdt"] + parts["cls"]
    )


def test_finetune_schedule_is_a_function_of_the_epoch():
    base = {"bce": 30.0, "iou": 0.5, "ssim": 10.0, "mae": 100.0}
    assert finetune_loss_weights(base, 460, 500, -40) == base
    assert finetune_loss_weights(base, 461, 500, -40) == {"bce": 0.0, "iou": 0.25, "ssim": 10.0, "mae": 90.0}
    w = finetune_loss_weights(base, 470, 500, -40)
    assert w["iou"] == pytest.approx(0.5 * 0.5**10) and w["mae"] == pytest.approx(100 * 0.9**10)
    assert finetune_loss_weights(base, 470, 500, -40, mode="once")["iou"] == 0.25
    m = finetune_loss_weights({"bce": 30.0, "mse": 1.0, "ssim": 10.0, "mae": 100.0}, 142, 150, -10, matting=True)
    assert m["mse"] == pytest.approx(0.9**2) and m["ssim"] == pytest.approx(10 * 0.9**2) and m["mae"] == 100.0
