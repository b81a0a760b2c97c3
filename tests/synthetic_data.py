"""Tiny benchmark datasets written in mmsegmentation's real on-disk layouts."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from clip_dinoiser.data.benchmarks import BENCHMARKS

from .conftest import random_image

# (label values written, values that mean "ignore") per benchmark, in the raw files' convention.
LABELS = {
    "voc": 21, "voc20": 21, "context": 60, "context59": 60, "coco_object": 81, "coco_stuff": 171,
    "cityscapes": 19, "ade20k": 151,
}
SIZES = [(60, 80), (72, 50), (48, 100)]


def _label_map(h: int, w: int, n_values: int, rng: np.random.Generator) -> np.ndarray:
    """Blocky labels with a 255 border, like VOC's."""
    small = rng.integers(0, n_values, (4, 4)).astype(np.uint8)
    labels = np.kron(small, np.ones((h // 4 + 1, w // 4 + 1), np.uint8))[:h, :w]
    labels[:2] = 255
    return labels


def make_benchmark(data_dir: str, name: str, n: int = 3, seed: int = 0) -> str:
    """Write ``n`` images and labels of benchmark ``name`` under ``data_dir``; returns its root."""
    bench = BENCHMARKS[name]
    root = os.path.join(data_dir, bench.root)
    rng = np.random.default_rng(seed)
    ids = [f"{2007 + i}_{i:06d}" for i in range(n)]
    for i, img_id in enumerate(ids):
        h, w = SIZES[i % len(SIZES)]
        image, labels = random_image(h, w, seed=seed + i), _label_map(h, w, LABELS[name], rng)
        if name == "cityscapes":
            img_path = os.path.join(root, bench.img_dir, "frankfurt", f"{img_id}_leftImg8bit.png")
            ann_path = os.path.join(root, bench.ann_dir, "frankfurt", f"{img_id}_gtFine_labelTrainIds.png")
        else:
            img_path = os.path.join(root, bench.img_dir, f"{img_id}.jpg")
            suffix = {"coco_object": "_instanceTrainIds.png", "coco_stuff": "_labelTrainIds.png"}.get(name, ".png")
            ann_path = os.path.join(root, bench.ann_dir, f"{img_id}{suffix}")
        os.makedirs(os.path.dirname(img_path), exist_ok=True)
        os.makedirs(os.path.dirname(ann_path), exist_ok=True)
        Image.fromarray(image).save(img_path, quality=95)
        Image.fromarray(labels).save(ann_path)
    if bench.split is not None:
        os.makedirs(os.path.dirname(os.path.join(root, bench.split)), exist_ok=True)
        with open(os.path.join(root, bench.split), "w") as f:
            f.write("\n".join(ids) + "\n")
    return root


def make_all(data_dir: str, n: int = 3) -> str:
    for name in BENCHMARKS:
        make_benchmark(data_dir, name, n)
    return data_dir
