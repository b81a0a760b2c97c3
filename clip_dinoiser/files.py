"""Checks on the files and folders a run names, done before any model is built.

Every tool validates its paths first, so a typo costs a second, not a model load.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
WEIGHTS_ENV = "CLIP_DINOISER_WEIGHTS"  # the folder of local weight copies (read per call)
WEIGHTS_FOLDER = "checkpoints"  # ... when WEIGHTS_ENV is not set (relative to the working folder)


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/clip_dinoiser``, else ``~/.cache/clip_dinoiser`` (read when called)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "clip_dinoiser")


def weights_folder() -> str:
    """The folder where the tools look for local copies of weights by file name:
    ``$CLIP_DINOISER_WEIGHTS``, else ``checkpoints`` (read when called)."""
    return os.path.expanduser(os.environ.get(WEIGHTS_ENV) or WEIGHTS_FOLDER)


def local_copy(name: str) -> str | None:
    """The file ``name`` in ``weights_folder()``, or None. A name without a weights suffix
    (``vit_base_patch16_224.dino``) matches that name with any of ``WEIGHT_SUFFIXES``."""
    folder = weights_folder()
    names = [name] if name.endswith(WEIGHT_SUFFIXES) else [name + suffix for suffix in WEIGHT_SUFFIXES]
    for candidate in names:
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def looks_like_path(value: str | None) -> bool:
    """True for a local file name (a folder separator or a weights suffix); False for hub tags
    such as ``laion2b_s34b_b88k`` or ``vit_base_patch16_224.dino``."""
    return bool(value) and (os.sep in value or value.endswith(WEIGHT_SUFFIXES))


def check_local_file(value: str | None, what: str, key: str) -> None:
    """Raise ``FileNotFoundError`` naming ``key`` when ``value`` names a local file that is missing.

    Hub tags and empty values pass (they are resolved, or refused, by the loader)."""
    if looks_like_path(value) and not os.path.isfile(value):
        kind = "is a folder" if os.path.isdir(value) else "not found"
        raise FileNotFoundError(f"{what} {kind}: {value} ({key})")


def check_output_dir(path: str, key: str) -> None:
    """Raise unless ``path`` is, or can be created as, a writable folder. Creates nothing.

    Raises:
        NotADirectoryError: ``path`` or one of its parents is a file.
        PermissionError: the folder (or its nearest existing parent) is not writable.
    """
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise NotADirectoryError(f"{key}={path}: {probe} exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{key}={path}: folder {probe} is not writable")


def write_atomic(path: str, write: Callable[[IO], Any], binary: bool = False) -> str:
    """``write(file)`` into a temporary file beside ``path``, then rename it to ``path``: an
    interrupted write (Ctrl-C, kill, full disk) never leaves a half-written ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` through ``write_atomic``."""
    import torch

    write_atomic(path, lambda f: torch.save(obj, f), binary=True)
