"""Evaluation loop: mmseg datasets, batched sliding-window inference, mmseg IoUMetric, torchrun shards."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from mmengine.dataset import Compose
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ...config import EvalConfig, SlideConfig
from ...data.benchmarks import BENCHMARKS, Benchmark, build_dataset, eval_pipeline
from ...errors import UserError
from ...models.maskclip import Decoding
from ...models.text import Classes, read_vocabulary_file
from ..job import distributed as dist
from ..job.signals import ignore_signals, raise_if_stopped
from .inference import SlidingWindows

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
Writer = Callable[[Tensor, Tensor, Any], None]  # (prediction, label, meta) of one image


@dataclass
class BenchmarkResult:
    """mIoU (in %) and per-class IoU of one benchmark, with throughput; for a zero-shot model, the
    mIoU of its seen and of its unseen classes and their harmonic mean (hIoU)."""

    name: str
    miou: float
    class_iou: dict[str, float]
    num_images: int
    seconds: float
    windows: int
    unseen: tuple[str, ...] = ()  # the unseen classes among ``class_iou`` (zero-shot); empty: none

    @property
    def images_per_s(self) -> float:
        return self.num_images / max(self.seconds, 1e-9)

    @property
    def miou_seen(self) -> float | None:
        return _nan_mean([v for k, v in self.class_iou.items() if k not in self.unseen]) if self.unseen else None

    @property
    def miou_unseen(self) -> float | None:
        return _nan_mean([self.class_iou[k] for k in self.unseen]) if self.unseen else None

    @property
    def hiou(self) -> float | None:
        """The harmonic mean of the seen and unseen mIoU (ZS3Net's hIoU, MaskCLIP+'s Table 4)."""
        s, u = self.miou_seen, self.miou_unseen
        if s is None or u is None or math.isnan(s) or math.isnan(u):
            return None
        return 0.0 if s + u == 0 else 2 * s * u / (s + u)


def _nan_mean(values: Sequence[float]) -> float:
    """The mean over the classes with an IoU (mmseg's mIoU: ``nanmean``); NaN when there is none."""
    return float(np.nanmean(values)) if values and not all(math.isnan(v) for v in values) else math.nan


def unseen_of(model: nn.Module, bench: Benchmark, names: Sequence[str]) -> tuple[str, ...]:
    """The classes of ``names`` (the vocabulary ``bench`` is scored with) that the zero-shot model
    ``model`` never saw labelled: by index on the benchmark it was trained on, else by name."""
    record = getattr(model, "unseen", None)
    if not record:
        return ()
    if record.get("benchmark") == bench.name and len(names) == bench.num_classes:
        return tuple(names[i] for i in record["indices"])
    wanted = {n.lower() for n in record.get("names", ())}
    found = tuple(n for n in names if n.lower() in wanted)
    if len(found) != len(wanted):
        log.warning("%s: %d of the model's %d unseen classes are not in the vocabulary (%s): no seen / unseen mIoU",
                    bench.name, len(wanted) - len(found), len(wanted), ", ".join(sorted(wanted)))
        return ()
    return found


def confusion_index(pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Flat (label * K + pred) per pixel; ignored pixels get the extra bin K * K."""
    k = num_classes
    return torch.where(label != ignore_index, label.long() * k + pred.long(), k * k).flatten()


def confusion_matrix(index: Tensor, num_classes: int) -> Tensor:
    """K x K int64 pixel counts (rows: label, columns: prediction) of ``confusion_index`` values.

    Counted exactly in integers: ``index_add_`` of ones never synchronises the GPU (``bincount``
    does, to find the maximum). A float ``histc`` over K * K + 1 bins is not exact: from K = 81
    on, rounding moves some indices of the last class into the neighbouring bin.
    """
    k = num_classes
    conf = torch.zeros(k * k + 1, dtype=torch.int64, device=index.device)
    conf.index_add_(0, index, torch.ones((), dtype=torch.int64, device=index.device).expand_as(index))
    return conf[:-1].view(k, k)  # the last bin holds the ignored pixels


def stats_from_index(index: Tensor, num_classes: int) -> Tensor:
    """Per-class (intersection, union, pred area, label area), 4 x K int64 pixel counts, from
    ``confusion_index`` values of any number of images: the same quantities as mmseg's
    ``IoUMetric.intersect_and_union``, without its boolean indexing (a GPU synchronisation)."""
    conf = confusion_matrix(index, num_classes)
    inter = conf.diagonal()
    area_label, area_pred = conf.sum(1), conf.sum(0)
    return torch.stack([inter, area_pred + area_label - inter, area_pred, area_label])


def area_stats(pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-class (intersection, union, pred area, label area) of one image, 4 x K int64 counts."""
    return stats_from_index(confusion_index(pred, label, num_classes, ignore_index), num_classes)


def metrics_from_stats(stats: Tensor, class_names: Sequence[str]) -> tuple[float, dict[str, float]]:
    """mIoU and per-class IoU (%) from summed ``area_stats``, via mmseg's ``IoUMetric``."""
    from mmseg.evaluation import IoUMetric

    inter, union, pred, label = (s.cpu().double() for s in stats)  # counts < 2**53: exact
    metrics = IoUMetric.total_area_to_metrics(inter, union, pred, label, metrics=["mIoU"])
    iou = metrics["IoU"]
    iou = iou.numpy() if isinstance(iou, Tensor) else np.asarray(iou)
    miou = float(np.nanmean(iou)) * 100
    return miou, {name: float(v) * 100 for name, v in zip(class_names, iou)}


def score_images(runner: SlidingWindows, batches: Iterable[list[tuple[Tensor, Tensor, tuple[int, int], Any]]],
                 num_classes: Sequence[int], device: torch.device,
                 writers: Sequence[Writer | None] = ()) -> list[Tensor]:
    """Summed ``area_stats`` (4 x K int64 counts) of a stream of images, one per setting.

    Args:
        runner: sliding-window inference whose model returns the settings' probabilities
            concatenated on the channels (``num_classes[i]`` channels for setting i).
        batches: lists of (3 x H x W image at the test scale, H0 x W0 label, (H0, W0), meta), on
            ``device``; ``meta`` is handed to the writers.
        writers: per setting, None or a callable given each image's (H0 x W0 prediction, label, meta).
    """
    stats = [torch.zeros(4, k, dtype=torch.int64, device=device) for k in num_classes]
    index: list[list[Tensor]] = [[] for _ in num_classes]
    bounds = np.cumsum([0, *num_classes]).tolist()

    def score(done: list[tuple[tuple[Tensor, Any], Tensor]]) -> None:
        for (gt, meta), probs in done:
            for i, k in enumerate(num_classes):
                pred = probs[bounds[i]:bounds[i + 1]].argmax(dim=0)
                index[i].append(confusion_index(pred, gt, k))
                if i < len(writers) and writers[i] is not None:
                    writers[i](pred, gt, meta)

    def count() -> None:  # one histogram per batch and setting
        for i, k in enumerate(num_classes):
            if index[i]:
                stats[i] += stats_from_index(torch.cat(index[i]), k)
                index[i].clear()

    for batch in batches:
        for image, gt, size, meta in batch:
            score(runner.put(image, size, tag=(gt, meta)))
        count()
    score(runner.flush())
    count()
    return stats


def _collate(batch: list[dict]) -> dict[str, Any]:
    """All images (H x W x 3) and labels (H x W) of a batch in one flat uint8 tensor, with their
    shapes: one shared-memory transfer from a loader process instead of two per image (the
    main process's share of loading drops ~3x), and one upload to the GPU."""
    arrays = [s["img"] for s in batch] + [s["gt"] for s in batch]
    return {
        "data": torch.from_numpy(np.concatenate([a.ravel() for a in arrays])),
        "shapes": [a.shape for a in arrays],
        "ori_shape": [s["ori_shape"][:2] for s in batch],
        "seg_map_path": [s["seg_map_path"] for s in batch],
        "img_path": [s["img_path"] for s in batch],
        "reduce_zero_label": [s["reduce_zero_label"] for s in batch],
        "bad_labels": [s["bad_labels"] for s in batch],
    }


def unpack_batch(data: Tensor, shapes: list[tuple[int, ...]]) -> tuple[list[Tensor], list[Tensor]]:
    """The images and labels of a batch of ``Evaluator.batches`` (its ``data`` and ``shapes``), the
    inverse of ``_collate``: (3 x H x W uint8 images, H x W labels) as views of ``data``."""
    parts = [t.view(shape) for t, shape in zip(data.split([math.prod(s) for s in shapes]), shapes)]
    n = len(parts) // 2
    return [img.permute(2, 0, 1) for img in parts[:n]], parts[n:]


class _Samples(Dataset):
    """Runs the test pipeline on items ``(num_classes, scale, corruption, data_info)``, the data
    info being a benchmark dataset's ``get_data_info(i)`` (paths and label options) and the
    corruption None or (name, severity).

    The items carry the dataset, so one loader serves every benchmark and every evaluation of
    an ``Evaluator``: its worker processes start once (forking them takes ~0.5 s next to a CUDA
    context, a fifth of a VOC evaluation on an H100).
    """

    def __init__(self) -> None:
        self._pipelines: dict[tuple, Compose] = {}

    def __getitem__(self, item: tuple[int, tuple[int, int], tuple[str, int] | None, dict]) -> dict:
        num_classes, scale, corruption, info = item
        key = (num_classes, scale, corruption)
        if key not in self._pipelines:
            self._pipelines[key] = Compose(eval_pipeline(num_classes, scale, corruption))
        return self._pipelines[key](info)


def loader_items(bench: Benchmark, dataset, scale: Sequence[int], indices: Iterable[int],
                 corruption: tuple[str, int] | None = None) -> list:
    """The ``_Samples`` items of ``dataset``'s images ``indices`` (``dataset`` from ``build_dataset``),
    each corrupted with ``corruption`` = (name, severity) before the resize, or clean (None)."""
    return [(bench.num_classes, tuple(scale), corruption, dataset.get_data_info(i)) for i in indices]


class _Items(Sampler):
    """The items of the current evaluation (the persistent loader re-reads them on each ``iter``)."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self) -> Iterator:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _upload(data: Tensor, device: torch.device, stream: torch.cuda.Stream | None) -> Tensor:
    """Copy a CPU tensor to ``device``. On CUDA the copy runs on a side stream: a copy from
    pageable memory synchronises its stream, and on the compute stream that would stall the CPU
    until all queued GPU work is done, leaving no overlap between loading and computing."""
    if stream is None:
        return data.to(device)
    with torch.cuda.stream(stream):
        out = data.to(device, non_blocking=True)
    current = torch.cuda.current_stream(device)
    current.wait_stream(stream)
    out.record_stream(current)  # the allocator must not reuse it before the compute stream is done
    return out


@contextlib.contextmanager
def _single_threaded_cv2() -> Iterator[None]:
    """One OpenCV thread while loader processes fork (one decoding thread per process, no
    oversubscription). Set in the parent: ``cv2.setNumThreads`` in a forked child hangs when the
    parent had used OpenCV's thread pool (the pool's threads do not exist in the child)."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


@dataclass(frozen=True, eq=False)
class Setting:
    """One way to decode a model's features: its ``Decoding`` and its classes."""

    decoding: Decoding
    classes: Classes


class Decoded(nn.Module):
    """``model`` under several settings: one ``features`` pass per window batch, each setting's
    probabilities concatenated on the channels (the sliding windows average every channel
    alone, so each slice equals a run with that setting alone)."""

    def __init__(self, model: nn.Module, settings: Sequence[Setting]) -> None:
        super().__init__()
        self.model, self.settings = model, list(settings)
        self.keys = any(s.decoding.ks_thresh > 0 for s in self.settings)
        if hasattr(model, "to_pixels"):
            self.to_pixels = model.to_pixels
        if hasattr(model, "finish") and any(s.decoding.post_processes for s in self.settings):
            self.finish = self._finish

    def forward(self, images: Tensor) -> Tensor:
        feats = self.model.features(images, keys=self.keys)
        return torch.cat([self.model.decode(feats, s.decoding, s.classes) for s in self.settings], dim=1)

    def _finish(self, scores: Tensor, image: Tensor) -> Tensor:
        """Each setting's slice of an image's C x H x W scores through the model's ``finish``."""
        sizes = [self.model.score_channels(s.decoding, s.classes) for s in self.settings]
        parts = scores.split(sizes, dim=0)
        return torch.cat([self.model.finish(p, image, s.decoding, s.classes) for p, s in zip(parts, self.settings)])


class Evaluator:
    """Scores models on benchmarks. Owns the loader processes: started once (``start``, best
    before a model is built: they fork from a process without a CUDA context, and start while
    the model loads), reused by every benchmark and model, stopped by ``close``.

    Evaluation leaves the model as it was: the benchmark's vocabulary and background rule are
    applied to a ``Setting``, not set on the model.

    Example::

        with Evaluator(slide=SlideConfig(), num_workers=8) as evaluator:
            result = evaluator.evaluate(model, get_benchmark("voc"), "data/VOCdevkit/VOC2012")
    """

    def __init__(self, *, slide: SlideConfig = SlideConfig(), precision: str = EvalConfig.precision,
                 loader_batch: int = EvalConfig.loader_batch, num_workers: int | None = EvalConfig.num_workers,
                 limit: int | None = None, progress: bool = EvalConfig.progress,
                 corruption: tuple[str, int] | None = None, vocabulary_set: str | None = None) -> None:
        self.slide, self.precision, self.limit, self.progress = slide, precision, limit, progress
        self.corruption = corruption  # (name, severity) applied to every image before the resize (robustness)
        self.vocabulary_set = vocabulary_set  # whose class names (data.vocabulary_set; None: ours)
        self.loader_batch, self.num_workers = loader_batch, dist.loader_processes(num_workers)  # None: the cores
        self._sampler = _Items([])
        self._loader: DataLoader | None = None

    def start(self) -> Evaluator:
        """Start the loader processes now (with ``num_workers`` > 0)."""
        if self.num_workers > 0 and self._loader is None:
            log.info("starting %d data-loading processes", self.num_workers)
            eval_pipeline(1)  # import mmcv / mmseg here once: the forked processes inherit the modules
            self._loader = DataLoader(_Samples(), batch_size=self.loader_batch, sampler=self._sampler,
                                      num_workers=self.num_workers, collate_fn=_collate, persistent_workers=True,
                                      prefetch_factor=4, in_order=False,  # the metric is a sum: any order will do
                                      worker_init_fn=ignore_signals)  # SIGINT / SIGTERM are the main process's
            with _single_threaded_cv2():  # the processes start here, inheriting one OpenCV thread each
                iter(self._loader)
        return self

    def close(self) -> None:
        """Stop the loader processes."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
        self._loader = None

    def __enter__(self) -> Evaluator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def batches(self, items: list) -> Iterable[dict[str, Any]]:
        """The collated loader batches of ``items``."""
        if self.num_workers == 0:
            return DataLoader(_Samples(), batch_size=self.loader_batch, sampler=_Items(items), collate_fn=_collate)
        self.start()
        self._sampler.items = items
        return self._loader

    def setting(self, model: nn.Module, bench: Benchmark, vocabulary: str | None = None,
                bg_refine: bool | None = None, **decoding: Any) -> Setting:
        """The model's decoding with the benchmark's background rule (``bg_refine`` None), class
        names (``vocabulary`` None: those of ``vocabulary_set``) and the protocol's scores, and
        any ``decoding`` field replaced."""
        file = vocabulary or bench.vocabulary_in(self.vocabulary_set)
        vocab = read_vocabulary_file(file, "data.vocabulary" if vocabulary else None)
        if len(vocab) != bench.num_classes:
            raise UserError(f"data.vocabulary={file} names {len(vocab)} classes; {bench.name} has {bench.num_classes}")
        refine = bench.bg_refine if bg_refine is None else bg_refine
        decoding = {"scores": self.slide.for_benchmark(bench.name).scores, **decoding}
        own = model.decoding_for(bench.name) if hasattr(model, "decoding_for") else model.decoding
        classes = model.text.classes(vocab)
        if refine and classes.bg_index is None and bench.bg_refine and bench.name in BENCHMARKS:
            # class names that do not say 'background' (SCLIP's: 'sky, wall, tree, ...' for VOC's class 0): the
            # benchmark's own background, label 0, is the class refined
            classes = replace(classes, background=0)
        return Setting(replace(own, bg_refine=refine, **decoding), classes)

    def evaluate(self, model: nn.Module, bench: Benchmark, root: str, *, vocabulary: str | None = None,
                 bg_refine: bool | None = None) -> BenchmarkResult:
        """Score ``model`` on one benchmark (``vocabulary``: class-name file, default the
        benchmark's; ``bg_refine``: default the benchmark's rule)."""
        return self.evaluate_settings(model, bench, root, [self.setting(model, bench, vocabulary, bg_refine)])[0]

    def evaluate_settings(self, model: nn.Module, bench: Benchmark, root: str, settings: Sequence[Setting],
                          writers: Sequence[Writer | None] = ()) -> list[BenchmarkResult]:
        """Score ``model`` under each of ``settings`` from one pass of the network per window;
        with torchrun each rank takes every world-th image. Results are in ``settings`` order.

        Args:
            writers: per setting, None or a callable given each image's (prediction, label, meta),
                e.g. a ``PredictionWriter``.
        """
        device = next(model.parameters()).device
        slide = self.slide.for_benchmark(bench.name)
        dataset = build_dataset(bench, root, scale=slide.scale)
        n = len(dataset) if self.limit is None else min(self.limit, len(dataset))
        rank, world = dist.rank(), dist.world_size()
        items = loader_items(bench, dataset, slide.scale, range(rank, n, world), self.corruption)
        runner = SlidingWindows(Decoded(model, settings), slide, self.precision)
        bar = tqdm(total=n, desc=bench.name, unit="img", disable=not self.progress or rank != 0, dynamic_ncols=True)
        start = time.perf_counter()
        try:
            stats = score_images(runner, self._images(items, bench, device, bar, world),
                                 [len(s.classes.vocabulary) for s in settings], device, writers)
        finally:
            bar.close()  # also on an error: the bar's last refresh must not follow the error message
        for s in stats:
            dist.all_reduce_sum(s)
        total_windows = int(dist.all_reduce_sum(torch.tensor([float(runner.windows)], device=device)).item())
        seconds = time.perf_counter() - start
        results = []
        for setting, s in zip(settings, stats):
            miou, class_iou = metrics_from_stats(s, setting.classes.names)
            results.append(BenchmarkResult(bench.name, miou, class_iou, n, seconds, total_windows,
                                           unseen_of(model, bench, setting.classes.names)))
        return results

    def _images(self, items: list, bench: Benchmark, device: torch.device, bar: tqdm,
                world: int) -> Iterator[list[tuple[Tensor, Tensor, tuple[int, int], dict[str, Any]]]]:
        """Batches of (image, label, original size, paths) on ``device``; a bad label value is an error."""
        copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        for batch in self.batches(items):
            raise_if_stopped()  # a signal whose exception was swallowed stops the evaluation here
            for path, bad in zip(batch["seg_map_path"], batch["bad_labels"]):
                if bad:
                    raise UserError(f"{bench.name}: annotation {path} has labels {bad} outside "
                                    f"0..{bench.num_classes - 1} and {IGNORE_INDEX}")
            images, labels = unpack_batch(_upload(batch["data"], device, copy_stream), batch["shapes"])
            metas = [{"img_path": i, "seg_map_path": s, "reduce_zero_label": r} for i, s, r in
                     zip(batch["img_path"], batch["seg_map_path"], batch["reduce_zero_label"])]
            yield list(zip(images, labels, batch["ori_shape"], metas))
            bar.update(len(images) * world)


def evaluate_benchmark(model: nn.Module, bench: Benchmark, root: str, *, vocabulary: str | None = None,
                       bg_refine: bool | None = None, **options: Any) -> BenchmarkResult:
    """Score ``model`` on one benchmark with an ``Evaluator`` of its own (``options``: the
    Evaluator's). To evaluate several benchmarks or models, keep one ``Evaluator``."""
    with Evaluator(**options) as evaluator:
        return evaluator.evaluate(model, bench, root, vocabulary=vocabulary, bg_refine=bg_refine)
