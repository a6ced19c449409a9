"""How a model wants its input: the preprocessing card, and the one normalisation function of the package.

A :class:`PreprocessingCard` travels with a model the way timm's ``pretrained_cfg`` does: every model class has
a default (its family's), a checkpoint written by this project stores the card the weights were trained with,
and the official release names have theirs (:mod:`birefnet.models.zoo`). Training, evaluation, prediction and
export read it; they never pick preprocessing by class name.

A leaf module: it imports neither the models nor the data pipeline, and both use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import cv2
import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "NORMALIZATIONS",
    "PreprocessingCard",
    "normalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ``imagenet``: /255 then ImageNet mean/std (BiRefNet). ``u2net``: divided by the image's own maximum, then
#: ImageNet mean/std (U2-Net's ``RescaleT`` + ``ToTensorLab``). ``isnet``: /255, mean 0.5, std 1.0 (IS-Net).
NORMALIZATIONS = ("imagenet", "u2net", "isnet")
#: Resize filters a card may name, with their OpenCV flags.
INTERPOLATIONS = {
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
}


def _mean_std(normalization: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if normalization == "isnet":
        return (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)
    return IMAGENET_MEAN, IMAGENET_STD


def normalize(images: torch.Tensor, normalization: str = "imagenet", scale: float | None = None) -> torch.Tensor:
    """Normalise images of 0..255 values (uint8 or float), shaped ``(..., 3, H, W)``, to float32 for a network.

    ``scale`` is what the values are divided by before the mean and std: 255, or for ``u2net`` each image's own
    maximum (at least 1e-6). Pass it to normalise a lookup table of the 256 levels instead of an image.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {normalization!r}.")
    x = images.float()
    if scale is None and normalization == "u2net":
        div = x.flatten(-3).amax(dim=-1).clamp(min=1e-6)[..., None, None, None]
    else:
        div = torch.tensor(255.0 if scale is None else max(float(scale), 1e-6), device=x.device)
    mean, std = (torch.tensor(v, device=x.device).view(3, 1, 1) for v in _mean_std(normalization))
    return (x / div - mean) * (1.0 / std)


@dataclasses.dataclass(frozen=True)
class PreprocessingCard:
    """The input a model's weights were trained with.

    Attributes:
        input_size: ``(height, width)`` the images are resized to (the training size), or ``None`` for "each
            image at its own size rounded to ``size_divisor``" (BiRefNet_dynamic).
        size_divisor: height and width must be multiples of this (32 for every model here).
        normalization: one of :data:`NORMALIZATIONS`.
        interpolation: the resize filter, one of :data:`INTERPOLATIONS`.
        task: what the weights were trained for (``DIS5K``, ``General``, ``Matting``, ``SOD``...); ``""`` unknown.
    """

    input_size: tuple[int, int] | None = (1024, 1024)
    size_divisor: int = 32
    normalization: str = "imagenet"
    interpolation: str = "bilinear"
    task: str = ""

    def __post_init__(self) -> None:
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
                raise ValueError(f"input_size must be (height, width) in pixels or None, not {self.input_size!r}.")
            object.__setattr__(self, "input_size", size)
        if not isinstance(self.size_divisor, int) or isinstance(self.size_divisor, bool) or self.size_divisor < 1:
            raise ValueError(f"size_divisor must be a whole number >= 1, not {self.size_divisor!r}.")
        if self.input_size is not None and any(v % self.size_divisor for v in self.input_size):
            raise ValueError(f"input_size {list(self.input_size)} must be multiples of {self.size_divisor}.")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {self.normalization!r}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}.")
        if not isinstance(self.task, str):
            raise ValueError(f"task must be a string, not {self.task!r}.")

    @classmethod
    def from_dict(cls, data: Mapping) -> PreprocessingCard:
        """A card from plain data (a checkpoint's metadata, ``config.json``); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a preprocessing card is a mapping of its fields, not {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown preprocessing card field(s) {unknown}; the fields are {sorted(fields)}")
        values = dict(data)
        if isinstance(values.get("input_size"), list):
            values["input_size"] = tuple(values["input_size"])
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain JSON-able data; :meth:`from_dict` reads it back."""
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size) if self.input_size is not None else None
        return data

    def replace(self, **changes) -> PreprocessingCard:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def override(
        self, requested: PreprocessingCard | Mapping | None = None, size=None
    ) -> tuple[PreprocessingCard, str]:
        """This card with what a caller asks for, and a phrase saying what was asked (``""``: nothing).

        ``requested``: a whole card that replaces this one, or the fields to change (``{"normalization": "isnet"}``).
        ``size``: the inference size, ``[height, width]``, one number for a square, or ``"original"``.
        """
        card, asked = self, []
        if isinstance(requested, PreprocessingCard):
            card, asked = requested, ["a given card"]
        elif requested:
            card, asked = card.replace(**dict(requested)), [", ".join(f"{k}={v}" for k, v in dict(requested).items())]
        if size is not None:
            if size != "original":
                size = (int(size), int(size)) if isinstance(size, (int, str)) else tuple(int(v) for v in size)
            card = card.replace(input_size=None if size == "original" else size)
            asked.append(f"size={size}")
        return card, ", ".join(asked)

    @property
    def cv2_interpolation(self) -> int:
        return INTERPOLATIONS[self.interpolation]

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input size for an image of ``height x width``: the card's size, or the image's own
        rounded down to a multiple of ``size_divisor`` (at least one divisor), as the reference's inference at the
        original resolution."""
        if self.input_size is not None:
            return self.input_size
        d = self.size_divisor
        return max(d, height // d * d), max(d, width // d * d)

    def describe(self) -> str:
        size = f"each image's size rounded down to {self.size_divisor}"
        if self.input_size is not None:
            size = "x".join(map(str, self.input_size))
        task = f", trained for {self.task}" if self.task else ""
        return f"{size} (HxW), {self.normalization} normalisation, {self.interpolation} resize{task}"
