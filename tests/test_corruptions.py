"""ImageNet-C corruptions checked against their published definitions, from statistics or an independent
computation, never by calling ``corrupt`` twice: noise moments against the exact distribution of the
clipped, truncated definition; blurs against OpenCV and hand-built kernels; JPEG against Pillow; spatter
against the colours it mixes in. Constants are pinned here from the source, not read from the module."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, stats

from clip_dinoiser.data.corruptions import CORRUPTIONS, MASKCLIP_CORRUPTIONS, corrupt, seed_for
from clip_dinoiser.errors import ConfigError

# hendrycks/robustness ImageNet-C/create_c/make_imagenet_c.py, identical in MaskCLIP's
# mmseg/datasets/pipelines/corruptions.py; severity 1 first.
GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_NOISE = (60, 25, 12, 5, 3)
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)
SPECKLE_NOISE = (0.15, 0.2, 0.35, 0.45, 0.6)
GAUSSIAN_BLUR = (1, 2, 3, 4, 6)
DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))
SPATTER_WATER = {1: 0.6, 2: 0.6, 3: 0.5}  # severity -> strength (the peak of the added colour)
JPEG_QUALITY = (25, 18, 15, 10, 7)  # ImageNet-C's; (80, 65, 58, 50, 40) are CIFAR-10-C's
SEVERITIES = (1, 2, 3, 4, 5)

RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "spatter", "fog", "elastic_transform")
DETERMINISTIC = ("gaussian_blur", "defocus_blur", "zoom_blur", "brightness", "contrast", "saturate",
                 "jpeg_compression", "pixelate")
# ImageNet-C's constants are not monotone in damage for these (glass_blur: severity 2 shuffles once,
# 1 twice; snow: 3 has fewer flakes than 2; saturate: 1-2 desaturate, 3-5 oversaturate; elastic_transform:
# 1-2 a large smooth warp, 3-5 local jitter), so no PSNR order is asserted for them.
NOT_MONOTONE = ("glass_blur", "snow", "saturate", "elastic_transform")


def grey(level: int, h: int = 96, w: int = 96) -> np.ndarray:
    return np.full((h, w, 3), level, np.uint8)


def scene(h: int = 96, w: int = 128) -> np.ndarray:
    """A photo-like test image: smooth colour gradients, flat discs with sharp edges, mild noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = xx / w, yy / h
    img = np.stack([0.5 + 0.4 * np.sin(6 * u + 1), 0.5 + 0.4 * np.cos(5 * v), 0.3 + 0.4 * u * v], axis=-1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1, 3) * (h, w, min(h, w) / 3)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.1, 0.9, 3)
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def normal_moments(level_of) -> tuple[float, float]:
    """Mean and std of ``level_of(n)`` for n ~ N(0, 1), by quadrature on a fine grid."""
    n = np.linspace(-9, 9, 360_001)
    weight = stats.norm.pdf(n)
    weight /= weight.sum()
    levels = level_of(n)
    mean = float((weight * levels).sum())
    return mean, float(np.sqrt((weight * (levels - mean) ** 2).sum()))


def assert_moments(out: np.ndarray, mean: float, std: float) -> None:
    """Sample mean within 4 standard errors, sample std within 4 %."""
    values = out.astype(float).ravel()
    assert abs(values.mean() - mean) < 4 * std / np.sqrt(values.size) + 1e-9, (values.mean(), mean)
    assert values.std() == pytest.approx(std, rel=0.04)


# ---------------------------------------------------------------- what is offered


def test_offers_eighteen_imagenet_c_corruptions_including_maskclips_eight():
    assert set(CORRUPTIONS) == set(RANDOM) | set(DETERMINISTIC)
    assert len(CORRUPTIONS) == 18 and "frost" not in CORRUPTIONS
    assert set(MASKCLIP_CORRUPTIONS) == {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
                                         "gaussian_blur", "defocus_blur", "spatter", "jpeg_compression"}
    with pytest.raises(TypeError):
        CORRUPTIONS["frost"] = CORRUPTIONS["fog"]  # type: ignore[index]


