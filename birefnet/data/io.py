"""Reading images, masks and predictions, and writing PNGs, the way real folders need them.

Every image the project reads goes through :func:`read_image`; every mask, matte and prediction through
:func:`read_mask`, so a file means the same thing to training, evaluation and prediction.

* The header is read first (no pixels): a file whose pixel count exceeds :func:`max_image_pixels` is refused
  before anything is decoded (a 250 KB PNG can declare 16000 x 16000 pixels).
* OpenCV decodes (fastest here); PIL is the fallback for what OpenCV cannot read and the source of the precise
  error message. libjpeg's "Premature end of JPEG file" / "Corrupt JPEG data" warnings, which OpenCV only
  prints, make the read fail: a truncated JPEG is never used with grey rows filling its missing half.
* Images come back as ``H x W x 3`` uint8 RGB with EXIF orientation applied.
* Masks come back as ``H x W`` uint8 (soft / matting values kept): 16-bit files are scaled by 65535, or by 255
  when their values stay within 0..255; palette files by their grey levels (or index 0 = background when the
  palette has colours and two entries are used); RGB by luminance; RGBA and grey+alpha by the alpha channel
  when it is not uniformly opaque (a cutout or a constant-colour matte keeps its shape there); masks stored as
  {0, 1} are scaled to {0, 255} with a warning naming the file.
* Large JPEGs can be decoded straight at 1/2, 1/4 or 1/8 size when the caller only needs a smaller picture
  (``min_side``), the cheap path for 4K-8K datasets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from birefnet.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "ImageReadError",
    "check_file",
    "image_size",
    "max_image_pixels",
    "png_source",
    "read_image",
    "read_mask",
    "set_max_image_pixels",
    "write_png",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

#: Default pixel limit: PIL's decompression-bomb threshold (about 179 MPixel, e.g. 13400 x 13400).
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485
_MAX_PIXELS_ENV = "BIREFNET_MAX_IMAGE_PIXELS"
_JPEG_DAMAGE = ("Premature end of JPEG file", "Corrupt JPEG data", "JPEG datastream contains no image")


class ImageReadError(UserError):
    """A file that cannot be used; the message names the file and what to do."""


def max_image_pixels() -> int:
    """The largest pixel count decoded (``BIREFNET_MAX_IMAGE_PIXELS``, else :data:`DEFAULT_MAX_IMAGE_PIXELS`)."""
    value = os.environ.get(_MAX_PIXELS_ENV)
    return int(value) if value else DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(limit: int | None) -> None:
    """Raise or lower the pixel limit for this process and the loader workers it starts (``None``: default)."""
    if limit is None:
        os.environ.pop(_MAX_PIXELS_ENV, None)
        return
    if int(limit) < 1:
        raise UserError(f"max_image_pixels must be a positive number of pixels, not {limit!r}.")
    os.environ[_MAX_PIXELS_ENV] = str(int(limit))


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """PIL's decompression-bomb check off: :func:`max_image_pixels` is checked on the header instead."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@dataclass(frozen=True)
class _Header:
    format: str | None
    mode: str
    width: int
    height: int
    orientation: int


def _probe(path: Path) -> _Header:
    """Format, mode, size and EXIF orientation from the header; refuses files over the pixel limit."""
    try:
        with _own_pixel_limit(), Image.open(path) as img:
            orientation = 1
            if img.format == "TIFF" or "exif" in img.info:  # parsing EXIF costs more than the header
                try:
                    orientation = int(img.getexif().get(0x0112, 1))
                except Exception:
                    orientation = 1
            header = _Header(img.format, img.mode, img.size[0], img.size[1], orientation)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ImageReadError(
            f"{path}: unreadable ({_reason(err)}). The file is corrupt, empty or not an image; replace or delete it."
        ) from None
    if header.width * header.height > max_image_pixels():
        raise _too_large(path, f"{header.width} x {header.height} pixels")
    return header


