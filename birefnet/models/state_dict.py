"""Weight files as data: read, unwrap, write and strictly load state dicts. Knows no model class.

Reading never unpickles arbitrary objects: safetensors files are read as safetensors whatever their name (the
format is told by the first bytes, not the extension), torch files with ``weights_only=True``. Metadata is
parsed as plain JSON and checked to be an object; nothing in it is resolved or evaluated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from birefnet.atomic import atomic_path
from birefnet.errors import CheckpointError

__all__ = [
    "CONFIG_METADATA_KEY",
    "PREPROCESSING_METADATA_KEY",
    "WEIGHT_SUFFIXES",
    "CheckpointContent",
    "file_format",
    "load_state_dict_strict",
    "read_checkpoint",
    "read_state_dict",
    "strip_prefixes",
    "unwrap_state_dict",
    "write_checkpoint",
]

#: Where the model description (class and constructor arguments) is stored: a safetensors metadata entry
#: (JSON text) or a top-level entry of a torch file / Lightning checkpoint (plain data).
CONFIG_METADATA_KEY = "birefnet_model"
#: Where the preprocessing card (:class:`birefnet.preprocessing.PreprocessingCard` as plain data) is stored, the
#: same way.
PREPROCESSING_METADATA_KEY = "birefnet_preprocessing"
#: File names :func:`write_checkpoint` writes, by format.
WEIGHT_SUFFIXES = {".safetensors": "safetensors", ".pth": "torch", ".pt": "torch", ".bin": "torch"}


def file_format(path: Path) -> str:
    """``'safetensors'``, ``'torch'`` (zip or legacy pickle) or ``'unknown'``, from the first bytes of the file."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if head[8:9] == b"{" and 2 <= header_len <= path.stat().st_size - 8:
            return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return "unknown"


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def read_state_dict(path: str | Path) -> dict:
    """The raw content of a weights file: safetensors tensors, or what ``torch.load(weights_only=True)`` returns.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: empty, truncated, not a weights file, or holding Python objects (never unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; pass the path of a local weights file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is an empty file (0 bytes); download or copy it again.")
    fmt = file_format(path)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise CheckpointError(
                f"Could not read checkpoint {path} as safetensors ({_first_line(err)}). The file is truncated or "
                "corrupt; download it again."
            ) from None
    if fmt == "unknown":
        raise CheckpointError(
            f"{path} is not a weights file (neither safetensors nor a PyTorch file); pass a .safetensors, .pth, "
            ".pt or .ckpt file."
        )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err) or "Unpickler" in str(err):
            raise CheckpointError(
                f"{path} holds Python objects besides tensors, which this project never unpickles (loading it would "
                "run code from the file). Ask its author for a safetensors file, or, only if you trust the file, "
                "re-save its tensors alone where it was made: torch.save(model.state_dict(), 'clean.pth')."
            ) from None
        raise CheckpointError(
            f"Could not read checkpoint {path} ({_first_line(err)}). The file is truncated or corrupt; download it "
            "again or pick another file."
        ) from None


def unwrap_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """Descend into ``state_dict`` / ``model`` / ``module`` / ``params`` wrappers until tensors appear."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "module", "params", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        else:
            break
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes: DDP ``module.``, ``torch.compile`` ``_orig_mod.``, Lightning ``net.``."""
    pattern = re.compile(r"^(module\.|_orig_mod\.|net\.|model\.(?=bb\.|decoder\.|squeeze_module\.|stage1\.))+")
    return {pattern.sub("", k): v for k, v in sd.items()}


def _metadata(path: Path, raw: dict, key: str) -> dict | None:
    """The JSON object stored under ``key`` (safetensors metadata text, or a top-level entry of a torch file)."""
    what = "model description" if key == CONFIG_METADATA_KEY else "preprocessing card"
    if file_format(path) == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get(key)
        if text is None:
            return None
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(
                f"{path}: the {what} in its metadata ({key!r}) is not valid JSON "
                f"({err.msg} at character {err.pos}). Re-save the file with birefnet.models.save_model."
            ) from None
    else:
        meta = raw.get(key)
        if meta is None:
            return None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path}: the {what} ({key!r}) must be a JSON object, not a {type(meta).__name__}. Re-save the file "
            "with birefnet.models.save_model."
        )
    return meta


class CheckpointContent(NamedTuple):
    """What :func:`read_checkpoint` finds in a file; the two metadata entries are ``None`` when absent."""

    state_dict: dict[str, torch.Tensor]
    description: dict | None
    preprocessing: dict | None


def read_checkpoint(path: str | Path) -> CheckpointContent:
    """Tensors of a checkpoint (wrappers and prefixes removed), the stored model description and preprocessing
    card (plain data, not yet checked against a model class)."""
    path = Path(path)
    raw = read_state_dict(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(raw).__name__}).")
    sd = strip_prefixes(unwrap_state_dict(raw))
    if not sd:
        raise CheckpointError(f"{path} holds no tensors; it is not a model weights file.")
    return CheckpointContent(
        sd, _metadata(path, raw, CONFIG_METADATA_KEY), _metadata(path, raw, PREPROCESSING_METADATA_KEY)
    )


def write_checkpoint(
    path: str | Path, sd: dict[str, torch.Tensor], description: dict, preprocessing: dict | None = None
) -> None:
    """Write tensors, a model description and a preprocessing card atomically, in the format the name asks for.

    ``.safetensors``: safetensors with the two as JSON metadata (and ``format: pt``, which the Hugging Face
    loaders require). ``.pth`` / ``.pt`` / ``.bin``: a torch file ``{"state_dict": ..., "birefnet_model": ...,
    "birefnet_preprocessing": ...}`` of tensors and plain data that ``weights_only`` reads.
    """
    path = Path(path)
    fmt = WEIGHT_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise CheckpointError(
            f"Cannot tell which format to write for {path.name}: name the file .safetensors (recommended) or "
            ".pth / .pt."
        )
    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(description)}
            if preprocessing is not None:
                metadata[PREPROCESSING_METADATA_KEY] = json.dumps(preprocessing)
            save_file(tensors, str(tmp), metadata=metadata)
        else:
            content = {"state_dict": tensors, CONFIG_METADATA_KEY: json.loads(json.dumps(description))}
            if preprocessing is not None:
                content[PREPROCESSING_METADATA_KEY] = json.loads(json.dumps(preprocessing))
            torch.save(content, tmp)


def load_state_dict_strict(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    source: str,
    looks_like: str | None = None,
    ignore: tuple[str, ...] = (),
) -> None:
    """``load_state_dict(strict=True)`` with a readable report of every difference (keys ending in ``ignore``
    may be missing or extra)."""
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
        raise CheckpointError(
            f"Checkpoint {source} does not match the model: {part('missing', missing)}; "
            f"{part('unexpected', unexpected)}; {part('wrong-shape', wrong)}.{hint} "
            "Build the model with the architecture the file was trained with (e.g. backbone=..., layout=...)."
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
