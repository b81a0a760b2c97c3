"""One reader per kind of file. Each knows its format's failures and turns every one of them into
a one-line ``UserError`` (or ``FileNotFoundError``) naming the file, so no tool shows a traceback
for a file a user gave it:

* images: missing, a folder, unknown format, truncated, decompression bombs (Pillow's limit,
  ``CLIP_DINOISER_MAX_IMAGE_PIXELS`` to change it), any mode (16-bit, palette, alpha, EXIF);
* label maps: read at their own bit depth (8 or 16 bits, palette); a value above 255 is an
  error, never wrapped to 8 bits; 1 x N maps keep their two dimensions;
* weights: ``torch.load(weights_only=True)`` or safetensors; unpickling and format errors;
* text: UTF-8 (encoding errors name the file); YAML run configs; JSON results.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .errors import UserError

MAX_PIXELS_ENV = "CLIP_DINOISER_MAX_IMAGE_PIXELS"  # Pillow's decompression-bomb limit (pixels), read per call
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # what a folder of images holds


def _exists(path: str, what: str, key: str | None = None) -> None:
    where = f" ({key})" if key else ""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path}{where} is a folder, not {'an image ' if 'image' in what else 'a '}file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}{where}")


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text


@contextlib.contextmanager
def _pillow(path: str, what: str) -> Iterator[Any]:
    """``PIL.Image.open(path)`` with its failures as one ``UserError`` naming the file."""
    from PIL import Image

    _exists(path, what)
    limit = os.environ.get(MAX_PIXELS_ENV)
    previous = Image.MAX_IMAGE_PIXELS
    try:
        if limit:
            Image.MAX_IMAGE_PIXELS = int(limit)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # below 2x the limit: Pillow reads it
            with Image.open(path) as im:
                yield im
    except Image.DecompressionBombError as e:
        raise UserError(f"cannot read {what} {path}: {_reason(e)} (a decompression bomb? set {MAX_PIXELS_ENV} "
                        "to a larger pixel count to read it)") from None
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError and truncated files are OSErrors
        if isinstance(e, FileNotFoundError | IsADirectoryError):
            raise
        raise UserError(f"cannot read {what} {path}: {_reason(e).replace(str(path), '').strip(' :') or 'unreadable'}"
                        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def image_size(path: str, what: str = "image") -> tuple[int, int]:
    """(width, height) from the file's header (cheap): the image check of a training folder."""
    with _pillow(path, what) as im:
        return im.size


def read_image(path: str, what: str = "image", *, orient: bool = True) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (grayscale replicated, alpha dropped, 16-bit and
    float scaled to 8 bits); ``orient``: apply the EXIF orientation (training images are read
    without it, as torchvision's ImageFolder loader that the reference used)."""
    from PIL import ImageOps

    with _pillow(path, what) as im:
        if orient:
            im = ImageOps.exif_transpose(im)
        im.load()
        return to_rgb_uint8(im)


def to_rgb_uint8(im: Any) -> np.ndarray:
    """A PIL image of any mode -> H x W x 3 uint8 RGB."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if im.mode == "F" and arr.max() <= 1.0:
            hi = 1.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_label(path: str, what: str = "annotation") -> np.ndarray:
    """A label map (one channel, pixel value = class) as H x W uint8, read at its own bit depth:
    palette and 8-bit maps as they are, 16-bit maps checked. Values above 255 cannot be ours
    (255 is 'ignored'): an error naming the file, never wrapped to 8 bits."""
    with _pillow(path, what) as im:
        im.load()
        labels = np.asarray(im)
    if labels.ndim != 2:
        raise UserError(f"{what} {path} has {labels.shape[2] if labels.ndim == 3 else labels.ndim} channels: a label "
                        "map has one (pixel value = class index)")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype != np.uint8:
        high = int(labels.max(initial=0))
        if high > 255 or int(labels.min(initial=0)) < 0:
            raise UserError(f"{what} {path} holds the value {high if high > 255 else int(labels.min())}: labels are "
                            "0..255 (255 = ignored)")
        labels = labels.astype(np.uint8)
    return labels


def read_weights(path: str, what: str, key: str | None = None, *, lazy: bool = False) -> Any:
    """A weights file (``torch.save`` with tensors only, or ``.safetensors``), on the CPU.
    ``lazy``: the tensors are mapped, not read (a look at what a large file records)."""
    import torch

    where = f" ({key})" if key else ""
    _exists(path, what, key)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        if lazy:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # not a zip archive (torch.save's legacy format): read it
                pass
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, truncated archives, foreign formats: the file is the problem
        raise UserError(f"cannot read {what} {path}{where}: {_reason(e)}") from None


def state_dict_of(obj: Any) -> dict[str, Any] | None:
    """The state dict in a loaded weights file (``read_weights``): plain, or under ``state_dict`` /
    ``model``, with ``module.`` / ``backbone.`` prefixes stripped; None unless it maps names to tensors."""
    import torch

    if isinstance(obj, dict):
        obj = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in obj.items()}


def state_mismatch(expected: Mapping[str, Any], state: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """What keeps ``state`` from loading strictly into a module whose state dict is ``expected``:
    (its missing keys, its unexpected keys, the keys whose shapes differ), each sorted."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [k for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    return missing, unexpected, shapes


def read_text(path: str, what: str, key: str | None = None) -> str:
    """A UTF-8 text file (a BOM is dropped)."""
    _exists(path, what, key)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as e:
        where = f" ({key})" if key else ""
        raise UserError(f"{what} {path}{where} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None


def read_config(path: str, what: str = "run config") -> Any:
    """A YAML config (``config.yaml`` of a run) as a DictConfig; empty or invalid files are errors."""
    from omegaconf import DictConfig, OmegaConf

    text = read_text(path, what)
    try:
        cfg = OmegaConf.create(text) if text.strip() else None
    except Exception as e:  # YAML syntax errors
        raise UserError(f"{what} {path} is not valid YAML: {_reason(e)}") from None
    if not isinstance(cfg, DictConfig) or not cfg:
        raise UserError(f"{what} {path} is empty or not a mapping of settings")
    return cfg


def read_json(path: str, what: str = "results file") -> Any:
    """A JSON file; invalid JSON names the file and the position."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
