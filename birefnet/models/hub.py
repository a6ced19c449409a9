"""Where weights come from: a local file, a local folder in Hugging Face layout, or a Hugging Face Hub repo.

A model reference is one string, read by one rule (the same in Python, on the command line and in configs):

* ``hf:<owner>/<name>[@<revision>]`` is always a Hub repo (``hf:ZhengPeng7/BiRefNet``,
  ``hf:ZhengPeng7/BiRefNet_HR@main``);
* otherwise an existing local path wins: a weights file, or a folder holding ``model.safetensors`` (or
  ``pytorch_model.bin``) and optionally ``config.json``;
* otherwise ``<owner>/<name>[@<revision>]`` with no file suffix is a Hub repo (``ZhengPeng7/BiRefNet_lite``).

Downloads go through ``huggingface_hub`` into its cache (``HF_HOME`` / ``HF_HUB_CACHE``), and only for a Hub
reference the user wrote: never because of what a file says. ``HF_HUB_OFFLINE=1`` is respected; a repo that is
neither cached nor downloadable gets a message naming it and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from pathlib import Path

from birefnet.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE_NAME",
    "HF_PREFIX",
    "WEIGHT_FILE_NAMES",
    "ResolvedWeights",
    "parse_hub_reference",
    "resolve_weights",
]

HF_PREFIX = "hf:"
#: Weight files looked for in a Hugging Face layout folder or repo, in this order.
WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE_NAME = "config.json"

_REPO = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<rev>[\w./-]+))?$")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".tar", ".onnx")


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """A model reference turned into a local weights file (and the ``config.json`` next to it, parsed)."""

    path: Path
    config: dict | None
    reference: str
    repo_id: str | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        """How logs and errors name the source: the repo (and revision) or the file."""
        if self.repo_id:
            return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id
        return str(self.path)


def parse_hub_reference(reference: str | Path) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``reference`` names a Hub repo under the rule above, else ``None``.

    Raises:
        CheckpointError: an ``hf:`` reference that is not ``owner/name[@revision]``.
    """
    text = str(reference)
    if text.startswith(HF_PREFIX):
        match = _REPO.match(text[len(HF_PREFIX) :])
        if match is None:
            raise CheckpointError(
                f"{text!r} is not a Hugging Face repo reference; write hf:<owner>/<name>[@<revision>], "
                "e.g. hf:ZhengPeng7/BiRefNet or hf:ZhengPeng7/BiRefNet_HR@main."
            )
        return match["repo"], match["rev"]
    if Path(text).expanduser().exists() or text.lower().endswith(_WEIGHT_SUFFIXES):
        return None
    match = _REPO.match(text)
    return (match["repo"], match["rev"]) if match else None


def _read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); fix or delete it.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not a {type(config).__name__}.")
    return config


def _from_folder(folder: Path, reference: str) -> ResolvedWeights:
    for name in WEIGHT_FILE_NAMES:
        if (folder / name).is_file():
            return ResolvedWeights(folder / name, _read_config(folder / CONFIG_FILE_NAME), reference)
    raise CheckpointError(
        f"{folder} is a folder without {' or '.join(WEIGHT_FILE_NAMES)}; pass the weights file itself, or a folder "
        "written by save_pretrained()."
    )


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _download(repo_id: str, revision: str | None, reference: str) -> ResolvedWeights:
    try:
        return _download_files(repo_id, revision, reference)
    except CheckpointError as err:
        if reference.startswith(HF_PREFIX):
            raise
        raise CheckpointError(f"{err} (No local file or folder is called {reference!r} either.)") from None


def _download_files(repo_id: str, revision: str | None, reference: str) -> ResolvedWeights:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    label = f"{repo_id}@{revision}" if revision else repo_id
    weights, missing_remote = None, []
    for name in WEIGHT_FILE_NAMES:
        try:
            weights = Path(hf_hub_download(repo_id, name, revision=revision))
            break
        except GatedRepoError:
            raise CheckpointError(
                f"{label} is a gated repo: accept its terms on huggingface.co and log in (`hf auth login`)."
            ) from None
        except RepositoryNotFoundError:
            raise CheckpointError(
                f"{label}: no such repo on the Hugging Face Hub (or it is private: log in with `hf auth login`). "
                "Check the name, e.g. ZhengPeng7/BiRefNet."
            ) from None
        except RevisionNotFoundError:
            raise CheckpointError(f"{label}: the repo has no revision {revision!r}.") from None
        except LocalEntryNotFoundError:
            continue  # not cached and not downloadable now: try the next name, then explain below
        except EntryNotFoundError:
            missing_remote.append(name)
    if weights is None:
        if len(missing_remote) == len(WEIGHT_FILE_NAMES):
            raise CheckpointError(f"{label} holds neither {' nor '.join(WEIGHT_FILE_NAMES)}; it is not a model repo.")
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"{label} is not in the Hugging Face cache ({_hub_cache()}) and downloads are off (HF_HUB_OFFLINE=1). "
                "Run once with network access (without HF_HUB_OFFLINE) to download it, or pass a local weights file."
            )
        raise CheckpointError(
            f"Could not download {label} from the Hugging Face Hub and it is not in the cache ({_hub_cache()}). "
            "Check the network connection (or HF_ENDPOINT), or pass a local weights file."
        )
    config = None
    with contextlib.suppress(EntryNotFoundError):  # no config.json (or offline, not cached): the weights suffice
        config = _read_config(Path(hf_hub_download(repo_id, CONFIG_FILE_NAME, revision=revision)))
    log.info("%s: weights %s (Hugging Face cache).", label, weights)
    return ResolvedWeights(weights, config, reference, repo_id, revision)


def resolve_weights(reference: str | Path) -> ResolvedWeights:
    """The local weights file a model reference stands for, downloading a Hub repo into the cache if needed.

    Raises:
        FileNotFoundError: neither an existing path nor a Hub reference.
        CheckpointError: a folder without weights, a bad ``config.json``, a repo that cannot be had.
    """
    text = str(reference)
    if "://" in text:
        raise CheckpointError(
            f"{text}: model references are local files and folders or Hugging Face repos (hf:<owner>/<name>); URLs "
            "are never fetched. Download the file yourself and pass its local path."
        )
    hub = parse_hub_reference(text)
    if hub is not None:
        return _download(*hub, reference=text)
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_folder(path, text)
    if path.is_file():
        return ResolvedWeights(path, None, text)
    raise FileNotFoundError(
        f"Checkpoint {text} does not exist. Pass a local weights file, a folder with model.safetensors, or a "
        "Hugging Face repo as hf:<owner>/<name> (e.g. hf:ZhengPeng7/BiRefNet)."
    )
