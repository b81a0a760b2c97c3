"""Evaluation loop: mmseg datasets, batched sliding-window inference, mmseg IoUMetric, torchrun shards."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data.benchmarks import Benchmark, build_dataset
from ..models.text import read_vocabulary_file
from . import distributed as dist
from .inference import SlideConfig, slide_inference

log = logging.getLogger(__name__)

IGNORE_INDEX = 255


@dataclass
class BenchmarkResult:
    """mIoU (in %) and per-class IoU of one benchmark, with throughput."""

    name: str
    miou: float
    class_iou: dict[str, float]
    num_images: int
    seconds: float
    windows: int
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.num_images / max(self.seconds, 1e-9)


def area_stats(pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-class (intersection, union, pred area, label area) of one image, 4 x K, float64.

    The same quantities as mmseg's ``IoUMetric.intersect_and_union``, computed from a
    confusion histogram with ``index_add_`` so that the GPU is never synchronised.
    """
    valid = label != ignore_index
    k = num_classes
    idx = torch.where(valid, label.long() * k + pred.long(), torch.full_like(label, k * k, dtype=torch.long))
    conf = torch.zeros(k * k + 1, dtype=torch.float64, device=pred.device)
    conf.index_add_(0, idx.flatten(), torch.ones(idx.numel(), dtype=torch.float64, device=pred.device))
    conf = conf[:-1].view(k, k)  # rows: label, cols: prediction
    inter = conf.diagonal()
    area_label, area_pred = conf.sum(1), conf.sum(0)
    return torch.stack([inter, area_pred + area_label - inter, area_pred, area_label])


def metrics_from_stats(stats: Tensor, class_names: Sequence[str]) -> tuple[float, dict[str, float]]:
    """mIoU and per-class IoU (%) from summed ``area_stats``, via mmseg's ``IoUMetric``."""
    from mmseg.evaluation import IoUMetric

    inter, union, pred, label = (s.cpu() for s in stats)
    metrics = IoUMetric.total_area_to_metrics(inter, union, pred, label, metrics=["mIoU"])
    iou = metrics["IoU"]
    iou = iou.numpy() if isinstance(iou, Tensor) else np.asarray(iou)
    miou = float(np.nanmean(iou)) * 100
    return miou, {name: float(v) * 100 for name, v in zip(class_names, iou)}


def _collate(batch: list[dict]) -> list[dict]:
    return batch


def evaluate_benchmark(
    model: nn.Module,
    bench: Benchmark,
    root: str,
    *,
    slide: SlideConfig = SlideConfig(),
    precision: str = "fp32",
    vocabulary: str | None = None,
    bg_refine: bool | None = None,
    batch_images: int = 8,
    num_workers: int = 4,
    limit: int | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Score ``model`` on one benchmark; with torchrun each rank takes every world-th image.

    Args:
        model: a MaskCLIP / CLIP-DINOiser model on its device.
        bench: the benchmark.
        root: its data folder (mmseg layout).
        vocabulary: class-name file (default: the paper's names for ``bench``).
        bg_refine: background refinement (default: the paper's choice for ``bench``).
        batch_images: images whose windows go through the model together.
        limit: evaluate the first ``limit`` images only (quick checks).
    """
    device = next(model.parameters()).device
    dataset = build_dataset(bench, root, scale=slide.scale)
    vocab = read_vocabulary_file(vocabulary or bench.vocabulary_file)
    if len(vocab) != bench.num_classes:
        raise ValueError(f"{bench.name}: vocabulary has {len(vocab)} classes, the benchmark {bench.num_classes}")
    model.set_vocabulary(vocab)
    model.bg_refine = bench.bg_refine if bg_refine is None else bg_refine

    n = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world = dist.rank(), (torch.distributed.get_world_size() if dist.is_distributed() else 1)
    shard = Subset(dataset, list(range(rank, n, world)))
    loader = DataLoader(shard, batch_size=batch_images, num_workers=num_workers, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)
    k = bench.num_classes
    stats = torch.zeros(4, k, dtype=torch.float64, device=device)
    windows = torch.zeros(1, dtype=torch.float64, device=device)
    bar = tqdm(total=n, desc=bench.name, unit="img", disable=not progress or rank != 0, dynamic_ncols=True)
    start = time.perf_counter()
    for batch in loader:
        images = [torch.from_numpy(s["img"]).to(device, non_blocking=True).permute(2, 0, 1).float().div_(255.0)
                  for s in batch]
        probs = slide_inference(model, images, cfg=slide, out_sizes=[s["ori_shape"][:2] for s in batch],
                                precision=precision)
        for sample, p in zip(batch, probs):
            gt = sample["gt"]
            bad = (gt >= k) & (gt != IGNORE_INDEX)
            if bad.any():
                raise ValueError(f"{bench.name}: annotation {sample['seg_map_path']} has labels "
                                 f"{sorted(set(np.unique(gt[bad]).tolist()))} outside 0..{k - 1} and {IGNORE_INDEX}")
            label = torch.from_numpy(gt.astype(np.int64)).to(device, non_blocking=True)
            stats += area_stats(p.argmax(dim=0), label, k)
        windows += sum(len(_boxes(img, slide)) for img in images)
        bar.update(len(batch) * world)
    dist.all_reduce_sum(stats)
    dist.all_reduce_sum(windows)
    seconds = time.perf_counter() - start
    bar.close()
    miou, class_iou = metrics_from_stats(stats, [s[0] for s in vocab])
    return BenchmarkResult(bench.name, miou, class_iou, n, seconds, int(windows.item()))


def _boxes(img: Tensor, slide: SlideConfig) -> list:
    from .inference import window_boxes

    return window_boxes(*img.shape[-2:], slide.crop, slide.stride)
