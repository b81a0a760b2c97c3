"""Palettes, overlays, legends and fonts for label maps.

Colours: a benchmark's predictions are drawn in that benchmark's own colours (``data.benchmarks.
benchmark_palette``; VOC's are ``voc_colormap``, the palette of VOC's own label PNGs); any other
vocabulary gets ``palette_for``: colours far apart in CIELAB, ``background`` black. Text is set
in DejaVu Sans, or in an installed font that has the glyphs (CJK names: Noto Sans CJK, Debian's
``fonts-noto-cjk``), with a warning naming the characters no installed font has.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import UserError
from .files import write_atomic

BACKGROUND = "background"  # the class drawn black
BLACK = (0, 0, 0)


def voc_colormap(n: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map (the devkit's ``labelcolormap``: label ``i``'s bits interleaved into
    R, G, B from the top bit down), n x 3 uint8: 0 background black, 1 aeroplane (128, 0, 0), ...,
    255 the void border (224, 224, 192). The palette of VOC's own label PNGs."""
    palette = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0..255, ... x 3) -> CIELAB (D65)."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def farthest_colours(n: int, levels: int = 18) -> np.ndarray:
    """n colours (n x 3 uint8), each the farthest in CIELAB from those before it and from black
    and white (kept for the background and the page): a greedy pick on a grid of ``levels`` values
    per channel. ``DISTINCT_COLOURS`` is its output for 256."""
    axis = np.linspace(0, 255, levels).round()
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    lab = _lab(grid)
    distance = np.linalg.norm(lab[:, None] - _lab(np.array([BLACK, (255, 255, 255)]))[None], axis=-1).min(1)
    chosen = []
    for _ in range(n):
        j = int(distance.argmax())
        chosen.append(grid[j])
        distance = np.minimum(distance, np.linalg.norm(lab - lab[j], axis=-1))
    return np.array(chosen, np.uint8)


