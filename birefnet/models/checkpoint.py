"""Load any model checkpoint: official BiRefNet ``.pth`` / Hugging Face ``model.safetensors`` (a file, a folder or a
Hub repo), official U2-Net and IS-Net files, and this project's ``.ckpt`` / ``.safetensors`` / ``.pth``; save
models with their description and preprocessing card.

Which class to build comes from the file: the stored model description names it when there is one, otherwise
:func:`infer_family` tells it from the keys. The constructor arguments are, in order of precedence, the caller's
overrides, the stored description (checked against the class's constructor: known names, plain types, no
downloads) and what :func:`infer_birefnet_config` reads from key names and shapes. Loading is strict, and a
mismatch raises an error listing missing, unexpected and wrong-shape keys. Nothing is unpickled and nothing is
downloaded because of what a file says.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from birefnet.atomic import atomic_write_text
from birefnet.errors import CheckpointError
from birefnet.models.hub import CONFIG_FILE_NAME, WEIGHT_FILE_NAMES, ResolvedWeights, resolve_weights
from birefnet.models.registry import MODEL_REGISTRY
from birefnet.models.state_dict import (
    CONFIG_METADATA_KEY,
    PREPROCESSING_METADATA_KEY,
    load_state_dict_strict,
    read_checkpoint,
    write_checkpoint,
)
from birefnet.models.zoo import family_card, find_zoo_entry
from birefnet.preprocessing import PreprocessingCard

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG_METADATA_KEY",
    "PretrainedMixin",
    "checked_model_config",
    "infer_birefnet_config",
    "infer_family",
    "load_model",
    "model_card",
    "push_to_hub",
    "save_model",
    "save_pretrained",
]

# backbone keyword arguments a stored description may not carry: they fetch or read weights (timm's
# pretrained=True, pretrained_cfg_overlay={'url': ...}, checkpoint_path=...), or change what the features are
_UNSAFE_BACKBONE_KWARG = re.compile(r"pretrained|url|file|checkpoint|cache|hub|download|path|features_only|out_ind")


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m[1] for k in sd if (m := rx.match(k))})


def infer_family(sd: dict[str, torch.Tensor]) -> str:
    """The model class a state dict belongs to, from its key set: BiRefNet, U2Net, ISNet or ISNetGTEncoder."""
    if any(k.startswith(("bb.", "decoder.", "squeeze_module.")) for k in sd):
        return "BiRefNet"
    if any(k.startswith("stage1.rebnconvin.") for k in sd):
        if "conv_in.conv.weight" in sd:  # the GT encoder's stem is conv + BN + ReLU; IS-Net's a bare conv
            return "ISNetGTEncoder"
        return "ISNet" if "conv_in.weight" in sd else "U2Net"
    raise CheckpointError(
        f"Unrecognised checkpoint: its keys (e.g. {list(sd)[:3]}) are neither BiRefNet (bb./decoder.) nor "
        "U2-Net/IS-Net (stage1.rebnconvin.). Pass a BiRefNet, U2-Net or IS-Net weights file."
    )


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
        raise CheckpointError(
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


def infer_config(family: str, sd: dict[str, torch.Tensor]) -> dict:
    """Constructor arguments read from the keys and shapes of ``sd`` for ``family``."""
    if family == "BiRefNet":
        return infer_birefnet_config(sd)
    if family == "U2Net":
        mid = sd["stage1.rebnconv1.conv_s1.weight"].shape[0] if "stage1.rebnconv1.conv_s1.weight" in sd else 32
        return {"variant": "u2netp" if mid == 16 else "u2net"}
    return {}


def _is_plain(value, allow_dict: bool = False) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return not (isinstance(value, str) and "://" in value)
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if allow_dict and isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _expected_kind(param: inspect.Parameter) -> str:
    default, note = param.default, str(param.annotation)
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (tuple, list)):
        return "list"
    return "dict" if "dict" in note else "str" if "str" in note else "any"


_KIND_CHECKS = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, (list, tuple)),
    "dict": lambda v: isinstance(v, dict),
    "any": lambda v: True,
}


def checked_model_config(description: dict, source: str) -> tuple[str, dict]:
    """The class name and constructor arguments of a stored model description, checked against the class.

    Every argument must be one the constructor takes, with a plain value of its type; ``backbone_weights`` (a
    path on the machine that trained the model; the weights are in the checkpoint) is dropped, and so are
    backbone keyword arguments that would fetch or read weights, with a warning. A backbone only the network
    could build (``timm/hf-hub:...``) is refused.

    Raises:
        CheckpointError: unknown class or argument, wrong type; the message names the file and the entry.
    """
    config = dict(description)
    name = config.pop("class", None)
    if name is not None and name not in MODEL_REGISTRY:
        raise CheckpointError(
            f"{source}: its model description names class {name!r}; this project builds "
            f"{', '.join(sorted(MODEL_REGISTRY))}. Was it saved by another program?"
        )
    if name is None:
        return "", {}
    params = {
        k: p
        for k, p in inspect.signature(MODEL_REGISTRY[name].__init__).parameters.items()
        if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    checked: dict = {}
    for key, value in config.items():
        if key not in params:
            raise CheckpointError(
                f"{source}: its model description has the argument {key!r}, which {name} does not take (it takes "
                f"{', '.join(params)}). The file was saved by another version; pass the architecture as keyword "
                "arguments instead."
            )
        kind = _expected_kind(params[key])
        if key == "backbone_kwargs" and isinstance(value, dict):
            unsafe = sorted(k for k in value if _UNSAFE_BACKBONE_KWARG.search(str(k).lower()))
            if unsafe:
                log.warning(
                    "%s: ignoring stored backbone arguments %s (they would fetch or read weights).", source, unsafe
                )
                value = {k: v for k, v in value.items() if k not in unsafe}
        if not _is_plain(value, allow_dict=kind == "dict") or not (value is None or _KIND_CHECKS[kind](value)):
            raise CheckpointError(
                f"{source}: its model description sets {key}={value!r}, but {name} expects a plain {kind} there."
            )
        checked[key] = value
    if checked.pop("backbone_weights", None):
        log.info("%s: ignoring the stored backbone_weights path; the weights come from the checkpoint.", source)
    backbone = checked.get("backbone")
    if isinstance(backbone, str) and ":" in backbone:
        raise CheckpointError(
            f"{source}: its model description names the backbone {backbone!r}, which only a download could build. "
            "Loading a file never downloads; pass backbone=<timm model name> explicitly if you mean it."
        )
    return name, checked


def load_model(reference: str | Path, preprocessing: PreprocessingCard | dict | None = None, **overrides) -> nn.Module:
    """Build the model a checkpoint belongs to, load its weights strictly and give it its preprocessing card.

    Args:
        reference: a weights file, a folder in Hugging Face layout, or a Hub repo (``hf:ZhengPeng7/BiRefNet``;
            see :mod:`birefnet.models.hub` for the rule).
        preprocessing: a card (or the fields to change) that wins over the stored one.
        **overrides: constructor arguments that win over the file's.

    The card is, in order: the caller's, the one stored in the file (or its ``config.json``), the model zoo's for
    a known official name, the family default; the log says which and why. A BiRefNet in the legacy layout
    (files made before 2024-05-02, all trained before 2024-11-05) gets the legacy patch order unless the file or
    the caller says otherwise.
    """
    resolved = resolve_weights(reference)
    content = read_checkpoint(resolved.path)
    sd, source = content.state_dict, resolved.label
    folder_config = resolved.config or {}
    description = content.description or _config_entry(folder_config, CONFIG_METADATA_KEY, source)
    stored_class, stored = checked_model_config(description or {}, source)
    family = stored_class or infer_family(sd)
    inferred: dict = {}
    try:
        inferred = infer_config(family, sd)
    except CheckpointError:
        if "backbone" not in stored and "backbone" not in overrides:
            raise
    config = {**inferred, **stored, **overrides}
    if family == "BiRefNet":
        config["patch_order"] = _patch_order(config, stored, overrides, source)
    model = MODEL_REGISTRY[family](**config)
    load_state_dict_strict(
        model,
        sd,
        source,
        looks_like=inferred.get("backbone") or inferred.get("variant") or family,
        ignore=("num_batches_tracked",) if family != "BiRefNet" else (),
    )
    stored_card = content.preprocessing or _config_entry(folder_config, PREPROCESSING_METADATA_KEY, source)
    model.preprocessing, why = _choose_card(family, resolved, stored_card, preprocessing, source)
    log.info("Loaded %s from %s; preprocessing %s (%s).", family, source, model.preprocessing.describe(), why)
    return model.eval()


def _config_entry(config: dict, key: str, source: str) -> dict | None:
    value = config.get(key)
    if value is not None and not isinstance(value, dict):
        raise CheckpointError(f"{source}: config.json entry {key!r} must be a JSON object, not {type(value).__name__}.")
    return value


def _choose_card(
    family: str, resolved: ResolvedWeights, stored: dict | None, requested, source: str
) -> tuple[PreprocessingCard, str]:
    """The card for a loaded model and the reason, for the log."""
    if stored is not None:
        try:
            card, why = PreprocessingCard.from_dict(stored), "stored in the file"
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"{source}: its preprocessing card is invalid ({err}). Pass preprocessing=... to replace it."
            ) from None
    else:
        entry = find_zoo_entry(resolved.repo_id or resolved.reference) or find_zoo_entry(resolved.path.name)
        if entry is not None and entry.family == family:
            card, why = entry.card, f"model zoo entry {entry.name}"
        else:
            card, why = family_card(family), f"{family} default; the file stores none"
    try:
        chosen, asked = card.override(requested)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"preprocessing={requested!r}: {err}") from None
    return chosen, f"{asked} as requested, over the {why}" if asked else why


def _patch_order(config: dict, stored: dict, overrides: dict, source: str) -> str:
    if "patch_order" in overrides:
        why = "as requested"
    elif "patch_order" in stored:
        why = "as stored in the file"
    elif config.get("layout") == "legacy":
        log.info(
            "%s: legacy layout (made before 2024-05-02), so the legacy patch order its weights were trained with; "
            "pass patch_order='current' to change it.",
            source,
        )
        return "legacy"
    else:
        why = "the default for the current layout"
    order = config.get("patch_order", "current")
    log.info("%s: patch order %r (%s).", source, order, why)
    return order


def model_description(model: nn.Module) -> dict:
    """``{"class": ..., **constructor arguments}``, what :func:`load_model` rebuilds the model from."""
    return {"class": type(model).__name__, **getattr(model, "config", {})}


def model_card(model: nn.Module) -> PreprocessingCard:
    """The model's preprocessing card (its family default when it has none of its own)."""
    card = getattr(model, "preprocessing", None)
    return card if isinstance(card, PreprocessingCard) else family_card(type(model).__name__)