def _too_large(path: Path, what: str) -> ImageReadError:
    return ImageReadError(
        f"{path}: declares {what}, more than the limit of {max_image_pixels():,} pixels; it was not decoded. "
        f"If it is a genuine image, raise the limit with the environment variable {_MAX_PIXELS_ENV}=<pixels> "
        "(or data.max_image_pixels / --max-pixels), else delete the file."
    )


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` after EXIF orientation, from the header only."""
    h = _probe(Path(path))
    return (h.width, h.height) if h.orientation in (5, 6, 7, 8) else (h.height, h.width)


def check_file(path: str | Path) -> str | None:
    """Cheap integrity check (header, pixel limit, end marker of JPEG/PNG); a problem description or ``None``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        fmt = _probe(path).format
        with open(path, "rb") as f:
            f.seek(max(0, size - 64))
            tail = f.read()
        if fmt == "JPEG" and b"\xff\xd9" not in tail:
            return "truncated JPEG (no end-of-image marker)"
        if fmt == "PNG" and b"IEND" not in tail:
            return "truncated PNG (no IEND chunk)"
    except ImageReadError as err:
        return str(err).removeprefix(f"{path}: ")
    except Exception as err:
        return f"unreadable ({_reason(err)})"
    return None


# -- libjpeg warnings -------------------------------------------------------------------------------------------
# OpenCV's libjpeg reports damaged data only as text on the C stderr (file descriptor 2). To turn it into an
# error, fd 2 points at a scratch file while a JPEG decodes; whatever else was printed meanwhile is passed on.
_capture_lock = threading.Lock()
_capture_file: dict[int, int] = {}  # pid -> fd of this process's scratch file (forked workers open their own)


def _scratch_fd() -> int:
    pid = os.getpid()
    if pid not in _capture_file:
        fd, name = tempfile.mkstemp(prefix="birefnet-stderr-")
        os.unlink(name)
        _capture_file[pid] = fd
    return _capture_file[pid]


@contextlib.contextmanager
def _libjpeg_messages() -> Iterator[list[str]]:
    messages: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield messages  # no usable stderr: nothing to capture
        return
    with _capture_lock:
        fd = _scratch_fd()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.dup2(fd, 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 1 << 16).decode("utf-8", "replace")
            for line in text.splitlines():
                if any(line.startswith(m) for m in _JPEG_DAMAGE):
                    messages.append(line.strip())
                elif line:
                    print(line, file=sys.stderr)


def _cv2_read(path: Path, flags: int, jpeg: bool) -> np.ndarray | None:
    try:
        if not jpeg:
            return cv2.imread(str(path), flags)
        with _libjpeg_messages() as messages:
            arr = cv2.imread(str(path), flags)
    except cv2.error:
        return None  # PIL gives the precise reason
    if messages:
        raise ImageReadError(
            f"{path} is a damaged JPEG (libjpeg: {messages[0]}); part of the picture is missing. "
            "Replace the file, delete it, or open the dataset with skip_invalid=true to leave it out."
        )
    return arr


def _reduced_flag(header: _Header, min_side: int | None, grayscale: bool) -> int:
    """Largest JPEG DCT reduction (2, 4, 8) that keeps both sides >= ``min_side``."""
    base = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    if not min_side or header.format != "JPEG":
        return base
    flags = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    if grayscale:
        flags = {
            2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
            4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
        }
    for factor in (8, 4, 2):
        if min(header.width, header.height) // factor >= min_side:
            return flags[factor]
    return base


def _pil_open(path: Path) -> Image.Image:
    try:
        with _own_pixel_limit(), Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except Exception as err:
        raise ImageReadError(
            f"Cannot decode {path} ({_reason(err)}). The file is corrupt or not an image; replace or delete it, "
            "or open the dataset with skip_invalid=true to leave it out."
        ) from None


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    """16-bit or 32-bit integer values to uint8: by 65535, or by 255 when they stay within 0..255."""
    peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return np.clip(arr.astype(np.float64) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_image(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Read an image as ``H x W x 3`` uint8 RGB (grayscale, palette, RGBA, 16-bit and CMYK converted).

    Args:
        path: image file.
        min_side: if given, a JPEG may be decoded at 1/2, 1/4 or 1/8 size as long as its short side stays
            at least this large (the caller resizes anyway).

    Raises:
        ImageReadError: unreadable, damaged or over the pixel limit; the message names the file.
    """
    path = Path(path)
    header = _probe(path)
    img = _cv2_read(path, _reduced_flag(header, min_side, grayscale=False), header.format == "JPEG")
    if img is not None and img.ndim == 3 and img.dtype == np.uint8 and header.mode not in ("I;16", "I;16B", "I"):
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    pil = _pil_open(path)
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.repeat(_scale_16bit(np.asarray(pil))[..., None], 3, axis=2)
    if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
        pil = pil.convert("RGBA")
    return np.asarray(pil.convert("RGB"))


_warned_binary: set[str] = set()


def _binary_01_to_255(mask: np.ndarray, path: Path) -> np.ndarray:
    if mask.max(initial=0) != 1:
        return mask
    if str(path) not in _warned_binary:
        _warned_binary.add(str(path))
        log.warning("%s holds a {0, 1} mask; read as {0, 255}.", path)
    return mask * np.uint8(255)


def _palette_mask(path: Path) -> np.ndarray:
    pil = _pil_open(path)  # still a palette image: EXIF transposition keeps the mode
    if "transparency" in pil.info:
        return _channels_to_mask(np.asarray(pil.convert("RGBA")), rgb_order=True)
    index = np.asarray(pil)
    palette = np.asarray(pil.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(index)
    if len(palette) and all(palette[u, 0] == palette[u, 1] == palette[u, 2] for u in used if u < len(palette)):
        return np.asarray(pil.convert("L"))  # a grey palette: its grey levels are the values
    if len(used) <= 2:
        return np.where(index != 0, 255, 0).astype(np.uint8)  # index 0 = background, the other index = object
    raise ImageReadError(
        f"{path} is a palette image with {len(used)} coloured classes; a DIS mask has one object. Save it as a "
        "grey-level PNG (0 = background, 255 = object)."
    )


def _channels_to_mask(arr: np.ndarray, rgb_order: bool = False) -> np.ndarray:
    """Any decoded array (uint8/uint16, 1-4 channels; OpenCV BGR(A) order unless ``rgb_order``) to ``H x W``."""
    if arr.dtype != np.uint8:
        arr = _scale_16bit(arr)
    if arr.ndim == 2:
        return arr
    channels = arr.shape[2]
    if channels in (2, 4):
        alpha = arr[..., -1]
        if alpha.min() != 255:
            return np.ascontiguousarray(alpha)  # the shape is in the alpha channel (matte, cutout)
        arr = arr[..., :-1]
    if arr.shape[2] == 1:
        return np.ascontiguousarray(arr[..., 0])
    return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY if rgb_order else cv2.COLOR_BGR2GRAY)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2..8) to an array decoded without it."""
    ops = {2: "f", 3: "r2", 4: "r2f", 5: "tf", 6: "r3", 7: "r1f", 8: "r1"}.get(orientation, "")
    if ops.startswith("t"):
        arr = np.swapaxes(arr, 0, 1)
        ops = ops[1:]
    if ops.startswith("r"):
        arr = np.rot90(arr, int(ops[1]))
    if ops.endswith("f"):
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def read_mask(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Read a mask, matte or prediction as ``H x W`` uint8 (soft values kept; see the module docstring).

    Raises:
        ImageReadError: unreadable, damaged, over the pixel limit, or a multi-class palette; names the file.
    """
    path = Path(path)
    header = _probe(path)
    if header.mode == "P":
        return _binary_01_to_255(_palette_mask(path), path)
    jpeg = header.format == "JPEG"
    flags = _reduced_flag(header, min_side, grayscale=True) if jpeg else cv2.IMREAD_UNCHANGED
    arr = _cv2_read(path, flags, jpeg)
    if arr is None:
        mask = _channels_to_mask(np.asarray(_pil_open(path)), rgb_order=True)
    else:
        mask = _channels_to_mask(arr)
        if not jpeg and header.orientation != 1:
            mask = _orient(mask, header.orientation)
    return _binary_01_to_255(mask, path)


# -- writing ----------------------------------------------------------------------------------------------------
#: PNG text key naming the input an output was made from; it marks the file as this project's to replace.
SOURCE_KEY = b"birefnet-source"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def write_png(path: str | Path, array: np.ndarray, source: str | None = None, rgb: bool = True) -> None:
    """Write ``array`` (``H x W`` gray, ``H x W x 3`` RGB or ``H x W x 4`` RGBA uint8) as a PNG, atomically.

    ``source`` is stored as a text chunk (:func:`png_source` reads it back), so a later run can tell its own
    outputs from the user's files. ``rgb=False`` takes 3/4-channel arrays in OpenCV's BGR(A) order.
    """
    from birefnet.atomic import atomic_write_bytes

    if rgb and array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"Could not encode a {array.shape} {array.dtype} array as PNG for {path}.")
    data = encoded.tobytes()
    if source is not None:
        ihdr_end = 8 + 8 + 13 + 4  # signature, then the IHDR chunk (length, type, 13 bytes, CRC)
        text = _png_chunk(b"tEXt", SOURCE_KEY + b"\0" + source.encode("latin-1", "replace"))
        data = data[:ihdr_end] + text + data[ihdr_end:]
    atomic_write_bytes(path, data)


def png_source(path: str | Path) -> str | None:
    """The ``source`` :func:`write_png` stored in a PNG, or ``None`` (not a PNG, or not written by this project)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind in (b"IDAT", b"IEND"):
                    return None
                data = f.read(length)
                f.seek(4, os.SEEK_CUR)
                if kind == b"tEXt" and data.startswith(SOURCE_KEY + b"\0"):
                    return data[len(SOURCE_KEY) + 1 :].decode("latin-1")
    except OSError:
        return None
