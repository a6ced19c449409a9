"""Errors a user can fix: each message names the file or value at fault and what to do about it.

The command-line entry points (``train.py``, ``evaluate.py``, ``birefnet ...``) print a :class:`UserError` as one
message and exit with status 1; ``HYDRA_FULL_ERROR=1`` (or ``BIREFNET_TRACEBACK=1`` for ``birefnet``) shows the
traceback as well. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

__all__ = ["CheckpointError", "ConfigError", "UserError", "exit_on_user_error", "user_error_in"]


class UserError(ValueError):
    """Bad input, not a bug: a file, a checkpoint or a setting the user can change."""


class ConfigError(UserError):
    """A configuration value that cannot work; the message names the key and the allowed values."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not describe a model this project can build."""


F = TypeVar("F", bound=Callable)


def _show_traceback() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HYDRA_FULL_ERROR", "BIREFNET_TRACEBACK"))


def user_error_in(err: BaseException) -> BaseException | None:
    """The :class:`UserError` (or missing file) behind ``err``, through the wrappers of Hydra's ``instantiate`` and
    OmegaConf's resolvers, or ``None`` when ``err`` is a bug."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (UserError, FileNotFoundError)):
            return err
        err = err.__cause__ or err.__context__
    return None


def _to_log_files(message: str) -> None:
    """Record the message in the run's log file (Hydra's file handler) without printing it a second time."""
    record = logging.getLogger("birefnet").makeRecord("birefnet", logging.ERROR, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def exit_on_user_error(fn: F) -> F:
    """Run ``fn``; a :class:`UserError` or a missing file becomes one message on stderr (also in the run's log
    file) and exit status 1."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            cause = user_error_in(err)
            if cause is None or _show_traceback():
                raise
            print(f"Error: {cause}", file=sys.stderr)
            _to_log_files(str(cause))
            raise SystemExit(1) from None

    return wrapper  # type: ignore[return-value]
