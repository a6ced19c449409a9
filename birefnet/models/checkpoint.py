"""Load any BiRefNet-family checkpoint: official ``.pth``, Hugging Face ``model.safetensors``, this project's files.

The architecture is inferred from the key set and shapes (backbone, current/legacy layout, decoder knobs),
so ``load_model(path)`` needs no configuration; keyword overrides win over what is inferred. Loading is
strict, and a mismatch raises an error listing missing, unexpected and wrong-shape keys.
Nothing is unpickled: torch files are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from birefnet.models.backbones import read_state_dict, unwrap_state_dict

log = logging.getLogger(__name__)

__all__ = [
    "infer_birefnet_config",
    "load_model",
    "load_state_dict_strict",
    "read_checkpoint",
    "save_model",
    "strip_prefixes",
]

CONFIG_METADATA_KEY = "birefnet_model"


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes: DDP ``module.``, ``torch.compile`` ``_orig_mod.``, Lightning ``net.``, EMA ``ema.``."""
    pattern = re.compile(r"^(module\.|_orig_mod\.|net\.|model\.(?=bb\.|decoder\.|squeeze_module\.|stage1\.))+")
    return {pattern.sub("", k): v for k, v in sd.items()}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors of a checkpoint (prefixes stripped) and the model description saved with it, if any."""
    path = Path(path)
    raw = read_state_dict(path)
    config = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if CONFIG_METADATA_KEY in meta:
            config = json.loads(meta[CONFIG_METADATA_KEY])
    elif isinstance(raw, dict) and isinstance(raw.get(CONFIG_METADATA_KEY), dict):
        config = raw[CONFIG_METADATA_KEY]
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(raw).__name__}).")
    return strip_prefixes(unwrap_state_dict(raw)), config


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m[1] for k in sd if (m := rx.match(k))})


def infer_backbone(sd: dict[str, torch.Tensor]) -> str | None:
    """Reference backbone name from backbone key shapes, or ``None`` when it is none of them."""
    if "bb.patch_embed.proj.weight" in sd:
        dim = sd["bb.patch_embed.proj.weight"].shape[0]
        depth3 = _count(sd, r"^bb\.layers\.2\.blocks\.(\d+)\.")
        return {128: "swin_v1_b", 192: "swin_v1_l"}.get(dim) or ("swin_v1_t" if depth3 == 6 else "swin_v1_s")
    if "bb.patch_embed1.proj.weight" in sd:
        if sd["bb.patch_embed1.proj.weight"].shape[0] == 32:
            return "pvt_v2_b0"
        return {2: "pvt_v2_b1", 6: "pvt_v2_b2", 40: "pvt_v2_b5"}.get(_count(sd, r"^bb\.block3\.(\d+)\."))
    if "bb.conv1.4.0.conv1.weight" in sd:
        return "resnet50"
    if "bb.conv1.0.weight" in sd:
        return "vgg16bn" if "bb.conv1.1.running_mean" in sd else "vgg16"
    return None


def infer_birefnet_config(sd: dict[str, torch.Tensor]) -> dict:
    """Constructor arguments of :class:`~birefnet.models.BiRefNet` that reproduce this state dict's keys."""
    cfg: dict = {}
    backbone = infer_backbone(sd)
    if backbone is None:
        raise ValueError(
            "Cannot tell the backbone from the checkpoint keys (first backbone keys: "
            f"{[k for k in sd if k.startswith('bb.')][:3]}). Pass backbone=... explicitly."
        )
    cfg["backbone"] = backbone
    legacy = "decoder.ipt_blk4.conv1.weight" in sd and "decoder.ipt_blk5.conv1.weight" not in sd
    if "decoder.decoder_block4.conv_in.weight" in sd and not legacy:
        legacy = ("decoder.gdt_convs_3.0.weight" in sd and "decoder.gdt_convs_4.0.weight" not in sd) or (
            "decoder.decoder_block4.dec_att.aspp_deforms.0.atrous_conv.regular_conv.weight" in sd
            and "decoder.decoder_block4.dec_att.aspp_deforms.1.atrous_conv.regular_conv.weight" not in sd
        )
    cfg["layout"] = "legacy" if legacy else "current"
    cfg["image_patches"] = "decoder.ipt_blk1.conv1.weight" in sd
    if cfg["image_patches"]:
        cfg["split_patches"] = sd["decoder.ipt_blk1.conv1.weight"].shape[1] == 3 and (
            sd.get("decoder.ipt_blk2.conv1.weight", torch.empty(0, 4)).shape[1] != 3
        )
    cfg["ms_supervision"] = "decoder.conv_ms_spvn_2.weight" in sd
    cfg["out_ref"] = "decoder.gdt_convs_2.0.weight" in sd
    att = "decoder.decoder_block4.dec_att."
    if f"{att}aspp_deforms.0.atrous_conv.regular_conv.weight" in sd:
        cfg["decoder_attention"] = "ASPPDeformable"
    elif f"{att}aspp2.atrous_conv.weight" in sd:
        cfg["decoder_attention"] = "ASPP"
    else:
        cfg["decoder_attention"] = ""
    cfg["decoder_block"] = "ResBlk" if "decoder.decoder_block4.conv_resi.weight" in sd else "BasicDecBlk"
    if "cls_head.0.weight" in sd:
        cfg["num_classes"] = sd["cls_head.0.weight"].shape[0]
    if "decoder.lateral_block2.conv.weight" in sd:
        # x1 has the stem's channels; 'cat' doubles them. '' and 'add' cannot be told apart by shapes.
        stem = {"swin": sd.get("bb.patch_embed.proj.weight"), "pvt": sd.get("bb.patch_embed1.proj.weight")}
        x1_channels = next((v.shape[0] for v in stem.values() if v is not None), 256 if backbone == "resnet50" else 128)
        doubled = sd["decoder.lateral_block2.conv.weight"].shape[0] == 2 * x1_channels
        cfg["multi_scale_input"] = "cat" if doubled else ""
    inner = sd.get("decoder.decoder_block4.conv_in.weight")
    if inner is not None:
        cfg["decoder_channels"] = "fixed" if inner.shape[0] == 64 else "adap"
    return cfg


