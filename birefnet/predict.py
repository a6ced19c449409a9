"""Background removal and mask export at full resolution: ``birefnet predict`` / ``python -m birefnet.predict``.

For every input image: the mask as an 8-bit PNG at the original size, and/or the RGBA cutout (alpha = that
mask, applied to the full-resolution original), and/or a composite on a colour or a background image.
Optional foreground-colour estimation at the edges (blur-fusion, Forte & Pitie 2021, as the reference's
``refine_foreground``) keeps hair from carrying the old background's colour.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from birefnet.data.io import IMAGE_EXTENSIONS, ImageReadError, read_image
from birefnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from birefnet.models import load_model

log = logging.getLogger("birefnet")

__all__ = ["PredictionSummary", "Predictor", "collect_inputs", "main", "refine_foreground"]

OUTPUT_KINDS = ("mask", "cutout", "composite")


def collect_inputs(inputs: Sequence[str], recursive: bool = False) -> list[tuple[Path, Path]]:
    """Expand files, folders and globs into ``(file, path relative to its input root)`` pairs, sorted."""
    found: dict[Path, Path] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            for f in sorted(path.glob(pattern)):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    found.setdefault(f.resolve(), f.relative_to(path))
        elif path.is_file():
            found.setdefault(path.resolve(), Path(path.name))
        else:
            matches = sorted(glob.glob(item, recursive=recursive))
            if not matches:
                raise FileNotFoundError(f"Input {item} is neither a file, a folder nor a glob that matches anything.")
            for m in matches:
                if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_EXTENSIONS:
                    found.setdefault(Path(m).resolve(), Path(Path(m).name))
    return sorted(found.items(), key=lambda kv: str(kv[1]))


def _box_blur(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.blur(x, (r, r))


def _blur_fusion(
    image: np.ndarray, fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, r: int
) -> tuple[np.ndarray, np.ndarray]:
    a = alpha[..., None]
    blurred_alpha = _box_blur(alpha, r)[..., None]
    blurred_fg = _box_blur(fg * a, r) / (blurred_alpha + 1e-5)
    blurred_bg = _box_blur(bg * (1 - a), r) / ((1 - blurred_alpha) + 1e-5)
    fg = blurred_fg + a * (image - a * blurred_fg - (1 - a) * blurred_bg)
    return np.clip(fg, 0, 1), blurred_bg


def refine_foreground(image: np.ndarray, alpha: np.ndarray, radius: int = 90) -> np.ndarray:
    """Approximate foreground colours (blur-fusion, two passes: ``radius`` then 6), float32 RGB in [0, 1].

    Args:
        image: ``H x W x 3`` uint8 RGB.
        alpha: ``H x W`` float in [0, 1].
    """
    img = image.astype(np.float32) / 255.0
    alpha = alpha.astype(np.float32)
    fg, bg = _blur_fusion(img, img, img, alpha, radius)
    fg, _ = _blur_fusion(img, fg, bg, alpha, 6)
    return fg


def _parse_color(text: str) -> tuple[int, int, int]:
    text = text.strip().lstrip("#")
    if "," in text:
        rgb = tuple(int(v) for v in text.split(","))
    elif len(text) == 6:
        rgb = tuple(int(text[i : i + 2], 16) for i in (0, 2, 4))
    else:
        raise ValueError(f"colour {text!r}: use 'R,G,B' or a hex code like 'ffffff'.")
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"colour {text!r}: three values in 0..255.")
    return rgb


@dataclass
class PredictionSummary:
    """What a run did: counts, skipped (unreadable) files with the reason, existing outputs left alone."""

    written: int = 0
    seconds: float = 0.0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    existing: list[Path] = field(default_factory=list)

    def line(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else float("nan")
        parts = [f"{self.written} image(s) in {self.seconds:.1f} s ({rate:.2f} images/s)"]
        if self.existing:
            parts.append(f"{len(self.existing)} already done (pass --overwrite to redo)")
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable, skipped")
        return "; ".join(parts)


class Predictor:
    """Runs any checkpoint :func:`load_model` reads on images, with its family's preprocessing.

    Args:
        checkpoint: model file (this project's, official BiRefNet / U2-Net / IS-Net).
        size: inference ``(height, width)``; ``None`` = the family default (BiRefNet 1024, U2-Net 320,
            IS-Net 1024); ``"original"`` = each image's size rounded to multiples of 32.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast on the device).
        compile: ``torch.compile`` options for the network (e.g. ``{"mode": "reduce-overhead"}``: CUDA graphs
            for fixed-size inference), or ``None`` for eager execution.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        size: tuple[int, int] | str | None = None,
        device: str = "auto",
        precision: str = "fp32",
        model: torch.nn.Module | None = None,
        compile: dict | None = None,
    ) -> None:
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
        )
        self.model = (model if model is not None else load_model(checkpoint)).to(self.device).eval()
        family = type(self.model).__name__
        self.runner = torch.compile(self.model, **compile) if compile is not None else self.model
        self.normalization = {"U2Net": "u2net", "ISNet": "isnet"}.get(family, "imagenet")
        default = {"U2Net": (320, 320)}.get(family, (1024, 1024))
        self.size = default if size is None else size
        self.precision = precision
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    def _target_size(self, h: int, w: int) -> tuple[int, int]:
        if self.size == "original":
            return max(32, round(h / 32) * 32), max(32, round(w / 32) * 32)
        return tuple(self.size)

    def _to_tensor(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        x = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        x = x.astype(np.float32)
        if self.normalization == "isnet":
            x = x / 255.0 - 0.5
        else:
            x = x / (max(float(x.max()), 1e-6) if self.normalization == "u2net" else 255.0)
            x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
        return torch.from_numpy(x.transpose(2, 0, 1).copy())

    @torch.inference_mode()
    def masks(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Probability maps (float32 in [0, 1]) at each image's original size."""
        sizes = [self._target_size(*im.shape[:2]) for im in images]
        out: list[np.ndarray | None] = [None] * len(images)
        for size in dict.fromkeys(sizes):  # one batch per inference size
            idx = [i for i, s in enumerate(sizes) if s == size]
            batch = torch.stack([self._to_tensor(images[i], size) for i in idx]).to(self.device)
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                logits = self.runner(batch).logits
            probs = torch.sigmoid(logits.float())
            for j, i in enumerate(idx):
                h, w = images[i].shape[:2]
                full = F.interpolate(probs[j : j + 1], size=(h, w), mode="bilinear", align_corners=True)
                out[i] = full[0, 0].clamp(0, 1).cpu().numpy()
        return out

    def run(
        self,
        inputs: Iterable[tuple[Path, Path]],
        output: str | Path,
        kinds: Sequence[str] = ("mask",),
        batch_size: int = 4,
        overwrite: bool = False,
        background: str | None = None,
        refine: bool = False,
        progress: bool = True,
    ) -> PredictionSummary:
        """Predict every input and write the requested outputs under ``output`` (relative paths kept)."""
        from rich.progress import Progress

        unknown = set(kinds) - set(OUTPUT_KINDS)
        if unknown:
            raise ValueError(f"Unknown outputs {sorted(unknown)}; choose from {', '.join(OUTPUT_KINDS)}.")
        output = Path(output)
        bg_color, bg_image = None, None
        if "composite" in kinds:
            if background and Path(background).is_file():
                bg_image = read_image(background)
            else:
                bg_color = _parse_color(background or "255,255,255")
        inputs = list(inputs)
        summary = PredictionSummary()
        todo = []
        for src, rel in inputs:
            targets = self._targets(output, rel, kinds)
            if any(t.resolve() == Path(src).resolve() for t in targets.values()):
                raise ValueError(f"Writing the outputs of {src} would overwrite it; choose another --output folder.")
            if not overwrite and all(t.exists() for t in targets.values()):
                summary.existing.append(src)
            else:
                todo.append((src, rel, targets))
        start = time.perf_counter()
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("predicting", total=len(todo))
            for k in range(0, len(todo), batch_size):
                chunk, images = [], []
                for src, rel, targets in todo[k : k + batch_size]:
                    try:
                        images.append(read_image(src))
                        chunk.append((src, rel, targets))
                    except (ImageReadError, OSError, ValueError) as err:
                        summary.skipped.append((src, str(err).split("(")[0].strip()))
                        bar.advance(task)
                if not images:
                    continue
                for (_src, _rel, targets), image, alpha in zip(chunk, images, self.masks(images), strict=True):
                    self._write(image, alpha, targets, bg_color, bg_image, refine)
                    summary.written += 1
                    bar.advance(task)
        summary.seconds = time.perf_counter() - start
        return summary

    @staticmethod
    def _targets(output: Path, rel: Path, kinds: Sequence[str]) -> dict[str, Path]:
        rel = Path(rel.name) if rel.is_absolute() else rel
        base = output / rel.parent / rel.stem
        names = {"mask": f"{base}.png", "cutout": f"{base}_cutout.png", "composite": f"{base}_composite.png"}
        return {k: Path(names[k]) for k in kinds}

    @staticmethod
    def _write(
        image: np.ndarray, alpha: np.ndarray, targets: dict[str, Path], bg_color, bg_image, refine: bool
    ) -> None:
        next(iter(targets.values())).parent.mkdir(parents=True, exist_ok=True)
        mask8 = np.floor(alpha * 255.0).astype(np.uint8)
        a = mask8.astype(np.float32)[..., None] / 255.0
        if "mask" in targets:
            cv2.imwrite(str(targets["mask"]), mask8)
        if "cutout" in targets or "composite" in targets:
            fg = refine_foreground(image, a[..., 0]) if refine else image.astype(np.float32) / 255.0
            fg8 = np.where(mask8[..., None] == 255, image, np.clip(fg * 255.0 + 0.5, 0, 255).astype(np.uint8))
            if "cutout" in targets:
                rgba = np.dstack([fg8, mask8])
                cv2.imwrite(str(targets["cutout"]), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
            if "composite" in targets:
                h, w = image.shape[:2]
                bg = (
                    cv2.resize(bg_image, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
                    if bg_image is not None
                    else np.broadcast_to(np.array(bg_color, np.float32), (h, w, 3))
                )
                comp = fg8.astype(np.float32) * a + bg * (1 - a)
                cv2.imwrite(
                    str(targets["composite"]),
                    cv2.cvtColor(np.clip(comp + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR),
                )


def _parse_size(text: str | None):
    if text is None or text == "":
        return None
    if text == "original":
        return "original"
    parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    h, w = (parts[0], parts[0]) if len(parts) == 1 else parts
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    parser.add_argument(
        "--checkpoint", required=True, help="this project's checkpoint or an official BiRefNet / U2-Net / IS-Net file"
    )
    parser.add_argument("--output", required=True, help="output folder (relative paths of folder inputs are kept)")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--outputs", default="mask", help="comma list of mask, cutout, composite (default: mask)")
    parser.add_argument("--background", default=None, help="composite background: 'R,G,B', hex, or an image file")
    parser.add_argument("--refine-foreground", action="store_true", help="estimate foreground colours at the edges")
    parser.add_argument("--size", default=None, help="inference size: 1024, 1024x768, or 'original' (rounded to 32)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision", default=None, choices=["fp32", "fp16", "bf16"], help="default: fp16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--compile",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode (reduce-overhead: CUDA graphs for a fixed --size)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    inputs = collect_inputs(args.inputs, args.recursive)
    if not inputs:
        console.print("No images found in the given inputs.")
        return 1
    precision = args.precision or ("fp16" if torch.cuda.is_available() and args.device in ("auto", "cuda") else "fp32")
    predictor = Predictor(
        args.checkpoint,
        _parse_size(args.size),
        args.device,
        precision,
        compile={"mode": args.compile} if args.compile else None,
    )
    kinds = [k.strip() for k in args.outputs.split(",") if k.strip()]
    summary = predictor.run(
        inputs, args.output, kinds, args.batch_size, args.overwrite, args.background, args.refine_foreground
    )
    for src, why in summary.skipped:
        console.print(f"skipped {src}: {why}")
    console.print(summary.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="birefnet predict", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
