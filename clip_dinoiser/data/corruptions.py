"""ImageNet-C image corruptions (Hendrycks & Dietterich, ICLR 2019) for MaskCLIP's robustness protocol.

MaskCLIP (Zhou et al., ECCV 2022) evaluated robustness on eight corruptions at severities 1..5
(``MASKCLIP_CORRUPTIONS``): gaussian_noise, shot_noise, impulse_noise, speckle_noise, gaussian_blur,
defocus_blur, spatter, jpeg_compression. The corruptions of its
``mmseg/datasets/pipelines/corruptions.py`` are those of ``ImageNet-C/create_c/make_imagenet_c.py`` in
github.com/hendrycks/robustness, unchanged; every constant below is that file's, severity 1 first.
The code here is our own, in numpy, OpenCV, Pillow and scipy (no scikit-image, no ImageMagick):
scikit-image's ``gaussian`` is scipy's ``gaussian_filter`` over the two image axes (mode ``nearest``,
truncation 4 sigma), its salt-and-pepper noise and HSV conversions are written out, and
ImageMagick's ``MotionBlurImage`` is re-implemented.

Offered (``CORRUPTIONS``), 18 of ImageNet-C's 19: the eight above, and glass_blur, motion_blur,
zoom_blur, snow, fog, brightness, contrast, saturate, pixelate, elastic_transform.
Not offered: frost (it blends one of six frost photographs shipped with ImageNet-C, third-party image
files we do not ship) and fgsm (an adversarial attack on a source network, not an image corruption).

Where we differ from the reference, and why:

* Channel order: MaskCLIP's ``Corrupt`` transform ran on mmcv's BGR image (before the keep-ratio
  resize); we corrupt the RGB image, the channel order the definitions were written for. Among the
  eight this changes jpeg_compression (its YCbCr transform weighs the channels differently) and
  spatter (water is pale turquoise, RGB (175, 238, 238), here and pale yellow in MaskCLIP's BGR run;
  mud is brown, RGB (63, 42, 20), here and dark blue there). Noise and blurs treat channels alike,
  so the order does not matter for them; of the others, snow's grey level is channel-weighted.
* Randomness: every draw comes from the ``np.random.Generator`` seeded by ``seed``, in the reference's
  order and with its distributions, never from numpy's global state. The samples therefore differ
  from a run of the reference; their statistics do not.
* Image size: ImageNet-C assumed 224 x 224. Pixel-unit constants (blur sigmas, disk radii, motion
  lengths, elastic displacements) are kept in pixels whatever the image size, as MaskCLIP did, and
  size-dependent steps are generalised: glass_blur shuffles pixels over the whole image; zoom_blur and
  snow zoom each axis about its own centre; fog's plasma fractal is ``max(256, next power of two of
  the longer side)`` wide (256, the original, for images up to 256 pixels) and cropped top-left;
  pixelate shrinks each side by its factor, to at least one pixel; elastic_transform's affine
  triangle is at least one pixel wide.
* Degenerate cases the reference leaves undefined: spatter's water without any drop (0 / 0 there)
  leaves the image unchanged, and its liquid level is clipped to [0, 1] before the 8-bit cast
  (overflow there, reachable only on images too small for the blur to average the noise).
* motion_blur and snow follow ImageMagick's ``MotionBlurImage`` (one-sided Gaussian of width
  ``2 * ceil(radius) + 1``, offsets ``ceil(i * cos(angle) - 0.5)``, ``ceil(i * sin(angle) - 0.5)``,
  edge pixels repeated), rounded to ImageMagick's 16-bit quantum and truncated to 8 bits as its PNG
  writer does, as the reference read the result back.
* JPEG qualities are ImageNet-C's (25, 18, 15, 10, 7), as MaskCLIP used; (80, 65, 58, 50, 40) are
  CIFAR-10-C's (``make_cifar_c.py``).
* Kept as published, though unintended there: glass_blur's pixel "swap" copies one way only (a numpy
  tuple assignment of two views), and elastic_transform's constants are multiples of 244 for 224
  pixels (noted in the reference).
* As in the reference, the result is truncated to uint8 (``np.uint8`` of values in [0, 255]), not
  rounded.

With numpy's global random functions routed to the same Generator, all 18 gave the reference's output
bit for bit (MaskCLIP's file with scikit-image 0.26, scipy 1.17, OpenCV 5.0, Pillow 13, and ImageMagick
6.9.11 Q16 for motion_blur and snow) on 224 x 224 images, and the eight of MaskCLIP, brightness,
contrast and saturate also on 375 x 500 ones.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import ConfigError

__all__ = ["CORRUPTIONS", "MASKCLIP_CORRUPTIONS", "SEVERITIES", "corrupt", "seed_for"]

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

SEVERITIES = (1, 2, 3, 4, 5)
MASKCLIP_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur",
                        "defocus_blur", "spatter", "jpeg_compression")  # MaskCLIP configs/maskclip/corrupt/generate.py

# make_imagenet_c.py's constants, one entry per severity 1..5.
_GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)  # noise std, intensities in [0, 1]
_SHOT_NOISE = (60, 25, 12, 5, 3)  # Poisson events per unit intensity
_IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)  # fraction of values set to 0 or 1, half each
_SPECKLE_NOISE = (0.15, 0.2, 0.35, 0.45, 0.6)  # std of the multiplicative noise
_GAUSSIAN_BLUR = (1, 2, 3, 4, 6)  # sigma, pixels
_DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # disk radius, antialiasing sigma
_SPATTER = (  # liquid mean, std, blur sigma, threshold, strength (water) or blur sigma (mud), mud?
    (0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1))
_JPEG_QUALITY = (25, 18, 15, 10, 7)
_GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # sigma, max shift, iterations
_MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # ImageMagick radius, sigma
_ZOOM_BLUR = ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03))  # np.arange
_SNOW = (  # flake mean, std, zoom, threshold, motion radius, motion sigma, weight of the original image
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))
_FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # fog thickness, fractal wibble decay
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to HSV value
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # deviation from the channel mean kept
_SATURATE = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))  # HSV saturation * a + b
_PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # side shrink factor
_ELASTIC = (  # displacement scale, displacement smoothing sigma, affine jitter (pixels); 244 sic
    (244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2), (244 * 0.05, 244 * 0.01, 244 * 0.02),
    (244 * 0.07, 244 * 0.01, 244 * 0.02), (244 * 0.12, 244 * 0.01, 244 * 0.02))
_WATER_RGB = (175, 238, 238)  # pale turquoise
_MUD_RGB = (63, 42, 20)  # brown
_EMBOSS = ((-2, -1, 0), (-1, 1, 1), (0, 1, 2))  # spatter's drop-relief kernel


# ---------------------------------------------------------------- helpers


def _unit(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> float64 in [0, 1]."""
    return image / 255.0


