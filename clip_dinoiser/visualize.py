"""Palettes, overlays and legends for label maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import UserError


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


def text_px(image_height: int) -> int:
    """Legend and title text height for an image: 4.5 % of its height, at least 14 px."""
    return max(14, round(0.045 * image_height))


def load_font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib; its font manager caches the lookup) at ``size``
    pixels; PIL's own font if none is found."""
    try:
        from matplotlib import font_manager

        path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True)
        return ImageFont.truetype(path, size)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default(size)


def _legend_entries(draw: ImageDraw.ImageDraw, entries: Sequence[tuple[str, tuple[int, int, int]]],
                    origin: tuple[int, int], width: int, size: int) -> int:
    """Swatch + name for each entry, flowed in rows within ``width``; returns the height used.
    With ``draw`` None, only measures."""
    font, pad = load_font(size), max(4, size // 3)
    x0, y0 = origin
    x, y = x0, y0
    for name, colour in entries:
        w = size + pad + int(font.getlength(name)) + 2 * pad
        if x > x0 and x + w > x0 + width:
            x, y = x0, y + size + pad
        if draw is not None:
            draw.rectangle([x, y, x + size, y + size], fill=colour, outline=(0, 0, 0))
            draw.text((x + size + pad, y + size // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
        x += w
    return y - y0 + size + pad


def add_legend(image: np.ndarray, names: Sequence[str], palette: np.ndarray, present: Sequence[int]) -> np.ndarray:
    """Append a legend column naming the classes in ``present`` with their colours, its text
    scaled to the image (``text_px``)."""
    size = text_px(image.shape[0])
    font, pad = load_font(size), max(4, size // 3)
    width = max([int(font.getlength(names[i])) for i in present] + [size]) + size + 4 * pad
    entries = [(names[i], tuple(int(c) for c in palette[i])) for i in present]
    height = sum(_legend_entries(None, [e], (0, 0), width, size) for e in entries) + 2 * pad
    canvas = Image.new("RGB", (image.shape[1] + width, max(image.shape[0], height)), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, entry in enumerate(entries):
        _legend_entries(draw, [entry], (image.shape[1] + pad, pad + k * (size + pad)), width, size)
    return np.asarray(canvas)


def heat_map(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """H x W values in [0, 1] -> H x W x 3 uint8 colours of a matplotlib colour map."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.clip(values, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def side_by_side(panels: Sequence[tuple[str, np.ndarray]], legend: Sequence[tuple[str, tuple[int, int, int]]],
                 *, max_panel_width: int = 1600) -> np.ndarray:
    """One figure: the panels (title above each) at one size, in one row (two rows for images
    wider than 1.8:1), then one shared legend.

    Panels wider than ``max_panel_width`` are scaled down (all by the same factor); titles and
    legend text are ``text_px`` of the panel height, so they stay legible at any image size.
    """
    h, w = panels[0][1].shape[:2]
    scale = min(1.0, max_panel_width / w)
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    size = text_px(ph)
    pad = max(4, size // 3)
    title_h = size + 2 * pad
    columns = len(panels) if w <= 1.8 * h else -(-len(panels) // 2)
    rows = -(-len(panels) // columns)
    fig_w = columns * pw + (columns - 1) * pad
    legend_h = _legend_entries(None, legend, (0, 0), fig_w - 2 * pad, size) + 2 * pad if legend else 0
    canvas = Image.new("RGB", (fig_w, rows * (title_h + ph) + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = load_font(size)
    for k, (title, panel) in enumerate(panels):
        x, y = (k % columns) * (pw + pad), (k // columns) * (title_h + ph)
        canvas.paste(Image.fromarray(panel).resize((pw, ph), Image.BILINEAR), (x, y + title_h))
        fitted = font
        for smaller in range(size - 1, 7, -1):  # a title wider than its panel is set smaller
            if fitted.getlength(title) <= pw - 2:
                break
            fitted = load_font(smaller)
        draw.text((x + pw // 2, y + title_h // 2), title, fill=(0, 0, 0), font=fitted, anchor="mm")
    if legend:
        _legend_entries(draw, legend, (pad, rows * (title_h + ph) + pad), fig_w - 2 * pad, size)
    return np.asarray(canvas)


MAX_INDEXED_CLASSES = 256  # a 'P' mode PNG's palette


def save_indexed(labels: np.ndarray, palette: np.ndarray, path: str) -> None:
    """Save a label map as an indexed ('P' mode) PNG whose pixel values are the class indices."""
    if labels.max(initial=0) >= MAX_INDEXED_CLASSES:
        raise UserError(f"indexed PNGs hold at most {MAX_INDEXED_CLASSES} classes")
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(palette)] = palette
    im.putpalette(flat.flatten().tolist())
    im.save(path)
