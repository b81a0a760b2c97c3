"""Palettes, overlays and legends for label maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def make_palette(n: int, seed: int = 0) -> np.ndarray:
    """n distinct RGB colours (uint8, n x 3); 'background' gets black when it is class 0 by the caller."""
    # The PASCAL VOC bit-interleaving palette, distinct for up to 256 classes.
    palette = np.zeros((max(n, 1), 3), np.uint8)
    for i in range(n):
        c, r, g, b = i + 1, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette[:n]


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """H x W label map -> H x W x 3 colours."""
    return palette[labels]


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured label map over the RGB image."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels, palette).astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def add_legend(image: np.ndarray, names: Sequence[str], palette: np.ndarray, present: Sequence[int]) -> np.ndarray:
    """Append a legend column naming the classes in ``present`` with their colours."""
    font = ImageFont.load_default()
    row, pad = 18, 6
    width = max([len(names[i]) for i in present] + [4]) * 7 + 3 * pad + row
    h = max(image.shape[0], pad * 2 + row * len(present))
    canvas = Image.new("RGB", (image.shape[1] + width, h), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + pad
    for k, i in enumerate(present):
        y = pad + k * row
        draw.rectangle([x0, y, x0 + row - 4, y + row - 4], fill=tuple(int(c) for c in palette[i]), outline=(0, 0, 0))
        draw.text((x0 + row + 2, y + 1), names[i], fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


MAX_INDEXED_CLASSES = 256  # a 'P' mode PNG's palette


def save_indexed(labels: np.ndarray, palette: np.ndarray, path: str) -> None:
    """Save a label map as an indexed ('P' mode) PNG whose pixel values are the class indices."""
    if labels.max(initial=0) >= MAX_INDEXED_CLASSES:
        raise ValueError(f"indexed PNGs hold at most {MAX_INDEXED_CLASSES} classes")
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(palette)] = palette
    im.putpalette(flat.flatten().tolist())
    im.save(path)
