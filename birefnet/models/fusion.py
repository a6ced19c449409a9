"""Inference-only rewrites of a trained network that keep its function: BatchNorm folded into the convolution before it.

Each block names its own convolution -> BatchNorm pairs in a ``conv_bn_pairs`` class attribute (attribute names);
inside ``nn.Sequential`` containers a ``Conv2d`` directly followed by a ``BatchNorm2d`` is a pair too. A
:class:`~birefnet.models.blocks.DeformableConv2d` folds into its ``regular_conv``: the deformable convolution is
linear in its kernel, so scaling the kernel and shifting the bias is exact.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from birefnet.models.blocks import DeformableConv2d

__all__ = ["cast_for_inference", "fold_batchnorm"]


def _conv_of(module: nn.Module) -> nn.Conv2d | None:
    if isinstance(module, DeformableConv2d):
        return module.regular_conv
    return module if isinstance(module, nn.Conv2d) else None


def _foldable(bn: nn.Module) -> bool:
    return isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
    conv.weight, conv.bias = weight, bias


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm (eval statistics) into the convolution before it, in place; returns how many.

    The folded BatchNorm becomes ``nn.Identity``, so the model computes the same function in eval mode with one
    pass less per normalisation, and a later cast to bf16 rounds one fused kernel instead of a kernel and a
    normalisation. Only for inference: training would update statistics that no longer exist.
    """
    if model.training:
        raise ValueError("fold_batchnorm folds eval-mode statistics: call model.eval() first.")
    folded = 0
    for module in list(model.modules()):
        pairs = list(getattr(type(module), "conv_bn_pairs", ()))
        if isinstance(module, nn.Sequential):
            pairs += list(pairwise(module._modules))
        for conv_name, bn_name in pairs:
            conv, bn = _conv_of(getattr(module, conv_name)), getattr(module, bn_name)
            if conv is None or not _foldable(bn):
                continue
            _fold(conv, bn)
            setattr(module, bn_name, nn.Identity())
            folded += 1
    return folded


def cast_for_inference(model: nn.Module, dtype: torch.dtype) -> int:
    """Fold the BatchNorms of an eval-mode ``model`` (in fp32), then cast it to ``dtype``, in place: how the network
    runs in bf16 on a CPU (its deformable convolutions then run in ``dtype`` too). Returns the folded count."""
    folded = fold_batchnorm(model)
    model.to(dtype)
    return folded
