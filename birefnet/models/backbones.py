"""Backbones: the reference ones by name, torchvision CNNs, and any timm ``features_only`` model.

Every backbone returned by :func:`build_backbone` is an ``nn.Module`` whose ``forward`` maps
``(B, 3, H, W)`` to a list of four NCHW feature maps ordered shallow to deep, and which exposes
``out_channels`` and ``reductions`` (the stride of each map). The decoder reads both, so no channel
table per backbone exists anywhere else.

ImageNet weights come from a local file (official Swin/PVT release layout, timm layout, or a torchvision file) or,
when the user asks with ``"timm"`` / ``"timm:<model>.<tag>"``, from timm's own pretrained mechanism (the Hugging Face
cache, ``HF_HUB_OFFLINE`` respected); :func:`load_backbone_weights` maps them onto the backbone and reports what it
loaded and from where.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from birefnet.models.pvt_v2 import PVT_CONFIGS, pvt_v2
from birefnet.models.state_dict import read_state_dict, unwrap_state_dict
from birefnet.models.swin import SWIN_CONFIGS, swin_v1

log = logging.getLogger(__name__)

__all__ = [
    "REFERENCE_BACKBONES",
    "TIMM_PRETRAINED",
    "TimmBackbone",
    "TorchvisionBackbone",
    "build_backbone",
    "load_backbone_weights",
]

REFERENCE_BACKBONES = (*SWIN_CONFIGS, *PVT_CONFIGS, "resnet50", "vgg16", "vgg16bn")
#: The timm weights ``backbone_weights="timm"`` loads for each reference backbone: the same ImageNet weights as the
#: reference's release files (Swin-L/B: ImageNet-22k fine-tuned on 1k at 384 px, window 12; Swin-S/T: 22k->1k at
#: 224 px; PVT v2: ImageNet-1k; ResNet-50 / VGG: torchvision's).
TIMM_PRETRAINED = {
    "swin_v1_l": "swin_large_patch4_window12_384.ms_in22k_ft_in1k",
    "swin_v1_b": "swin_base_patch4_window12_384.ms_in22k_ft_in1k",
    "swin_v1_s": "swin_small_patch4_window7_224.ms_in22k_ft_in1k",
    "swin_v1_t": "swin_tiny_patch4_window7_224.ms_in22k_ft_in1k",
    **{name: f"{name}.in1k" for name in PVT_CONFIGS},
    "resnet50": "resnet50.tv_in1k",
    "vgg16": "vgg16.tv_in1k",
    "vgg16bn": "vgg16_bn.tv_in1k",
}
#: ``backbone_weights`` values meaning "random initialisation, on purpose".
NO_WEIGHTS = ("none",)


class TorchvisionBackbone(nn.Sequential):
    """ResNet-50 / VGG-16(-BN) cut into four stages ``conv1..conv4`` (the reference's module names)."""

    def __init__(self, name: str) -> None:
        import torchvision.models as tvm

        if name == "resnet50":
            net = tvm.resnet50(weights=None)
            stages = OrderedDict(
                conv1=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
                conv2=net.layer2,
                conv3=net.layer3,
                conv4=net.layer4,
            )
            self_channels, self_reductions = [256, 512, 1024, 2048], [4, 8, 16, 32]
        elif name in ("vgg16", "vgg16bn"):
            feats = (tvm.vgg16_bn if name == "vgg16bn" else tvm.vgg16)(weights=None).features
            cuts = (0, 13, 23, 33, 43) if name == "vgg16bn" else (0, 9, 16, 23, 30)
            stages = OrderedDict((f"conv{i + 1}", feats[cuts[i] : cuts[i + 1]]) for i in range(4))
            self_channels, self_reductions = [128, 256, 512, 512], [2, 4, 8, 16]
        else:
            raise ValueError(f"Unknown torchvision backbone {name!r}.")
        super().__init__(stages)
        self.out_channels, self.reductions = self_channels, self_reductions
        self._vgg_cuts = cuts if name != "resnet50" else None

    def reference_keys(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename torchvision / timm ResNet (``conv1``, ``bn1``, ``layer1..4``) or VGG (``features.N``) keys to
        this module's stage names; other keys pass through."""
        out = {}
        for k, v in sd.items():
            if self._vgg_cuts is None:
                k = re.sub(r"^conv1\.", "conv1.0.", k)
                k = re.sub(r"^bn1\.", "conv1.1.", k)
                k = re.sub(r"^layer1\.", "conv1.4.", k)
                k = re.sub(r"^layer([234])\.", lambda m: f"conv{m[1]}.", k)
            elif (m := re.match(r"^features\.(\d+)\.(.+)$", k)) is not None:
                index = int(m[1])
                stage = next((i for i in range(4) if self._vgg_cuts[i] <= index < self._vgg_cuts[i + 1]), None)
                if stage is not None:
                    k = f"conv{stage + 1}.{index}.{m[2]}"  # slicing a Sequential keeps the indices
            out[k] = v
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self:
            x = stage(x)
            outs.append(x)
        return outs


class TimmBackbone(nn.Module):
    """Any timm model with ``features_only``: the last four feature levels, always NCHW.

    Args:
        name: timm model name; a leading ``timm/`` is accepted (``timm/convnext_tiny``).
        weights_file: a local weight file (loaded through timm's own key filter), ``"timm"`` (timm's default
            pretrained tag), ``"timm:<tag>"`` or ``"timm:<model>.<tag>"``, or ``None`` / ``"none"`` (random).
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size`` for ViT-like models).
    """

    def __init__(self, name: str, weights_file: str | None = None, **kwargs) -> None:
        super().__init__()
        import timm

        name = name.removeprefix("timm/")
        if weights_file == "timm" or (weights_file or "").startswith("timm:"):
            tag = weights_file.partition(":")[2]
            name = f"{name.split('.')[0]}.{tag}" if tag and "." not in tag else tag or name
            kwargs["pretrained"] = True
            log.info("Backbone %s: ImageNet weights through timm (Hugging Face cache).", name)
        elif weights_file and weights_file not in NO_WEIGHTS:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights_file)})
        self.model = timm.create_model(name, features_only=True, **kwargs)
        info = self.model.feature_info
        if len(info.channels()) < 4:
            raise ValueError(f"timm model {name!r} exposes {len(info.channels())} feature levels; BiRefNet needs 4.")
        self.out_channels = list(info.channels()[-4:])
        self.reductions = list(info.reduction()[-4:])
        self.channels_last_output = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model(x)[-4:]
        if self.channels_last_output:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return feats


