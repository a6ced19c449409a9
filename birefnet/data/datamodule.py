"""LightningDataModule over DIS-layout folders: training sets concatenated, one loader per evaluation set."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from birefnet.data.dataset import DatasetValidationError, DISDataset, parse_sets, problem_listing
from birefnet.data.io import set_max_image_pixels
from birefnet.data.transforms import REFERENCE_AUGMENTATIONS, eval_transform, train_transform
from birefnet.errors import ConfigError
from birefnet.preprocessing import INTERPOLATIONS, NORMALIZATIONS, normalize

__all__ = ["DISDataModule", "DynamicSizeCollate", "UnpaddedDistributedSampler", "eval_collate"]

log = logging.getLogger(__name__)


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation sharding without padding: rank ``r`` of ``W`` gets samples ``r, r + W, ...`` and nothing more,
    so no image is scored twice (``DistributedSampler`` repeats samples to give every rank the same count).
    Lightning keeps a ``DistributedSampler`` the loader already has."""

    def __init__(self, dataset) -> None:
        super().__init__(dataset, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def eval_collate(items: list[dict]) -> dict:
    """Stack resized images/masks; keep full-size masks, names and sizes as lists (sizes differ per image)."""
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "name": [it["name"] for it in items],
        "set": [it["set"] for it in items],
        "orig_size": torch.stack([it["orig_size"] for it in items]),
    }
    if "mask_full" in items[0]:
        batch["mask_full"] = [it["mask_full"] for it in items]
    return batch


