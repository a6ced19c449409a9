"""Atomic file writes: every file the project writes appears complete or not at all.

Each writer puts its bytes in a temporary file beside the target (same folder, so the final ``os.replace`` is an
atomic rename on POSIX and Windows) and renames it over the target once it is flushed. A process killed
mid-write leaves only a ``.<name>.partial-*`` file, which :func:`remove_partials` clears on the next run, and
never a truncated target. Hence "the output exists" always means "a complete output exists".
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PARTIAL_MARK", "atomic_path", "atomic_write_bytes", "atomic_write_text", "remove_partials"]

PARTIAL_MARK = ".partial-"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension, so encoders pick the right format); on success it
    is renamed to ``path``, on failure removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(3)}{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"Nothing was written to {path} (temporary file {tmp.name} is missing).")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _writer_alive(name: str) -> bool:
    try:
        pid = int(name.split(PARTIAL_MARK, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_partials(folder: str | Path) -> int:
    """Delete the temporary files that killed writers left in ``folder`` (those of running processes stay)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.glob(f".*{PARTIAL_MARK}*"):
        if not _writer_alive(p.name):
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed
