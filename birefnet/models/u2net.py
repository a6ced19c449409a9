"""U2-Net, U2-Netp and IS-Net (DIS), the baselines BiRefNet is compared with.

U2-Net: Qin et al., "U2-Net: Going deeper with nested U-structure for salient object detection", Pattern
Recognition 2020 (xuebinqin/U-2-Net, Apache-2.0). IS-Net: Qin et al., "Highly Accurate Dichotomous Image
Segmentation", ECCV 2022 (xuebinqin/DIS, Apache-2.0). Re-implemented from their description; module names
follow the releases so ``u2net.pth``, ``u2netp.pth``, ``isnet.pth`` and ``isnet-general-use.pth`` load as is.
The references return sigmoids; these return logits in a :class:`SegmentationOutput` (sigmoid outside), so
the losses stay autocast-safe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from birefnet.models.checkpoint import PretrainedMixin
from birefnet.models.outputs import SegmentationOutput
from birefnet.models.registry import register_model

__all__ = ["ISNet", "ISNetGTEncoder", "U2Net"]

# (in, mid, out) per stage: encoder stage1..6, then decoder stage5d..1d
U2NET_STAGES = {
    "u2net": [
        (3, 32, 64),
        (64, 32, 128),
        (128, 64, 256),
        (256, 128, 512),
        (512, 256, 512),
        (512, 256, 512),
        (1024, 256, 512),
        (1024, 128, 256),
        (512, 64, 128),
        (256, 32, 64),
        (128, 16, 64),
    ],
    "u2netp": [
        (3, 16, 64),
        (64, 16, 64),
        (64, 16, 64),
        (64, 16, 64),
        (64, 16, 64),
        (64, 16, 64),
        (128, 16, 64),
        (128, 16, 64),
        (128, 16, 64),
        (128, 16, 64),
        (128, 16, 64),
    ],
}
ISNET_STAGES = [(64, 32, 64), *U2NET_STAGES["u2net"][1:]]
GT_ENCODER_STAGES = [(16, 16, 64), (64, 16, 64), (64, 32, 128), (128, 32, 256), (256, 64, 512), (512, 64, 512)]
RSU_HEIGHTS = (7, 6, 5, 4, 0, 0)  # 0 = RSU-4F (dilated, no pooling)


def _upsample_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize to ``ref``'s spatial size (align_corners=False, as the references)."""
    return F.interpolate(x, size=ref.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 convolution (dilation d, padding d) -> BatchNorm -> ReLU."""

    conv_bn_pairs = (("conv_s1", "bn_s1"),)

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block of height ``L`` (RSU-7..RSU-4): an encoder-decoder inside one stage.

    ``L - 2`` max-pools (ceil mode) after ``rebnconv1..rebnconv(L-2)``; ``rebnconvL`` is dilated by 2;
    the output is ``decoder(x) + rebnconvin(x)``. Shape: ``(B, in, H, W) -> (B, out, H, W)``.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.height = height
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for i in range(2, height):
            setattr(self, f"rebnconv{i}", REBNCONV(mid_ch, mid_ch))
        setattr(self, f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, dilation=2))
        for i in range(height - 1, 1, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(2 * mid_ch, mid_ch))
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips = []
        hx = hxin
        for i in range(1, self.height):
            hx = getattr(self, f"rebnconv{i}")(hx)
            skips.append(hx)
            if i < self.height - 1:
                hx = self.pool(hx)
        hx = getattr(self, f"rebnconv{self.height}")(hx)
        for i in range(self.height - 1, 0, -1):
            skip = skips[i - 1]
            hx = getattr(self, f"rebnconv{i}d")(torch.cat([_upsample_like(hx, skip), skip], dim=1))
        return hx + hxin


class RSU4F(nn.Module):
    """RSU-4F: RSU-4 with dilations 1, 2, 4, 8 instead of pooling (for low-resolution stages)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, 1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, 2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, 4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, 8)
        self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch, 4)
        self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch, 2)
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat([hx4, hx3], dim=1))
        hx2d = self.rebnconv2d(torch.cat([hx3d, hx2], dim=1))
        return self.rebnconv1d(torch.cat([hx2d, hx1], dim=1)) + hxin


def _block(height: int, spec: tuple[int, int, int]) -> nn.Module:
    return RSU(height, *spec) if height else RSU4F(*spec)


