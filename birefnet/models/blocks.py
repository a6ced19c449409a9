"""Building blocks of the BiRefNet decoder.

Re-implemented from the description of ZhengPeng7/BiRefNet @ 25cb930 (``models/modules``), MIT licence.
Module and attribute names follow the reference so that official checkpoints load without renaming.
Every normalisation layer is an argument (``norm_layer``); the reference derived it from the training
batch size, which made BatchNorm keys vanish from checkpoints trained with batch size 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

NormLayer = Callable[[int], nn.Module]

__all__ = [
    "ASPP",
    "ASPPDeformable",
    "BasicDecBlk",
    "BasicLatBlk",
    "DeformableConv2d",
    "ResBlk",
    "SimpleConvs",
    "autocast_off",
    "build_attention",
    "deform_conv2d_gather",
    "deform_conv2d_grid_sample",
    "resize",
    "set_deform_impl",
]


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast on ``device`` (a no-op context for device types without autocast, e.g. ``meta``)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True``, the only resize the reference model uses."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def deform_conv2d_grid_sample(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    padding: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Modulated deformable convolution (stride 1, dilation 1, one offset group) as grid_sample + einsum.

    Same function as ``torchvision.ops.deform_conv2d`` (bilinear sampling, zeros outside the map, offsets laid
    out as ``(tap, [dy, dx])``): all ``k*k`` taps are sampled in one ``grid_sample`` call, weighted by the
    modulation mask and contracted with the kernel in one matrix product on the ``(c * k * k, h * w)`` view of
    the samples (no transposed copy). On CPU this is 2.7-2.9x faster than torchvision's kernel for a BiRefNet
    training step; :func:`deform_conv2d_gather` is faster still (docs/benchmarks.md). Exported as ONNX GridSample.
    """
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    taps = kh * kw
    dtype, device = x.dtype, x.device
    ys = torch.arange(h, dtype=dtype, device=device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=dtype, device=device).view(1, 1, 1, w)
    ky = (torch.arange(kh, dtype=dtype, device=device) - padding).repeat_interleave(kw).view(1, taps, 1, 1)
    kx = (torch.arange(kw, dtype=dtype, device=device) - padding).repeat(kh).view(1, taps, 1, 1)
    off = offset.view(b, taps, 2, h, w)
    py = ys + ky + off[:, :, 0]
    px = xs + kx + off[:, :, 1]
    # normalised coordinates for align_corners=True: pixel centres at -1 .. 1
    grid = torch.stack([px * (2.0 / max(w - 1, 1)) - 1.0, py * (2.0 / max(h - 1, 1)) - 1.0], dim=-1)
    samples = F.grid_sample(x, grid.view(b, taps * h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=True)
    samples = samples.view(b, c, taps, h * w)  # (c, tap) rows are contiguous: the contraction needs no copy
    modulation = mask.reshape(b, 1, taps, h * w)
    # in place when no gradient is recorded: one full-size tensor less at inference
    samples = samples * modulation if samples.requires_grad else samples.mul_(modulation)
    out = torch.matmul(weight.reshape(o, c * taps), samples.view(b, c * taps, h * w)).view(b, o, h, w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def deform_conv2d_gather(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    padding: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Modulated deformable convolution (stride 1, dilation 1, one offset group) as a weighted gather + one matmul.

    Same function as :func:`deform_conv2d_grid_sample` and ``torchvision.ops.deform_conv2d``. Each sample
    (position, tap) is a weighted sum of four rows of the channels-last feature map: ``F.embedding_bag`` gathers
    them with the bilinear weights times the modulation mask (corners outside the map read a zero border), so the
    ``(h * w * k * k, c)`` samples are written once, with no separate modulation pass. They are then contracted
    with the kernel in one matrix product. Sample coordinates are always computed in fp32; the gather and the
    product run in ``x``'s dtype. On CPU the sampling takes 91 ms instead of grid_sample's 253 ms in BiRefNet
    Swin-V1-T at 512 px, and a training step is 1.3x faster (docs/benchmarks.md).
    """
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    taps = kh * kw
    device = x.device
    f32 = torch.float32
    ys = torch.arange(h, dtype=f32, device=device).view(1, h, 1, 1)
    xs = torch.arange(w, dtype=f32, device=device).view(1, 1, w, 1)
    ky = (torch.arange(kh, dtype=f32, device=device) - padding).repeat_interleave(kw)
    kx = (torch.arange(kw, dtype=f32, device=device) - padding).repeat(kh)
    off = offset.float().view(b, taps, 2, h, w).permute(0, 3, 4, 1, 2)  # (b, h, w, tap, [dy, dx])
    py = ys + ky + off[..., 0]
    px = xs + kx + off[..., 1]
    y0, x0 = py.floor(), px.floor()
    fy, fx = py - y0, px - x0
    # The map gets a one-pixel zero border; each corner is clamped into it independently, so a corner outside
    # the map reads zero (torchvision's rule) without a validity mask.
    hp, wp = h + 2, w + 2

    def padded(coord: torch.Tensor, limit: int) -> torch.Tensor:
        return (coord.clamp(-1, limit) + 1).long()

    base = (torch.arange(b, device=device) * (hp * wp)).view(b, 1, 1, 1)
    row0, row1 = base + padded(y0, h) * wp, base + padded(y0 + 1, h) * wp
    col0, col1 = padded(x0, w), padded(x0 + 1, w)
    modulation = mask.float().view(b, taps, h, w).permute(0, 2, 3, 1)
    top, bottom = (1.0 - fy) * modulation, fy * modulation
    index = torch.stack([row0 + col0, row0 + col1, row1 + col0, row1 + col1], dim=-1)
    weights = torch.stack([top * (1.0 - fx), top * fx, bottom * (1.0 - fx), bottom * fx], dim=-1)
    # rows must be contiguous channel vectors: embedding_bag's fast kernel needs a row-major table
    table = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous().view(b * hp * wp, c)
    samples = F.embedding_bag(
        index.view(-1, 4), table, per_sample_weights=weights.view(-1, 4).to(x.dtype), mode="sum"
    )  # (b * h * w * taps, c): rows (position, tap), channels contiguous
    kernel = weight.to(x.dtype).permute(0, 2, 3, 1).reshape(o, taps * c)
    out = torch.matmul(samples.view(b, h * w, taps * c), kernel.t())  # (b, h * w, o)
    out = out.transpose(1, 2).reshape(b, o, h, w)
    return out if bias is None else out + bias.to(x.dtype).view(1, -1, 1, 1)


class DeformableConv2d(nn.Module):
    """Modulated deformable convolution (DCNv2) with zero-initialised offset and modulator branches.

    At initialisation it equals a plain convolution: offsets are 0 and the mask ``2 * sigmoid(0)`` is 1.
    Shape: ``(B, C_in, H, W) -> (B, C_out, H, W)`` (stride 1, padding ``kernel_size // 2``).
    The sampling runs in fp32 under autocast (torchvision's kernel has no bf16/fp16 CPU path) and the result
    is cast back; in a network whose weights were cast to bf16/fp16 for inference the ``gather`` kernel runs in
    that dtype. ``impl``: ``"torchvision"`` (``torchvision.ops.deform_conv2d``), ``"grid_sample"``
    (:func:`deform_conv2d_grid_sample`, exportable as ONNX GridSample), ``"gather"`` (:func:`deform_conv2d_gather`)
    or ``"auto"`` (torchvision on CUDA, gather elsewhere, where it was measured fastest for training and inference).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        bias: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        _check_impl(impl)
        self.padding = padding
        self.impl = impl
        taps = kernel_size * kernel_size
        self.offset_conv = nn.Conv2d(in_channels, 2 * taps, kernel_size, padding=padding, bias=True)
        self.modulator_conv = nn.Conv2d(in_channels, taps, kernel_size, padding=padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        for conv in (self.offset_conv, self.modulator_conv):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)
        mask = 2.0 * torch.sigmoid(self.modulator_conv(x))
        weight, bias = self.regular_conv.weight, self.regular_conv.bias
        impl = self.impl if self.impl != "auto" else ("torchvision" if x.device.type == "cuda" else "gather")
        if impl == "gather" and weight.dtype != torch.float32 and not torch.is_autocast_enabled(x.device.type):
            # a network cast to bf16/fp16 for inference: gather and product in its dtype (coordinates in fp32)
            return deform_conv2d_gather(x, offset, weight, mask, self.padding, bias)
        with autocast_off(x.device):
            args = (x.float(), offset.float(), weight.float())
            b32 = None if bias is None else bias.float()
            if impl == "torchvision":
                out = deform_conv2d(*args, b32, padding=(self.padding, self.padding), mask=mask.float())
            else:
                out = DEFORM_IMPLS[impl](*args, mask.float(), self.padding, b32)
        return out.to(x.dtype)


#: The kernels a :class:`DeformableConv2d` can run (``"auto"`` chooses among them by device).
DEFORM_IMPLS = {"torchvision": deform_conv2d, "grid_sample": deform_conv2d_grid_sample, "gather": deform_conv2d_gather}


def _check_impl(impl: str) -> None:
    if impl != "auto" and impl not in DEFORM_IMPLS:
        raise ValueError(f"impl must be 'auto' or one of {sorted(DEFORM_IMPLS)}, not {impl!r}.")


def set_deform_impl(module: nn.Module, impl: str) -> None:
    """Choose the deformable-convolution implementation of every :class:`DeformableConv2d` in ``module``."""
    for m in module.modules():
        if isinstance(m, DeformableConv2d):
            _check_impl(impl)
            m.impl = impl


class _ConvBnRelu(nn.Module):
    """One ASPP branch: ``atrous_conv`` -> ``bn`` -> ReLU (names as in the reference)."""

    conv_bn_pairs = (("atrous_conv", "bn"),)

    def __init__(self, conv: nn.Module, channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.atrous_conv = conv
        self.bn = norm_layer(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class _ASPPBase(nn.Module):
    """Shared tail of both ASPP variants: image-pool branch, 1x1 fusion, BN, ReLU, dropout 0.5."""

    branch_channels = 256
    conv_bn_pairs = (("conv1", "bn1"),)

    def _build_tail(self, in_channels: int, out_channels: int, num_branches: int, norm_layer: NormLayer) -> None:
        c = self.branch_channels
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(in_channels, c, 1, bias=False), norm_layer(c), nn.ReLU(inplace=True)
        )
        self.conv1 = nn.Conv2d(c * (num_branches + 1), out_channels, 1, bias=False)
        self.bn1 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.5)

    def _fuse(self, x: torch.Tensor, branches: list[torch.Tensor]) -> torch.Tensor:
        pooled = resize(self.global_avg_pool(x), branches[0].shape[2:])
        x = self.conv1(torch.cat([*branches, pooled], dim=1))
        return self.dropout(self.relu(self.bn1(x)))


class ASPPDeformable(_ASPPBase):
    """Deformable ASPP: a 1x1 deformable branch, one deformable branch per kernel size, an image pool.

    ``kernel_sizes=(1, 3, 7)`` is the current reference; ``(3,)`` is the legacy (pre-2024-05-02) layout.
    Shape: ``(B, C, H, W) -> (B, out_channels or C, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_sizes: Sequence[int] = (1, 3, 7),
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        c = self.branch_channels
        self.aspp1 = _ConvBnRelu(DeformableConv2d(in_channels, c, 1, padding=0), c, norm_layer)
        self.aspp_deforms = nn.ModuleList(
            _ConvBnRelu(DeformableConv2d(in_channels, c, k, padding=k // 2), c, norm_layer) for k in kernel_sizes
        )
        self._build_tail(in_channels, out_channels, 1 + len(kernel_sizes), norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fuse(x, [self.aspp1(x), *(m(x) for m in self.aspp_deforms)])


class ASPP(_ASPPBase):
    """Atrous spatial pyramid pooling with dilations 1, 6, 12, 18 (output stride 16) and an image pool."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        dilations: Sequence[int] = (1, 6, 12, 18),
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        c = self.branch_channels
        for i, d in enumerate(dilations, start=1):
            k = 1 if d == 1 else 3
            conv = nn.Conv2d(in_channels, c, k, padding=0 if k == 1 else d, dilation=d, bias=False)
            setattr(self, f"aspp{i}", _ConvBnRelu(conv, c, norm_layer))
        self.num_dilations = len(dilations)
        self._build_tail(in_channels, out_channels, len(dilations), norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fuse(x, [getattr(self, f"aspp{i}")(x) for i in range(1, self.num_dilations + 1)])


def build_attention(
    kind: str, channels: int, norm_layer: NormLayer, deform_kernel_sizes: Sequence[int] = (1, 3, 7)
) -> nn.Module | None:
    """Decoder attention by its reference name: ``''``, ``'ASPP'`` or ``'ASPPDeformable'``."""
    if kind in ("", None, "none"):
        return None
    if kind == "ASPP":
        return ASPP(channels, norm_layer=norm_layer)
    if kind == "ASPPDeformable":
        return ASPPDeformable(channels, kernel_sizes=deform_kernel_sizes, norm_layer=norm_layer)
    raise ValueError(f"Unknown decoder attention {kind!r}; choose '', 'ASPP' or 'ASPPDeformable'.")


class BasicDecBlk(nn.Module):
    """conv3x3 -> norm -> ReLU -> [attention] -> conv3x3 -> norm, with no activation at the end.

    Shape: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``. The options are keyword-only.
    """

    conv_bn_pairs = (("conv_in", "bn_in"), ("conv_out", "bn_out"))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        inter_channels: int = 64,
        attention: str = "ASPPDeformable",
        norm_layer: NormLayer = nn.BatchNorm2d,
        deform_kernel_sizes: Sequence[int] = (1, 3, 7),
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, inter_channels, 3, padding=1)
        self.relu_in = nn.ReLU(inplace=True)
        self.dec_att = build_attention(attention, inter_channels, norm_layer, deform_kernel_sizes)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, padding=1)
        self.bn_in = norm_layer(inter_channels)
        self.bn_out = norm_layer(out_channels)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_in(self.bn_in(self.conv_in(x)))
        if self.dec_att is not None:
            x = self.dec_att(x)
        return self.bn_out(self.conv_out(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._body(x)


class ResBlk(BasicDecBlk):
    """:class:`BasicDecBlk` (same arguments) plus a 1x1 convolution shortcut (``conv_resi``) added at the end."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conv_resi = nn.Conv2d(self.conv_in.in_channels, self.conv_out.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._body(x) + self.conv_resi(x)


class BasicLatBlk(nn.Module):
    """Lateral connection: a single 1x1 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SimpleConvs(nn.Module):
    """Inward-reference encoder of image patches: conv3x3 -> conv3x3, no norm, no activation."""

    def __init__(self, in_channels: int, out_channels: int, inter_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))
