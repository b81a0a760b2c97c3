"""The short Python API (``clip_dinoiser.load`` / ``Segmenter.segment``) and the README's Python
blocks, which must run as written (with tiny weights)."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import clip_dinoiser
from clip_dinoiser.config import SlideConfig

from .conftest import TINY_CLIP_CFG, random_image
from .synthetic_data import make_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLIDE = {"scale": [256, 64], "crop": [64, 64], "stride": [32, 32], "window_batch": 8}


@pytest.fixture()
def tiny_load(tiny_clip_file, tiny_heads_file):
    """``clip_dinoiser.load`` with the tiny CLIP and heads (everything else as a user calls it)."""
    name, path = tiny_clip_file
    return functools.partial(clip_dinoiser.load, clip={"name": name, "pretrained": path}, proj_dim=16,
                             weights=tiny_heads_file, slide=SLIDE)


def test_api_labels_and_files_equal_the_demos_pixel_for_pixel(tmp_path, tiny_load, tiny_clip_file, tiny_heads_file):
    """The labels, and ``result.save``'s files (the overlay, the label map, the figure)."""
    image = random_image(90, 130, seed=4)
    Image.fromarray(image).save(tmp_path / "photo.png")
    segmenter = tiny_load(device="cpu")
    result = segmenter.segment(str(tmp_path / "photo.png"), ["cat", "sofa", "background"])
    assert result.labels.shape == (90, 130) and result.probs.shape == (3, 90, 130)
    assert result.classes == ["cat", "sofa", "background"]
    assert np.array_equal(result.labels, result.probs.argmax(0))
    unrefined = segmenter.segment(str(tmp_path / "photo.png"), ["cat", "sofa"])  # no background: a softmax
    np.testing.assert_allclose(unrefined.probs.sum(0), 1.0, atol=1e-5)

    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    slide = [f"slide.{k}={json.dumps(v).replace(' ', '')}" for k, v in SLIDE.items()]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), "image=photo.png",
                        "prompts=[cat,sofa,background]", "output=out", f"model.clip.name={tmp_path / 'tiny.json'}",
                        f"model.clip.pretrained={tiny_clip_file[1]}", f"model.checkpoint={tiny_heads_file}",
                        "model.proj_dim=16", "device=cpu", *slide], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    demo_labels = np.asarray(Image.open(tmp_path / "out" / "photo_labels.png"))
    assert np.array_equal(demo_labels, result.labels)
    written = result.save(str(tmp_path / "api"))
    assert [os.path.basename(p) for p in written] == ["photo_mask.png", "photo_labels.png", "photo_figure.png"]
    for name in ("photo_mask.png", "photo_labels.png", "photo_figure.png"):
        ours, demos = Image.open(tmp_path / "api" / name), Image.open(tmp_path / "out" / name)
        assert ours.mode == demos.mode and np.array_equal(np.asarray(ours), np.asarray(demos)), name


def test_api_takes_paths_pil_images_arrays_and_lists(tmp_path, tiny_load):
    images = [random_image(70, 50, seed=s) for s in (1, 2)]
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    segmenter = tiny_load(device="cpu")
    classes = ["cat", "dog,puppy"]
    one = segmenter.segment(str(tmp_path / "a.png"), classes)
    assert one.classes == ["cat", "dog"]
    for same in (Image.open(tmp_path / "a.png"), images[0], images[0].astype(np.float32) / 255.0):
        assert np.array_equal(segmenter.segment(same, classes).labels, one.labels)
    batch = segmenter.segment([str(tmp_path / "a.png"), images[1]], classes)
    assert isinstance(batch, list) and len(batch) == 2
    assert np.array_equal(batch[0].labels, one.labels)
    np.testing.assert_array_equal(batch[1].probs, segmenter.segment(images[1], classes).probs)
    gray = segmenter.segment(images[1][..., 0], classes)
    assert gray.labels.shape == (70, 50)
    with pytest.raises(ValueError, match=r"an image of shape \(4, 5, 2\)"):
        segmenter.segment(np.zeros((4, 5, 2), np.uint8), classes)
    with pytest.raises(FileNotFoundError, match="image not found: nothing.jpg"):
        segmenter.segment("nothing.jpg", classes)
    assert isinstance(segmenter.slide, SlideConfig) and segmenter.device.type == "cpu"
    assert segmenter.segment([], classes) == []  # an empty batch in, an empty batch out
    with pytest.raises(ValueError, match=r"classes=\[\] is empty"):
        segmenter.segment(images[0], [])
    with pytest.raises(ValueError, match="classes=None is not a list"):
        segmenter.segment(images[0], None)


def test_unknown_settings_name_the_key(tiny_load):
    with pytest.raises(ValueError, match="model.gama: unknown key"):
        tiny_load(device="cpu", gama=0.3)
    with pytest.raises(ValueError, match=r"model.gamma=nan: must be a finite number in \[0, 1\]"):
        tiny_load(device="cpu", gamma=float("nan"))


def readme_python_blocks() -> list[str]:
    """The Python blocks of README.md and docs/*.md."""
    docs = os.path.join(ROOT, "docs")
    pages = [os.path.join(ROOT, "README.md")] + sorted(os.path.join(docs, f) for f in os.listdir(docs)
                                                       if f.endswith(".md"))
    blocks = []
    for page in pages:
        with open(page, encoding="utf-8") as f:
            blocks += re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    return blocks


def test_readme_python_blocks_run_as_written(tmp_path, tiny_load, monkeypatch):
    """Each ```python block of the README, run in a folder holding the images it names, with
    ``clip_dinoiser.load`` giving the tiny weights (CUDA devices become the CPU here)."""
    blocks = readme_python_blocks()
    assert blocks, "README.md has no Python block"
    for name in ("photo.jpg", "a.jpg", "b.jpg"):
        Image.fromarray(random_image(60, 80, seed=len(name))).save(tmp_path / name)
    for bench in ("voc", "context"):
        make_benchmark(str(tmp_path / "data"), bench, n=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(clip_dinoiser, "load",
                        lambda *a, device="auto", weights=None, **k: tiny_load(*a[:1], device="cpu", **k))
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
