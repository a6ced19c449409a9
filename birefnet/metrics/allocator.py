"""Keep the C allocator from returning the metric suite's scratch memory to the system after every image.

Scoring a 1024x1024 image allocates and frees some twenty 1 MB maps (HCE's masks, OpenCV's erosions and
dilations). glibc's malloc adapts its thresholds to the sizes it has seen; depending on what the process allocated
before, it can settle into trimming the top of the heap after every image, and the next image then faults those
pages in again: the float rows of ``birefnet bench metrics`` were about 6 ms per 1024x1024 image slower than the
uint8 rows for that reason, and equal once the thresholds are fixed. Fixing them is process-wide, so it happens
when the first image is scored (:func:`~birefnet.metrics.functional.image_scores` calls this), and it only keeps up
to :data:`TRIM_BYTES` of freed memory for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["MMAP_BYTES", "TRIM_BYTES", "keep_scratch_memory"]

#: Allocations below this come from the heap (glibc ``M_MMAP_THRESHOLD``; a 1024x1024 float64 map is 8 MB).
MMAP_BYTES = 16 << 20
#: Free memory at the top of the heap kept for reuse instead of being returned (glibc ``M_TRIM_THRESHOLD``).
TRIM_BYTES = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def keep_scratch_memory() -> bool:
    """Fix glibc's trim and mmap thresholds (once per process); ``False`` where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only; musl and macOS have other allocators
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES))