# ---------------------------------------------------------------- MaskCLIP's eight, against their definitions


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_has_the_distribution_of_x_plus_normal_c(severity):
    c = GAUSSIAN_NOISE[severity - 1]
    out = corrupt(grey(128), "gaussian_noise", severity, seed=severity)
    assert_moments(out, *normal_moments(lambda n: np.floor(np.clip(128 / 255 + c * n, 0, 1) * 255)))
    if severity == 1:  # far from clipping the std is plain c * 255
        assert out.std() == pytest.approx(c * 255, rel=0.04)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_shot_noise_is_poisson_of_c_x_over_c(severity):
    """Every output level is some k / c; mean and variance are those of Poisson(c x) / c (variance
    mean * 255 / c in 8-bit units while nothing clips)."""
    c = SHOT_NOISE[severity - 1]
    out = corrupt(grey(100), "shot_noise", severity, seed=severity)
    k = np.arange(400)
    levels = np.floor(np.clip(k / c, 0, 1) * 255)
    assert np.isin(out, levels).all()
    weight = stats.poisson.pmf(k, 100 / 255 * c)
    mean = float((weight * levels).sum())
    assert_moments(out, mean, float(np.sqrt((weight * (levels - mean) ** 2).sum())))
    if severity == 1:
        assert out.astype(float).var() == pytest.approx(100 * 255 / c, rel=0.08)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_impulse_noise_sets_a_fraction_c_of_values_to_black_or_white(severity):
    c = IMPULSE_NOISE[severity - 1]
    out = corrupt(grey(128), "impulse_noise", severity, seed=severity)
    n = out.size
    tol = 4 * np.sqrt(c * (1 - c) / n)
    salt, pepper = np.mean(out == 255), np.mean(out == 0)
    assert salt + pepper == pytest.approx(c, abs=tol)
    assert salt == pytest.approx(c / 2, abs=tol) and pepper == pytest.approx(c / 2, abs=tol)
    assert np.all((out == 0) | (out == 255) | (out == 128))  # nothing else is touched
    hit = (out != 128).sum(-1)
    assert np.any((hit > 0) & (hit < 3))  # per value, not per pixel


@pytest.mark.parametrize("severity", SEVERITIES)
def test_speckle_noise_std_is_proportional_to_intensity(severity):
    c = SPECKLE_NOISE[severity - 1]
    img = np.concatenate([grey(0, 32), grey(60, 96), grey(120, 96)])
    out = corrupt(img, "speckle_noise", severity, seed=severity)
    assert not out[:32].any()  # x + x n is 0 where x is
    stds = []
    for level, part in ((60, out[32:128]), (120, out[128:])):
        x = level / 255
        mean, std = normal_moments(lambda n, x=x: np.floor(np.clip(x + x * c * n, 0, 1) * 255))
        assert_moments(part, mean, std)
        stds.append(part.std())
    if severity <= 2:  # before clipping bends it, exactly proportional
        assert stds[1] / stds[0] == pytest.approx(2, rel=0.05)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_blur_is_a_sampled_gaussian_of_sigma_c_with_edges_repeated(severity):
    """A step edge becomes the cumulative sum of the kernel exp(-k^2 / 2c^2) cut at 4c; a random image
    equals OpenCV's Gaussian with that kernel size and replicated borders."""
    c = GAUSSIAN_BLUR[severity - 1]
    step = np.zeros((8, 80, 3), np.uint8)
    step[:, 40:] = 255
    k = np.arange(-int(4 * c + 0.5), int(4 * c + 0.5) + 1)
    g = np.exp(-(k**2) / (2 * c**2))
    response = 255 * np.array([g[k <= x - 40].sum() for x in range(80)]) / g.sum()
    out = corrupt(step, "gaussian_blur", severity, seed=0).astype(float)
    assert np.all(np.abs(out - response[None, :, None]) <= 1)
    image = np.random.default_rng(severity).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    expected = cv2.GaussianBlur(image / 255.0, (k.size, k.size), c, borderType=cv2.BORDER_REPLICATE)
    out = corrupt(image, "gaussian_blur", severity, seed=0).astype(int)
    assert np.abs(out - np.floor(np.clip(expected, 0, 1) * 255)).max() <= 1


@pytest.mark.parametrize("severity", SEVERITIES)
def test_defocus_blur_kernel_is_the_antialiased_disk_of_radius_c(severity):
    """An impulse spreads into the disk x^2 + y^2 <= r^2 on a grid max(8, r) wide each side, normalised,
    then softened by a 3 x 3 (5 x 5 beyond r = 8) Gaussian of sigma s (grid edges mirrored)."""
    radius, s = DEFOCUS_BLUR[severity - 1]
    extent = max(8, radius)
    yy, xx = np.mgrid[-extent : extent + 1, -extent : extent + 1]
    disk = (xx**2 + yy**2 <= radius**2).astype(float)
    taps = np.arange(-(1 if radius <= 8 else 2), (1 if radius <= 8 else 2) + 1)
    g = np.exp(-(taps**2) / (2 * s**2))
    g /= g.sum()
    kernel = ndimage.correlate(disk / disk.sum(), g[:, None] * g[None, :], mode="mirror")
    impulse = np.zeros((48, 48, 3), np.uint8)
    impulse[24, 24, 1] = 255
    out = corrupt(impulse, "defocus_blur", severity, seed=0).astype(float)
    assert not out[..., 0].any() and not out[..., 2].any()  # channels stay apart
    expected = np.zeros((48, 48))
    expected[24 - extent : 24 + extent + 1, 24 - extent : 24 + extent + 1] = 255 * kernel
    assert np.abs(out[..., 1] - expected).max() <= 1
    assert out[24, 24, 1] == pytest.approx(255 / disk.sum(), abs=0.05 * 255 / disk.sum() + 1)


