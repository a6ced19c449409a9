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
    "pointwise_conv",
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


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution, ``(B, C, H, W) -> (B, O, H, W)`` with ``weight`` ``(O, C, 1, 1)``.

    On a CPU it runs as one matrix product per image on the tensor's own layout (``(C, H*W)`` for NCHW,
    ``(H*W, C)`` for channels-last, whose result stays channels-last): oneDNN's convolution first reorders its
    input into a blocked layout, a full pass over a tensor (1280 channels at 1/4 resolution for the ASPP fusion)
    before a small product (docs/benchmarks.md). Elsewhere, in other layouts and while tracing, exporting or
    compiling, ``F.conv2d``.
    """
    b, c, h, w = x.shape
    o = weight.shape[0]
    graph = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
    if x.device.type != "cpu" or graph or weight.shape[2:] != (1, 1):
        return F.conv2d(x, weight, bias)
    matrix = weight.reshape(o, c)
    if x.is_contiguous():
        if bias is None:
            return torch.matmul(matrix, x.view(b, c, h * w)).view(b, o, h, w)
        out = torch.baddbmm(bias.view(1, o, 1).expand(b, o, h * w), matrix.expand(b, o, c), x.view(b, c, h * w))
        return out.view(b, o, h, w)
    if x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        out = torch.matmul(rows, matrix.t()) if bias is None else torch.addmm(bias, rows, matrix.t())
        return out.view(b, h, w, o).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias)


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


#: Bytes of samples per block in :func:`deform_conv2d_gather` without autograd: small enough to bound the memory
#: of large maps and keep each block's samples in cache, large enough for efficient matrix products.
GATHER_BLOCK_BYTES = 32 * 2**20


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
    with the kernel (and the bias) in one matrix product whose ``(h * w, out)`` result is returned as a
    channels-last view, without a transposing copy. Sample coordinates are always computed in fp32; the gather
    and the product run in ``x``'s dtype. Without autograd the positions run in blocks of
    :data:`GATHER_BLOCK_BYTES` of samples, which bounds the memory and keeps the sampled map in cache. On CPU the
    sampling takes 91 ms instead of grid_sample's 253 ms in BiRefNet Swin-V1-T at 512 px, and a training step is
    1.3x faster (docs/benchmarks.md).
    """
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    taps, positions = kh * kw, b * h * w
    device, f32 = x.device, torch.float32
    ky = (torch.arange(kh, dtype=f32, device=device) - padding).repeat_interleave(kw)
    kx = (torch.arange(kw, dtype=f32, device=device) - padding).repeat(kh)
    # positions-major fp32 copies (one cast-and-transpose pass each), so that every later tensor is row-major
    off = torch.empty((b, h, w, taps, 2), dtype=f32, device=device)
    off.copy_(offset.view(b, taps, 2, h, w).permute(0, 3, 4, 1, 2))
    modulation = torch.empty((b, h, w, taps), dtype=f32, device=device)
    modulation.copy_(mask.view(b, taps, h, w).permute(0, 2, 3, 1))
    off, modulation = off.view(positions, taps, 2), modulation.view(positions, taps)
    # The map gets a two-pixel zero border. The top-left corner (y0, x0) is clamped into [-2, h] x [-2, w]: one
    # outside the map lies wholly in the border with its +1 neighbours, so they read zero (torchvision's rule),
    # and the four corners are the top-left index plus (0, 1, wp, wp + 1).
    hp, wp = h + 4, w + 4
    corners = torch.tensor([0, 1, wp, wp + 1], device=device)
    # rows must be contiguous channel vectors: embedding_bag's fast kernel needs a row-major table
    table = F.pad(x, (2, 2, 2, 2)).permute(0, 2, 3, 1).contiguous().view(b * hp * wp, c)
    kernel = weight.to(x.dtype).permute(0, 2, 3, 1).reshape(o, taps * c).t()
    bias = None if bias is None else bias.to(x.dtype)

    def samples_of(start: int, stop: int) -> torch.Tensor:
        """The ``(stop - start, taps * c)`` samples of positions ``start:stop`` (flattened b, y, x)."""
        pos = torch.arange(start, stop, device=device)
        image, y, xx = pos // (h * w), (pos // w) % h, pos % w
        py = (y.to(f32).view(-1, 1) + ky) + off[start:stop, :, 0]
        px = (xx.to(f32).view(-1, 1) + kx) + off[start:stop, :, 1]
        y0, x0 = py.floor(), px.floor()
        fy, fx = py - y0, px - x0
        top_left = (image * (hp * wp)).view(-1, 1) + (y0.clamp(-2, h) + 2).long() * wp + (x0.clamp(-2, w) + 2).long()
        index = torch.empty((*top_left.shape, 4), dtype=torch.long, device=device)  # row-major, whatever the inputs
        torch.add(top_left.unsqueeze(-1), corners, out=index)
        m = modulation[start:stop]
        top, bottom, left = (1.0 - fy) * m, fy * m, 1.0 - fx
        weights = torch.stack([top * left, top * fx, bottom * left, bottom * fx], dim=-1).to(x.dtype)
        samples = F.embedding_bag(index.view(-1, 4), table, per_sample_weights=weights.view(-1, 4), mode="sum")
        return samples.view(stop - start, taps * c)  # rows: positions; columns: (tap, channel)

    def contract(samples: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if bias is None:
            return torch.matmul(samples, kernel, out=out)
        return torch.addmm(bias, samples, kernel, out=out)

    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, offset, weight, mask, bias)):
        out = contract(samples_of(0, positions))  # autograd keeps every sample for the backward pass anyway
    else:
        # Without autograd, positions run in blocks of about GATHER_BLOCK_BYTES of samples: the coordinates, the
        # indices and the samples of a large map (BiRefNet's 7x7 branch at 1/4 resolution) never exist whole.
        step = max(1, GATHER_BLOCK_BYTES // (taps * c * x.element_size()))
        out = torch.empty(positions, o, dtype=x.dtype, device=device)
        for start in range(0, positions, step):
            stop = min(start + step, positions)
            contract(samples_of(start, stop), out=out[start:stop])
    return out.view(b, h, w, o).permute(0, 3, 1, 2)  # channels-last


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
        # the offset and modulator branches read the same input: one convolution computes both
        branches = (self.offset_conv, self.modulator_conv)
        both = F.conv2d(
            x,
            torch.cat([conv.weight for conv in branches]),
            torch.cat([conv.bias for conv in branches]),
            padding=self.padding,
        )
        offset, modulator = both.split([self.offset_conv.out_channels, self.modulator_conv.out_channels], dim=1)
        mask = 2.0 * torch.sigmoid(modulator)
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
        # conv1(cat(*branches, pooled)): the pooled branch is one vector per image (its bilinear resize from 1x1 is
        # constant over the map), so its share of the 1x1 fusion is computed on the 1x1 map and broadcast instead
        # of concatenating a full-size copy. Same parameters, same function.
        c = self.branch_channels
        weight = self.conv1.weight
        pooled = F.conv2d(self.global_avg_pool(x), weight[:, -c:])
        x = pointwise_conv(torch.cat(branches, dim=1), weight[:, :-c], self.conv1.bias) + pooled
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
        return self._body(x) + pointwise_conv(x, self.conv_resi.weight, self.conv_resi.bias)


class BasicLatBlk(nn.Module):
    """Lateral connection: a single 1x1 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(x, self.conv.weight, self.conv.bias)


class SimpleConvs(nn.Module):
    """Inward-reference encoder of image patches: conv3x3 -> conv3x3, no norm, no activation."""

    def __init__(self, in_channels: int, out_channels: int, inter_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))
