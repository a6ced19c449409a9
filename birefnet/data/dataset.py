"""DIS-layout datasets: ``<root>/<set>/im/<stem>.<ext>`` paired with ``<root>/<set>/gt/<stem>.<ext>``.

Opening a dataset validates it: images without masks, masks without images, unreadable or truncated
files and image/mask size mismatches are collected and reported together (or skipped with a warning
when ``skip_invalid=True``). Each sample is a dict ``{"image", "mask", "name", "set", "orig_size"}``;
evaluation samples also carry ``"mask_full"``, the uint8 mask at the original size for metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from birefnet.data.io import IMAGE_EXTENSIONS, MASK_EXTENSIONS, check_file, image_size, read_image, read_mask
from birefnet.data.transforms import seed_pipeline
from birefnet.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["DISDataset", "DatasetValidationError", "Sample", "find_pairs", "parse_sets", "problem_listing"]


class DatasetValidationError(UserError):
    """Every problem found while opening a dataset, listed with file paths (also kept in ``problems``)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def problem_listing(problems: Sequence[str], limit: int = 50) -> str:
    """Problems one per line, the first ``limit`` of them."""
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return "  " + "\n  ".join(problems[:limit]) + more


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path
    set_name: str

    @property
    def name(self) -> str:
        return self.image.stem


def parse_sets(sets: str | Sequence[str]) -> list[str]:
    """``'DIS-TR+DIS-VD'`` or ``['DIS-TR', 'DIS-VD']`` -> ``['DIS-TR', 'DIS-VD']``."""
    if isinstance(sets, str):
        return [s for s in sets.split("+") if s]
    return [s for item in sets for s in parse_sets(item)]


