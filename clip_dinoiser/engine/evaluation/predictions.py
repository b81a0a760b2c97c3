"""Predictions people can look at: the label maps that were scored, and example figures."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np
from PIL import Image
from torch import Tensor

from ...data.benchmarks import Benchmark, benchmark_palette, label_file_palette
from ...files import write_atomic
from ...visualize import colorize, save_indexed, side_by_side, voc_colormap

IGNORE_COLOR = tuple(int(c) for c in voc_colormap()[255])  # VOC's own "void" colour (224, 224, 192)


class PredictionWriter:
    """Writes, for one benchmark and one setting, each scored label map as an indexed PNG under
    ``<folder>/predictions/<benchmark>/`` (same relative path and name as the image's label file,
    pixel values in the label file's own convention: +1 where the dataset reduces label 0, so the
    files can be re-scored against the label files as they are; the benchmark's own colours,
    ``data.benchmarks.label_file_palette``), and the first ``examples`` images as figures
    image | ground truth | prediction under ``<folder>/examples/<benchmark>/``.

    Args:
        folder: the run folder.
        bench: the benchmark (``class_names`` label the figures).
        ann_root: the benchmark's annotation folder (``root/bench.ann_dir``).
        class_names: the names of the classes, in label order.
    """

    def __init__(self, folder: str, bench: Benchmark, ann_root: str, class_names: list[str], *,
                 predictions: bool, examples: int) -> None:
        self.pred_dir = os.path.join(folder, "predictions", bench.name)
        self.example_dir = os.path.join(folder, "examples", bench.name)
        self.bench, self.ann_root, self.class_names = bench, ann_root, class_names
        self.predictions, self.examples, self.written_examples = predictions, examples, 0
        self.palette = benchmark_palette(bench)

    def __call__(self, pred: Tensor, gt: Tensor, meta: dict[str, Any]) -> None:
        if not self.predictions and self.written_examples >= self.examples:
            return
        labels = pred.cpu().numpy().astype(np.int64)
        if self.predictions:
            shift = 1 if meta["reduce_zero_label"] else 0
            palette = label_file_palette(self.bench, shift)
            rel = os.path.relpath(meta["seg_map_path"], self.ann_root)
            path = os.path.join(self.pred_dir, os.path.splitext(rel)[0] + ".png")
            save_indexed(labels + shift, palette, path)
        if self.written_examples < self.examples:
            self.written_examples += 1
            self._example(labels, gt.cpu().numpy(), meta)

    def _example(self, labels: np.ndarray, gt: np.ndarray, meta: dict[str, Any]) -> None:
        image = cv2.cvtColor(cv2.imread(meta["img_path"], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        truth = colorize(np.where(gt == 255, 0, gt), self.palette)
        truth[gt == 255] = IGNORE_COLOR
        present = sorted(set(np.unique(labels).tolist()) | set(np.unique(gt[gt != 255]).tolist()))
        legend = [(self.class_names[i], tuple(int(c) for c in self.palette[i])) for i in present]
        legend.append(("ignored", IGNORE_COLOR))
        fig = side_by_side([("image", image), ("ground truth", truth), ("prediction", colorize(labels, self.palette))],
                           legend)
        stem = os.path.splitext(os.path.basename(meta["img_path"]))[0]
        picture = Image.fromarray(fig)  # through the one writer (cv2.imwrite says nothing when it fails)
        path = os.path.join(self.example_dir, f"{stem}.png")
        write_atomic(path, lambda f: picture.save(f, format="PNG"), binary=True)
