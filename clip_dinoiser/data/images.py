"""Reading user images into H x W x 3 uint8 RGB, whatever their mode."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError


def load_image(path: str) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB.

    Grayscale is replicated to three channels, alpha is dropped, 16-bit and float images are
    scaled to 8 bits, and the EXIF orientation is applied.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable image.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"image {path} is a folder, not an image file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            return to_rgb_uint8(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise UserError(f"cannot read image {path}: {e}") from e


def to_rgb_uint8(im: Image.Image) -> np.ndarray:
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
