"""BiRefNet: Bilateral Reference for High-Resolution Dichotomous Image Segmentation.

Zheng et al., CAAI Artificial Intelligence Research 2024 (arXiv 2401.03407).
Re-implemented from the description of ZhengPeng7/BiRefNet @ 25cb930 (``models/birefnet.py``), MIT licence.
Attribute names (``bb``, ``squeeze_module``, ``decoder.ipt_blk5`` ...) follow the reference so official
checkpoints load key for key; the constructor takes plain arguments with the reference defaults instead
of a global config, and the forward returns one :class:`SegmentationOutput` in every mode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from birefnet.models.backbones import build_backbone
from birefnet.models.blocks import (
    ASPP,
    ASPPDeformable,
    BasicDecBlk,
    BasicLatBlk,
    NormLayer,
    ResBlk,
    SimpleConvs,
    pointwise_conv,
    resize,
    set_deform_impl,
)
from birefnet.models.checkpoint import PretrainedMixin
from birefnet.models.outputs import SegmentationOutput
from birefnet.models.registry import register_model

log = logging.getLogger(__name__)

__all__ = ["BiRefNet", "BiRefNetDecoder", "image_to_patches", "laplacian_k5", "make_norm_layer"]

DECODER_BLOCKS = {"BasicDecBlk": BasicDecBlk, "ResBlk": ResBlk}


def make_norm_layer(norm: str) -> NormLayer:
    """``'batch'`` (reference), ``'identity'`` (what the reference silently used at batch size 1) or ``'group'``
    (GroupNorm with gcd(32, channels) groups, independent of the batch size)."""
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "identity":
        return lambda _channels: nn.Identity()
    if norm == "group":
        return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"Unknown norm {norm!r}; choose 'batch', 'group' or 'identity'.")


def laplacian_k5(x: torch.Tensor) -> torch.Tensor:
    """5x5 Laplacian with reflect borders, kernel normalised by the sum of its absolute values (kornia's).

    Shape: ``(B, C, H, W) -> (B, C, H, W)``; computed in fp32.
    """
    kernel = torch.ones(5, 5, dtype=torch.float32, device=x.device)
    kernel[2, 2] = -24.0
    kernel = (kernel / kernel.abs().sum()).expand(x.shape[1], 1, 5, 5)
    x = F.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    return F.conv2d(x, kernel, groups=x.shape[1])


def image_to_patches(image: torch.Tensor, grid_h: int, grid_w: int, order: str = "current") -> torch.Tensor:
    """Cut ``(B, C, gh*h, gw*w)`` into a ``gh x gw`` grid of patches stacked on channels: ``(B, C*gh*gw, h, w)``.

    ``order='current'`` lays channels out as ``(c, gh, gw)`` (reference since 2024-11-05);
    ``order='legacy'`` as ``(gw, gh, c)`` (what weights trained before then saw).
    """
    b, c, height, width = image.shape
    h, w = height // grid_h, width // grid_w
    x = image.reshape(b, c, grid_h, h, grid_w, w)
    if order == "current":
        x = x.permute(0, 1, 2, 4, 3, 5)
    elif order == "legacy":
        x = x.permute(0, 4, 2, 1, 3, 5)
    else:
        raise ValueError(f"Unknown patch order {order!r}; choose 'current' or 'legacy'.")
    return x.reshape(b, c * grid_h * grid_w, h, w)


class BiRefNetDecoder(nn.Module):
    """Four-stage decoder with inward (image patches) and outward (gradient attention) references.

    Args:
        channels: encoder channels, deepest first (after multi-scale doubling), e.g. Swin-L ``[3072, 1536, 768, 384]``.
        reductions: encoder strides shallow to deep (``[4, 8, 16, 32]`` for Swin/PVT); they fix the patch grids.
        layout: ``'current'`` or ``'legacy'`` (no ``ipt_blk5`` and no stage-4 gradient heads).
        Other arguments: see :class:`BiRefNet`.
    """

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        *,
        decoder_block: str = "BasicDecBlk",
        attention: str = "ASPPDeformable",
        deform_kernel_sizes: Sequence[int] = (1, 3, 7),
        image_patches: bool = True,
        split_patches: bool = True,
        patch_order: str = "current",
        ms_supervision: bool = True,
        out_ref: bool = True,
        decoder_channels: str = "fixed",
        layout: str = "current",
        norm_layer: NormLayer = nn.BatchNorm2d,
        fused_head: bool = True,
    ) -> None:
        super().__init__()
        if decoder_block not in DECODER_BLOCKS:
            raise ValueError(f"Unknown decoder block {decoder_block!r}; choose one of {sorted(DECODER_BLOCKS)}.")
        if out_ref and not ms_supervision:
            raise ValueError("out_ref=True needs ms_supervision=True: the gradient targets use the side outputs.")
        c = list(channels)
        self.image_patches, self.split_patches, self.patch_order = image_patches, split_patches, patch_order
        self.ms_supervision, self.out_ref, self.layout = ms_supervision, out_ref, layout
        self.fused_head = fused_head
        # Stages whose decoder block receives image patches; the full-resolution head always does.
        self.patch_stages = (5, 4, 3, 2) if layout == "current" else (4, 3, 2)
        self.gradient_stages = (4, 3, 2) if layout == "current" else (3, 2)
        strides = {5: reductions[3], 4: reductions[2], 3: reductions[1], 2: reductions[0], 1: 1}
        self.grid_strides = strides
        patch_out = {5: c[0] // 8, 4: c[0] // 8, 3: c[1] // 8, 2: c[2] // 8, 1: c[3] // 8}
        if image_patches:
            for s in (*self.patch_stages, 1):
                in_ch = 3 * strides[s] ** 2 if split_patches else 3
                self.add_module(f"ipt_blk{s}", SimpleConvs(in_ch, patch_out[s], inter_channels=64))

        def extra(stage: int) -> int:
            return patch_out[stage] if image_patches and stage in self.patch_stages else 0

        def block(in_ch: int, out_ch: int) -> nn.Module:
            inter = in_ch // 4 if decoder_channels == "adap" else 64
            return DECODER_BLOCKS[decoder_block](
                in_ch,
                out_ch,
                inter_channels=inter,
                attention=attention,
                norm_layer=norm_layer,
                deform_kernel_sizes=deform_kernel_sizes,
            )

        self.decoder_block4 = block(c[0] + extra(5), c[1])
        self.decoder_block3 = block(c[1] + extra(4), c[2])
        self.decoder_block2 = block(c[2] + extra(3), c[3])
        self.decoder_block1 = block(c[3] + extra(2), c[3] // 2)
        self.conv_out1 = nn.Sequential(nn.Conv2d(c[3] // 2 + (patch_out[1] if image_patches else 0), 1, 1))
        self.lateral_block4 = BasicLatBlk(c[1], c[1])
        self.lateral_block3 = BasicLatBlk(c[2], c[2])
        self.lateral_block2 = BasicLatBlk(c[3], c[3])
        stage_channels = {4: c[1], 3: c[2], 2: c[3]}
        if ms_supervision:
            for s, ch in stage_channels.items():
                self.add_module(f"conv_ms_spvn_{s}", nn.Conv2d(ch, 1, 1))
        if out_ref:
            for s in self.gradient_stages:
                self.add_module(
                    f"gdt_convs_{s}",
                    nn.Sequential(
                        nn.Conv2d(stage_channels[s], 16, 3, padding=1), norm_layer(16), nn.ReLU(inplace=True)
                    ),
                )
            for s in self.gradient_stages:
                self.add_module(f"gdt_convs_pred_{s}", nn.Sequential(nn.Conv2d(16, 1, 1)))
            for s in self.gradient_stages:
                self.add_module(f"gdt_convs_attn_{s}", nn.Sequential(nn.Conv2d(16, 1, 1)))

    def _with_patches(self, feat: torch.Tensor, image: torch.Tensor, stage: int) -> torch.Tensor:
        if not self.image_patches or (stage != 1 and stage not in self.patch_stages):
            return feat
        if self.split_patches:
            g = self.grid_strides[stage]
            patches = (
                image_to_patches(
                    image, image.shape[-2] // feat.shape[-2], image.shape[-1] // feat.shape[-1], self.patch_order
                )
                if g > 1
                else image
            )
        else:
            patches = image
        patches = getattr(self, f"ipt_blk{stage}")(resize(patches, feat.shape[2:]))
        return torch.cat([feat, patches], dim=1)

    def _stage_heads(
        self, p: torch.Tensor, stage: int, out: SegmentationOutput, image_laplacian: torch.Tensor | None
    ) -> torch.Tensor:
        side = None
        if self.ms_supervision and self.training:
            side = getattr(self, f"conv_ms_spvn_{stage}")(p)
            out.side_logits.append(side)
        if self.out_ref and stage in self.gradient_stages:
            g = getattr(self, f"gdt_convs_{stage}")(p)
            if self.training and image_laplacian is not None:
                out.gradient_targets.append(image_laplacian * resize(side, image_laplacian.shape[2:]))
                out.gradient_preds.append(getattr(self, f"gdt_convs_pred_{stage}")(g))
            p = p * torch.sigmoid(getattr(self, f"gdt_convs_attn_{stage}")(g))
        return p

    def forward(
        self, image: torch.Tensor, features: Sequence[torch.Tensor], image_laplacian: torch.Tensor | None = None
    ) -> SegmentationOutput:
        x1, x2, x3, x4 = features
        out = SegmentationOutput(logits=image.new_empty(0))
        p4 = self.decoder_block4(self._with_patches(x4, image, 5))
        p4 = self._stage_heads(p4, 4, out, image_laplacian)
        p3 = resize(p4, x3.shape[2:]) + self.lateral_block4(x3)
        p3 = self._stage_heads(self.decoder_block3(self._with_patches(p3, image, 4)), 3, out, image_laplacian)
        p2 = resize(p3, x2.shape[2:]) + self.lateral_block3(x2)
        p2 = self._stage_heads(self.decoder_block2(self._with_patches(p2, image, 3)), 2, out, image_laplacian)
        p1 = resize(p2, x1.shape[2:]) + self.lateral_block2(x1)
        p1 = self.decoder_block1(self._with_patches(p1, image, 2))
        if self.fused_head:
            out.logits = self._fused_head(p1, image)
        else:
            out.logits = self.conv_out1(self._with_patches(resize(p1, image.shape[2:]), image, 1))
        return out

    def _fused_head(self, p1: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``conv_out1(cat(up(p1), ipt_blk1(image)))`` without the full-resolution concat.

        ``conv_out1`` is a 1x1 convolution, so it splits over the concatenated channels; it commutes with the
        (per-channel, linear) bilinear upsampling, so its ``p1`` part runs at 1/4 resolution on C channels and
        only the 1-channel result is upsampled. Its image-patch part is :meth:`_image_logits`. Same parameters,
        same function (to float rounding); no 240-channel full-resolution tensor is created or kept for backward.
        """
        weight, bias = self.conv_out1[0].weight, self.conv_out1[0].bias
        c = p1.shape[1]
        logits = resize(pointwise_conv(p1, weight[:, :c]), image.shape[2:])
        if self.image_patches:
            logits = logits + self._image_logits(image, weight[:, c:, 0, 0])
        return logits + bias.view(1, -1, 1, 1)

    def _image_logits(self, image: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
        """``head_weight`` (the 1x1 head on ``ipt_blk1``'s channels) applied to ``ipt_blk1(image)``, as one 5x5
        convolution of the image.

        The 1x1 head folds into ``ipt_blk1.conv_out`` (a 3x3 convolution to one channel), and two 3x3
        convolutions compose into one 5x5 convolution of the 3-channel image with a constant bias. The composition
        is exact wherever the inner map's zero padding is not read, that is everywhere but the one-pixel border,
        which is recomputed from 3-pixel strips with the two convolutions. The 64-channel full-resolution inner map
        is never created, and no convolution runs with 3 input or 1 output channels at full resolution, which
        oneDNN's bf16 kernels handle badly (docs/benchmarks.md, "What the decoder rewrites changed").
        """
        inner, outer = self.ipt_blk1.conv1, self.ipt_blk1.conv_out
        folded_w = torch.einsum("oc,cikl->oikl", head_weight, outer.weight)  # 1 x 64 x 3 x 3
        folded_b = head_weight @ outer.bias

        def two_convs(strip: torch.Tensor) -> torch.Tensor:
            return F.conv2d(inner(strip), folded_w, folded_b, padding=1)

        # (f * g) of two cross-correlations is the full convolution of their kernels: conv_transpose2d computes it
        composite = F.conv_transpose2d(inner.weight.transpose(0, 1), folded_w.transpose(0, 1)).transpose(0, 1)
        constant = folded_b + folded_w.sum(dim=(2, 3)) @ inner.bias
        out = F.conv2d(image, composite, constant, padding=2)
        out[..., :1, :] = two_convs(image[..., :3, :])[..., :1, :]
        out[..., -1:, :] = two_convs(image[..., -3:, :])[..., -1:, :]
        out[..., :1] = two_convs(image[..., :3])[..., :1]
        out[..., -1:] = two_convs(image[..., -3:])[..., -1:]
        return out


@register_model
class BiRefNet(PretrainedMixin, nn.Module):
    """BiRefNet with every reference knob as a constructor argument (defaults = reference defaults).

    Shape: ``(B, 3, H, W)`` ImageNet-normalised, H and W multiples of 32 -> :class:`SegmentationOutput` with
    ``logits`` ``(B, 1, H, W)``. In training mode it also carries the side logits (strides 32, 16, 8), the
    gradient predictions/targets and the class logits, as the reference computes them only in training.

    Args:
        backbone: ``swin_v1_{t,s,b,l}``, ``pvt_v2_{b0,b1,b2,b5}``, ``resnet50``, ``vgg16``, ``vgg16bn`` or
            ``timm/<name>`` (any timm model with ``features_only``).
        backbone_weights: ImageNet weights for the backbone: a local file (official release or timm layout),
            ``"timm"`` / ``"timm:<model>.<tag>"`` (fetched by timm into the Hugging Face cache), or ``None`` /
            ``"none"`` for random initialisation.
        backbone_kwargs: extra arguments for the backbone (e.g. ``drop_path_rate``, timm ``img_size``).
        multi_scale_input: ``'cat'`` (second backbone pass at half resolution, concatenated), ``'add'`` or ``''``.
        context_num: how many of x1..x3 are resized and concatenated to x4 (``cxt_num``, 0..3).
        squeeze_block: ``'<Block>_x<N>'`` with Block in BasicDecBlk, ResBlk, ASPP, ASPPDeformable, or ``''``.
        decoder_block: ``'BasicDecBlk'`` or ``'ResBlk'``.
        decoder_attention: ``'ASPPDeformable'``, ``'ASPP'`` or ``''`` inside every decoder/squeeze block.
        image_patches: inward reference (``dec_ipt``); ``split_patches`` cuts the image into patch grids.
        patch_order: channel order of the patch grids, ``'current'`` (c hg wg) or ``'legacy'`` (wg hg c).
        ms_supervision: side outputs at strides 32, 16, 8 (training).
        out_ref: outward reference: gradient-attention heads (used at inference too) and gradient targets.
        num_classes: auxiliary classification head size (0 = off; the reference used 219 on DIS5K).
        decoder_channels: ``'fixed'`` (64 inner channels) or ``'adap'`` (input channels / 4).
        layout: ``'current'`` or ``'legacy'`` (checkpoints made before 2024-05-02; see docs).
        norm: ``'batch'`` (reference), ``'group'`` or ``'identity'``.
        grad_checkpointing: recompute backbone activations in backward to save memory.
        fused_head: compute the final 1x1 head without the full-resolution 240-channel concat (same parameters
            and function; see :meth:`BiRefNetDecoder._fused_head`). ``False`` runs the reference's literal path.
        deform_impl: deformable convolution kernel: ``"auto"`` (torchvision on CUDA, gather elsewhere),
            ``"torchvision"``, ``"grid_sample"`` or ``"gather"`` (same function; see ``blocks.DeformableConv2d``).
    """

    def __init__(
        self,
        backbone: str = "swin_v1_l",
        backbone_weights: str | None = None,
        backbone_kwargs: dict | None = None,
        multi_scale_input: str = "cat",
        context_num: int = 3,
        squeeze_block: str = "BasicDecBlk_x1",
        decoder_block: str = "BasicDecBlk",
        decoder_attention: str = "ASPPDeformable",
        image_patches: bool = True,
        split_patches: bool = True,
        patch_order: str = "current",
        ms_supervision: bool = True,
        out_ref: bool = True,
        num_classes: int = 0,
        decoder_channels: str = "fixed",
        layout: str = "current",
        norm: str = "batch",
        grad_checkpointing: bool = False,
        fused_head: bool = True,
        deform_impl: str = "auto",
    ) -> None:
        super().__init__()
        if multi_scale_input not in ("", "add", "cat"):
            raise ValueError(f"multi_scale_input must be '', 'add' or 'cat', not {multi_scale_input!r}.")
        if not 0 <= context_num <= 3:
            raise ValueError(f"context_num must be in 0..3, not {context_num}.")
        if layout not in ("current", "legacy"):
            raise ValueError(f"layout must be 'current' or 'legacy', not {layout!r}.")
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        norm_layer = make_norm_layer(norm)
        deform_kernel_sizes = (1, 3, 7) if layout == "current" else (3,)
        self.multi_scale_input, self.context_num = multi_scale_input, context_num
        self.bb = build_backbone(backbone, backbone_weights, **(backbone_kwargs or {}))
        if grad_checkpointing:
            self.set_grad_checkpointing(True)
        enc = list(self.bb.out_channels)
        if multi_scale_input == "cat":
            enc = [2 * ch for ch in enc]
        self.size_divisor = 32
        channels = enc[::-1]  # deepest first
        context = sum(enc[:3][3 - context_num :]) if context_num else 0
        self.squeeze_module = self._build_squeeze(
            squeeze_block, channels[0] + context, channels[0], norm_layer, decoder_attention, deform_kernel_sizes
        )
        self.decoder = BiRefNetDecoder(
            channels=channels,
            reductions=self.bb.reductions,
            decoder_block=decoder_block,
            attention=decoder_attention,
            deform_kernel_sizes=deform_kernel_sizes,
            image_patches=image_patches,
            split_patches=split_patches,
            patch_order=patch_order,
            ms_supervision=ms_supervision,
            out_ref=out_ref,
            decoder_channels=decoder_channels,
            layout=layout,
            norm_layer=norm_layer,
            fused_head=fused_head,
        )
        set_deform_impl(self, deform_impl)
        if num_classes:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.cls_head = nn.Sequential(nn.Linear(channels[0], num_classes))

    @staticmethod
    def _build_squeeze(
        spec: str, in_ch: int, out_ch: int, norm_layer: NormLayer, attention: str, deform_kernel_sizes: Sequence[int]
    ) -> nn.Sequential:
        if not spec:
            if in_ch != out_ch:
                raise ValueError(f"squeeze_block='' needs context_num=0 (features have {in_ch} != {out_ch} channels).")
            return nn.Sequential()
        name, _, n = spec.partition("_x")
        count = int(n or 1)
        blocks = []
        for i in range(count):
            c_in = in_ch if i == 0 else out_ch  # the reference reused in_ch for every copy, which only works for N=1
            if name in DECODER_BLOCKS:
                blocks.append(
                    DECODER_BLOCKS[name](
                        c_in,
                        out_ch,
                        inter_channels=64,
                        attention=attention,
                        norm_layer=norm_layer,
                        deform_kernel_sizes=deform_kernel_sizes,
                    )
                )
            elif name == "ASPP":
                blocks.append(ASPP(c_in, out_ch, norm_layer=norm_layer))
            elif name == "ASPPDeformable":
                blocks.append(ASPPDeformable(c_in, out_ch, kernel_sizes=deform_kernel_sizes, norm_layer=norm_layer))
            else:
                raise ValueError(f"Unknown squeeze block {spec!r}; e.g. 'BasicDecBlk_x1', 'ResBlk_x4', 'ASPP_x3', ''.")
        return nn.Sequential(*blocks)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute backbone activations during backward (memory at 1024-2048 px)."""
        if not hasattr(self.bb, "set_grad_checkpointing"):
            raise ValueError(f"Backbone {type(self.bb).__name__} does not support gradient checkpointing.")
        self.bb.set_grad_checkpointing(enable)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError unless ``x`` is ``(B, 3, H, W)`` with H and W multiples of 32."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"BiRefNet expects a (B, 3, H, W) image batch, got shape {tuple(x.shape)}.")
        h, w = x.shape[-2:]
        d = self.size_divisor
        if h % d or w % d:
            raise ValueError(
                f"Input size {h}x{w} (HxW) is not a multiple of {d}. Resize the image to e.g. "
                f"{max(d, round(h / d) * d)}x{max(d, round(w / d) * d)}, or pad it, before calling the model."
            )

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Backbone features (x1..x4, multi-scale and context applied, squeezed x4) and class logits."""
        feats = self.bb(x)
        if self.multi_scale_input:
            half = resize(x, (x.shape[2] // 2, x.shape[3] // 2))
            feats_half = [resize(f, g.shape[2:]) for f, g in zip(self.bb(half), feats, strict=True)]
            if self.multi_scale_input == "cat":
                feats = [torch.cat([f, g], dim=1) for f, g in zip(feats, feats_half, strict=True)]
            else:
                feats = [f + g for f, g in zip(feats, feats_half, strict=True)]
        x1, x2, x3, x4 = feats
        class_logits = None
        if self.training and hasattr(self, "cls_head"):
            class_logits = self.cls_head(self.avgpool(x4).flatten(1))
        if self.context_num:
            context = [resize(f, x4.shape[2:]) for f in (x1, x2, x3)][3 - self.context_num :]
            x4 = torch.cat([*context, x4], dim=1)
        return [x1, x2, x3, self.squeeze_module(x4)], class_logits

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        if not torch.compiler.is_compiling():
            self.check_input(x)
        feats, class_logits = self.encode(x)
        laplacian = None
        if self.training and self.decoder.out_ref:
            laplacian = laplacian_k5(x.float().mean(dim=1, keepdim=True)).to(x.dtype)
        out = self.decoder(x, feats, laplacian)
        out.class_logits = class_logits
        return out

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict in the reference key layout (identical names), loadable by the official code."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}
