"""Training and evaluation transforms (albumentations), reproducing the reference training pipeline.

Reference order (ZhengPeng7/BiRefNet @ 25cb930, ``dataset.py`` / ``image_proc.py``): resize image and mask to
the training size first (bilinear), then horizontal flip (p 0.5), optional crop, rotation (p 0.2, integer
angle in [-15, 14], bicubic, image and mask), colour enhancement on every sample (brightness and contrast
x{0.5..1.5}, colour x{0..2}, sharpness x{0..3}, steps of 0.1), pepper noise (0.15 % of pixels to 0 or 255,
image only), optional background-colour synthesis, then ImageNet normalisation. The enhancement follows
PIL's ImageEnhance definitions but runs as OpenCV/numpy arithmetic, which is several times faster.
Masks stay float in [0, 1] (soft edges kept); metrics binarise ``gt > 128/255`` themselves.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from birefnet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, normalize

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackgroundColorSynthesis",
    "ColorEnhance",
    "PepperNoise",
    "RandomCenterCrop",
    "ResizeToMultiple",
    "eval_transform",
    "seed_pipeline",
    "train_transform",
]

REFERENCE_AUGMENTATIONS = ("flip", "enhance", "rotate", "pepper")

_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0


def _affine_lut(scale: float, offset: float) -> np.ndarray:
    """uint8 lookup table of ``clip(floor(offset + scale * v))`` (PIL's blend truncates)."""
    return np.clip(np.floor(offset + scale * np.arange(256, dtype=np.float64)), 0, 255).astype(np.uint8)


def _blend(degenerate: np.ndarray, img: np.ndarray, factor: float) -> np.ndarray:
    """PIL ImageEnhance blend ``floor(degenerate + factor * (img - degenerate))``, saturated to uint8.

    OpenCV rounds; the -0.5 offset (plus a margin for its float32 arithmetic) turns that into PIL's floor.
    """
    return cv2.addWeighted(img, factor, degenerate, 1.0 - factor, -0.5 + 1e-3)


def _pil_gray(img: np.ndarray) -> np.ndarray:
    """PIL's ``convert("L")``: ITU-R 601-2 luma in 16-bit fixed point, rounded."""
    return cv2.transform(img, np.array([[0.299, 0.587, 0.114]], np.float32))


class ColorEnhance(A.ImageOnlyTransform):
    """Brightness, contrast, colour and sharpness enhancement with the reference's random factors.

    The reference applies PIL's ImageEnhance in this order; the same blends run here as uint8 lookup tables
    and OpenCV saturating arithmetic (about 4x faster than PIL or float numpy at 1024 px).
    """

    def __init__(self, p: float = 1.0) -> None:
        super().__init__(p=p)

    def get_params(self) -> dict:
        r = self.py_random
        return {
            "brightness": r.randint(5, 15) / 10.0,
            "contrast": r.randint(5, 15) / 10.0,
            "color": r.randint(0, 20) / 10.0,
            "sharpness": r.randint(0, 30) / 10.0,
        }

    def apply(
        self,
        img: np.ndarray,
        brightness: float = 1.0,
        contrast: float = 1.0,
        color: float = 1.0,
        sharpness: float = 1.0,
        **params,
    ) -> np.ndarray:
        img = cv2.LUT(img, _affine_lut(brightness, 0.0))  # blend with black
        mean = float(int(_pil_gray(img).mean() + 0.5))
        img = cv2.LUT(img, _affine_lut(contrast, mean * (1.0 - contrast)))  # blend with the mean grey level
        gray = cv2.cvtColor(_pil_gray(img), cv2.COLOR_GRAY2RGB)
        img = _blend(gray, img, color)  # blend with the greyscale image
        smooth = cv2.filter2D(img, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
        smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = img[0], img[-1], img[:, 0], img[:, -1]
        return _blend(smooth, img, sharpness)  # blend with PIL's SMOOTH filter (borders kept)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


class PepperNoise(A.ImageOnlyTransform):
    """Set ``amount`` of the pixels (all channels) to 0 or 255 at random (reference: 0.15 %)."""

    def __init__(self, amount: float = 0.0015, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.amount = amount

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        h, w = img.shape[:2]
        n = int(self.amount * h * w)
        rng = self.random_generator
        ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
        img = img.copy()
        img[ys, xs] = np.where(rng.integers(0, 2, n) == 0, 0, 255)[:, None].astype(img.dtype)
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("amount",)


class RandomCenterCrop(A.DualTransform):
    """Crop up to ``max_fraction`` of the short side around a random point, then resize back (reference crop)."""

    def __init__(self, max_fraction: float = 0.1, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.max_fraction = max_fraction

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        h, w = params["shape"][:2]
        border = int(min(h, w) * self.max_fraction)
        r = self.py_random
        cw, ch = r.randint(w - border, w), r.randint(h - border, h)
        x0, y0 = (
            (w - cw) // 2 + r.randint(-(w - cw) // 2, (w - cw) // 2),
            (h - ch) // 2 + r.randint(-(h - ch) // 2, (h - ch) // 2),
        )
        return {"box": (max(0, x0), max(0, y0), cw, ch)}

    def _crop(self, arr: np.ndarray, box: tuple[int, int, int, int], interp: int) -> np.ndarray:
        x0, y0, cw, ch = box
        h, w = arr.shape[:2]
        return cv2.resize(arr[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=interp)

    def apply(self, img: np.ndarray, box: tuple = (0, 0, 0, 0), **params) -> np.ndarray:
        return self._crop(img, box, cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, box: tuple = (0, 0, 0, 0), **params) -> np.ndarray:
        return self._crop(mask, box, cv2.INTER_LINEAR)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_fraction",)


class BackgroundColorSynthesis(A.DualTransform):
    """Replace the background by a flat colour: 40 % grey, 40 % the foreground mean scaled by one factor in
    [0.8, 1.2] for all channels (a hard negative of the same hue, as the reference), 20 % random."""

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        r = self.py_random
        u = r.random()
        img, mask = data["image"], data["mask"]
        if u < 0.4:
            color = np.full(3, r.randint(0, 255), dtype=np.float32)
        elif u < 0.8:
            weight = mask.astype(np.float32)[..., None] / 255.0
            fg_mean = (img * weight).sum((0, 1)) / max(float(weight.sum()), 1.0)
            color = np.clip(fg_mean * (1 + r.uniform(-0.2, 0.2)), 0, 255)
        else:
            color = np.array([r.randint(0, 255) for _ in range(3)], dtype=np.float32)
        return {"color": color.astype(np.float32), "alpha": mask.astype(np.float32)[..., None] / 255.0}

    def apply(self, img: np.ndarray, color: np.ndarray = None, alpha: np.ndarray = None, **params) -> np.ndarray:
        out = img.astype(np.float32) * alpha + color * (1.0 - alpha)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def apply_to_mask(self, mask: np.ndarray, **params) -> np.ndarray:
        return mask

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def seed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """Seed every transform of ``pipeline`` with its own stream derived from ``seed``.

    albumentations' ``Compose.set_random_seed`` gives every transform the same seed, so their draws are
    identical (a flip with p 0.5 would always happen when a rotation with p 0.2 does); here each transform
    gets ``seed + k * 7919`` instead.
    """
    pipeline.seed = seed
    pipeline.random_generator = np.random.default_rng(seed)
    pipeline.py_random = random.Random(seed)
    for k, transform in enumerate(pipeline.transforms, start=1):
        transform.set_random_seed(seed + k * 7919)


class ToTensors(A.DualTransform):
    """CHW float image normalised for the network; mask to ``1 x H x W`` float in [0, 1].

    ``normalization``: one of :data:`birefnet.preprocessing.NORMALIZATIONS`, applied with
    :func:`birefnet.preprocessing.normalize` (to the 256 levels, then looked up per pixel), or ``"none"`` (uint8
    CHW, normalised later on the device by the same function).
    """

    def __init__(self, normalization: str = "imagenet") -> None:
        super().__init__(p=1.0)
        if normalization not in (*NORMALIZATIONS, "none"):
            raise ValueError(f"normalization must be one of {(*NORMALIZATIONS, 'none')}, not {normalization!r}.")
        self.normalization = normalization
        self._levels = torch.arange(256, dtype=torch.float32).expand(3, 1, 256)

    def apply(self, img: np.ndarray, **params) -> torch.Tensor:
        if self.normalization == "none":  # uint8 CHW, normalised later on the device
            return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        scale = float(img.max()) if self.normalization == "u2net" else 255.0
        luts = normalize(self._levels, self.normalization, scale=scale)[:, 0].numpy()  # 3 x 256 lookup tables
        out = np.empty((3, *img.shape[:2]), np.float32)
        for c in range(3):
            np.take(luts[c], img[..., c], out=out[c])
        return torch.from_numpy(out)

    def apply_to_mask(self, mask: np.ndarray, **params) -> torch.Tensor:
        return torch.from_numpy(mask.astype(np.float32) / 255.0)[None]

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("normalization",)


AUGMENTATIONS = ("flip", "vflip", "crop", "rotate", "enhance", "pepper")


def train_transform(
    size: Sequence[int] | None = (1024, 1024),
    augmentations: Sequence[str] = REFERENCE_AUGMENTATIONS,
    background_synthesis: bool = False,
    normalization: str = "imagenet",
    crop_size: Sequence[int] | None = None,
) -> A.Compose:
    """The reference training pipeline at ``size`` = (height, width); ``None`` keeps each image's own size (dynamic
    size training: the collate function resizes every batch from the originals).

    ``augmentations`` picks from ``flip`` (horizontal), ``vflip`` (vertical, U2-Net's), ``crop`` (BiRefNet's
    random crop, resized back), ``rotate``, ``enhance``, ``pepper`` (BiRefNet default: flip, enhance, rotate,
    pepper). With ``background_synthesis`` only the flip is kept, as in the reference. ``crop_size`` adds a
    random crop to that size after the resize (U2-Net: resize 320, crop 288).
    """
    unknown = set(augmentations) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"Unknown augmentations {sorted(unknown)}; choose from {', '.join(AUGMENTATIONS)}.")
    augs = set(augmentations) & ({"flip"} if background_synthesis else set(augmentations))
    steps: list = []
    if size is not None:
        steps.append(A.Resize(*size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_LINEAR))
    if "flip" in augs:
        steps.append(A.HorizontalFlip(p=0.5))
    if "vflip" in augs:
        steps.append(A.VerticalFlip(p=0.5))
    if crop_size is not None:
        steps.append(A.RandomCrop(int(crop_size[0]), int(crop_size[1])))
    if "crop" in augs:
        steps.append(RandomCenterCrop(0.1, p=1.0))
    if "rotate" in augs:
        steps.append(
            A.Rotate(
                limit=(-15, 14),
                interpolation=cv2.INTER_CUBIC,
                mask_interpolation=cv2.INTER_CUBIC,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.2,
            )
        )
    if "enhance" in augs:
        steps.append(ColorEnhance(p=1.0))
    if "pepper" in augs:
        steps.append(PepperNoise(0.0015, p=1.0))
    if background_synthesis:
        steps.append(BackgroundColorSynthesis(p=1.0))
    steps.append(ToTensors(normalization))
    return A.Compose(steps)


class ResizeToMultiple(A.DualTransform):
    """Resize image and mask to their own size rounded down to a multiple of ``divisor`` (at least one divisor),
    as the reference's inference at the original resolution (BiRefNet_dynamic)."""

    def __init__(self, divisor: int = 32, interpolation: int = cv2.INTER_LINEAR) -> None:
        super().__init__(p=1.0)
        self.divisor, self.interpolation = divisor, interpolation

    def _target(self, arr: np.ndarray) -> tuple[int, int]:
        d = self.divisor
        return max(d, arr.shape[1] // d * d), max(d, arr.shape[0] // d * d)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return cv2.resize(img, self._target(img), interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, **params) -> np.ndarray:
        return cv2.resize(mask, self._target(mask), interpolation=cv2.INTER_LINEAR)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("divisor", "interpolation")


def eval_transform(
    size: Sequence[int] | str | None = (1024, 1024),
    normalization: str = "imagenet",
    interpolation: int = cv2.INTER_LINEAR,
    size_divisor: int = 32,
) -> A.Compose:
    """Resize to ``size`` = (height, width) with ``interpolation`` (an OpenCV flag), or to each image's own size
    rounded to ``size_divisor`` (``"original"``), or not at all (``None``); then normalise."""
    steps: list = []
    if size == "original":
        steps.append(ResizeToMultiple(size_divisor, interpolation))
    elif size is not None:
        steps.append(A.Resize(size[0], size[1], interpolation=interpolation, mask_interpolation=cv2.INTER_LINEAR))
    steps.append(ToTensors(normalization))
    return A.Compose(steps)