def save_model(model: nn.Module, path: str | Path) -> None:
    """Write the weights, the model description and the preprocessing card, in the format the name asks for
    (``.safetensors`` or ``.pth`` / ``.pt``), atomically; :func:`load_model` reads them back."""
    write_checkpoint(path, model.state_dict(), model_description(model), model_card(model).to_dict())


def save_pretrained(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder`` (Hugging Face layout); returns the folder.

    The weights keep the reference key names (an official BiRefNet loads them key for key), and
    ``config.json`` holds the class, the constructor arguments and the preprocessing card, which
    :func:`load_model` (``from_pretrained``) reads back from the folder or from a Hub repo made of it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    description, card = model_description(model), model_card(model).to_dict()
    write_checkpoint(folder / WEIGHT_FILE_NAMES[0], model.state_dict(), description, card)
    config = {
        "architectures": [type(model).__name__],
        "library_name": "birefnet",
        CONFIG_METADATA_KEY: description,
        PREPROCESSING_METADATA_KEY: card,
    }
    atomic_write_text(folder / CONFIG_FILE_NAME, json.dumps(config, indent=2) + "\n")
    return folder


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    private: bool = False,
    commit_message: str = "Upload model",
    token: str | None = None,
) -> str:
    """:func:`save_pretrained` into a temporary folder and upload it to ``repo_id`` (created if needed) with
    ``huggingface_hub``; returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    log.info("Uploaded %s to %s.", type(model).__name__, repo_id)
    return str(getattr(info, "commit_url", info))


class PretrainedMixin:
    """Loading and saving entry points and the preprocessing card, shared by every model class."""

    @property
    def preprocessing(self) -> PreprocessingCard:
        """How inputs must be prepared for this model's weights (see :class:`PreprocessingCard`)."""
        return self.__dict__.get("_preprocessing") or family_card(type(self).__name__)

    @preprocessing.setter
    def preprocessing(self, card: PreprocessingCard) -> None:
        if not isinstance(card, PreprocessingCard):
            raise TypeError(f"preprocessing must be a PreprocessingCard, not {type(card).__name__}.")
        self.__dict__["_preprocessing"] = card

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **overrides):
        """Load from a weights file, a Hugging Face layout folder or a Hub repo id (``"ZhengPeng7/BiRefNet"``,
        ``"hf:ZhengPeng7/BiRefNet_HR@main"``), with its preprocessing card; see :func:`load_model`."""
        return cls._checked(load_model(name_or_path, **overrides), name_or_path)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **overrides):
        """Load from a local weights file (no Hub lookup); see :func:`load_model`."""
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(
                f"Checkpoint {path} is not a file; pass a weights file, or use from_pretrained() for a folder or a "
                "Hugging Face repo."
            )
        return cls._checked(load_model(Path(path), **overrides), path)

    @classmethod
    def _checked(cls, model: nn.Module, source) -> nn.Module:
        if not isinstance(model, cls):
            raise CheckpointError(f"{source} holds a {type(model).__name__}, not a {cls.__name__}.")
        return model

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (see :func:`save_pretrained`)."""
        return save_pretrained(self, folder)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload to the Hugging Face Hub (see :func:`push_to_hub`)."""
        return push_to_hub(self, repo_id, **kwargs)