# farthest_colours(256), written out (0.1 s to compute; tests/test_first_day.py checks they agree).
DISTINCT_COLOURS = (
    (0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 30, 180), (255, 210, 0), (0, 135, 255), (15, 135, 60), (135, 75, 0),
    (60, 0, 90), (0, 135, 165), (255, 135, 150), (0, 255, 240), (210, 255, 150), (180, 90, 255), (240, 165, 255),
    (120, 0, 45), (255, 135, 0), (135, 135, 105), (0, 255, 150), (255, 195, 120), (195, 255, 30), (255, 0, 90),
    (135, 150, 0), (135, 90, 135), (0, 0, 165), (60, 180, 0), (30, 60, 15), (165, 195, 255), (0, 45, 90),
    (165, 15, 15), (255, 0, 255), (165, 60, 165), (150, 210, 165), (90, 60, 45), (90, 225, 255), (210, 165, 180),
    (0, 90, 255), (195, 0, 105), (255, 135, 90), (0, 60, 165), (0, 75, 75), (60, 15, 45), (0, 150, 135),
    (180, 135, 0), (30, 210, 150), (255, 120, 255), (165, 15, 255), (255, 255, 195), (255, 255, 105), (90, 90, 0),
    (180, 180, 105), (255, 120, 195), (0, 135, 210), (180, 90, 75), (150, 255, 105), (150, 120, 225), (135, 180, 180),
    (120, 15, 90), (120, 120, 135), (195, 15, 195), (120, 195, 90), (225, 195, 165), (105, 0, 150), (255, 255, 0),
    (225, 75, 15), (180, 135, 75), (105, 15, 0), (75, 90, 165), (195, 45, 75), (150, 195, 0), (180, 75, 120),
    (60, 60, 75), (165, 255, 240), (180, 150, 210), (255, 210, 255), (210, 195, 75), (60, 0, 0), (255, 90, 90),
    (105, 150, 90), (75, 120, 15), (0, 240, 90), (255, 180, 60), (90, 60, 255), (0, 0, 60), (120, 240, 15),
    (45, 105, 75), (195, 105, 0), (0, 195, 90), (105, 75, 210), (105, 60, 150), (150, 255, 180), (225, 150, 135),
    (150, 105, 105), (0, 180, 240), (15, 0, 120), (0, 135, 0), (255, 165, 210), (60, 105, 150), (255, 90, 135),
    (240, 0, 45), (150, 165, 255), (120, 0, 195), (180, 105, 180), (120, 90, 45), (255, 0, 135), (90, 45, 0),
    (180, 225, 255), (30, 45, 30), (210, 210, 0), (0, 90, 30), (105, 45, 60), (165, 165, 195), (180, 75, 30),
    (45, 210, 210), (195, 15, 150), (75, 120, 120), (75, 45, 105), (210, 240, 210), (105, 120, 255), (150, 135, 45),
    (195, 105, 225), (0, 45, 120), (195, 120, 150), (195, 225, 90), (15, 165, 120), (240, 225, 135), (90, 90, 60),
    (45, 30, 0), (195, 195, 195), (120, 240, 135), (255, 45, 225), (255, 210, 210), (15, 0, 30), (120, 165, 135),
    (75, 105, 45), (0, 210, 0), (105, 150, 195), (150, 195, 120), (225, 90, 195), (210, 60, 255), (105, 165, 15),
    (225, 150, 75), (90, 180, 210), (180, 150, 135), (105, 225, 195), (0, 45, 180), (150, 180, 75), (0, 0, 210),
    (75, 180, 105), (0, 30, 45), (195, 255, 90), (195, 255, 195), (255, 210, 75), (0, 255, 195), (255, 165, 120),
    (75, 75, 120), (75, 60, 0), (165, 60, 75), (120, 0, 120), (135, 135, 75), (195, 0, 0), (0, 75, 105),
    (150, 60, 195), (120, 120, 180), (165, 60, 135), (180, 195, 150), (105, 45, 90), (135, 75, 60), (180, 120, 90),
    (195, 240, 240), (105, 75, 90), (60, 0, 60), (75, 105, 210), (255, 240, 210), (240, 75, 150), (255, 135, 120),
    (120, 90, 0), (60, 30, 30), (240, 210, 150), (0, 105, 0), (165, 120, 255), (135, 0, 30), (120, 210, 15),
    (255, 120, 45), (120, 75, 240), (90, 90, 90), (240, 90, 255), (135, 210, 195), (240, 120, 165), (165, 15, 75),
    (0, 75, 135), (255, 165, 180), (195, 165, 0), (105, 210, 75), (255, 150, 60), (165, 240, 120), (180, 165, 120),
    (210, 120, 75), (90, 0, 45), (135, 60, 30), (225, 90, 60), (255, 135, 240), (0, 15, 105), (0, 120, 75),
    (210, 0, 60), (0, 165, 180), (210, 225, 150), (210, 165, 75), (225, 225, 255), (165, 90, 105), (105, 180, 255),
    (150, 120, 150), (180, 180, 15), (165, 105, 0), (0, 90, 225), (75, 30, 135), (90, 135, 225), (210, 135, 0),
    (105, 0, 240), (210, 195, 255), (210, 75, 210), (210, 240, 45), (0, 45, 210), (150, 150, 150), (105, 30, 30),
    (75, 150, 45), (60, 90, 75), (120, 135, 45), (255, 75, 0), (105, 255, 210), (135, 105, 180), (210, 0, 90),
    (255, 195, 150), (255, 240, 120), (45, 75, 0), (210, 150, 195), (45, 30, 45), (195, 45, 135), (210, 90, 105),
    (210, 225, 120), (135, 15, 75), (135, 210, 225), (150, 0, 150), (135, 30, 0), (105, 255, 255), (180, 150, 240),
    (150, 0, 180), (150, 225, 135), (150, 120, 90), (75, 30, 15), (255, 105, 120), (105, 150, 165), (255, 150, 225),
    (90, 30, 180), (240, 180, 0), (90, 180, 150),
)


def make_palette(n: int) -> np.ndarray:
    """n colours far apart (n x 3 uint8): the first ones most of all (ten are at least 55 CIELAB
    units apart, twenty 40), none black or white; a class keeps its colour whatever n is."""
    if n > len(DISTINCT_COLOURS):
        raise UserError(f"{n} classes: at most {len(DISTINCT_COLOURS)} colours")
    return np.array(DISTINCT_COLOURS[:n], np.uint8).reshape(-1, 3)


def palette_for(names: Sequence[str]) -> np.ndarray:
    """The colours of a vocabulary (n x 3 uint8): ``make_palette``, ``background`` black."""
    palette = make_palette(len(names))
    for i, name in enumerate(names):
        if name.strip().lower() == BACKGROUND:
            palette[i] = BLACK
    return palette


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


