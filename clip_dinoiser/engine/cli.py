"""Helpers for the hydra entry points in ``tools/``: device choice and one-line errors."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

# Errors a user causes (bad path, bad value); anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, NotADirectoryError, PermissionError, ValueError,
                                                KeyError)


def user_errors_as_one_line(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors raised by ``fn`` into ``error: <message>`` on stderr and exit code 2."""
    from omegaconf.errors import OmegaConfBaseException

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (*USER_ERRORS, OmegaConfBaseException) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, KeyError):
                msg = f"missing key {msg}"
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available (use device=cpu)")
    return device
