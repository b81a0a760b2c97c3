"""Training images of the benchmarks for MaskCLIP+ target training, and MaskCLIP+'s train-time
augmentation, image only.

The training splits are read in mmseg's on-disk layouts (the evaluation folders' siblings), so the
folder a user points ``data.root`` at for a benchmark also serves its training split. In the
annotation-free setting **label files are never opened, listed or checked**: the target learns
from the pseudo-labels of a frozen annotator run on the same augmented crop. In MaskCLIP+'s
zero-shot setting (``train.unseen``) the labels are read with every unseen class's pixels set to
``UNSEEN`` at once (``SeenLabels``), so the unseen classes' values never leave the reader.

Augmentation follows MaskCLIP+'s annotation-free ``train_pipeline``
(``configs/maskclip_plus/anno_free/*.py``): ``Resize(img_scale, ratio_range=(0.5, 2.0))`` keeping
the aspect ratio, ``RandomCrop(crop_size, cat_max_ratio=0.75)``, ``RandomFlip(0.5)``,
``PhotoMetricDistortion``, ``Normalize``, ``Pad(crop_size, pad_val=0, seg_pad_val=255)``. It runs
mmcv / mmseg 1.x's own transforms (``RandomResize``, ``RandomCrop``, ``RandomFlip``,
``PhotoMetricDistortion``; the same code lineage, none needs a label), on the BGR image they expect.

- ``cat_max_ratio``: those configs load the labels with ``suppress_labels`` = every class, which
  sets every labelled pixel to -1 (int64 maps, ``LoadAnnotations``); ``RandomCrop`` then counts
  the non-255 values of a candidate crop, finds one category (-1) at most, never meets its
  acceptance test (``len(cnt) > 1``), and after 10 retries keeps the 11th uniform draw: the crop
  is a plain uniform random crop. We draw it once.
- ``Pad`` comes after ``Normalize`` there, so padded pixels are 0 *after* normalisation, i.e. the
  ImageNet mean colour; ``pad='mean'`` (default) reproduces this on our [0, 1] images ('zero':
  black). The valid-pixel mask marks the image; the loss must ignore the rest (seg_pad_val=255).
- Not reproduced, by design: MaskCLIP+ kept the ground truth's ignore value 255 out of the loss
  (VOC's object boundaries, Context59's and ADE's unlabelled pixels, COCO-Stuff's unlabelled), a
  use of the annotations; we have no label, so every valid pixel gets a pseudo-label.

Every random choice derives from the item's seed (numpy's global state is seeded around the
pipeline and restored), so a resumed run sees identical crops whatever the number of workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, UserError
from ..readers import read_image, read_label, read_text
from ..values import COUNT, FRACTION, Kind, kind
from .train_images import list_images, walk_files

log = logging.getLogger(__name__)

# MaskCLIP+'s img_norm_cfg mean (123.675, 116.28, 103.53) / 255: the colour its Pad-after-Normalize gave
IMAGENET_MEAN = (0.485, 0.456, 0.406)
PADS = ("mean", "zero")
POSITIVE_RATIO = Kind(low=0, low_open=True)


@dataclass(frozen=True)
class TrainSplit:
    """One benchmark's training split and MaskCLIP+'s settings for it.

    Attributes:
        name: split name.
        root: default folder under ``data/`` (the benchmark's mmseg folder).
        img_dir: image folder under the root.
        split_files: alternatives in order of preference, each a union of split files (image
            names without suffix, one a line) under the root; empty: every image under ``img_dir``.
        img_suffix: image file suffix (mmseg's dataset class's ``img_suffix``).
        scale: ``img_scale`` (long, short) of the keep-ratio random resize.
        crop: ``crop_size`` (h, w).
        iters: iterations of MaskCLIP+'s annotation-free schedule.
        source: the MaskCLIP+ config these come from.
        ann_dirs: label folders under the root, in order of preference (read only in the zero-shot
            setting: an image's label is the first ``ann_dir/<its path under img_dir><seg_map_suffix>``).
        seg_map_suffix: label file suffix.
    """

    name: str
    root: str
    img_dir: str
    split_files: tuple[tuple[str, ...], ...]
    img_suffix: str
    scale: tuple[int, int]
    crop: tuple[int, int]
    iters: int
    source: str
    ann_dirs: tuple[str, ...] = ()
    seg_map_suffix: str = ".png"


_VOC_SETS = "ImageSets/Segmentation"
TRAIN_SPLITS: Mapping[str, TrainSplit] = MappingProxyType({s.name: s for s in [
    # trainaug.txt (10582 images) = train.txt + aug.txt, both written by mmseg's voc_aug.py converter;
    # mmseg 1.x's pascal_voc12_aug.py concatenates train.txt and aug.txt.
    TrainSplit("voc", "VOCdevkit/VOC2012", "JPEGImages",
               ((f"{_VOC_SETS}/trainaug.txt",), (f"{_VOC_SETS}/train.txt", f"{_VOC_SETS}/aug.txt"),
                (f"{_VOC_SETS}/train.txt",)),
               ".jpg", (2048, 512), (512, 512), 2000, "maskclip_plus_vit16_deeplabv2_r101-d8_512x512_2k_voc12aug_20",
               ("SegmentationClassAug", "SegmentationClass")),  # mmseg's voc_aug.py: the aug labels; VOC's own
    TrainSplit("context", "VOCdevkit/VOC2010", "JPEGImages", (("ImageSets/SegmentationContext/train.txt",),),
               ".jpg", (520, 520), (480, 480), 4000,
               "maskclip_plus_vit16_deeplabv2_r101-d8_480x480_4k_pascal_context_59", ("SegmentationClassContext",)),
    TrainSplit("coco_stuff", "coco_stuff164k", "images/train2017", (), ".jpg", (2048, 512), (512, 512), 8000,
               "maskclip_plus_vit16_deeplabv2_r101-d8_512x512_8k_coco-stuff164k", ("annotations/train2017",),
               "_labelTrainIds.png"),
    TrainSplit("cityscapes", "cityscapes", "leftImg8bit/train", (), "_leftImg8bit.png", (2048, 1024), (512, 1024),
               4000, "maskclip_plus_vit16_deeplabv2_r101-d8_512x1024_4k_cityscapes", ("gtFine/train",),
               "_gtFine_labelTrainIds.png"),
    TrainSplit("ade20k", "ade/ADEChallengeData2016", "images/training", (), ".jpg", (2048, 512), (512, 512), 8000,
               "maskclip_plus_r50_deeplabv2_r101-d8_512x512_8k_ade20k (no ViT-B/16 config)", ("annotations/training",)),
]})
# Each benchmark trains on its dataset's training split (the class list is the benchmark's).
BENCHMARK_SPLITS: Mapping[str, str] = MappingProxyType({
    "voc": "voc", "voc20": "voc", "context": "context", "context59": "context", "coco_object": "coco_stuff",
    "coco_stuff": "coco_stuff", "cityscapes": "cityscapes", "ade20k": "ade20k",
})
FOLDER = "folder"  # any image folder (recursive), with a vocabulary file of its own


def get_train_split(name: str) -> TrainSplit:
    """The training split of a benchmark (``voc20`` -> ``voc``) or of a split name."""
    split = BENCHMARK_SPLITS.get(name, name)
    if split not in TRAIN_SPLITS:
        raise ConfigError(f"training split '{name}': unknown (choose from "
                          f"{', '.join(sorted({*BENCHMARK_SPLITS, *TRAIN_SPLITS}))} or {FOLDER})")
    return TRAIN_SPLITS[split]


def training_split(name: str, root: str) -> list[str]:
    """The image files of a training split under ``root`` (the benchmark's mmseg folder), sorted.

    ``name``: a benchmark (``voc20``), a split (``coco_stuff``) or ``folder`` (every image under
    ``root``, any nesting). Label files are never touched.

    Raises:
        FileNotFoundError: a missing folder, split file or listed image, or no image (one line, the path).
    """
    if name == FOLDER:
        return list_images(root)
    split = get_train_split(name)
    img_dir = os.path.join(root, split.img_dir)
    for path in (root, img_dir):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{name}: training image folder not found: {path}")
    if not split.split_files:
        return _list_suffix(name, img_dir, split.img_suffix)
    files = _split_files(name, root, split.split_files)
    names = sorted({n for f in files for n in _read_split(name, f)})
    if not names:
        raise FileNotFoundError(f"{name}: no images: the split file {' + '.join(files)} is empty")
    paths = [os.path.join(img_dir, n + split.img_suffix) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} of {len(paths)} images listed in {' + '.join(files)} "
                                f"are missing, e.g. {missing[0]}")
    return paths


def split_files(name: str, root: str) -> list[str]:
    """The split files a training split of ``name`` reads under ``root`` (none for a split that
    lists its image folder, and for ``folder``)."""
    if name == FOLDER or not get_train_split(name).split_files:
        return []
    return _split_files(name, root, get_train_split(name).split_files)


def _split_files(name: str, root: str, alternatives: tuple[tuple[str, ...], ...]) -> list[str]:
    """The first alternative whose split files all exist (a warning when it is not the first)."""
    for i, alternative in enumerate(alternatives):
        files = [os.path.join(root, f) for f in alternative]
        if all(os.path.isfile(f) for f in files):
            if i > 0:
                log.warning("%s: %s not found; training on %s", name, os.path.join(root, alternatives[0][0]),
                            " + ".join(files))
            return files
    raise FileNotFoundError(f"{name}: training split file not found: {os.path.join(root, alternatives[0][0])}")


def _read_split(name: str, path: str) -> list[str]:
    return [line.strip() for line in read_text(path, f"{name}: split file").splitlines() if line.strip()]


def _list_suffix(name: str, folder: str, suffix: str) -> list[str]:
    """Every ``*suffix`` file under ``folder`` (recursive, as mmseg lists a split without a split file)."""
    files = walk_files(folder, lambda f: f.endswith(suffix))
    if not files:
        raise FileNotFoundError(f"{name}: no '*{suffix}' images under {folder}")
    return files


# ----------------------------------------------------------------------------- labels (zero-shot only)

UNSEEN = 254  # a pixel of an unseen class: MaskCLIP's suppress_labels write -1 there; the annotator labels it
IGNORE = 255


def label_files(name: str, root: str, files: list[str]) -> list[str]:
    """The label file of each of a training split's images (MaskCLIP+'s zero-shot setting: the
    seen classes come from the ground truth): ``ann_dir/<the image's path under img_dir>`` with the
    label suffix, in the first of the split's label folders that has it.

    Raises:
        FileNotFoundError: an image without a label (one line: how many, one example).
    """
    split = get_train_split(name)
    if not split.ann_dirs:
        raise ConfigError(f"{name}: no label folder is known for its training split (zero-shot needs labels)")
    img_dir = os.path.join(root, split.img_dir)
    out, missing = [], []
    for path in files:
        stem = os.path.relpath(path, img_dir)[: -len(split.img_suffix)]
        candidates = [os.path.join(root, d, stem + split.seg_map_suffix) for d in split.ann_dirs]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        (out if found else missing).append(found or candidates[0])
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} of {len(files)} training images have no label in "
                                f"{' or '.join(split.ann_dirs)} (zero-shot reads the seen classes from them), "
                                f"e.g. {missing[0]}")
    return out


@dataclass(frozen=True)
class SeenLabels:
    """How the zero-shot setting reads a training label: MaskCLIP's ``LoadAnnotations`` with
    ``suppress_labels`` (every pixel of an unseen class becomes ``UNSEEN``, before any augmentation).

    Attributes:
        unseen: the unseen class indices (after ``reduce_zero_label``).
        num_classes: the benchmark's classes (values 0..K-1 and 255 allowed).
        reduce_zero_label: the benchmark's (VOC20, Context59, ADE20k).
    """

    unseen: tuple[int, ...]
    num_classes: int
    reduce_zero_label: bool = False

    def read(self, path: str) -> np.ndarray:
        """H x W uint8: seen classes as they are, unseen ones ``UNSEEN``, 255 ignored."""
        from .benchmarks import bad_label_values, label_values

        gt = label_values(read_label(path, "training label"), self.reduce_zero_label)
        bad = bad_label_values(gt, self.num_classes)
        if bad:
            raise UserError(f"training label {path} has labels {bad[:5]} outside 0..{self.num_classes - 1} and 255")
        out = gt.copy()
        out[np.isin(gt, self.unseen)] = UNSEEN
        return out


# ----------------------------------------------------------------------------- augmentation


@dataclass
class SegAugment:
    """MaskCLIP+'s train-time augmentation (defaults: COCO-Stuff / ADE / VOC; see ``augment_for``)."""

    scale: tuple[int, int] = kind(COUNT, length=2, default=(2048, 512))  # (long, short) bounds before the ratio
    ratio_range: tuple[float, float] = kind(POSITIVE_RATIO, length=2, default=(0.5, 2.0))  # random scale ratio
    crop: tuple[int, int] = kind(COUNT, length=2, default=(512, 512))  # crop and pad size (h, w)
    flip_prob: float = kind(FRACTION, default=0.5)  # horizontal flip probability
    photometric: bool = True  # mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue)
    pad: str = "mean"  # pad colour: 'mean' (ImageNet mean: MaskCLIP+'s 0 after Normalize) or 'zero' (black)


def augment_for(split: TrainSplit) -> SegAugment:
    """MaskCLIP+'s augmentation settings of a training split."""
    return SegAugment(scale=split.scale, crop=split.crop)


def check_augment(settings: SegAugment) -> None:
    """One-line ``ConfigError`` for a wrong setting."""
    if settings.pad not in PADS:
        raise ConfigError(f"pad={settings.pad}: unknown (choose from {', '.join(PADS)})")
    low, high = settings.ratio_range
    if low > high:
        raise ConfigError(f"ratio_range={list(settings.ratio_range)}: the low end is above the high end")


@contextmanager
def numpy_seeded(seed: int) -> Iterator[None]:
    """numpy's global random state seeded from ``seed`` (any non-negative int), restored after."""
    state = np.random.get_state()
    np.random.seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    try:
        yield
    finally:
        np.random.set_state(state)


CAT_MAX_RATIO = 0.75  # MaskCLIP+'s RandomCrop(crop_size, cat_max_ratio=0.75): acts where labels are loaded


def mmseg_pipeline(settings: SegAugment, labels: bool = False):
    """mmcv / mmseg 1.x transforms: random keep-ratio resize, random crop, flip, photometric
    distortion (on an H x W x 3 uint8 BGR ``img``, and its ``gt_seg_map`` with ``labels``: then the
    crop is drawn again, up to 10 times, while one class covers 75 % of it, as MaskCLIP+'s)."""
    from mmcv.transforms import Compose, RandomFlip, RandomResize
    from mmseg.datasets.transforms import PhotoMetricDistortion, RandomCrop

    crop = RandomCrop(crop_size=tuple(settings.crop), cat_max_ratio=CAT_MAX_RATIO if labels else 1.0)
    steps = [RandomResize(scale=tuple(settings.scale), ratio_range=tuple(settings.ratio_range), keep_ratio=True),
             crop, RandomFlip(prob=settings.flip_prob, direction="horizontal")]
    if settings.photometric:
        steps.append(PhotoMetricDistortion())
    return Compose(steps)


def pad_with_mask(image: Tensor, size: tuple[int, int], value: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """3 x h x w -> (3 x H x W padded right and bottom with ``value``, H x W bool mask of the image)."""
    h, w = image.shape[-2:]
    out = torch.tensor(value, dtype=image.dtype).view(-1, 1, 1).expand(-1, *size).clone()
    out[:, :h, :w] = image
    valid = torch.zeros(size, dtype=torch.bool)
    valid[:h, :w] = True
    return out, valid


class TargetTrainImages(Dataset):
    """MaskCLIP+'s augmentation of training images. Items are asked for as (index, seed) (the
    ``ResumableBatchSampler`` protocol of ``train_images.py``); each is (3 x crop_h x crop_w float
    RGB in [0, 1], crop_h x crop_w bool valid-pixel mask), and in the zero-shot setting its
    crop_h x crop_w uint8 label (``SeenLabels``; padding 255).

    Args:
        files: image paths (``training_split``).
        settings: the augmentation (``augment_for(split)`` for a benchmark's).
        labels: the label file of each image (``label_files``), zero-shot only; None: none is opened.
        seen: how a label is read (with ``labels``).
    """

    def __init__(self, files: list[str], settings: SegAugment | None = None, *, labels: list[str] | None = None,
                 seen: SeenLabels | None = None) -> None:
        self.files, self.labels, self.seen = files, labels, seen
        if (labels is None) != (seen is None) or (labels is not None and len(labels) != len(files)):
            raise ValueError("labels (one per image) and seen go together")
        self.settings = settings or SegAugment()
        check_augment(self.settings)
        self._pipeline = None  # built on first use, in the loader process

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, ...]:
        index, seed = item
        label = None if self.labels is None else self.seen.read(self.labels[index])
        return self.augment(read_train_image(self.files[index]), seed, label)

    def augment(self, image: np.ndarray, seed: int, label: np.ndarray | None = None) -> tuple[Tensor, ...]:
        """H x W x 3 uint8 RGB (and its H x W uint8 label) -> (3 x crop_h x crop_w float RGB in [0, 1],
        crop_h x crop_w bool mask[, crop_h x crop_w uint8 label, 255 on the padding])."""
        if self._pipeline is None:
            self._pipeline = mmseg_pipeline(self.settings, labels=label is not None)
        bgr = np.ascontiguousarray(image[..., ::-1])
        results = {"img": bgr, "img_shape": bgr.shape[:2], "ori_shape": bgr.shape[:2]}
        if label is not None:
            if label.shape != bgr.shape[:2]:
                raise UserError(f"a training label is {label.shape[1]}x{label.shape[0]} but its image is "
                                f"{bgr.shape[1]}x{bgr.shape[0]}")
            results.update(gt_seg_map=label, seg_fields=["gt_seg_map"])
        with numpy_seeded(seed):
            results = self._pipeline(results)
        rgb = torch.from_numpy(np.ascontiguousarray(results["img"][..., ::-1])).permute(2, 0, 1).float().div_(255)
        value = IMAGENET_MEAN if self.settings.pad == "mean" else (0.0, 0.0, 0.0)
        image_out, valid = pad_with_mask(rgb, tuple(self.settings.crop), value)
        if label is None:
            return image_out, valid
        crop = torch.full(tuple(self.settings.crop), IGNORE, dtype=torch.uint8)  # Pad: seg_pad_val=255
        gt = torch.from_numpy(np.ascontiguousarray(results["gt_seg_map"]))
        crop[: gt.shape[0], : gt.shape[1]] = gt
        return image_out, valid, crop


def read_train_image(path: str) -> np.ndarray:
    """H x W x 3 uint8 RGB, or a ``UserError`` naming the file."""
    try:
        return read_image(path)  # an unreadable image: a UserError naming it
    except OSError as e:  # missing, or a folder
        raise UserError(str(e)) from e


__all__ = ["BENCHMARK_SPLITS", "FOLDER", "IGNORE", "UNSEEN", "SeenLabels", "SegAugment", "TRAIN_SPLITS",
           "TargetTrainImages", "TrainSplit", "augment_for", "get_train_split", "label_files", "numpy_seeded",
           "pad_with_mask", "read_train_image", "training_split"]
