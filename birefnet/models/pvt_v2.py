"""Pyramid Vision Transformer v2 as used by BiRefNet.

PVT v2: Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", CVMJ 2022.
Re-implemented from the description of the BiRefNet reference backbone (ZhengPeng7/BiRefNet @ 25cb930,
``models/backbones/pvt_v2.py``, from whai362/PVT; Apache-2.0). Key names follow the official release.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from birefnet.models.swin import DropPath, init_transformer_weights

__all__ = ["PVT_CONFIGS", "PyramidVisionTransformerV2", "pvt_v2"]

PVT_CONFIGS: dict[str, dict] = {
    "pvt_v2_b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), mlp_ratios=(8, 8, 4, 4)),
    "pvt_v2_b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), mlp_ratios=(8, 8, 4, 4)),
    "pvt_v2_b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), mlp_ratios=(8, 8, 4, 4)),
    "pvt_v2_b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4)),
}


class DWConv(nn.Module):
    """Depth-wise 3x3 convolution on a token sequence (``B, N, C``) laid out as ``h x w``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Attention(nn.Module):
    """Spatial-reduction attention: keys/values from a map downsampled by ``sr_ratio``."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(x)
        k, v = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: strided convolution + LayerNorm, returns tokens and the map size."""

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class PyramidVisionTransformerV2(nn.Module):
    """PVT v2 feature extractor returning four NCHW maps at strides 4, 8, 16, 32.

    Args:
        embed_dims: channels per stage.
        num_heads: attention heads per stage (reference: 1, 2, 5, 8).
        mlp_ratios: MLP width factor per stage.
        depths: blocks per stage.
        sr_ratios: key/value spatial reduction per stage (reference: 8, 4, 2, 1).
        drop_path_rate: stochastic depth over all blocks (BiRefNet builds it with 0.1).
        in_chans: input channels.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (2, 2, 2, 2),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        drop_path_rate: float = 0.1,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.out_channels = list(embed_dims)
        self.reductions = [4, 8, 16, 32]
        self.num_stages = len(depths)
        self.grad_checkpointing = False
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        # Registration order (all patch embeddings, then blocks and norms) matches the official state dicts.
        for i in range(self.num_stages):
            embed = OverlapPatchEmbed(
                7 if i == 0 else 3, 4 if i == 0 else 2, in_chans if i == 0 else embed_dims[i - 1], embed_dims[i]
            )
            self.add_module(f"patch_embed{i + 1}", embed)
        for i in range(self.num_stages):
            start = sum(depths[:i])
            blocks = nn.ModuleList(
                Block(embed_dims[i], num_heads[i], mlp_ratios[i], sr_ratios[i], dpr[start + j])
                for j in range(depths[i])
            )
            self.add_module(f"block{i + 1}", blocks)
            self.add_module(f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=1e-6))
        self.apply(init_transformer_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        outs = []
        for i in range(1, self.num_stages + 1):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                if self.grad_checkpointing and x.requires_grad:
                    x = checkpoint(blk, x, h, w, use_reentrant=False)
                else:
                    x = blk(x, h, w)
            x = getattr(self, f"norm{i}")(x)
            x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


def pvt_v2(name: str, **kwargs) -> PyramidVisionTransformerV2:
    """Build a reference PVT v2 by name (``pvt_v2_b0|b1|b2|b5``); ``kwargs`` override the configuration."""
    if name not in PVT_CONFIGS:
        raise ValueError(f"Unknown PVT v2 variant {name!r}; choose one of {sorted(PVT_CONFIGS)}.")
    return PyramidVisionTransformerV2(**{**PVT_CONFIGS[name], **kwargs})