def load_state_dict_strict(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    source: str,
    looks_like: str | None = None,
    ignore: tuple[str, ...] = (),
) -> None:
    """``load_state_dict(strict=True)`` with a readable report of every difference."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(ignore)]
    unexpected = [k for k in sd if k not in own and not k.endswith(ignore)]
    wrong = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:

        def part(name: str, items: list[str]) -> str:
            return f"{len(items)} {name}" + (f" (e.g. {', '.join(items[:4])})" if items else "")

        hint = f" The file looks like a {looks_like} checkpoint." if looks_like else ""
        raise ValueError(
            f"Checkpoint {source} does not match the model: {part('missing', missing)}; "
            f"{part('unexpected', unexpected)}; {part('wrong-shape', wrong)}.{hint} "
            "Build the model with the architecture the file was trained with (e.g. backbone=..., layout=...)."
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def _guess_family(sd: dict[str, torch.Tensor]) -> str:
    if any(k.startswith(("bb.", "decoder.", "squeeze_module.")) for k in sd):
        return "birefnet"
    if any(k.startswith("stage1.rebnconvin.") for k in sd):
        return "isnet" if any(k.startswith("conv_in.") for k in sd) else "u2net"
    raise ValueError(
        f"Unrecognised checkpoint: its keys (e.g. {list(sd)[:3]}) are neither BiRefNet (bb./decoder.) nor "
        "U2-Net/IS-Net (stage1.rebnconvin.). Pass a BiRefNet, U2-Net or IS-Net weights file."
    )


def load_model(path: str | Path, **overrides) -> nn.Module:
    """Build the model a checkpoint belongs to and load its weights strictly; ``overrides`` win over inference."""
    from birefnet.models.birefnet import BiRefNet

    sd, saved_config = read_checkpoint(path)
    family = _guess_family(sd)
    if family == "birefnet":
        config = dict(saved_config or {})
        config.pop("class", None)
        config.pop("backbone_weights", None)
        inferred = {}
        try:
            inferred = infer_birefnet_config(sd)
        except ValueError:
            if "backbone" not in config and "backbone" not in overrides:
                raise
        config = {**inferred, **config, **overrides}
        model = BiRefNet(**config)
        load_state_dict_strict(model, sd, str(path), looks_like=inferred.get("backbone"))
    else:
        from birefnet.models import u2net

        model = u2net.build_from_state_dict(family, sd, str(path), **{**(saved_config or {}), **overrides})
    log.info("Loaded %s from %s.", type(model).__name__, path)
    return model.eval()


def save_model(model: nn.Module, path: str | Path) -> None:
    """Write weights as safetensors with the constructor arguments in the metadata (loadable by ``load_model``)."""
    from safetensors.torch import save_file

    config = {"class": type(model).__name__, **getattr(model, "config", {})}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={CONFIG_METADATA_KEY: json.dumps(config)})