# Fonts tried, in order, for text DejaVu Sans cannot set: file names of wide-coverage fonts
# (Noto Sans CJK: Debian's fonts-noto-cjk; Droid Sans Fallback: fonts-droid-fallback; WenQuanYi:
# fonts-wqy-zenhei), then any other installed font.
WIDE_FONTS = ("NotoSansCJK-Regular", "NotoSansCJK", "SourceHanSans", "NotoSerifCJK-Regular", "NotoSerifCJK",
              "DroidSansFallback", "wqy-zenhei", "wqy-microhei", "NotoSans-Regular", "unifont")
CJK_FONT_PACKAGE = "fonts-noto-cjk (Debian, Ubuntu; google-noto-sans-cjk-fonts on Fedora)"
LATIN_END = 0x250  # Basic Latin to Latin Extended-B: all in DejaVu Sans, no glyph check needed


class MissingGlyphWarning(UserWarning):
    """Characters no installed font has a glyph for (drawn as boxes); Python shows each once."""


def load_font(size: int, text: str = "") -> ImageFont.ImageFont:
    """A font ``size`` pixels high that has a glyph for every character of ``text``
    (``font_file``); PIL's own font if no TrueType font is found."""
    path = font_file(text)
    return ImageFont.load_default(size) if path is None else ImageFont.truetype(path, size)