def _to_255(x: np.ndarray) -> np.ndarray:
    """Intensities in [0, 1] (any shape, clipped) -> [0, 255], the reference's ``np.clip(x, 0, 1) * 255``."""
    return np.clip(x, 0, 1) * 255


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's ``filters.gaussian`` (channels last for H x W x C): scipy's Gaussian over the two
    image axes only, with skimage's defaults (edge pixels repeated, kernel cut at 4 sigma)."""
    return ndimage.gaussian_filter(x, (sigma, sigma) + (0,) * (x.ndim - 2), mode=mode, truncate=truncate)


def _disk_kernel(radius: int, alias_blur: float) -> np.ndarray:
    """Defocus kernel: the normalised disk ``x^2 + y^2 <= radius^2`` on a grid at least 17 x 17, softened
    by a 3 x 3 (5 x 5 beyond radius 8) Gaussian of sigma ``alias_blur``. Returns K x K float32."""
    extent = max(8, radius)
    grid = np.arange(-extent, extent + 1)
    disk = (grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2).astype(np.float32)
    disk /= disk.sum()
    size = 3 if radius <= 8 else 5
    return cv2.GaussianBlur(disk, (size, size), sigmaX=alias_blur)


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre: crop ``ceil(side / factor)`` per axis, upsample bilinearly by ``factor``
    (scipy ``zoom``, order 1), crop the centre back to the input size. x: H x W x C -> H x W x C."""
    h, w = x.shape[:2]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[top : top + ch, left : left + cw]
    # Per channel: the same values as one 3-D zoom by (factor, factor, 1), in half the time.
    zoomed = np.stack([ndimage.zoom(crop[..., k], factor, order=1) for k in range(x.shape[2])], axis=-1)
    top, left = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
    return zoomed[top : top + h, left : left + w]


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map (ImageNet-C's ``plasma_fractal``): each halving of the step sets the
    square centres, then the diamond centres, to the mean of their four neighbours (wrapping around)
    plus uniform noise of amplitude ``wibble**2``; wibble starts at 100 and is divided by ``decay``
    per level. size: a power of two. Returns size x size float64 in [0, 1]."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0::step, 0::step]
        squares = corners + np.roll(corners, -1, axis=0)
        squares = squares + np.roll(squares, -1, axis=1)
        grid[half::step, half::step] = squares / 4 + wibble * rng.uniform(-wibble, wibble, squares.shape)
        centres = grid[half::step, half::step]
        left = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        grid[0::step, half::step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        top = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        grid[half::step, 0::step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        step, wibble = half, wibble / decay
    grid -= grid.min()
    return grid / grid.max()


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's ``MotionBlurImage``: each pixel becomes the weighted sum of the ``2 * ceil(radius) + 1``
    pixels along ``angle`` (degrees, x right, y down) starting at itself, weights a one-sided Gaussian
    of ``sigma``, pixels beyond the border repeating the edge. x: H x W x C float -> H x W x C float64."""
    width = 2 * math.ceil(radius) + 1
    taps = np.arange(width)
    weights = np.exp(-(taps**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    theta = np.deg2rad(angle)
    dx = np.ceil(taps * np.cos(theta) - 0.5).astype(int)
    dy = np.ceil(taps * np.sin(theta) - 0.5).astype(int)
    h, w = x.shape[:2]
    padded = np.pad(x, ((width, width), (width, width), (0, 0)), mode="edge")
    out = np.zeros(x.shape)
    for weight, ox, oy in zip(weights, dx, dy):
        out += weight * padded[width + oy : width + oy + h, width + ox : width + ox + w]
    return out


def _imagemagick_8bit(x: np.ndarray) -> np.ndarray:
    """ImageMagick's result as the reference read it back: rounded to its 16-bit quantum (1/257 of an
    8-bit level), then written to an 8-bit PNG, which truncates. x: values in [0, 255]."""
    return np.floor(np.rint(x * 257.0) / 257.0)


def _rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """scikit-image's ``rgb2hsv`` (hue from the blue channel where it is the maximum, else green, else
    red; grey pixels hue and saturation 0). x: H x W x 3 in [0, 1] -> H x W x 3 (h, s, v) in [0, 1]."""
    r, g, b = np.moveaxis(x, -1, 0)
    value = x.max(-1)
    delta = value - x.min(-1)
    grey = delta == 0
    safe = np.where(grey, 1.0, delta)
    hue = np.where(b == value, 4.0 + (r - g) / safe, np.where(g == value, 2.0 + (b - r) / safe, (g - b) / safe))
    hue = np.where(grey, 0.0, (hue / 6.0) % 1.0)
    saturation = np.where(grey, 0.0, delta / np.where(value == 0, 1.0, value))
    return np.stack([hue, saturation, value], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image's ``hsv2rgb``. hsv: H x W x 3 in [0, 1] -> H x W x 3 RGB in [0, 1]."""
    h, s, v = np.moveaxis(hsv, -1, 0)
    sector = np.floor(h * 6)
    f = h * 6 - sector
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(rgb, axis=-1) for rgb in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v),
                                                         (v, p, q))])
    index = (sector.astype(np.int64) % 6)[None, ..., None]
    return np.take_along_axis(table, np.broadcast_to(index, (1, *table.shape[1:])), axis=0)[0]