def _index(folder: Path, extensions: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Files by stem, and the stems two or more files share (``0005.png`` + ``0005.jpg``) with those files."""
    files: dict[str, Path] = {}
    clashes: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in extensions:
            if p.stem in files or p.stem in clashes:
                clashes.setdefault(p.stem, [files.pop(p.stem)] if p.stem in files else []).append(p)
            else:
                files[p.stem] = p
    return files, clashes


def find_pairs(root: str | Path, set_name: str, check_files: bool = True) -> tuple[list[Sample], list[str]]:
    """Pair images and masks of one set; returns the valid samples and a list of problems (path: reason)."""
    base = Path(root) / set_name
    im_dir, gt_dir = base / "im", base / "gt"
    for d in (im_dir, gt_dir):
        if not d.is_dir():
            raise FileNotFoundError(
                f"Dataset folder {d} does not exist. Expected the DIS layout <root>/<set>/im and <root>/<set>/gt "
                f"(root={Path(root)}, set={set_name}); set paths.data_dir or the data config's root."
            )
    (images, image_clashes), (masks, mask_clashes) = _index(im_dir, IMAGE_EXTENSIONS), _index(gt_dir, MASK_EXTENSIONS)
    if not images and not image_clashes:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {im_dir}.")
    clashes = {**image_clashes, **mask_clashes}
    problems = [
        f"{' and '.join(str(p) for p in paths)}: {len(paths)} files share the name {stem!r}, so which one belongs "
        "to the pair is ambiguous. Keep one and move the others out of the folder."
        for stem, paths in (*image_clashes.items(), *mask_clashes.items())
    ]
    paired_or_clashing = {"images": set(images) | set(clashes), "masks": set(masks) | set(clashes)}
    problems += [
        f"{images[s]}: no mask {gt_dir}/{s}.png (or .jpg/.bmp)" for s in images if s not in paired_or_clashing["masks"]
    ]
    problems += [
        f"{masks[s]}: mask without an image in {im_dir}" for s in masks if s not in paired_or_clashing["images"]
    ]
    samples = []
    for stem in sorted(set(images) & set(masks)):
        im, gt = images[stem], masks[stem]
        if check_files:
            bad = [(p, why) for p in (im, gt) if (why := check_file(p))]
            if bad:
                problems += [f"{p}: {why}" for p, why in bad]
                continue
            im_size, gt_size = image_size(im), image_size(gt)
            if im_size != gt_size:
                problems.append(
                    f"{im}: image is {im_size[0]}x{im_size[1]} but its mask {gt} is {gt_size[0]}x{gt_size[1]} (HxW)"
                )
                continue
        samples.append(Sample(im, gt, set_name))
    return samples, problems


class DISDataset(Dataset):
    """One or more DIS-layout sets joined into a single dataset.

    Args:
        root: folder holding the sets.
        sets: set names, ``'A+B'`` or a list.
        transform: albumentations pipeline called as ``transform(image=..., mask=...)``; returns tensors.
        skip_invalid: skip broken pairs with a warning instead of raising :class:`DatasetValidationError`.
        check_files: validate file integrity and sizes when opening (header reads only; fast).
        keep_full_mask: also return the uint8 mask at the original size (``"mask_full"``) for metrics.
        decode_min_side: allow reduced JPEG decoding down to this short side (training at a fixed size).
        reseed: seed the transform for every sample from torch's RNG (training): augmentations then follow
            ``seed_everything`` in the main process and in workers, and a resumed run repeats them exactly.
        cache_dir / cache_size: keep lossless copies resized to ``cache_size`` (the training size) in
            ``cache_dir`` after the first epoch; later epochs decode those instead of the (4K-8K) originals.
            Entries are keyed by the source files' size and modification time.
    """

    def __init__(
        self,
        root: str | Path,
        sets: str | Sequence[str],
        transform: Callable | None = None,
        skip_invalid: bool = False,
        check_files: bool = True,
        keep_full_mask: bool = False,
        decode_min_side: int | None = None,
        reseed: bool = False,
        cache_dir: str | Path | None = None,
        cache_size: Sequence[int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.sets = parse_sets(sets)
        if not self.sets:
            raise ValueError(f"No dataset names given for root {self.root}.")
        self.transform = transform
        self.keep_full_mask = keep_full_mask
        self.decode_min_side = decode_min_side
        self.reseed = reseed
        if cache_dir is not None and not cache_size:
            raise ValueError("cache_dir needs cache_size (the training size the cached copies are resized to).")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_size = tuple(int(v) for v in cache_size) if cache_size else None
        self.samples: list[Sample] = []
        problems: list[str] = []
        for s in self.sets:
            found, bad = find_pairs(self.root, s, check_files)
            self.samples += found
            problems += bad
        if problems:
            if not skip_invalid:
                raise DatasetValidationError(
                    f"{len(problems)} problem(s) in {self.root} ({'+'.join(self.sets)}):\n{problem_listing(problems)}\n"
                    "Fix or remove these files, or pass skip_invalid=true (data.skip_invalid=true) to leave them out.",
                    problems,
                )
            log.warning("Skipping %d invalid file(s) in %s:\n%s", len(problems), self.root, problem_listing(problems))
        if not self.samples:
            raise DatasetValidationError(f"No valid image/mask pairs in {self.root} for sets {self.sets}.")

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, s: Sample) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(s.image, self.decode_min_side)
        mask = read_mask(s.mask, self.decode_min_side)
        if mask.shape != image.shape[:2]:
            if self.decode_min_side is None:
                raise ValueError(f"{s.image} is {image.shape[:2]} but {s.mask} is {mask.shape} (HxW).")
            mask = _resize_mask(mask, image.shape[:2])
        return image, mask

    def _load(self, s: Sample) -> tuple[np.ndarray, np.ndarray]:
        if self.cache_dir is None:
            return self._decode(s)
        h, w = self.cache_size
        stat_im, stat_gt = s.image.stat(), s.mask.stat()
        tag = f"{h}x{w}_{stat_im.st_mtime_ns:x}_{stat_im.st_size:x}_{stat_gt.st_mtime_ns:x}_{stat_gt.st_size:x}"
        im_path = self.cache_dir / s.set_name / f"{s.name}.{tag}.im.png"
        gt_path = self.cache_dir / s.set_name / f"{s.name}.{tag}.gt.png"
        if im_path.exists() and gt_path.exists():
            return read_image(im_path), read_mask(gt_path)
        image, mask = self._decode(s)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        im_path.parent.mkdir(parents=True, exist_ok=True)
        for path, arr in ((im_path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)), (gt_path, mask)):
            tmp = path.with_suffix(f".{os.getpid()}.tmp.png")  # atomic: several workers may fill the cache
            cv2.imwrite(str(tmp), arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            os.replace(tmp, path)
        return image, mask

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        image, mask = self._load(s)
        item = {"name": s.name, "set": s.set_name, "orig_size": torch.tensor(image.shape[:2])}
        if self.keep_full_mask:
            item["mask_full"] = torch.from_numpy(mask)
        if self.transform is not None:
            if self.reseed:
                seed_pipeline(self.transform, int(torch.randint(0, 2**31 - 1, ()).item()))
            out = self.transform(image=image, mask=mask)
            item["image"], item["mask"] = out["image"], out["mask"]
        else:
            item["image"], item["mask"] = torch.from_numpy(image), torch.from_numpy(mask)
        return item


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
