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
    for k, (title, panel) in enumerate(panels):
        x, y = (k % columns) * (pw + pad), (k // columns) * (title_h + ph)
        canvas.paste(Image.fromarray(panel).resize((pw, ph), Image.BILINEAR), (x, y + title_h))
        fitted = _fitted_font(title, size, pw - 2)  # a title wider than its panel is set smaller
        draw.text((x + pw // 2, y + title_h // 2), title, fill=(0, 0, 0), font=fitted, anchor="mm")
    if legend:
        _legend_entries(draw, legend, (pad, rows * (title_h + ph) + pad), fig_w - 2 * pad, size)
    return np.asarray(canvas)


MAX_INDEXED_CLASSES = 256  # a 'P' mode PNG's palette


def indexed_image(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A label map as an indexed ('P' mode) image whose pixel values are the class indices."""
    if labels.max(initial=0) >= MAX_INDEXED_CLASSES:
        raise UserError(f"indexed PNGs hold at most {MAX_INDEXED_CLASSES} classes")
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(palette)] = palette
    im.putpalette(flat.flatten().tolist())
    return im


def label_images(image: np.ndarray, labels: np.ndarray, names: Sequence[str],
                 alpha: float) -> tuple[Image.Image, Image.Image]:
    """A segmentation's two images (the demo's files, the web page's downloads): ``labels`` over
    ``image`` at opacity ``alpha`` with a legend of the classes present, and the indexed label map
    (``indexed_image``: pixel value = class index, in the order of ``names``)."""
    palette = make_palette(len(names))
    shown = add_legend(overlay(image, labels, palette, alpha), names, palette, np.unique(labels).tolist())
    return Image.fromarray(shown), indexed_image(labels, palette)


def save_indexed(labels: np.ndarray, palette: np.ndarray, path: str) -> None:
    """Save a label map as an indexed PNG (``indexed_image``)."""
    indexed_image(labels, palette).save(path)


# The web page's panels: each panel on its own, its text sized to the panel's width (the page scales a
# panel to its column, so text sized to the width keeps one size on the screen whatever the image's size).
MARKER = (255, 0, 0)  # the ring of a clicked point (outlined in white)
PANEL_WIDTH = (768, 1600)  # a page panel's width in pixels: the image's own width, within these bounds


def panel_width(image_width: int) -> int:
    """A page panel's width for an image ``image_width`` pixels wide (``PANEL_WIDTH``)."""
    return min(max(image_width, PANEL_WIDTH[0]), PANEL_WIDTH[1])


def panel_text_px(width: int) -> int:
    """Title and legend text height of a page panel ``width`` pixels wide: 1/40 of it, at least
    14 px (19 screen pixels where the page shows the panel 768 px wide, as at a 1,400 px window)."""
    return max(14, round(width / 40))


def mark_point(image: np.ndarray, point: tuple[float, float], radius: int) -> np.ndarray:
    """A ``MARKER`` ring of ``radius`` pixels around ``point`` = (x, y), between two white rings so
    it shows on any colour."""
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    x, y = point
    w = max(2, radius // 3)
    # PIL draws an outline inwards from its box: white over [r - 2w, r + w], then red over [r - w, r].
    draw.ellipse([x - radius - w, y - radius - w, x + radius + w, y + radius + w], outline=(255, 255, 255),
                 width=3 * w)
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=MARKER, width=w)
    return np.asarray(im)


def _fitted_font(text: str, size: int, width: int) -> ImageFont.ImageFont:
    """The font at ``size`` pixels, or smaller until ``text`` fits in ``width`` pixels (8 px at least)."""
    font = load_font(size)
    for smaller in range(size - 1, 7, -1):
        if font.getlength(text) <= width:
            break
        font = load_font(smaller)
    return font


def _colour_bar(canvas: Image.Image, origin: tuple[int, int], caption: str, size: int, cmap: str) -> None:
    """``caption  0 [colours of 0..1] 1`` in one row of text ``size`` pixels high from ``origin``."""
    draw, font, pad = ImageDraw.Draw(canvas), load_font(size), max(4, size // 3)
    x, y = origin
    for text, bar in ((caption, False), ("0", True), ("1", False)):
        draw.text((x, y + size // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
        x += int(font.getlength(text)) + pad
        if bar:
            ramp = heat_map(np.repeat(np.linspace(0, 1, 8 * size)[None], size, axis=0), cmap)
            canvas.paste(Image.fromarray(ramp), (x, y))
            draw.rectangle([x, y, x + 8 * size - 1, y + size - 1], outline=(0, 0, 0))
            x += 8 * size + pad


def titled_panel(title: str, image: np.ndarray, *, width: int,
                 legend: Sequence[tuple[str, tuple[int, int, int]]] = (), bar: str | None = None,
                 cmap: str = "viridis", mark: tuple[int, int] | None = None) -> np.ndarray:
    """One panel of the web page: ``image`` scaled to ``width`` pixels wide, ``title`` above it and
    below it the ``legend`` ((name, colour) entries) or, with ``bar`` (its caption), the colour bar
    of ``cmap`` over 0..1; with ``mark`` = (x, y) in the image's pixels, a ring there. Text is
    ``panel_text_px(width)`` high.
    """
    h, w = image.shape[:2]
    ph = max(1, round(h * width / w))
    size = panel_text_px(width)
    pad = max(4, size // 3)
    title_h = round(1.2 * size) + 2 * pad
    shown = np.asarray(Image.fromarray(image).resize((width, ph), Image.BILINEAR))
    if mark is not None:
        shown = mark_point(shown, ((mark[0] + 0.5) * width / w - 0.5, (mark[1] + 0.5) * ph / h - 0.5), size // 2 + 4)
    below = 0
    if legend:
        below = _legend_entries(None, legend, (0, 0), width - 2 * pad, size) + 2 * pad
    elif bar is not None:
        below = size + 3 * pad
    canvas = Image.new("RGB", (width, title_h + ph + below), (255, 255, 255))
    canvas.paste(Image.fromarray(shown), (0, title_h))
    draw = ImageDraw.Draw(canvas)
    draw.text((width // 2, title_h // 2), title, fill=(0, 0, 0), font=_fitted_font(title, round(1.2 * size),
                                                                                   width - 2 * pad), anchor="mm")
    if legend:
        _legend_entries(draw, legend, (pad, title_h + ph + pad), width - 2 * pad, size)
    elif bar is not None:
        _colour_bar(canvas, (pad, title_h + ph + pad + pad // 2), bar, size, cmap)
    return np.asarray(canvas)
