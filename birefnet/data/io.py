"""Reading images and masks the way real folders need: any mode, any depth, EXIF, truncation, huge files.

OpenCV decodes (fastest here); PIL is the fallback for what OpenCV cannot read and the source of the
precise error message. Images come back as ``H x W x 3`` uint8 RGB with EXIF orientation applied, masks as
``H x W`` uint8 (soft values kept). Large JPEGs can be decoded straight at 1/2, 1/4 or 1/8 size when the
caller only needs a smaller picture (``min_side``), which is the cheap path for 4K-8K datasets.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "ImageReadError",
    "check_file",
    "image_size",
    "read_image",
    "read_mask",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

cv2.setNumThreads(1)  # one decode per DataLoader worker; OpenCV's own threads only oversubscribe the cores


class ImageReadError(ValueError):
    """A file that cannot be decoded; the message names the file and what to do."""


def _exif_swaps_axes(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        return False


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` after EXIF orientation, from the header only."""
    with Image.open(path) as img:
        w, h = img.size
        return (w, h) if _exif_swaps_axes(img) else (h, w)


def check_file(path: str | Path) -> str | None:
    """Cheap integrity check (header parse + end marker of JPEG/PNG); returns a problem description or ``None``."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            fmt = img.format
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 64))
            tail = f.read()
        if fmt == "JPEG" and b"\xff\xd9" not in tail:
            return "truncated JPEG (no end-of-image marker)"
        if fmt == "PNG" and b"IEND" not in tail:
            return "truncated PNG (no IEND chunk)"
    except Exception as err:
        return f"unreadable ({type(err).__name__}: {str(err)[:120]})"
    return None


def _reduced_flag(path: Path, min_side: int | None, grayscale: bool) -> int:
    """Largest JPEG DCT reduction (2, 4, 8) that keeps both sides >= ``min_side``."""
    base = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    if not min_side or path.suffix.lower() not in (".jpg", ".jpeg"):
        return base
    h, w = image_size(path)
    flags = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    if grayscale:
        flags = {
            2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
            4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
        }
    for factor in (8, 4, 2):
        if min(h, w) // factor >= min_side:
            return flags[factor]
    return base


def _pil_read(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if arr.max() > 255 else 255.0
                img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
            if (mode == "RGB" and img.mode in ("RGBA", "LA", "PA")) or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA").convert("RGB") if mode == "RGB" else img.convert("RGBA")
            return np.asarray(img.convert(mode))
    except Exception as err:
        raise ImageReadError(
            f"Cannot decode {path} ({type(err).__name__}: {str(err)[:160]}). The file is corrupt or not an image; "
            "replace or delete it, or open the dataset with skip_invalid=true to leave it out."
        ) from err


def read_image(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Read an image as ``H x W x 3`` uint8 RGB (grayscale, palette, RGBA, 16-bit and CMYK converted).

    Args:
        path: image file.
        min_side: if given, a JPEG may be decoded at 1/2, 1/4 or 1/8 size as long as its short side stays
            at least this large (the caller resizes anyway).
    """
    path = Path(path)
    img = cv2.imread(str(path), _reduced_flag(path, min_side, grayscale=False))
    if img is None or img.ndim != 3 or img.dtype != np.uint8:
        return _pil_read(path, "RGB")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Read a mask as ``H x W`` uint8 (soft/matting values kept; RGB masks converted to luminance)."""
    path = Path(path)
    mask = cv2.imread(str(path), _reduced_flag(path, min_side, grayscale=True))
    if mask is None or mask.dtype != np.uint8:
        return _pil_read(path, "L")
    return mask