@pytest.mark.parametrize("severity", (1, 2, 3))
def test_spatter_water_adds_pale_turquoise_up_to_its_strength(severity):
    out = corrupt(grey(64, 128, 128), "spatter", severity, seed=3).astype(int)
    added = out - 64  # dark enough that nothing clips
    changed = (added != 0).any(-1)
    assert 0.001 < changed.mean() < 0.5
    assert (added >= 0).all()  # water only brightens
    assert np.abs(added[..., 1] - added[..., 2]).max() <= 1  # green = blue, as in (175, 238, 238)
    np.testing.assert_allclose(added[changed, 0], added[changed, 1] * 175 / 238, atol=1.5)
    assert added[..., 1].max() == pytest.approx(SPATTER_WATER[severity] * 238, abs=1.5)


@pytest.mark.parametrize("severity", (4, 5))
def test_spatter_mud_blends_at_least_80_percent_brown(severity):
    """Where mud lies, out = (1 - m) x + m (63, 42, 20) with m in [0.8, 1]; elsewhere the image is untouched."""
    out = corrupt(grey(128, 128, 128), "spatter", severity, seed=3).astype(float)
    changed = (out != 128).any(-1)
    assert 0.001 < changed.mean() < 0.5
    mud = out[changed]
    for channel, brown in enumerate((63, 42, 20)):
        lo, hi = brown - 1, 0.2 * 128 + 0.8 * brown + 1
        assert ((mud[:, channel] >= lo) & (mud[:, channel] <= hi)).all()


@pytest.mark.parametrize("severity", SEVERITIES)
def test_jpeg_compression_is_pillows_codec_at_imagenet_c_quality(severity):
    image = scene(45, 67)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY[severity - 1])
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(corrupt(image, "jpeg_compression", severity, seed=0), expected)


# ---------------------------------------------------------------- every corruption


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - set(NOT_MONOTONE)))
def test_damage_grows_with_severity(name):
    image = scene()
    scores = [np.mean([psnr(image, corrupt(image, name, s, seed)) for seed in (0, 1)]) for s in SEVERITIES]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_seeded_results_repeat_and_random_ones_vary_with_the_seed(name):
    image = scene(40, 56)
    before = image.copy()
    first = corrupt(image, name, 3, seed=5)
    np.testing.assert_array_equal(first, corrupt(image, name, 3, seed=5))
    np.testing.assert_array_equal(image, before)  # the input is left alone
    other = corrupt(image, name, 3, seed=6)
    assert (not np.array_equal(first, other)) == (name in RANDOM)
    assert not np.array_equal(first, image)


@pytest.mark.parametrize("shape", [(1, 1), (1, 200), (200, 1), (7, 5), (2, 3)])
def test_any_image_size_keeps_its_shape_and_dtype(shape):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for name in CORRUPTIONS:
        for severity in (1, 5):
            out = corrupt(image, name, severity, seed=1)
            assert out.shape == image.shape and out.dtype == np.uint8, (name, severity)


def test_non_square_images_are_corrupted_throughout():
    """Size-dependent steps (zoom about each axis' centre, the fog fractal, glass shuffles) cover the whole
    of a wide and a tall image, not a 224 x 224 corner."""
    for shape in ((40, 300), (300, 40)):
        image = scene(*shape)
        for name in ("zoom_blur", "fog", "glass_blur", "pixelate"):
            changed = (corrupt(image, name, 5, seed=0) != image).any(-1)
            assert changed[-8:, -8:].mean() > 0.3 and changed[:8, :8].mean() > 0.3, (name, shape)


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize("name", ["frost", "Gaussian_noise", "", "fgsm"])
def test_unknown_corruption_is_a_config_error_naming_the_choices(name):
    with pytest.raises(ConfigError, match="unknown corruption") as info:
        corrupt(grey(0, 4, 4), name, 1, 0)
    message = str(info.value)
    assert "\n" not in message and all(choice in message for choice in CORRUPTIONS)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3", None])
def test_severity_outside_one_to_five_is_a_config_error(severity):
    with pytest.raises(ConfigError, match=r"severity must be one of 1, 2, 3, 4, 5"):
        corrupt(grey(0, 4, 4), "gaussian_noise", severity, 0)


@pytest.mark.parametrize("seed", [-1, 1.5, "7", None])
def test_bad_seed_is_a_config_error(seed):
    with pytest.raises(ConfigError, match="seed"):
        corrupt(grey(0, 4, 4), "gaussian_noise", 1, seed)


@pytest.mark.parametrize("image", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                   np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)])
def test_image_must_be_h_w_3_uint8(image):
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        corrupt(image, "contrast", 1, 0)


def test_severity_and_seed_accept_numpy_integers():
    out = corrupt(grey(128, 8, 8), "gaussian_noise", np.int64(2), np.uint32(9))
    np.testing.assert_array_equal(out, corrupt(grey(128, 8, 8), "gaussian_noise", 2, 9))


def test_seed_for_is_a_stable_hash_of_the_base_name():
    """The first 8 bytes of sha256(b"2008_000123.jpg"), big-endian: the same in every process, unlike hash()."""
    assert seed_for("2008_000123.jpg") == 0x480207C40F1ADD0A
    assert seed_for("data/VOCdevkit/VOC2012/JPEGImages/2008_000123.jpg") == seed_for("2008_000123.jpg")
    assert seed_for("2008_000124.jpg") != seed_for("2008_000123.jpg")
    assert 0 <= seed_for("x.png") < 2**64