def font_file(text: str = "") -> str | None:
    """The font file for ``text``: DejaVu Sans (shipped with matplotlib) when it has every
    character's glyph, else the first installed font of ``WIDE_FONTS`` (then any other) that has
    them all; none has them all: the one with the most, and a ``MissingGlyphWarning`` naming the
    characters drawn as boxes and the package of a CJK font."""
    dejavu = _dejavu()
    chars = sorted({c for c in text if not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf")})
    if dejavu is not None and all(ord(c) < LATIN_END for c in chars):  # DejaVu Sans has every Latin letter
        return dejavu
    uncovered = [c for c in chars if dejavu is None or not has_glyph(dejavu, c)]
    if not uncovered:
        return dejavu
    best, lacking = dejavu, uncovered
    for path in _installed_fonts():
        try:
            missing = [c for c in uncovered if not has_glyph(path, c)]
        except OSError:  # a font PIL cannot open
            continue
        if not missing:
            return path
        if len(missing) < len(lacking):
            best, lacking = path, missing
    warnings.warn(f"no installed font has a glyph for {', '.join(f'U+{ord(c):04X}' for c in lacking[:8])} "
                  f"({''.join(lacking[:8])}): drawn as boxes; install a font that has them (CJK names: "
                  f"{CJK_FONT_PACKAGE})", MissingGlyphWarning, stacklevel=3)
    return best


def _dejavu() -> str | None:
    try:
        from matplotlib import font_manager  # its font manager caches the lookup

        return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True)
    except (ImportError, OSError, ValueError):
        return None


def _installed_fonts() -> list[str]:
    """Installed TrueType / OpenType font files, the wide-coverage ones (``WIDE_FONTS``) first."""
    try:
        from matplotlib import font_manager

        found = font_manager.findSystemFonts()
    except (ImportError, OSError):
        return []

    def rank(path: str) -> tuple[int, str]:
        name = os.path.basename(path)
        return next((i for i, wide in enumerate(WIDE_FONTS) if name.startswith(wide)), len(WIDE_FONTS)), name

    return sorted(found, key=rank)


def has_glyph(path: str, char: str) -> bool:
    """Whether the font file ``path`` draws ``char`` with a glyph of its own, not its "missing"
    box (the glyph of U+FFFF, a code point no font maps)."""
    font = ImageFont.truetype(path, 24)
    mask, missing = font.getmask(char), font.getmask("\uffff")
    return mask.size != missing.size or bytes(mask) != bytes(missing)


def _legend_entries(draw: ImageDraw.ImageDraw, entries: Sequence[tuple[str, tuple[int, int, int]]],
                    origin: tuple[int, int], width: int, size: int) -> int:
    """Swatch + name for each entry, flowed in rows within ``width``; returns the height used.
    With ``draw`` None, only measures."""
    pad = max(4, size // 3)
    x0, y0 = origin
    x, y = x0, y0
    for name, colour in entries:
        font = load_font(size, name)
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
    pad = max(4, size // 3)
    width = max([int(load_font(size, names[i]).getlength(names[i])) for i in present] + [size]) + size + 4 * pad
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


def side_by_side(panels: Sequence[tuple[str, np.ndarray] | tuple[str, np.ndarray, str]],
                 legend: Sequence[tuple[str, tuple[int, int, int]]], *, max_panel_width: int = 1600,
                 cmap: str = "viridis") -> np.ndarray:
    """One figure: the panels (title above each) at one size, in one row (two rows for images
    wider than 1.8:1), then one shared legend. A panel given as (title, image, caption) is a heat
    map of ``cmap`` over 0..1: its colour scale (``caption  0 [colours] 1``) is drawn under it.

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
    bar_h = size + 2 * pad if any(len(p) > 2 for p in panels) else 0  # a colour-scale row under each row
    row_h = title_h + ph + bar_h
    fig_w = columns * pw + (columns - 1) * pad
    legend_h = _legend_entries(None, legend, (0, 0), fig_w - 2 * pad, size) + 2 * pad if legend else 0
    canvas = Image.new("RGB", (fig_w, rows * row_h + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (title, panel, *bar) in enumerate(panels):
        x, y = (k % columns) * (pw + pad), (k // columns) * row_h
        canvas.paste(Image.fromarray(panel).resize((pw, ph), Image.BILINEAR), (x, y + title_h))
        fitted = _fitted_font(title, size, pw - 2)  # a title wider than its panel is set smaller
        draw.text((x + pw // 2, y + title_h // 2), title, fill=(0, 0, 0), font=fitted, anchor="mm")
        if bar:
            _colour_bar(canvas, (x, y + title_h + ph + pad), bar[0], size, cmap, width=pw)
    if legend:
        _legend_entries(draw, legend, (pad, rows * row_h + pad), fig_w - 2 * pad, size)
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
    (``indexed_image``: pixel value = class index, in the order of ``names``), in ``palette_for``'s colours."""
    palette = palette_for(names)
    shown = add_legend(overlay(image, labels, palette, alpha), names, palette, np.unique(labels).tolist())
    return Image.fromarray(shown), indexed_image(labels, palette)


def save_indexed(labels: np.ndarray, palette: np.ndarray, path: str) -> None:
    """Save a label map as an indexed PNG (``indexed_image``), through the one writer of files
    (complete or absent; a full disk names the file)."""
    image = indexed_image(labels, palette)
    write_atomic(path, lambda f: image.save(f, format="PNG"), binary=True)


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
    path = font_file(text)
    font = load_font(size, text)
    for smaller in range(size - 1, 7, -1):
        if font.getlength(text) <= width:
            break
        font = ImageFont.load_default(smaller) if path is None else ImageFont.truetype(path, smaller)
    return font


def _colour_bar(canvas: Image.Image, origin: tuple[int, int], caption: str, size: int, cmap: str,
                width: int | None = None) -> None:
    """``caption  0 [colours of 0..1] 1`` in one row of text ``size`` pixels high from ``origin``;
    within ``width`` pixels when given (the ramp shortened, down to 2 x ``size``, and the caption
    set smaller if need be)."""
    draw, pad = ImageDraw.Draw(canvas), max(4, size // 3)
    ends = load_font(size, "01")
    ramp_w = 8 * size
    caption_font = load_font(size, caption)
    if width is not None:
        rest = width - int(ends.getlength("0") + ends.getlength("1")) - 3 * pad
        ramp_w = max(2 * size, min(ramp_w, rest - int(caption_font.getlength(caption))))
        caption_font = _fitted_font(caption, size, max(8, rest - ramp_w))
    x, y = origin
    for text, font, bar in ((caption, caption_font, False), ("0", ends, True), ("1", ends, False)):
        draw.text((x, y + size // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
        x += int(font.getlength(text)) + pad
        if bar:
            ramp = heat_map(np.repeat(np.linspace(0, 1, ramp_w)[None], size, axis=0), cmap)
            canvas.paste(Image.fromarray(ramp), (x, y))
            draw.rectangle([x, y, x + ramp_w - 1, y + size - 1], outline=(0, 0, 0))
            x += ramp_w + pad


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