def build_backbone(name: str, weights: str | None = None, **kwargs) -> nn.Module:
    """Build a backbone by reference name (``swin_v1_l``, ``pvt_v2_b2``, ``resnet50``, ...) or ``timm/<name>``.

    ``weights``: a local file; ``"timm"`` (the ImageNet weights of :data:`TIMM_PRETRAINED`, or the timm model's
    default tag) or ``"timm:<model>.<tag>"``, fetched by timm into the Hugging Face cache; ``"none"`` or ``None``
    for random initialisation (a log line says so). ``kwargs`` override the reference configuration (e.g.
    ``drop_path_rate``) or go to timm.
    """
    if name.startswith("timm/"):
        return TimmBackbone(name, weights, **kwargs)
    if name in SWIN_CONFIGS:
        bb = swin_v1(name, **kwargs)
    elif name in PVT_CONFIGS:
        bb = pvt_v2(name, **kwargs)
    elif name in ("resnet50", "vgg16", "vgg16bn"):
        bb = TorchvisionBackbone(name)
    else:
        raise ValueError(
            f"Unknown backbone {name!r}. Choose one of {', '.join(REFERENCE_BACKBONES)} or 'timm/<model name>'."
        )
    if weights == "timm" or (weights or "").startswith("timm:"):
        timm_name = weights.partition(":")[2] or TIMM_PRETRAINED[name]
        load_backbone_weights(bb, f"timm:{timm_name}", _timm_state_dict(timm_name))
    elif weights and weights not in NO_WEIGHTS:
        load_backbone_weights(bb, weights)
    else:
        why = "backbone_weights=none" if weights in NO_WEIGHTS else "no weights given"
        log.info("Backbone %s: random initialisation (%s).", name, why)
    return bb


def _timm_state_dict(timm_name: str) -> dict[str, torch.Tensor]:
    """The pretrained weights of a timm model, fetched by timm itself (Hugging Face cache; ``HF_HUB_OFFLINE``)."""
    import timm

    from birefnet.errors import CheckpointError

    try:
        return timm.create_model(timm_name, pretrained=True).state_dict()
    except RuntimeError as err:
        if "Unknown model" in str(err) or "Invalid pretrained tag" in str(err):
            raise CheckpointError(f"timm has no pretrained model {timm_name!r} ({err}).") from None
        raise
    except OSError as err:  # huggingface_hub: not cached and not downloadable (offline, no network)
        raise CheckpointError(
            f"Could not get the timm weights {timm_name} ({type(err).__name__}: {str(err).splitlines()[0]}). They "
            "are downloaded once into the Hugging Face cache: run once with network access (without "
            "HF_HUB_OFFLINE=1), or pass a local weights file as backbone_weights=/path/to/file."
        ) from None


def _timm_to_reference(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm Swin / PVT v2 keys into the reference (official release) layout; others pass through."""
    timm_pvt = any(k.startswith("stages.") for k in sd)
    timm_swin = "layers.0.downsample.norm.weight" not in sd
    out = {}
    for k, v in sd.items():
        if timm_pvt and (k.startswith("stages.") or k.startswith("patch_embed.")):
            # timm PVT v2
            k = re.sub(r"^patch_embed\.", "patch_embed1.", k)
            k = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}.", k)
            k = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"block{int(m[1]) + 1}.", k)
            k = re.sub(r"^stages\.(\d+)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", k)
            k = re.sub(r"\.mlp\.dwconv\.(weight|bias)$", r".mlp.dwconv.dwconv.\1", k)
        elif timm_swin and re.match(r"^layers\.\d+\.downsample\.", k):
            # timm Swin keeps patch merging at the start of the next stage
            k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", k)
        out[k] = v
    return out


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Load ImageNet weights (a local file at ``path``, or ``state_dict`` from ``path``) into a reference backbone,
    keeping matching keys only.

    Keys present in the model with equal shapes are loaded (the official Swin files lack the per-stage
    ``norm0..3``, which keep their default init). Weights sharing no key with the model are an error.
    """
    sd = unwrap_state_dict(read_state_dict(path)) if state_dict is None else state_dict
    sd = {re.sub(r"^(module\.|_orig_mod\.|backbone\.|bb\.)+", "", k): v for k, v in sd.items()}
    sd = backbone.reference_keys(sd) if isinstance(backbone, TorchvisionBackbone) else _timm_to_reference(sd)
    own = backbone.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(
            f"Backbone weights {path} share no key with {type(backbone).__name__}; it looks like weights of another "
            f"model (first keys: {list(sd)[:3]}). Pass the ImageNet file that matches the chosen backbone."
        )
    backbone.load_state_dict(usable, strict=False)
    missing = [k for k in own if k not in usable and not k.endswith("relative_position_index")]
    log.info(
        "Backbone weights %s: loaded %d tensors, %d left at init (e.g. %s), %d file keys unused.",
        path,
        len(usable),
        len(missing),
        missing[:3],
        len(sd) - len(usable),
    )
