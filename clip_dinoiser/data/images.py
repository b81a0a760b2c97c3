"""Reading user images into H x W x 3 uint8 RGB, whatever their mode (``readers.read_image``)."""

from __future__ import annotations

import numpy as np

from ..readers import read_image, to_rgb_uint8

__all__ = ["load_image", "to_rgb_uint8"]


def load_image(path: str) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB (see ``readers.read_image``).

    Raises:
        FileNotFoundError, IsADirectoryError: no file at ``path``.
        UserError: the file is not a readable image (unknown format, truncated, a decompression bomb).
    """
    return read_image(path, "image")
