"""Swin Transformer V1 as used by BiRefNet (the detection variant: pad to the window, then shift).

Swin Transformer: Liu et al., "Hierarchical Vision Transformer using Shifted Windows", ICCV 2021.
Re-implemented from the description of the BiRefNet reference backbone (ZhengPeng7/BiRefNet @ 25cb930,
``models/backbones/swin_v1.py``, itself from Swin-Transformer-Object-Detection; MIT licence).

Differences from timm's Swin that change the numbers (see docs): the token map is padded to a multiple
of the window *before* the cyclic shift, the shift mask is built on the padded map, odd blocks always
shift (also when the map is not larger than the window), and every stage output has its own LayerNorm
(``norm0..norm3``). Attention runs through ``F.scaled_dot_product_attention`` with the relative
position bias (and shift mask) as an additive mask, which is the same math as the explicit softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["SWIN_CONFIGS", "SwinTransformer", "swin_v1"]

#: Reference configurations (embed_dim, depths, heads, window).
SWIN_CONFIGS: dict[str, dict] = {
    "swin_v1_t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin_v1_s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin_v1_b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "swin_v1_l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
}


def init_transformer_weights(m: nn.Module) -> None:
    """Reference init of Swin and PVT: truncated-normal (std 0.02) Linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    Shape: ``(num_windows * B, window**2, C) -> same``; ``mask`` is ``(num_windows, N, N)`` additive.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Persistent, as in the reference: official checkpoints carry it.
        self.register_buffer("relative_position_index", _relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0).to(q.dtype)  # 1, heads, N, N
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.to(q.dtype)[None, :, None]).expand(b // nw, -1, -1, -1, -1)
            bias = bias.reshape(b, self.num_heads, n, n)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


def _window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _window_reverse(windows: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // w) * (wd // w))
    x = windows.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


class SwinTransformerBlock(nn.Module):
    """Pre-norm window attention + MLP; pads the map to the window, then shifts by ``shift_size``."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, _, c = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        else:
            attn_mask = None
        x = _window_reverse(self.attn(_window_partition(x, ws), attn_mask), ws, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (zero-padded to even size) -> LayerNorm -> Linear(4C, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks (odd ones shifted) and an optional downsampling at its end."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size, mlp_ratio, drop_path[i]
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self.grad_checkpointing = False

    def _shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        ws, s = self.window_size, self.shift_size
        # (h + ws - 1) // ws, not -(-h // ws): traced for ONNX, integer division of a negative size truncates
        hp, wp = (h + ws - 1) // ws * ws, (w + ws - 1) // ws * ws
        img = torch.zeros((1, hp, wp, 1), device=device)
        label = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                img[:, hs, wsl, :] = label
                label += 1
        windows = _window_partition(img, ws).squeeze(-1)
        diff = windows.unsqueeze(1) - windows.unsqueeze(2)
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        mask = self._shift_mask(h, w, x.device)
        for blk in self.blocks:
            if self.grad_checkpointing and x.requires_grad:
                x = checkpoint(blk, x, h, w, mask, use_reentrant=False)
            else:
                x = blk(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """4x4 patchify convolution (input zero-padded to a multiple of 4) followed by LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x)
        b, c, hh, ww = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(b, c, hh, ww)


class SwinTransformer(nn.Module):
    """Swin-V1 feature extractor returning the four stage maps (NCHW, strides 4, 8, 16, 32).

    Args:
        embed_dim: channels of stage 1; stage i has ``embed_dim * 2**i``.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (12 for B/L, 7 for T/S in the reference).
        patch_size: patchify stride.
        mlp_ratio: MLP hidden width factor.
        drop_path_rate: stochastic depth, linearly increasing over all blocks (reference: 0.2).
        in_chans: input channels.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.out_channels = [embed_dim * 2**i for i in range(len(depths))]
        self.reductions = [patch_size * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                BasicLayer(
                    self.out_channels[i],
                    depth,
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    dpr[start : start + depth],
                    downsample=i < len(depths) - 1,
                )
            )
        for i, c in enumerate(self.out_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(c))
        self.apply(init_transformer_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        outs = []
        for i, layer in enumerate(self.layers):
            out, x, nh, nw = layer(x, h, w)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(-1, h, w, self.out_channels[i]).permute(0, 3, 1, 2).contiguous())
            h, w = nh, nw
        return outs


def swin_v1(name: str, **kwargs) -> SwinTransformer:
    """Build a reference Swin-V1 by name (``swin_v1_t|s|b|l``); ``kwargs`` override the configuration."""
    if name not in SWIN_CONFIGS:
        raise ValueError(f"Unknown Swin variant {name!r}; choose one of {sorted(SWIN_CONFIGS)}.")
    return SwinTransformer(**{**SWIN_CONFIGS[name], **kwargs})