def resize_antialiased(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``C x H x W`` -> ``C x size``, bilinear with antialiasing (torchvision's ``Resize`` on tensors); uint8 stays
    uint8 (rounded), floats stay in their range (the filter weights are non-negative)."""
    y = F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return y.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y


class DynamicSizeCollate:
    """Resize every batch to one random size (multiples of 32 in ``[min_size, max_size]``), as BiRefNet_dynamic.

    The samples come at their original size (after the augmentations) and each is resized from there, with
    antialiasing, as the reference does. The per-batch size comes from Python's ``random``, which Lightning seeds
    per worker (``seed_everything`` with ``workers=True``), so runs are reproducible.
    """

    def __init__(self, min_size: int = 256, max_size: int = 2304) -> None:
        if min_size % 32 or max_size % 32 or min_size > max_size:
            raise ValueError(f"dynamic size range [{min_size}, {max_size}] must be multiples of 32, min <= max.")
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, items: list[dict]) -> dict:
        h = random.randrange(self.min_size, self.max_size + 1, 32)
        w = random.randrange(self.min_size, self.max_size + 1, 32)
        resized = [
            {**it, "image": resize_antialiased(it["image"], (h, w)), "mask": resize_antialiased(it["mask"], (h, w))}
            for it in items
        ]
        return eval_collate(resized)


class DISDataModule(L.LightningDataModule):
    """Train/val/test loaders for DIS-layout data.

    Args:
        root: folder holding the sets (``<root>/<set>/{im,gt}``).
        train_sets: ``'DIS-TR'``, ``'DIS-TR+DIS-VD'`` or a list; concatenated for training. ``'*'``: every set
            folder under ``root`` that is not a validation or test set (the reference's General and Matting).
        val_sets / test_sets: one loader each, the set name kept so metrics come per dataset.
        size: training and evaluation size (height, width); multiples of 32.
        eval_size: evaluation size when it differs from ``size``: ``[height, width]``, or ``"original"`` for each
            image at its own size rounded to 32 (then ``eval_batch_size`` must be 1); ``None``: ``size``.
        batch_size: per-device training batch size; ``eval_batch_size`` for val/test.
        augmentations: names from flip, crop, rotate, enhance, pepper (reference: flip, enhance, rotate, pepper).
        background_synthesis: reference background-colour synthesis (keeps only the flip).
        dynamic_size: ``[min, max]`` per-batch random size for training (BiRefNet_dynamic), or ``None``. The samples
            are augmented at their original size and resized from it with antialiasing (no reduced decode, no
            cache).
        normalization: ``imagenet`` (BiRefNet), ``u2net`` (per-image max, then ImageNet) or ``isnet`` (mean 0.5, std 1);
            the model's preprocessing card decides it in ``train.py`` and ``evaluate.py``.
        interpolation: the evaluation resize filter (``bilinear``, ``bicubic``, ``area``, ``nearest``).
        task: what these sets are for (``DIS5K``, ``COD``, ``SOD``...); written into the model's card by training.
        set_groups: named groups of test sets whose mean is reported as a row of its own (``{"DIS-TEs":
            ["DIS-TE1", ..., "DIS-TE4"]}``, the paper's DIS-TEs row).
        crop_size: random training crop after the resize (U2-Net: 288 from 320), or ``None``.
        cache_dir: keep training images resized to ``size`` here (lossless PNG) for the following epochs.
        normalize_on_device: loaders yield uint8 images, normalised on the device (``on_after_batch_transfer``).
        skip_invalid: skip broken files with a warning instead of stopping.
        fast_decode: decode large JPEGs at reduced size when still >= the training size.
        num_workers / pin_memory: loader settings.
        max_image_pixels: refuse files declaring more pixels than this (``None``: the default of
            :func:`birefnet.data.io.max_image_pixels`, about 179 MPixel).
    """

    def __init__(
        self,
        root: str,
        train_sets: str | Sequence[str] = "DIS-TR",
        val_sets: str | Sequence[str] = ("DIS-VD",),
        test_sets: str | Sequence[str] = ("DIS-VD",),
        size: Sequence[int] = (1024, 1024),
        batch_size: int = 4,
        eval_batch_size: int = 1,
        augmentations: Sequence[str] = REFERENCE_AUGMENTATIONS,
        background_synthesis: bool = False,
        dynamic_size: Sequence[int] | None = None,
        normalization: str = "imagenet",
        crop_size: Sequence[int] | None = None,
        cache_dir: str | None = None,
        normalize_on_device: bool = False,
        skip_invalid: bool = False,
        fast_decode: bool = True,
        num_workers: int = 4,
        pin_memory: bool = True,
        max_image_pixels: int | None = None,
        eval_size: Sequence[int] | str | None = None,
        interpolation: str = "bilinear",
        task: str = "",
        set_groups: dict[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        size = _check_size(size, "data.size")
        if eval_size is not None and eval_size != "original":
            eval_size = _check_size(eval_size, "data.eval_size")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"data.interpolation must be one of {', '.join(INTERPOLATIONS)}, not {interpolation!r}.")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"data.normalization must be one of {', '.join(NORMALIZATIONS)}, not {normalization!r}.")
        batch_size = _check_positive(batch_size, "data.batch_size")
        eval_batch_size = _check_positive(eval_batch_size, "data.eval_batch_size")
        if eval_size == "original" and eval_batch_size != 1:
            raise ConfigError(
                "data.eval_size=original gives every image its own size, so data.eval_batch_size must be 1 "
                f"(it is {eval_batch_size})."
            )
        num_workers = _check_positive(num_workers, "data.num_workers", zero_ok=True)
        if max_image_pixels is not None:
            set_max_image_pixels(_check_positive(max_image_pixels, "data.max_image_pixels"))
        self.root = str(root)
        self.train_sets = parse_sets(train_sets) if train_sets else []
        self.val_sets = parse_sets(val_sets) if val_sets else []
        self.test_sets = parse_sets(test_sets) if test_sets else []
        self.size = size
        self.eval_size = eval_size or size
        self.interpolation, self.task = interpolation, task
        self.set_groups = {str(k): parse_sets(v) for k, v in (set_groups or {}).items()}
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.augmentations = list(augmentations)
        self.background_synthesis = background_synthesis
        self.dynamic_size = list(dynamic_size) if dynamic_size else None
        self.normalization = normalization
        self.crop_size = list(crop_size) if crop_size else None
        if cache_dir and self.dynamic_size:
            raise ConfigError(
                "data.cache_dir keeps copies at data.size, but data.dynamic_size trains from the original images; "
                "unset one of them."
            )
        self.cache_dir = cache_dir
        self.normalize_on_device = normalize_on_device
        self._loader_normalization = "none" if normalize_on_device else normalization
        self.skip_invalid, self.fast_decode = skip_invalid, fast_decode
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.train_set: DISDataset | None = None
        self.val_datasets: list[DISDataset] = []
        self.test_datasets: list[DISDataset] = []

    def _eval_sets(self, names: list[str], opened) -> list[DISDataset]:
        sets = [
            opened(
                lambda n=n: DISDataset(
                    self.root,
                    n,
                    eval_transform(self.eval_size, self._loader_normalization, INTERPOLATIONS[self.interpolation]),
                    self.skip_invalid,
                    keep_full_mask=True,
                )
            )
            for n in names
        ]
        return [ds for ds in sets if ds is not None]

    def setup(self, stage: str | None = None) -> None:
        # every set is opened before any error is raised, so one message lists the problems of all of them
        problems: list[str] = []

        def opened(build):
            try:
                return build()
            except DatasetValidationError as err:
                problems.extend(err.problems or [str(err)])
            except FileNotFoundError as err:
                problems.append(str(err))
            return None

        if self.train_sets == ["*"]:
            self.train_sets = self._all_but_evaluation_sets()
        if stage in ("fit", None) and self.train_sets and self.train_set is None:
            self.train_set = opened(
                lambda: DISDataset(
                    self.root,
                    self.train_sets,
                    train_transform(
                        None if self.dynamic_size else self.size,
                        self.augmentations,
                        self.background_synthesis,
                        self._loader_normalization,
                        self.crop_size,
                    ),
                    self.skip_invalid,
                    decode_min_side=min(self.size) if self.fast_decode and not self.dynamic_size else None,
                    reseed=True,
                    cache_dir=f"{self.cache_dir}/{'+'.join(self.train_sets)}" if self.cache_dir else None,
                    cache_size=self.size,
                )
            )
        if stage in ("fit", "validate", None) and not self.val_datasets:
            self.val_datasets = self._eval_sets(self.val_sets, opened)
        if stage in ("test", None) and not self.test_datasets:
            self.test_datasets = self._eval_sets(self.test_sets, opened)
        if problems:
            raise DatasetValidationError(
                f"{len(problems)} problem(s) in the data under {self.root}:\n{problem_listing(problems)}\n"
                "Fix or remove these files, or set data.skip_invalid=true to leave the broken ones out.",
                problems,
            )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``normalize_on_device`` the loaders ship uint8 images; they are normalised here, on the device."""
        if self.normalize_on_device and isinstance(batch, dict) and "image" in batch:
            batch["image"] = normalize(batch["image"], self.normalization)
        return batch

    def _all_but_evaluation_sets(self) -> list[str]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"Data root {root} does not exist; set paths.data_dir (or data.root).")
        held_out = set(self.val_sets) | set(self.test_sets)
        sets = sorted(d.name for d in root.iterdir() if (d / "im").is_dir() and d.name not in held_out)
        if not sets:
            raise FileNotFoundError(f"No training set under {root}: every <set>/im folder there is a test set.")
        log.info("Training sets (every set under %s but the evaluation sets): %s", root, ", ".join(sets))
        return sets

    def _loader(self, ds: DISDataset, batch_size: int, train: bool) -> DataLoader:
        collate = DynamicSizeCollate(*self.dynamic_size) if train and self.dynamic_size else eval_collate
        dist = torch.distributed
        sharded = not train and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=train,
            sampler=UnpaddedDistributedSampler(ds) if sharded else None,
            drop_last=train and len(ds) > batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("No training sets configured (data.train_sets).")
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, self.eval_batch_size, train=False) for ds in self.val_datasets]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, self.eval_batch_size, train=False) for ds in self.test_datasets]


def _check_positive(value, key: str, zero_ok: bool = False) -> int:
    """A whole number >= 1 (>= 0 with ``zero_ok``), or a ConfigError naming ``key``."""
    smallest = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
        raise ConfigError(f"{key} must be a whole number >= {smallest}, not {value!r}.")
    return value


def _check_size(size, key: str) -> tuple[int, int]:
    """``(height, width)``, both positive multiples of 32, or a ConfigError naming ``key``."""
    if isinstance(size, int):
        size = (size, size)
    try:
        values = tuple(size)
    except TypeError:
        values = ()
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"{key} must be [height, width], e.g. [1024, 1024], not {size!r}.")
    if any(v % 32 for v in values):
        raise ConfigError(f"{key} {list(values)} must be multiples of 32 (e.g. [1024, 1024] or [512, 512]).")
    return values
