"""Atomic file writes: every file the project writes appears complete or not at all.

Each writer puts its bytes in a temporary file beside the target (same folder, so the final ``os.replace`` is an
atomic rename on POSIX and Windows) and renames it over the target once it is flushed. A process killed
mid-write leaves only a ``.<stem>.partial-<pid>-<6 hex digits><suffix>`` file, which :func:`remove_partials` clears
on the next run once its writer is dead, and never a truncated target. Hence "the output exists" always means "a
complete output exists". Nothing else is ever removed: a user's file whose name merely contains ``.partial-`` does
not match the exact pattern.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "PARTIAL_MARK",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_leftover_temporary",
    "remove_partials",
]

PARTIAL_MARK = ".partial-"
#: The exact name :func:`atomic_path` gives a temporary file: ``.<stem>.partial-<pid>-<6 hex digits><suffix>``.
_PARTIAL_NAME = re.compile(r"^\.(?P<stem>.+)\.partial-(?P<pid>[1-9][0-9]{0,9})-[0-9a-f]{6}(?P<suffix>\.[^./]+)?$")


def _temporary_name(path: Path) -> str:
    return f".{path.stem}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(3)}{path.suffix}"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension, so encoders pick the right format); on success it
    is renamed to ``path``, on failure removed."""
    path = Path(path)
    tmp = path.with_name(_temporary_name(path))
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


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def is_leftover_temporary(path: str | Path) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_path` whose writer has died: its name has the exact
    pattern (dot, stem, ``.partial-``, a process id, six hex digits, the target's suffix) and no process with
    that id is running. A user's file never matches by accident (``.notes.partial-draft.txt`` does not)."""
    match = _PARTIAL_NAME.match(Path(path).name)
    return match is not None and not _writer_alive(int(match["pid"]))


def remove_partials(folder: str | Path) -> int:
    """Delete the temporary files that killed writers left in ``folder`` (:func:`is_leftover_temporary`); those of
    running processes, and every other file, stay."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.glob(f".*{PARTIAL_MARK}*"):
        if p.is_file() and not p.is_symlink() and is_leftover_temporary(p):
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed
