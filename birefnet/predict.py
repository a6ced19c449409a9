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
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from birefnet.atomic import remove_partials
from birefnet.backends import BACKENDS, PRECISIONS, OnnxRuntimeRunner, choose_path, torch_runner
from birefnet.data.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    check_file,
    png_source,
    read_image,
    set_max_image_pixels,
    write_png,
)
from birefnet.errors import UserError, exit_on_user_error
from birefnet.models import load_model
from birefnet.models.blocks import resize
from birefnet.models.checkpoint import model_card
from birefnet.models.fusion import cast_for_inference
from birefnet.models.hub import resolve_weights
from birefnet.preprocessing import NORMALIZATIONS, PreprocessingCard, normalize

log = logging.getLogger("birefnet")

__all__ = [
    "OutputConflictError",
    "PredictionSummary",
    "Predictor",
    "collect_inputs",
    "main",
    "output_targets",
    "plan_outputs",
    "refine_foreground",
]

OUTPUT_KINDS = ("mask", "cutout", "composite")
LAYOUTS = ("relative", "tree")


class OutputConflictError(UserError):
    """The planned outputs would collide or replace files that are not this tool's outputs for the same input."""


def collect_inputs(
    inputs: Sequence[str], recursive: bool = False, exclude: str | Path | None = None, layout: str = "relative"
) -> list[tuple[Path, Path]]:
    """Expand files, folders and globs into ``(file, output-relative path)`` pairs, sorted.

    Args:
        inputs: files, folders or glob patterns.
        recursive: descend into sub-folders (and ``**`` in globs).
        exclude: a folder whose files are never taken from a folder or glob input (the output folder, so a rerun
            does not read its own outputs when it lies inside an input folder); files named one by one still are.
        layout: ``"relative"``: a folder's files keep their path relative to that folder, files and glob matches
            their name; ``"tree"``: every file keeps its path relative to the deepest folder holding all inputs
            (``dA/x.jpg`` and ``dB/x.jpg`` stay apart).
    """
    if layout not in LAYOUTS:
        raise UserError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}.")
    skip = Path(exclude).resolve() if exclude is not None else None
    found: dict[Path, Path] = {}

    def add(f: Path, rel: Path, named: bool = False) -> None:
        resolved = f.resolve()
        excluded = not named and skip is not None and resolved.is_relative_to(skip)
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not excluded:
            found.setdefault(resolved, rel)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for f in sorted(path.glob("**/*" if recursive else "*")):
                add(f, f.relative_to(path))
        elif path.is_file():
            add(path, Path(path.name), named=True)
        else:
            matches = sorted(glob.glob(item, recursive=recursive))
            if not matches:
                raise FileNotFoundError(f"Input {item} is neither a file, a folder nor a glob that matches anything.")
            for m in matches:
                add(Path(m), Path(Path(m).name))
    if layout == "tree" and found:
        common = Path(os.path.commonpath([str(f.parent) for f in found]))
        found = {f: f.relative_to(common) for f in found}
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
    """Runs any model :func:`load_model` reads on images, preprocessed as its card says.

    Args:
        checkpoint: model file, folder or Hub repo (this project's, official BiRefNet / U2-Net / IS-Net;
            ``hf:ZhengPeng7/BiRefNet``).
        size: inference ``(height, width)``; ``None`` = the model's card (the training size stored in the
            checkpoint, the official model's size, or the family default); ``"original"`` = each image's size
            rounded to the card's divisor.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        precision: ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"bf16"``: autocast on the device, except bf16 on a CPU
            for a model loaded from ``checkpoint``: its BatchNorms are folded into the convolutions and the whole
            network is cast to bf16, deformable convolutions included (faster than autocast, which keeps them in
            fp32). ``"auto"``: fp16 on a GPU; on a CPU bf16 when it has native bf16 and the model is loaded here
            and not compiled, else fp32 (:func:`birefnet.backends.choose_path`).
        model: an already built model to use instead of loading ``checkpoint``.
        compile: ``torch.compile`` options for the network (e.g. ``{"mode": "reduce-overhead"}``: CUDA graphs for
            fixed-size inference), or ``None`` for eager execution.
        preprocessing: a card that replaces the model's, or a dict of the fields to change
            (``{"normalization": "isnet"}``).
        backend: ``"torch"``, ``"onnxruntime"`` (CPU, fp32: the exported graph, cached per checkpoint; see
            :mod:`birefnet.backends`) or ``"auto"``: for fp32 on a CPU, onnxruntime when it is installed, no
            ``compile`` is asked for and the model has at most 100 M parameters (the fastest fp32 path there by
            measurement; larger models keep torch's lower peak memory), else torch. The choice and its reason
            are logged and kept in :attr:`backend` and :attr:`precision`. With onnxruntime, a model loaded from
            ``checkpoint`` keeps no PyTorch weights (``model`` is on the ``meta`` device; its ``config`` and card
            stay).
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        size: tuple[int, int] | str | None = None,
        device: str = "auto",
        precision: str = "auto",
        model: torch.nn.Module | None = None,
        compile: dict | None = None,
        preprocessing: PreprocessingCard | dict | None = None,
        backend: str = "auto",
    ) -> None:
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
        )
        if model is None and checkpoint is None:
            raise ValueError("Predictor needs a checkpoint (file, folder or Hub repo) or a model.")
        self.model = (model if model is not None else load_model(checkpoint)).to(self.device).eval()
        self.card, asked = model_card(self.model).override(preprocessing, size)
        log.info("Predicting with %s (the model's card%s).", self.card.describe(), f" with {asked}" if asked else "")
        parameters = sum(p.numel() for p in self.model.parameters())
        self.backend, self.precision, why = choose_path(
            backend, precision, self.device, parameters, loaded=model is None, compiled=compile is not None
        )
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        # the network itself in bf16 (None: fp32 weights, autocast when self.dtype is set)
        self.cast: torch.dtype | None = None
        if self.precision == "bf16" and self.device.type == "cpu" and model is None:
            folded = cast_for_inference(self.model, torch.bfloat16)
            self.cast = torch.bfloat16
            log.info("bf16 on CPU: %d BatchNorms folded, the network cast to bf16.", folded)
        if self.backend == "onnxruntime":
            weights = resolve_weights(checkpoint) if model is None else None
            self.logits = OnnxRuntimeRunner(self.model, weights.path if weights else None, release=model is None)
        else:
            self.logits = torch_runner(self.model, compile)
        log.info("Backend: %s, %s (%s).", self.backend, self.precision, why)

    def _to_tensor(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        x = cv2.resize(image, (size[1], size[0]), interpolation=self.card.cv2_interpolation)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    @torch.inference_mode()
    def masks(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Probability maps (float32 in [0, 1]) at each image's original size."""
        sizes = [self.card.target_size(*im.shape[:2]) for im in images]
        out: list[np.ndarray | None] = [None] * len(images)
        for size in dict.fromkeys(sizes):  # one batch per inference size
            idx = [i for i, s in enumerate(sizes) if s == size]
            batch = normalize(
                torch.stack([self._to_tensor(images[i], size) for i in idx]).to(self.device), self.card.normalization
            )
            if self.cast is not None:
                batch = batch.to(self.cast)
            autocast = self.dtype is not None and self.cast is None
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=autocast):
                logits = self.logits(batch)
            probs = torch.sigmoid(logits.float())
            for j, i in enumerate(idx):
                h, w = images[i].shape[:2]
                out[i] = resize(probs[j : j + 1], (h, w))[0, 0].clamp(0, 1).cpu().numpy()
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
        keep_extension: bool = False,
    ) -> PredictionSummary:
        """Predict every input and write the requested outputs under ``output`` (relative paths kept).

        The whole plan is checked first (:func:`plan_outputs`): nothing is written when two inputs would share an
        output or an output would replace a file that is not this tool's output for the same input. Every file
        is written atomically, so an interrupted run leaves only complete outputs, and the rerun skips them.
        """
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
        summary = PredictionSummary()
        todo, summary.existing = plan_outputs(list(inputs), output, kinds, overwrite, keep_extension)
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
                        summary.skipped.append((src, str(err).removeprefix(f"{src}: ").removeprefix(f"{src} ")))
                        bar.advance(task)
                if not images:
                    continue
                for (_src, rel, targets), image, alpha in zip(chunk, images, self.masks(images), strict=True):
                    self._write(image, alpha, targets, bg_color, bg_image, refine, rel.as_posix())
                    summary.written += 1
                    bar.advance(task)
        summary.seconds = time.perf_counter() - start
        return summary

    @staticmethod
    def _write(
        image: np.ndarray, alpha: np.ndarray, targets: dict[str, Path], bg_color, bg_image, refine: bool, source: str
    ) -> None:
        next(iter(targets.values())).parent.mkdir(parents=True, exist_ok=True)
        mask8 = np.floor(alpha * 255.0).astype(np.uint8)
        a = mask8.astype(np.float32)[..., None] / 255.0
        if "mask" in targets:
            write_png(targets["mask"], mask8, source)
        if "cutout" in targets or "composite" in targets:
            fg = refine_foreground(image, a[..., 0]) if refine else image.astype(np.float32) / 255.0
            fg8 = np.where(mask8[..., None] == 255, image, np.clip(fg * 255.0 + 0.5, 0, 255).astype(np.uint8))
            if "cutout" in targets:
                write_png(targets["cutout"], np.dstack([fg8, mask8]), source)
            if "composite" in targets:
                h, w = image.shape[:2]
                bg = (
                    cv2.resize(bg_image, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
                    if bg_image is not None
                    else np.broadcast_to(np.array(bg_color, np.float32), (h, w, 3))
                )
                comp = fg8.astype(np.float32) * a + bg * (1 - a)
                write_png(targets["composite"], np.clip(comp + 0.5, 0, 255).astype(np.uint8), source)


def output_targets(output: Path, rel: Path, kinds: Sequence[str], keep_extension: bool = False) -> dict[str, Path]:
    """Output files of one input: ``<output>/<rel without suffix>{,_cutout,_composite}.png``.

    ``keep_extension`` keeps the input's extension in the name (``a.jpg.png``), so ``a.jpg`` and ``a.png`` differ.
    """
    rel = Path(rel.name) if rel.is_absolute() else rel
    base = output / rel.parent / (rel.name if keep_extension else rel.stem)
    names = {"mask": f"{base}.png", "cutout": f"{base}_cutout.png", "composite": f"{base}_composite.png"}
    return {k: Path(names[k]) for k in kinds}


def plan_outputs(
    inputs: Sequence[tuple[Path, Path]],
    output: str | Path,
    kinds: Sequence[str],
    overwrite: bool = False,
    keep_extension: bool = False,
) -> tuple[list[tuple[Path, Path, dict[str, Path]]], list[Path]]:
    """Decide what to write before anything is written: ``(todo, already done)``.

    An output is this tool's when its PNG carries the input's relative path (written by :func:`write_png`); a
    complete one is "already done" (redone with ``overwrite``). Leftovers of killed writers are removed.

    Raises:
        OutputConflictError: listing every input pair that would share an output, every output that would
            replace an input, and every existing file that is not this tool's output for the same input.
    """
    output = Path(output)
    sources = {Path(src).resolve() for src, _ in inputs}
    claimed: dict[Path, Path] = {}
    conflicts: list[str] = []
    todo, existing = [], []
    planned = [(src, rel, output_targets(output, rel, kinds, keep_extension)) for src, rel in inputs]
    for folder in {t.parent for _, _, targets in planned for t in targets.values()}:
        remove_partials(folder)
    for src, rel, targets in planned:
        done = True
        for target in targets.values():
            key = target.resolve()
            if key in claimed:
                conflicts.append(f"{claimed[key]} and {src} would both be written to {target}")
                continue
            claimed[key] = Path(src)
            if key in sources:
                conflicts.append(f"{target} is an input image; writing the outputs of {src} would replace it")
            elif target.exists():
                owner = png_source(target)
                if owner is None:
                    conflicts.append(f"{target} exists and is not an output of birefnet predict (the input {src})")
                elif owner != rel.as_posix():
                    conflicts.append(f"{target} holds the output of another input ({owner}), not of {src}")
                elif overwrite or check_file(target) is not None:
                    done = False
            else:
                done = False
        if done:
            existing.append(Path(src))
        else:
            todo.append((Path(src), rel, targets))
    if conflicts:
        raise OutputConflictError(
            f"Nothing was written: {len(conflicts)} conflict(s) in the outputs under {output}:\n  "
            + "\n  ".join(conflicts[:50])
            + (f"\n  ... and {len(conflicts) - 50} more" if len(conflicts) > 50 else "")
            + "\nUse --layout tree to keep each input's folder path (dA/x.png, dB/x.png), --keep-extension to keep "
            "a.jpg and a.png apart (a.jpg.png, a.png.png), or another --output folder."
        )
    return todo, existing


def _parse_size(text: str | None):
    """``None``/``""`` (the model's size), ``"original"``, ``"1024"`` or ``"1024x768"`` (multiples of 32)."""
    if text is None or text == "":
        return None
    if text == "original":
        return "original"
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use 1024, 1024x768 (height x width) or 'original'") from None
    if len(parts) not in (1, 2) or any(p < 32 or p % 32 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes are positive multiples of 32, e.g. 1024 or 1024x768")
    return (parts[0], parts[0]) if len(parts) == 1 else tuple(parts)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1")
    return value


def _output_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of {', '.join(OUTPUT_KINDS)}")
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="this project's checkpoint, an official BiRefNet / U2-Net / IS-Net file, a folder with model.safetensors, "
        "or a Hugging Face repo (ZhengPeng7/BiRefNet, hf:ZhengPeng7/BiRefNet_HR@main)",
    )
    parser.add_argument("--output", required=True, help="output folder (relative paths of folder inputs are kept)")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument(
        "--outputs", type=_output_kinds, default=["mask"], help="comma list of mask, cutout, composite (default: mask)"
    )
    parser.add_argument("--background", default=None, help="composite background: 'R,G,B', hex, or an image file")
    parser.add_argument("--refine-foreground", action="store_true", help="estimate foreground colours at the edges")
    parser.add_argument(
        "--size",
        type=_parse_size,
        default=None,
        help="inference size: 1024, 1024x768, or 'original' (rounded down to 32); default: the model's card",
    )
    parser.add_argument(
        "--preprocessing",
        default=None,
        choices=NORMALIZATIONS,
        help="normalisation; default: the model's preprocessing card",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: fp16 on CUDA; on a CPU bf16 where it has native bf16 (AVX-512 BF16 / AMX), else fp32",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace this tool's existing outputs")
    parser.add_argument(
        "--layout",
        default="relative",
        choices=LAYOUTS,
        help="relative: folder inputs keep their sub-paths, files their names; tree: every input keeps its path "
        "below the folder holding all inputs",
    )
    parser.add_argument(
        "--keep-extension", action="store_true", help="name outputs after the whole file name (a.jpg -> a.jpg.png)"
    )
    parser.add_argument(
        "--max-pixels", type=_positive_int, default=None, help="refuse images with more pixels (default ~179 M)"
    )
    parser.add_argument(
        "--compile",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode (reduce-overhead: CUDA graphs for a fixed --size)",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="auto: for fp32 on a CPU onnxruntime when installed (the exported graph, cached next to the "
        "checkpoint; the fastest fp32 path measured there), else torch",
    )


def run_from_args(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    if args.max_pixels:
        set_max_image_pixels(args.max_pixels)
    inputs = collect_inputs(args.inputs, args.recursive, exclude=args.output, layout=args.layout)
    if not inputs:
        console.print("No images found in the given inputs.")
        return 1
    # the plan is checked before the model loads: a conflict costs no time
    plan_outputs(inputs, args.output, args.outputs, args.overwrite, args.keep_extension)
    predictor = Predictor(
        args.checkpoint,
        args.size,
        args.device,
        args.precision,
        compile={"mode": args.compile} if args.compile else None,
        preprocessing={"normalization": args.preprocessing} if args.preprocessing else None,
        backend=args.backend,
    )
    summary = predictor.run(
        inputs,
        args.output,
        args.outputs,
        args.batch_size,
        args.overwrite,
        args.background,
        args.refine_foreground,
        keep_extension=args.keep_extension,
    )
    for src, why in summary.skipped:
        console.print(f"skipped {src}: {why}")
    console.print(summary.line())
    return 0


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="birefnet predict", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
