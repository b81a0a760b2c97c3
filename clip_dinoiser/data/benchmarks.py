"""The eight benchmarks of the paper as mmsegmentation datasets, in mmseg's on-disk layouts.

mmseg's own dataset classes are used where they fit; VOC20 and COCO-Object, which the paper
defines differently from anything in mmseg, are registered here. Class names for the text
prompts come from one file per benchmark in ``vocab/`` (the names the paper evaluated with).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np

from ..config import BenchmarkConfig, DataConfig, SlideConfig, parse
from ..errors import ConfigError, UserError
from ..readers import read_label, read_text
from ..vocabulary import read_vocabulary_file
from .datasets import COCOObjectDataset, PascalVOC20Dataset

DATA_ROOT = "data"  # where data.root points by default (the paper's benchmarks below it, in their mmseg folders)


@dataclass(frozen=True)
class Benchmark:
    """One evaluation benchmark: all a new one needs.

    Attributes:
        name: benchmark name (the ``data=`` choice).
        dataset: mmseg dataset class name (mmseg's own, one in ``datasets.py``, or ``BaseSegDataset``).
        root: default folder, relative to ``DATA_ROOT``.
        img_dir, ann_dir: image and annotation folders under the root.
        split: split file under the root, or None to list the image folder.
        num_classes: classes scored.
        bg_refine: whether the background refinement is on (the paper's choice).
        title: column title in the summary table.
        paper_miou: the paper's mIoU (Table 2), or None for a benchmark outside the paper.
        vocabulary: class-name file (None: ``clip_dinoiser/data/vocab/<name>.txt``).
        img_suffix, seg_map_suffix, reduce_zero_label: label handling (None: the dataset class's own).
    """

    name: str
    dataset: str
    root: str
    img_dir: str
    ann_dir: str
    split: str | None
    num_classes: int
    bg_refine: bool
    title: str
    paper_miou: float | None = None
    vocabulary: str | None = None
    img_suffix: str | None = None
    seg_map_suffix: str | None = None
    reduce_zero_label: bool | None = None

    @property
    def vocabulary_file(self) -> str:
        return self.vocabulary_in(DEFAULT_VOCABULARY_SET)

    def vocabulary_in(self, vocabulary_set: str | None, key: str = "data.vocabulary_set") -> str:
        """The class-name file of ``vocabulary_set`` (``data.vocabulary_set``: ``clip_dinoiser``,
        ``vocab/<name>.txt``; another set, ``vocab/<set>/<name>.txt``, or ours where it has none);
        ``key``: its key, for messages."""
        if self.vocabulary is not None:
            return self.vocabulary
        vocab = resources.files("clip_dinoiser.data") / "vocab"
        if vocabulary_set and vocabulary_set != DEFAULT_VOCABULARY_SET:
            if not (vocab / vocabulary_set).is_dir():
                raise ConfigError(f"{key}={vocabulary_set}: unknown (choose from "
                                  f"{', '.join(vocabulary_sets())})")
            if (vocab / vocabulary_set / f"{self.name}.txt").is_file():
                return str(vocab / vocabulary_set / f"{self.name}.txt")
        return str(vocab / f"{self.name}.txt")


DEFAULT_VOCABULARY_SET = "clip_dinoiser"


def vocabulary_sets() -> list[str]:
    """The published class-name sets: ours, and one folder of ``vocab/`` per other method."""
    vocab = resources.files("clip_dinoiser.data") / "vocab"
    return [DEFAULT_VOCABULARY_SET, *sorted(p.name for p in vocab.iterdir() if p.is_dir() and p.name != "__pycache__")]


# The paper's benchmarks in its table order; mIoU from Wysoczanska et al., ECCV 2024, Table 2
# (ViT-B/16, OpenCLIP laion2b_s34b_b88k).
BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType({
    b.name: b
    for b in [
        Benchmark("voc", "PascalVOCDataset", "VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass",
                  "ImageSets/Segmentation/val.txt", 21, True, "VOC", 62.1),
        Benchmark("context", "PascalContextDataset", "VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext",
                  "ImageSets/SegmentationContext/val.txt", 60, False, "Context", 32.4),
        Benchmark("coco_object", "COCOObjectDataset", "coco_stuff164k", "images/val2017", "annotations/val2017",
                  None, 81, True, "Object", 34.8),
        Benchmark("voc20", "PascalVOC20Dataset", "VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass",
                  "ImageSets/Segmentation/val.txt", 20, False, "VOC20", 80.9),
        Benchmark("context59", "PascalContextDataset59", "VOCdevkit/VOC2010", "JPEGImages",
                  "SegmentationClassContext", "ImageSets/SegmentationContext/val.txt", 59, False, "Context59", 35.9),
        Benchmark("coco_stuff", "COCOStuffDataset", "coco_stuff164k", "images/val2017", "annotations/val2017",
                  None, 171, False, "Stuff", 24.6),
        Benchmark("cityscapes", "CityscapesDataset", "cityscapes", "leftImg8bit/val", "gtFine/val",
                  None, 19, False, "City", 31.7),
        Benchmark("ade20k", "ADE20KDataset", "ade/ADEChallengeData2016", "images/validation",
                  "annotations/validation", None, 150, False, "ADE", 20.0),
    ]
})
PAPER_ORDER = tuple(BENCHMARKS)

def reference_for(bench: Benchmark, model: Any, protocol: str = "clip_dinoiser",
                  corruption: tuple[str, int] | None = None, *, zero_shot: bool = False) -> Benchmark:
    """``bench`` with the published number to print beside a model's score (``paper_miou``): a
    method's number only under its own protocol (``protocols.py``) and for the model, tower and
    benchmark it published; under ours, CLIP-DINOiser's (Table 2) for ``model=clip_dinoiser``.

    Args:
        model: the ``ModelConfig`` (or its keys).
        zero_shot: a MaskCLIP+ target trained in the zero-shot setting.
    """
    from ..config import plain
    from ..protocols import published_miou

    if bench.dataset == "BaseSegDataset":
        return bench
    model = plain(model)
    if protocol == "clip_dinoiser":
        return bench if model.get("name") == "clip_dinoiser" else replace(bench, paper_miou=None)
    found = published_miou(protocol, model, bench.name, corruption, zero_shot=zero_shot)
    if found is None:
        return replace(bench, paper_miou=None)
    return replace(bench, paper_miou=found.miou, title=f"{bench.title} (vs {found.method})")


def benchmark_palette(bench: Benchmark) -> np.ndarray:
    """The colours of ``bench``'s classes (num_classes x 3 uint8, in label order): its dataset's own
    (mmseg's ``METAINFO`` palette; VOC's is VOC's label PNG palette), a class named ``background``
    black (as VOC's; Context's grey in mmseg); a benchmark of your own: ``visualize.palette_for``."""
    from ..visualize import BACKGROUND, BLACK, palette_for

    names = [s[0] for s in read_vocabulary_file(bench.vocabulary_file)]
    if bench.dataset == "BaseSegDataset":
        return palette_for(names)
    palette = np.array(dataset_class(bench.dataset).METAINFO["palette"], np.uint8)[: bench.num_classes]
    for i, name in enumerate(names[: len(palette)]):
        if name.strip().lower() == BACKGROUND:
            palette[i] = BLACK
    return palette


def label_file_palette(bench: Benchmark, shift: int) -> np.ndarray:
    """The 256-entry palette of an indexed PNG whose pixel values are ``bench``'s label values
    (class index + ``shift``: 1 where the dataset reduces label 0): ``benchmark_palette`` at those
    values, VOC's colour map elsewhere (for VOC and VOC20 that is exactly VOC's label PNG palette)."""
    from ..visualize import voc_colormap

    palette = voc_colormap(256)
    colours = benchmark_palette(bench)
    palette[shift : shift + len(colours)] = colours
    return palette


def get_benchmark(name: str, key: str = "data") -> Benchmark:
    """The benchmark ``name``; ``key``: the key that named it (``data``, ``eval.data.names``)."""
    if name not in BENCHMARKS:
        node = key.removesuffix(".names").removesuffix(".name")
        raise ConfigError(f"{key}={name}: unknown benchmark (choose from {', '.join(PAPER_ORDER)}, all, or describe "
                          f"your own in {node}.benchmark)")
    return BENCHMARKS[name]


def custom_benchmark(name: str, cfg: BenchmarkConfig, key: str = "data") -> Benchmark:
    """A benchmark of your own from its ``data.benchmark`` entry (mmseg's ``BaseSegDataset``)."""
    if not os.path.isfile(cfg.classes):
        raise FileNotFoundError(f"class-name file not found: {cfg.classes} ({key}.benchmark.classes)")
    return Benchmark(name, "BaseSegDataset", name, cfg.img_dir, cfg.ann_dir, cfg.split,
                     len(read_vocabulary_file(cfg.classes, f"{key}.benchmark.classes")), cfg.bg_refine,
                     cfg.title or name, cfg.paper_miou, cfg.classes, cfg.img_suffix, cfg.seg_map_suffix,
                     cfg.reduce_zero_label)


def selected_benchmarks(cfg: DataConfig, key: str = "data") -> list[tuple[Benchmark, str]]:
    """(benchmark, its folder) pairs of the ``data`` config node (``key``: where it sits, for
    messages: ``eval.data`` in a training command)."""
    if cfg.benchmark:
        if cfg.root is None:
            raise ConfigError(f"{key}.root is not set: give the folder of your benchmark")
        return [(custom_benchmark(cfg.name, parse(BenchmarkConfig, cfg.benchmark, f"{key}.benchmark"), key),
                 cfg.root)]
    if cfg.name == "all":
        names = list(cfg.names or PAPER_ORDER)
        return [(get_benchmark(n, f"{key}.names"), os.path.join(cfg.root or DATA_ROOT, BENCHMARKS[n].root))
                for n in names]
    bench = get_benchmark(cfg.name, key if key == "data" else f"{key}.name")  # tools/eval.py: the group data=
    return [(bench, cfg.root or os.path.join(DATA_ROOT, bench.root))]


def dataset_class(name: str):
    """The mmseg dataset class ``name``: mmseg's own, or one of ``datasets.py`` (VOC20, COCO-Object)."""
    import mmseg.datasets as md

    ours = {"PascalVOC20Dataset": PascalVOC20Dataset, "COCOObjectDataset": COCOObjectDataset}
    if name not in ours and not hasattr(md, name):
        raise ConfigError(f"unknown mmseg dataset class '{name}'")
    return ours.get(name) or getattr(md, name)


class PackForEval:
    """Last pipeline step: RGB image, ground truth (uint8), the paths, and the label values
    outside ``0..num_classes-1`` and 255 (checked here, in the loader's worker processes)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        gt = results["gt_seg_map"]
        h, w = results["ori_shape"][:2]
        if gt.shape != (h, w):  # would be scored against a broadcast, or crash after the inference
            raise UserError(f"annotation {results['seg_map_path']} is {gt.shape[1]}x{gt.shape[0]} but its image "
                            f"{results['img_path']} is {w}x{h}")
        return {
            "bad_labels": bad_label_values(gt, self.num_classes),
            "img": cv2.cvtColor(results["img"], cv2.COLOR_BGR2RGB),  # mmcv loads BGR
            "gt": gt,  # uint8 (LoadLabels refuses values above 255)
            "ori_shape": tuple(results["ori_shape"]),
            "img_path": results["img_path"],
            "seg_map_path": results["seg_map_path"],
            "reduce_zero_label": bool(results.get("reduce_zero_label", False)),
        }


def bad_label_values(gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> list[int]:
    """The values of ``gt`` outside ``0..num_classes-1`` and ``ignore_index``, sorted."""
    if gt.dtype == np.uint8:
        if gt.max(initial=0) < num_classes:
            return []
        values = np.flatnonzero(np.bincount(gt.ravel(), minlength=256))  # ~20x faster than np.unique
    else:
        values = np.unique(gt)
    return [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]


def check_layout(bench: Benchmark, root: str) -> None:
    """Raise FileNotFoundError naming the first missing folder or split file of ``bench`` under ``root``."""
    for path in (root, os.path.join(root, bench.img_dir), os.path.join(root, bench.ann_dir)):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{bench.name}: dataset folder not found: {path}")
    if bench.split is not None:
        split = os.path.join(root, bench.split)
        if not os.path.isfile(split):
            raise FileNotFoundError(f"{bench.name}: split file not found: {split}")
        if not read_text(split, "split file").strip():
            raise FileNotFoundError(f"{bench.name}: no images found: the split file {split} is empty")
    else:  # mmseg lists the image folder; an empty listing would fail inside mmengine (np.concatenate)
        folder, suffix = os.path.join(root, bench.img_dir), image_suffix(bench)
        if not any(f.endswith(suffix) for _, _, files in os.walk(folder, followlinks=True) for f in files):
            raise FileNotFoundError(f"{bench.name}: no '*{suffix}' images found under {folder} (and no split file)")


def image_suffix(bench: Benchmark) -> str:
    """The suffix of ``bench``'s image files: its own, else its mmseg dataset class's default."""
    import inspect

    if bench.img_suffix is not None:
        return bench.img_suffix
    return inspect.signature(dataset_class(bench.dataset)).parameters["img_suffix"].default


# The dataset classes that drop label 0 and shift the rest down by one (mmseg's own choice for each; a
# test compares with what the classes put in their data infos)
REDUCE_ZERO_LABEL = frozenset({"PascalVOC20Dataset", "PascalContextDataset59", "ADE20KDataset"})


def reduces_zero_label(bench: Benchmark) -> bool:
    """Whether ``bench``'s labels drop 0 and shift down by one: its own setting, else its dataset class's."""
    return bench.reduce_zero_label if bench.reduce_zero_label is not None else bench.dataset in REDUCE_ZERO_LABEL


class ReadOrFail:
    """A loading transform whose failure (missing, corrupt or truncated file: mmcv asserts, cv2
    returns None) becomes one ValueError naming the file. Nothing is skipped: a benchmark's
    score must not change silently."""

    def __init__(self, transform, path_key: str, what: str) -> None:
        self.transform, self.path_key, self.what = transform, path_key, what

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        try:
            out = self.transform(results)
        except Exception as e:
            path = results[self.path_key]
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            reason = "missing, unreadable or truncated" if path in reason else reason  # mmcv repeats the path
            raise UserError(f"cannot read {self.what} {path}: {reason}") from e
        if out is None:
            raise UserError(f"cannot read {self.what} {results[self.path_key]}")
        return out


class LoadLabels:
    """mmseg's ``LoadAnnotations`` through our label reader (``readers.read_label``): the map at
    its own bit depth (a value above 255 is an error naming the file, never wrapped to 8 bits),
    a 1 x N map kept 1 x N (mmseg squeezes it to N), then ``reduce_zero_label`` and
    ``label_map`` exactly as mmseg applies them."""

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        gt = label_values(read_label(results["seg_map_path"]), bool(results.get("reduce_zero_label")),
                          results.get("label_map"))
        results["gt_seg_map"] = gt
        results.setdefault("seg_fields", []).append("gt_seg_map")
        return results


def label_values(gt: np.ndarray, reduce_zero_label: bool = False,
                 label_map: dict[int, int] | None = None) -> np.ndarray:
    """mmseg's ``LoadAnnotations`` on a read label map: ``reduce_zero_label`` (0 -> 255 ignored,
    the rest shifted down by one), then ``label_map``; written into a copy (the reader's map is read-only)."""
    if reduce_zero_label:
        gt = gt.copy()
        gt[gt == 0] = 255
        gt = gt - 1
        gt[gt == 254] = 255
    if label_map:
        source, gt = gt, gt.copy()
        for old, new in label_map.items():
            gt[source == old] = new
    return gt


class Corrupt:
    """MaskCLIP's robustness protocol: the image corrupted (``data/corruptions.py``) before the
    keep-ratio resize, seeded by its file name, so two runs and two processes agree."""

    def __init__(self, name: str, severity: int) -> None:
        self.name, self.severity = name, severity

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        from .corruptions import corrupt, seed_for

        rgb = np.ascontiguousarray(results["img"][..., ::-1])  # mmcv loads BGR; the definitions are RGB
        seed = seed_for(results["img_path"])  # its base name
        results["img"] = np.ascontiguousarray(corrupt(rgb, self.name, self.severity, seed)[..., ::-1])
        return results


def corruption_of(data: DataConfig | Any) -> tuple[str, int] | None:
    """(name, severity) of a data config's ``corruption`` / ``severity`` (``Corrupt``), or None: clean images."""
    return (data.corruption, data.severity) if data.corruption else None


def eval_pipeline(num_classes: int, scale: tuple[int, int] = SlideConfig.scale,
                  corruption: tuple[str, int] | None = None) -> list:
    """The paper's test-time transforms, applied to one of the dataset's data infos (a dict of
    paths and label options, ``dataset.get_data_info(i)``); ``corruption`` = (name, severity)
    corrupts the image before the resize."""
    from mmcv.transforms import LoadImageFromFile, Resize

    load = [ReadOrFail(LoadImageFromFile(), "img_path", "image")]
    if corruption is not None:
        load.append(Corrupt(*corruption))
    return [*load, Resize(scale=scale, keep_ratio=True), LoadLabels(), PackForEval(num_classes)]


def build_dataset(bench: Benchmark, root: str, *, scale: tuple[int, int] = SlideConfig.scale):
    """The mmseg dataset of ``bench`` under ``root`` with the paper's test pipeline.

    Pipeline: load (cv2, as mmseg) -> resize keeping the ratio to ``scale`` -> load the
    annotation at the original size (``reduce_zero_label`` as the dataset says) -> pack.

    Raises:
        FileNotFoundError: the root, image folder, annotation folder or split file is missing.
    """
    check_layout(bench, root)
    kwargs: dict[str, Any] = {} if bench.split is None else {"ann_file": bench.split}
    for key in ("img_suffix", "seg_map_suffix", "reduce_zero_label"):
        if getattr(bench, key) is not None:
            kwargs[key] = getattr(bench, key)
    if bench.dataset == "BaseSegDataset":  # a benchmark of your own: its classes from its class-name file
        kwargs["metainfo"] = {"classes": tuple(s[0] for s in read_vocabulary_file(bench.vocabulary_file))}
    dataset = dataset_class(bench.dataset)(
        data_root=root,
        data_prefix={"img_path": bench.img_dir, "seg_map_path": bench.ann_dir},
        pipeline=eval_pipeline(bench.num_classes, scale),
        test_mode=True,
        **kwargs,
    )
    if len(dataset) == 0:
        raise FileNotFoundError(f"{bench.name}: no images found under {os.path.join(root, bench.img_dir)}")
    n_meta = len(dataset.metainfo["classes"])
    if n_meta != bench.num_classes:
        raise UserError(f"{bench.dataset} has {n_meta} classes, expected {bench.num_classes}")
    return dataset


def checked_benchmarks(cfg: DataConfig, slide: SlideConfig, key: str = "data",
                       datasets: bool = True) -> list[tuple[Benchmark, str]]:
    """``selected_benchmarks`` with every setting of the ``data`` node checked under ``key`` (its
    full name: ``eval.data`` in a training command), before any model loads or iteration runs:
    the benchmarks' names, the vocabulary set and file (and its class count); with ``datasets``,
    each dataset built once (folders, split file, at least one image; ``slide.per_benchmark``)."""
    benchmarks = selected_benchmarks(cfg, key)
    for name in cfg.names or ():  # read with data=all only, checked always
        get_benchmark(name, f"{key}.names")
    for bench, root in benchmarks:
        file = cfg.vocabulary or bench.vocabulary_in(cfg.vocabulary_set, f"{key}.vocabulary_set")
        count = len(read_vocabulary_file(file, f"{key}.vocabulary" if cfg.vocabulary else None))
        if cfg.vocabulary and count != bench.num_classes:
            raise UserError(f"{key}.vocabulary={file} names {count} classes; {bench.name} has {bench.num_classes}")
        if datasets:
            build_dataset(bench, root, scale=slide.for_benchmark(bench.name).scale)
    return benchmarks
