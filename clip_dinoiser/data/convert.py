"""Label conversions for the benchmarks whose raw annotations mmseg cannot read directly."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from types import MappingProxyType

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import UserError

# COCO-Stuff 164k raw label PNGs hold (category id - 1) in 0..181 and 255 for unlabeled.
# 11 of the 182 ids are unused: the 171 used ones map in order to train ids 0..170
# (0..79 the COCO things, 80..170 the stuff classes).
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_LUT = np.full(256, 255, np.uint8)
COCO_STUFF_LUT[[i for i in range(182) if i not in COCO_UNUSED_IDS]] = np.arange(171)

# COCO-Object (GroupViT / TCL / CLIP-DINOiser): things -> 1..80, stuff and unlabeled -> 0 (background).
COCO_OBJECT_LUT = np.where(COCO_STUFF_LUT < 80, COCO_STUFF_LUT + 1, 0).astype(np.uint8)
COCO_STUFF_LUT.flags.writeable = COCO_OBJECT_LUT.flags.writeable = False  # constant tables

# Cityscapes label ids -> the 19 train ids (cityscapesScripts' labels.py), others 255.
CITYSCAPES_TRAIN_IDS = MappingProxyType({7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                         24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18})
CITYSCAPES_LUT = np.full(256, 255, np.uint8)
for _id, _train in CITYSCAPES_TRAIN_IDS.items():
    CITYSCAPES_LUT[_id] = _train
CITYSCAPES_LUT.flags.writeable = False


def apply_lut(src: str, dst: str, lut: np.ndarray) -> None:
    """Map the label PNG ``src`` through ``lut`` and save it as ``dst``."""
    labels = np.asarray(Image.open(src))
    if labels.ndim != 2:
        raise UserError(f"{src} is not a single-channel label map")
    Image.fromarray(lut[labels]).save(dst)


def _convert_one(args: tuple[str, str, np.ndarray]) -> None:
    apply_lut(*args)


def convert_folder(
    pairs: Iterable[tuple[str, str]], lut: np.ndarray, *, nproc: int = 8, desc: str = "convert"
) -> int:
    """Convert (src, dst) label files in parallel with a progress bar; returns the count."""
    jobs = [(src, dst, lut) for src, dst in pairs]
    if not jobs:
        return 0
    for _, dst, _ in jobs:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    run: Callable = map
    if nproc > 1:
        pool = ProcessPoolExecutor(nproc)
        run = lambda f, it: pool.map(f, it, chunksize=64)  # noqa: E731
    try:
        for _ in tqdm(run(_convert_one, jobs), total=len(jobs), desc=desc, unit="img"):
            pass
    finally:
        if nproc > 1:
            pool.shutdown()
    return len(jobs)


def coco_label_pairs(root: str, suffix: str) -> list[tuple[str, str]]:
    """Raw COCO-Stuff 164k label PNGs under ``root/annotations/{train2017,val2017}`` -> ``*<suffix>``."""
    pairs = []
    for split in ("train2017", "val2017"):
        folder = os.path.join(root, "annotations", split)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".png") and "TrainIds" not in name:
                pairs.append((os.path.join(folder, name), os.path.join(folder, name[: -len(".png")] + suffix)))
    if not pairs:
        folder = os.path.join(root, "annotations")
        raise FileNotFoundError(f"no COCO-Stuff label PNGs under {folder}/train2017 or {folder}/val2017")
    return pairs


def cityscapes_label_pairs(root: str) -> list[tuple[str, str]]:
    """``*_gtFine_labelIds.png`` under ``root/gtFine`` -> ``*_gtFine_labelTrainIds.png``."""
    folder = os.path.join(root, "gtFine")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Cityscapes folder not found: {folder}")
    pairs = []
    for dirpath, _, files in os.walk(folder):
        for name in sorted(files):
            if name.endswith("_gtFine_labelIds.png"):
                src = os.path.join(dirpath, name)
                pairs.append((src, src.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")))
    if not pairs:
        raise FileNotFoundError(f"no *_gtFine_labelIds.png under {folder}")
    return pairs


def converter_main(doc: str, pairs: Callable[[str], list[tuple[str, str]]], lut: np.ndarray, argv=None) -> int:
    """Command line shared by ``tools/convert_*.py``: ``ROOT [--nproc N]``, one-line errors."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=doc)
    p.add_argument("root", help="dataset folder in mmseg's layout")
    p.add_argument("--nproc", type=int, default=8, help="worker processes")
    args = p.parse_args(argv)
    try:
        n = convert_folder(pairs(args.root), lut, nproc=args.nproc, desc=os.path.basename(args.root.rstrip("/")))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"converted {n} label maps")
    return 0
