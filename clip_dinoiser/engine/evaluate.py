"""Evaluation loop: mmseg datasets, batched sliding-window inference, mmseg IoUMetric, torchrun shards."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data.benchmarks import Benchmark, build_dataset
from ..models.text import read_vocabulary_file
from . import distributed as dist
from .inference import SlideConfig, slide_inference, window_boxes

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

    @property
    def images_per_s(self) -> float:
        return self.num_images / max(self.seconds, 1e-9)


def confusion_index(pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Flat (label * K + pred) per pixel; ignored pixels get the extra bin K * K."""
    k = num_classes
    return torch.where(label != ignore_index, label.long() * k + pred.long(), k * k).flatten()


def stats_from_index(index: Tensor, num_classes: int) -> Tensor:
    """Per-class (intersection, union, pred area, label area), 4 x K float64, from ``confusion_index``
    values of any number of images.

    The same quantities as mmseg's ``IoUMetric.intersect_and_union``, from a confusion
    histogram: ``histc`` with a given range never synchronises the GPU (mmseg's boolean
    indexing does); its bins of width < 1 hold one integer each.
    """
    k = num_classes
    conf = torch.histc(index.float(), bins=k * k + 1, min=0, max=k * k).double()
    conf = conf[:-1].view(k, k)  # rows: label, cols: prediction
    inter = conf.diagonal()
    area_label, area_pred = conf.sum(1), conf.sum(0)
    return torch.stack([inter, area_pred + area_label - inter, area_pred, area_label])


def area_stats(pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-class (intersection, union, pred area, label area) of one image, 4 x K, float64."""
    return stats_from_index(confusion_index(pred, label, num_classes, ignore_index), num_classes)


def metrics_from_stats(stats: Tensor, class_names: Sequence[str]) -> tuple[float, dict[str, float]]:
    """mIoU and per-class IoU (%) from summed ``area_stats``, via mmseg's ``IoUMetric``."""
    from mmseg.evaluation import IoUMetric

    inter, union, pred, label = (s.cpu() for s in stats)
    metrics = IoUMetric.total_area_to_metrics(inter, union, pred, label, metrics=["mIoU"])
    iou = metrics["IoU"]
    iou = iou.numpy() if isinstance(iou, Tensor) else np.asarray(iou)
    miou = float(np.nanmean(iou)) * 100
    return miou, {name: float(v) * 100 for name, v in zip(class_names, iou)}


def _collate(batch: list[dict]) -> dict[str, list]:
    """Images (H x W x 3 uint8) and labels as CPU tensors, with their paths."""
    return {
        "img": [torch.from_numpy(s["img"]) for s in batch],
        "gt": [torch.from_numpy(s["gt"]) for s in batch],
        "ori_shape": [s["ori_shape"][:2] for s in batch],
        "seg_map_path": [s["seg_map_path"] for s in batch],
        "bad_labels": [s["bad_labels"] for s in batch],
    }


def _regroup(loader: Iterable[dict[str, list]], size: int) -> Iterator[dict[str, list]]:
    """Merge consecutive collated batches into groups of ``size`` samples."""
    group: dict[str, list] = {}
    for batch in loader:
        for key, values in batch.items():
            group.setdefault(key, []).extend(values)
        if len(group["img"]) >= size:
            yield group
            group = {}
    if group:
        yield group


def _upload(tensors: list[Tensor], device: torch.device, stream: torch.cuda.Stream | None) -> list[Tensor]:
    """Copy CPU tensors to ``device``. On CUDA the copies run on a side stream: a copy from
    pageable memory synchronises its stream, and on the compute stream that would stall the CPU
    until all queued GPU work is done, leaving no overlap between loading and computing."""
    if stream is None:
        return [t.to(device) for t in tensors]
    with torch.cuda.stream(stream):
        out = [t.to(device, non_blocking=True) for t in tensors]
    current = torch.cuda.current_stream(device)
    current.wait_stream(stream)
    for t in out:
        t.record_stream(current)  # the allocator must not reuse them before the compute stream is done
    return out


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one decoding thread per loader process, no oversubscription


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
    dataset = build_dataset(bench, root, scale=slide.scale)  # also flags out-of-range labels
    vocab = read_vocabulary_file(vocabulary or bench.vocabulary_file)
    if len(vocab) != bench.num_classes:
        raise ValueError(f"{bench.name}: vocabulary has {len(vocab)} classes, the benchmark {bench.num_classes}")
    model.set_vocabulary(vocab)
    model.bg_refine = bench.bg_refine if bg_refine is None else bg_refine

    n = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world = dist.rank(), dist.world_size()
    shard = Subset(dataset, list(range(rank, n, world)))
    # Workers load a few images each (no worker waits on a whole batch); the main loop regroups them
    # so that the windows of ``batch_images`` images go through the model together.
    # Not pinned: pinning in the main process was the bottleneck (measured on an H100 machine);
    # the uploads go through a side stream instead, see _upload.
    loader = DataLoader(shard, batch_size=min(8, batch_images), num_workers=num_workers, collate_fn=_collate,
                        worker_init_fn=_worker_init if num_workers else None,
                        prefetch_factor=max(2, 2 * batch_images // max(num_workers, 1)) if num_workers else None)
    k = bench.num_classes
    stats = torch.zeros(4, k, dtype=torch.float64, device=device)
    windows = 0
    bar = tqdm(total=n, desc=bench.name, unit="img", disable=not progress or rank != 0, dynamic_ncols=True)
    copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    start = time.perf_counter()
    for batch in _regroup(loader, batch_images):
        images = [img.permute(2, 0, 1).float().div_(255.0) for img in _upload(batch["img"], device, copy_stream)]
        probs = slide_inference(model, images, cfg=slide, out_sizes=batch["ori_shape"], precision=precision)
        for path, bad in zip(batch["seg_map_path"], batch["bad_labels"]):
            if bad:
                raise ValueError(f"{bench.name}: annotation {path} has labels {bad} outside 0..{k - 1} "
                                 f"and {IGNORE_INDEX}")
        labels = _upload(batch["gt"], device, copy_stream)
        index = [confusion_index(p.argmax(dim=0), gt, k) for gt, p in zip(labels, probs)]
        stats += stats_from_index(torch.cat(index), k)
        windows += sum(len(window_boxes(*img.shape[-2:], slide.crop, slide.stride)) for img in images)
        bar.update(len(images) * world)
    dist.all_reduce_sum(stats)
    total_windows = dist.all_reduce_sum(torch.tensor([float(windows)], device=device))
    seconds = time.perf_counter() - start
    bar.close()
    miou, class_iou = metrics_from_stats(stats, [s[0] for s in vocab])
    return BenchmarkResult(bench.name, miou, class_iou, n, seconds, int(total_windows.item()))