def _shuffle_locally(x: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Glass blur's pixel shuffle: visit rows ``H - shift .. shift + 1`` and, in each, columns
    ``W - shift .. shift + 1`` (both descending) and give the pixel the value of the one ``(dy, dx)``
    away, ``dx, dy`` uniform integers in ``[-shift, shift)``. The reference meant a swap, but its numpy
    tuple assignment of two views copies one way only; ImageNet-C was made so, and so is this.
    Sequential, as later visits read earlier results. x: H x W x 3."""
    h, w = x.shape[:2]
    rows, cols = np.arange(h - shift, shift, -1), np.arange(w - shift, shift, -1)
    if rows.size == 0 or cols.size == 0:
        return x
    offsets = rng.integers(-shift, shift, size=(rows.size * cols.size, 2))  # (dx, dy) per visit
    here = (rows[:, None] * w + cols[None, :]).ravel()
    there = here + offsets[:, 1] * w + offsets[:, 0]
    source = list(range(h * w))  # source[i]: the input pixel that pixel i now holds
    for a, b in zip(here.tolist(), there.tolist()):
        source[a] = source[b]
    return x.reshape(h * w, -1)[source].reshape(x.shape)


# ---------------------------------------------------------------- noise


def _gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """x + N(0, c^2) per value, x in [0, 1]."""
    x = _unit(image)
    return _to_255(x + rng.normal(scale=_GAUSSIAN_NOISE[severity - 1], size=x.shape))


def _shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson(c x) / c per value: variance x / c, x in [0, 1]."""
    c = _SHOT_NOISE[severity - 1]
    return _to_255(rng.poisson(_unit(image) * c) / float(c))


def _impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper per value (skimage ``random_noise(mode='s&p')``): with probability c the value
    becomes 1 or 0, equally likely."""
    x = _unit(image)
    flipped = rng.random(x.shape) < _IMPULSE_NOISE[severity - 1]
    salted = rng.random(x.shape) < 0.5
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return _to_255(x)


def _speckle_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """x + x N(0, c^2) per value: noise proportional to intensity."""
    x = _unit(image)
    return _to_255(x + x * rng.normal(scale=_SPECKLE_NOISE[severity - 1], size=x.shape))


# ---------------------------------------------------------------- blur


def _gaussian_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian of sigma c per channel (edge pixels repeated, cut at 4 sigma)."""
    return _to_255(_gaussian(_unit(image), _GAUSSIAN_BLUR[severity - 1]))


def _defocus_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Antialiased disk per channel (OpenCV ``filter2D``, border reflected without repeating the edge)."""
    radius, alias_blur = _DEFOCUS_BLUR[severity - 1]
    kernel = _disk_kernel(radius, alias_blur)
    x = _unit(image)
    return _to_255(np.stack([cv2.filter2D(x[..., k], -1, kernel) for k in range(3)], axis=-1))


def _glass_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, 8-bit, local pixel shuffles, Gaussian blur again."""
    sigma, shift, iterations = _GLASS_BLUR[severity - 1]
    x = (_gaussian(_unit(image), sigma) * 255).astype(np.uint8)
    for _ in range(iterations):
        x = _shuffle_locally(x, shift, rng)
    return _to_255(_gaussian(x / 255.0, sigma))


def _motion_blur_corruption(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """ImageMagick motion blur along a uniform angle in [-45, 45) degrees, read back in 8 bits."""
    radius, sigma = _MOTION_BLUR[severity - 1]
    return _imagemagick_8bit(_motion_blur(image.astype(np.float64), radius, sigma, rng.uniform(-45, 45)))


def _zoom_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of the image and its centre zooms by ``np.arange(start, stop, step)`` (1 included)."""
    factors = np.arange(*_ZOOM_BLUR[severity - 1])
    x = (image / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return _to_255((x + out) / (len(factors) + 1))


# ---------------------------------------------------------------- weather


def _snow(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Thresholded zoomed Gaussian flakes, motion-blurred at an angle in [-135, -45), added twice (the
    second rotated 180 degrees) to the image brightened towards 1.5 grey + 0.5."""
    mean, std, zoom, threshold, radius, sigma, keep = _SNOW[severity - 1]
    x = image.astype(np.float32) / 255.0
    flakes = _clipped_zoom(rng.normal(mean, std, size=x.shape[:2])[..., None], zoom)
    flakes[flakes < threshold] = 0
    flakes = (np.clip(flakes, 0, 1) * 255).astype(np.uint8)  # the 8-bit grey image ImageMagick blurs
    flakes = _imagemagick_8bit(_motion_blur(flakes, radius, sigma, rng.uniform(-135, -45))) / 255.0
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
    return _to_255(x + flakes + np.rot90(flakes, k=2))


def _spatter(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Drops where blurred Gaussian noise exceeds a threshold: pale-turquoise water with an embossed
    rim (severities 1-3) or opaque mud (4-5)."""
    mean, std, sigma, threshold, strength, mud = _SPATTER[severity - 1]
    x = image.astype(np.float32) / 255.0
    liquid = _gaussian(rng.normal(mean, std, size=x.shape[:2]), sigma)
    liquid[liquid < threshold] = 0
    return _mud(x, liquid, threshold, strength) if mud else _water(x, liquid, strength)


def _water(x: np.ndarray, liquid: np.ndarray, strength: float) -> np.ndarray:
    """Spatter's water: the 8-bit liquid level times an embossed, equalised distance to its Canny
    edges (truncated at 20 pixels), scaled to a maximum of ``strength``, adds pale turquoise.
    x: H x W x 3 float32 in [0, 1]; liquid: H x W. Returns H x W x 3 in [0, 255]."""
    level = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)
    dist = cv2.distanceTransform(255 - cv2.Canny(level, 50, 150), cv2.DIST_L2, 5)
    dist = np.minimum(dist, 20)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    dist = cv2.filter2D(dist, cv2.CV_8U, np.float32(_EMBOSS))
    dist = cv2.blur(dist, (3, 3)).astype(np.float32)
    m = level * dist
    peak = m.max()
    m = m / peak * np.float32(strength) if peak > 0 else m
    colour = (np.asarray(_WATER_RGB) / 255.0).astype(np.float32)
    return _to_255(x + m[..., None] * colour)


def _mud(x: np.ndarray, liquid: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """Spatter's mud: the drop mask blurred by ``sigma`` and kept where at least 0.8 blends to brown.
    x: H x W x 3 float32 in [0, 1]; liquid: H x W. Returns H x W x 3 in [0, 255]."""
    m = _gaussian((liquid > threshold).astype(np.float32), sigma)
    m[m < 0.8] = 0
    m = m[..., None]
    colour = (np.asarray(_MUD_RGB) / 255.0).astype(np.float32)
    return _to_255(x * (1 - m) + colour * m)


def _fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Adds a plasma fractal (in [0, 1]) times the thickness, then scales by max / (max + thickness),
    max the image's brightest value."""
    thickness, decay = _FOG[severity - 1]
    x = _unit(image)
    peak = x.max()
    h, w = x.shape[:2]
    size = max(256, 1 << (max(h, w) - 1).bit_length())
    x = x + thickness * _plasma_fractal(size, decay, rng)[:h, :w, None]
    return _to_255(x * peak / (peak + thickness))


# ---------------------------------------------------------------- digital


def _brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """HSV value + c, clipped to 1."""
    hsv = _rgb_to_hsv(_unit(image))
    hsv[..., 2] = np.clip(hsv[..., 2] + _BRIGHTNESS[severity - 1], 0, 1)
    return _to_255(_hsv_to_rgb(hsv))


def _contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Each channel's deviation from its image mean scaled by c."""
    x = _unit(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_255((x - means) * _CONTRAST[severity - 1] + means)


def _saturate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """HSV saturation * a + b, clipped to [0, 1]."""
    scale, offset = _SATURATE[severity - 1]
    hsv = _rgb_to_hsv(_unit(image))
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + offset, 0, 1)
    return _to_255(_hsv_to_rgb(hsv))


def _jpeg_compression(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Pillow's JPEG encoder at quality c (its default 4:2:0 chroma subsampling), decoded again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=_JPEG_QUALITY[severity - 1])
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def _pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Pillow box-filter shrink of each side by c (at least one pixel) and box resize back."""
    h, w = image.shape[:2]
    c = _PIXELATE[severity - 1]
    small = Image.fromarray(image).resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX))


def _elastic_transform(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A random affine warp (three points jittered uniformly), then bilinear resampling along smooth
    random displacements (uniform noise, Gaussian-smoothed with reflection, cut at 3 sigma, scaled)."""
    alpha, sigma, jitter = _ELASTIC[severity - 1]
    x = image.astype(np.float32) / 255.0
    h, w = x.shape[:2]
    # The reference takes (rows, cols) as the (x, y) of its triangle; kept, as it only picks the points.
    centre = np.float32((h, w)) // 2
    half = max(min(h, w) // 3, 1)
    src = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    dst = src + rng.uniform(-jitter, jitter, size=src.shape).astype(np.float32)
    x = cv2.warpAffine(x, cv2.getAffineTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    x = x.reshape(h, w, 3)  # OpenCV drops unit axes of a 1 x 1 image
    dx = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([rows + dy, cols + dx])
    out = [ndimage.map_coordinates(x[..., k], coords, order=1, mode="reflect") for k in range(3)]
    return _to_255(np.stack(out, axis=-1))


# ---------------------------------------------------------------- API

CORRUPTIONS: Mapping[str, Corruption] = MappingProxyType({
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur_corruption,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "spatter": _spatter,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "saturate": _saturate,
    "jpeg_compression": _jpeg_compression,
    "pixelate": _pixelate,
    "elastic_transform": _elastic_transform,
})
"""Corruption name -> ``f(image, severity, rng)`` returning values in [0, 255]; call ``corrupt``, which
checks the arguments and makes the uint8 image."""


def check_corruption(name: str, severity: int, key: str = "corruption") -> None:
    """A ``ConfigError`` naming ``key`` unless ``name`` is offered and ``severity`` is 1..5."""
    if name not in CORRUPTIONS:
        raise ConfigError(f"{key}={name}: unknown corruption (choose from {', '.join(CORRUPTIONS)})")
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise ConfigError(f"{key}: severity must be one of 1, 2, 3, 4, 5, got {severity!r}")


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Apply one ImageNet-C corruption.

    Args:
        image: H x W x 3 uint8 RGB, any size from 1 x 1.
        name: a key of ``CORRUPTIONS``.
        severity: 1 (mildest) .. 5.
        seed: non-negative integer seeding the ``np.random.Generator`` all random draws come from
            (``seed_for(file_name)`` gives one per image); ignored by deterministic corruptions.

    Returns:
        H x W x 3 uint8 RGB, a new array.

    Raises:
        ConfigError: unknown name, severity outside 1..5, or a negative or non-integer seed.
        ValueError: ``image`` is not a non-empty H x W x 3 uint8 array.
    """
    check_corruption(name, severity)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"corruption seed must be a non-negative integer, got {seed!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"corrupt expects an H x W x 3 uint8 RGB image, got shape {image.shape} {image.dtype}")
    out = CORRUPTIONS[name](np.ascontiguousarray(image), int(severity), np.random.default_rng(int(seed)))
    return np.clip(out, 0, 255).astype(np.uint8)


def seed_for(name: str | os.PathLike[str]) -> int:
    """A seed for an image from its file name: the first 8 bytes of the SHA-256 of its UTF-8 base name,
    big-endian. The folder is ignored, so the same image gets the same corruption wherever the data set
    lies, in every run and process (Python's ``hash`` would change per process)."""
    base = os.path.basename(os.fspath(name))
    return int.from_bytes(hashlib.sha256(base.encode("utf-8")).digest()[:8], "big")