class _NestedUNet(nn.Module):
    """Shared encoder (stage1..6), decoder (stage5d..1d) and side heads of U2-Net and IS-Net."""

    def _build(self, stages: list[tuple[int, int, int]], out_ch: int) -> None:
        for i in range(6):
            setattr(self, f"stage{i + 1}", _block(RSU_HEIGHTS[i], stages[i]))
        for j, k in enumerate(range(5, 0, -1)):
            setattr(self, f"stage{k}d", _block(RSU_HEIGHTS[k - 1], stages[6 + j]))
        side_in = [stages[10][2], stages[9][2], stages[8][2], stages[7][2], stages[6][2], stages[5][2]]
        for i, c in enumerate(side_in, start=1):
            setattr(self, f"side{i}", nn.Conv2d(c, out_ch, 3, padding=1))
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def _encode_decode(self, hx: torch.Tensor) -> list[torch.Tensor]:
        """Returns decoder features ``[hx1d, hx2d, hx3d, hx4d, hx5d, hx6]`` (finest first)."""
        enc = []
        for i in range(1, 7):
            hx = getattr(self, f"stage{i}")(hx)
            enc.append(hx)
            if i < 6:
                hx = self.pool(hx)
        feats = [enc[5]]
        d = enc[5]
        for k in range(5, 0, -1):
            skip = enc[k - 1]
            d = getattr(self, f"stage{k}d")(torch.cat([_upsample_like(d, skip), skip], dim=1))
            feats.append(d)
        return feats[::-1]

    def _sides(self, feats: list[torch.Tensor], size_ref: torch.Tensor) -> list[torch.Tensor]:
        return [_upsample_like(getattr(self, f"side{i + 1}")(f), size_ref) for i, f in enumerate(feats)]


@register_model
class U2Net(PretrainedMixin, _NestedUNet):
    """U2-Net (44.0 M parameters) or U2-Netp (1.13 M), ``variant='u2net'|'u2netp'``.

    Shape: ``(B, in_ch, H, W)`` -> ``logits`` = fused map d0 ``(B, out_ch, H, W)``, ``side_logits`` = d1..d6 at
    input size. Any input size works; the released weights were trained at 320x320.
    """

    def __init__(self, variant: str = "u2net", in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__()
        if variant not in U2NET_STAGES:
            raise ValueError(f"variant must be 'u2net' or 'u2netp', not {variant!r}.")
        self.config = {"variant": variant, "in_ch": in_ch, "out_ch": out_ch}
        stages = [(in_ch, *U2NET_STAGES[variant][0][1:]), *U2NET_STAGES[variant][1:]]
        self._build(stages, out_ch)
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        feats = self._encode_decode(x)
        sides = self._sides(feats, feats[0])
        fused = self.outconv(torch.cat(sides, dim=1))
        return SegmentationOutput(logits=fused, side_logits=sides)


@register_model
class ISNet(PretrainedMixin, _NestedUNet):
    """IS-Net (ISNetDIS, 44.05 M parameters): stride-2 conv stem, U2-Net body, six side outputs, no fusion.

    Shape: ``(B, 3, H, W)`` -> ``logits`` = d1, ``side_logits`` = d2..d6, all at input size;
    ``features`` = ``[hx1d, hx2d, hx3d, hx4d, hx5d, hx6]`` for feature synchronisation with a GT encoder.
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__()
        self.config = {"in_ch": in_ch, "out_ch": out_ch}
        self.conv_in = nn.Conv2d(in_ch, 64, 3, stride=2, padding=1)
        self._build(ISNET_STAGES, out_ch)

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        feats = self._encode_decode(self.conv_in(x))
        sides = self._sides(feats, x)
        return SegmentationOutput(logits=sides[0], side_logits=sides[1:], features=feats)


class _ConvBnRelu(nn.Module):
    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


@register_model
class ISNetGTEncoder(PretrainedMixin, nn.Module):
    """IS-Net's ground-truth encoder (training only): encodes a mask into features matching ISNet's decoder.

    Shape: ``(B, 1, H, W)`` mask -> ``logits`` (side 1), ``side_logits`` (sides 2..6), ``features`` hx1..hx6
    with the channels and strides of :attr:`ISNet.forward`'s ``features``.
    """

    def __init__(self, in_ch: int = 1, out_ch: int = 1) -> None:
        super().__init__()
        self.config = {"in_ch": in_ch, "out_ch": out_ch}
        self.conv_in = _ConvBnRelu(in_ch, 16, stride=2)
        for i, spec in enumerate(GT_ENCODER_STAGES):
            setattr(self, f"stage{i + 1}", _block(RSU_HEIGHTS[i], spec))
        for i, spec in enumerate(GT_ENCODER_STAGES, start=1):
            setattr(self, f"side{i}", nn.Conv2d(spec[2], out_ch, 3, padding=1))
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        hx = self.conv_in(x)
        feats = []
        for i in range(1, 7):
            hx = getattr(self, f"stage{i}")(hx)
            feats.append(hx)
            if i < 6:
                hx = self.pool(hx)
        sides = [_upsample_like(getattr(self, f"side{i + 1}")(f), x) for i, f in enumerate(feats)]
        return SegmentationOutput(logits=sides[0], side_logits=sides[1:], features=feats)
