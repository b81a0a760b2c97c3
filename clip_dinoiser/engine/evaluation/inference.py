"""Test-time pipeline shared by the evaluator and the demo.

Order (as the reference's mmseg 0.x ``slide`` inference): resize keeping the ratio to
scale (2048, 448) -> sliding windows 448 x 448, stride 224 -> each window's patch-grid
probabilities resized bilinearly to the window -> summed and divided by the window count ->
resized bilinearly to the original image size -> argmax. ``slide.mode=whole`` (mmseg's
``whole`` inference, MaskCLIP's protocol): the resized image is one window, its scores resized
to it, then to the original size. ``slide.scores=logits``: the model's scores before the softmax
are averaged and resized (``Decoding.scores``), as mmseg does with a decode head's logits.

Windows are batched through the model in calls of a fixed size, across images (``SlidingWindows``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import SlideConfig
from ...errors import UserError
from ...precision import resolve_precision
from ...values import check_precision

PRECISIONS = MappingProxyType({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16})


def resize_keep_ratio(image: np.ndarray, scale: tuple[int, int] = SlideConfig.scale) -> np.ndarray:
    """mmseg's test-time ``Resize(scale, keep_ratio=True)``: cv2 bilinear, via mmcv.imrescale."""
    import mmcv

    return mmcv.imrescale(image, scale, interpolation="bilinear", backend="cv2")


def window_boxes(h: int, w: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of mmseg's sliding windows over an h x w image (all of one size)."""
    (ch, cw), (sh, sw) = crop, stride
    h_grids = max(h - ch + sh - 1, 0) // sh + 1
    w_grids = max(w - cw + sw - 1, 0) // sw + 1
    boxes = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
            boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return boxes


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` on ``device`` (fp32 = none; ``auto``: ``resolve_precision``)."""
    check_precision(precision)
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=PRECISIONS[precision])


class SlidingWindows:
    """Sliding-window inference over a stream of images, with model calls of a fixed size.

    Windows of all images queued so far share model calls of ``cfg.window_batch`` windows,
    whatever the image sizes (windows of one size are batched together; only images shorter
    than the crop give smaller windows). An image is returned as soon as its last window is
    done: its summed window probabilities divided by the window count, resized to its output
    size. Each image's windows are added to its canvas in the order of ``window_boxes``, so the
    result does not depend on what else is in the queue.

    Args:
        model: maps B x 3 x h x w RGB in [0, 1] to B x K x h' x w' probabilities.
        cfg: window geometry and windows per model call.
        precision: "fp32", "bf16" or "fp16" (autocast of the model call).

    Example::

        runner = SlidingWindows(model, cfg)
        for image in images:
            for tag, probs in runner.put(image, tag=...):
                ...
        for tag, probs in runner.flush():
            ...
    """

    def __init__(self, model: nn.Module, cfg: SlideConfig = SlideConfig(), precision: str = "fp32") -> None:
        check_precision(precision)  # now, not at the first model call
        self.model = model
        self.cfg = cfg
        self.precision = precision
        # the model's own mapping of its patch-grid scores onto a window (models/backbone.py: scores_to_pixels) and
        # its post-processing at the image's size (MaskCLIP.finish: PAMR, thresholds), where it has them
        self._to_pixels = getattr(model, "to_pixels", None)
        self._post = getattr(model, "finish", None)
        self.windows = 0  # windows run through the model so far
        self._queues: dict[tuple[int, int], list[tuple[_Image, tuple[int, int, int, int]]]] = {}
        self._counts: dict[tuple[int, int, str], Tensor] = {}  # window counts per image size

    @torch.no_grad()
    def put(self, image: Tensor, out_size: tuple[int, int] | None = None, tag: Any = None) -> list[tuple[Any, Tensor]]:
        """Queue the windows of one image; run the model on every full batch of windows.

        Args:
            image: 3 x H x W, uint8 (0..255) or float RGB in [0, 1], on the model's device,
                already resized to the test scale.
            out_size: size to resize its probabilities to (None: keep H x W).
            tag: returned with its probabilities.

        Returns:
            (tag, K x H' x W' fp32 probabilities) of every image completed by this call.
        """
        h, w = image.shape[-2:]
        whole = self.cfg.mode == "whole"
        boxes = [(0, h, 0, w)] if whole else window_boxes(h, w, self.cfg.crop, self.cfg.stride)
        job = _Image(tag, image, tuple(out_size) if out_size is not None else (h, w), len(boxes))
        y1, y2, x1, x2 = boxes[0]  # all windows of an image have one size
        queue = self._queues.setdefault((y2 - y1, x2 - x1), [])
        queue.extend((job, box) for box in boxes)
        done: list[tuple[Any, Tensor]] = []
        while len(queue) >= self.cfg.window_batch or (whole and queue):  # a whole image: at once
            done += self._run(queue)
        return done

    @torch.no_grad()
    def flush(self) -> list[tuple[Any, Tensor]]:
        """Run the model on all queued windows; returns every remaining image."""
        done: list[tuple[Any, Tensor]] = []
        for queue in self._queues.values():
            while queue:
                done += self._run(queue)
        return done

    def _run(self, queue: list[tuple[_Image, tuple[int, int, int, int]]]) -> list[tuple[Any, Tensor]]:
        """One model call on the first ``window_batch`` windows of ``queue``."""
        items = queue[: self.cfg.window_batch]
        del queue[: self.cfg.window_batch]
        crops = torch.stack([job.image[:, y1:y2, x1:x2] for job, (y1, y2, x1, x2) in items])
        if crops.dtype == torch.uint8:
            crops = crops.float().div_(255.0)
        self.windows += len(items)
        with autocast(crops.device, self.precision):
            probs = self.model(crops)
        return self._post_process(items, probs)

    def _post_process(self, items: list[tuple[_Image, tuple[int, int, int, int]]], probs: Tensor) -> list:
        """Add each window's probabilities to its image's canvas; returns the completed images."""
        done = []
        for p, (job, (y1, y2, x1, x2)) in zip(probs, items):
            # One window at a time: a batch of K x 448 x 448 maps would take gigabytes for 150 classes.
            if self._to_pixels is None:
                p = F.interpolate(p[None].float(), size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
            else:
                p = self._to_pixels(p[None].float(), (y2 - y1, x2 - x1))[0]
            if job.canvas is None:
                job.canvas = p.new_zeros((p.shape[0], *job.image.shape[-2:]))
            job.canvas[:, y1:y2, x1:x2] += p
            job.pending -= 1
            if job.pending == 0:
                done.append((job.tag, self._finish(job)))
        return done

    def _finish(self, job: _Image) -> Tensor:
        h, w = job.image.shape[-2:]
        if self.cfg.mode == "whole":  # one window: nothing to average
            probs = job.canvas
        else:
            key = (h, w, str(job.canvas.device))
            if key not in self._counts:  # per image size
                self._counts[key] = _window_counts(h, w, self.cfg.crop, self.cfg.stride, key[2])
            probs = job.canvas / self._counts[key]
        if job.out_size != (h, w):
            probs = F.interpolate(probs[None], size=job.out_size, mode="bilinear", align_corners=False)[0]
        if self._post is not None:
            probs = self._post(probs, job.image)
        return probs


@dataclass(eq=False)
class _Image:
    """An image in a ``SlidingWindows`` queue."""

    tag: Any
    image: Tensor
    out_size: tuple[int, int]
    pending: int  # windows not yet run
    canvas: Tensor | None = None  # K x H x W sum of window probabilities


def slide_inference(
    model: nn.Module,
    images: Sequence[Tensor],
    *,
    cfg: SlideConfig = SlideConfig(),
    out_sizes: Sequence[tuple[int, int]] | None = None,
    precision: str = "fp32",
) -> list[Tensor]:
    """Window-averaged class probabilities for each image (``SlidingWindows`` on a list).

    Args:
        model: maps B x 3 x h x w RGB in [0, 1] to B x K x h' x w' probabilities.
        images: 3 x H_i x W_i RGB tensors (uint8 or float in [0, 1]) already resized to the
            test scale, on the model's device.
        out_sizes: size to resize each averaged map to (the original image size); None keeps
            the input size.

    Returns:
        K x H x W probability maps (fp32), one per image.
    """
    runner = SlidingWindows(model, cfg, precision)
    outputs: dict[int, Tensor] = {}
    for i, image in enumerate(images):
        outputs.update(runner.put(image, None if out_sizes is None else out_sizes[i], tag=i))
    outputs.update(runner.flush())
    return [outputs[i] for i in range(len(images))]


def _window_counts(h: int, w: int, crop: tuple[int, int], stride: tuple[int, int], device: str) -> Tensor:
    """How many windows cover each pixel, H x W."""
    count = torch.zeros(h, w)
    for y1, y2, x1, x2 in window_boxes(h, w, crop, stride):
        count[y1:y2, x1:x2] += 1
    return count.to(device)


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """H x W x 3 uint8 RGB -> 3 x H x W float in [0, 1] on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    return t.permute(2, 0, 1).float().div_(255.0)


@torch.no_grad()
def segment(
    model: nn.Module,
    image: np.ndarray,
    prompts: Sequence[str] | None = None,
    *,
    cfg: SlideConfig = SlideConfig(),
    precision: str = "fp32",
) -> tuple[np.ndarray, Tensor]:
    """Segment one image into ``prompts`` (or the model's current vocabulary).

    Args:
        model: a MaskCLIP / CLIP-DINOiser model.
        image: H x W x 3 uint8 RGB.
        prompts: class names; comma-separated synonyms allowed.

    Returns:
        (H x W int64 label map, K x H x W probabilities on the model's device).
    """
    if prompts is not None:
        model.set_vocabulary(prompts)
    (probs,) = image_probabilities(model, [image], cfg, precision)
    return probs.argmax(dim=0).cpu().numpy(), probs


def image_outputs(model: nn.Module, images: Sequence[np.ndarray], cfg: SlideConfig, precision: str) -> list[Tensor]:
    """The test-time pipeline on images (H x W x 3 uint8 RGB; their windows share model calls):
    ``model``'s C x H x W outputs at each image's size, its scores being ``cfg.scores``."""
    device = next(model.parameters()).device
    resized = [to_tensor(resize_keep_ratio(image, cfg.scale), device) for image in images]
    with protocol_scores(model, cfg.scores):
        return slide_inference(model, resized, cfg=cfg, out_sizes=[image.shape[:2] for image in images],
                               precision=precision)


def image_probabilities(model: nn.Module, images: Sequence[np.ndarray], cfg: SlideConfig,
                        precision: str) -> list[Tensor]:
    """``image_outputs`` as K x H x W probabilities: with ``slide.scores=logits``, the softmax of
    the resized scores (what mmseg's inference returns, MaskCLIP's protocol)."""
    outputs = image_outputs(model, images, cfg, precision)
    decoding = getattr(model, "decoding", None)
    finished = decoding is not None and replace(decoding, scores=cfg.scores).post_processes  # probabilities already
    return [out.softmax(dim=0) for out in outputs] if cfg.scores == "logits" and not finished else outputs


@contextlib.contextmanager
def protocol_scores(model: nn.Module, scores: str) -> Iterator[None]:
    """The segmenter behind ``model`` decodes to ``scores`` (``Decoding.scores``) for the duration."""
    inner = model.model if isinstance(model, _Panels) else model
    decoding = getattr(inner, "decoding", None)
    if decoding is None or decoding.scores == scores:
        yield
        return
    inner.decoding = replace(decoding, scores=scores)
    try:
        yield
    finally:
        inner.decoding = decoding


class _Panels(nn.Module):
    """A CLIP-DINOiser seen through ``forward_panels``, so the sliding windows average all panels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        if hasattr(model, "to_pixels"):
            self.to_pixels = model.to_pixels

    def forward(self, images: Tensor) -> Tensor:
        return self.model.forward_panels(images)


def segment_panels(
    model: nn.Module, image: np.ndarray, *, cfg: SlideConfig = SlideConfig(), precision: str = "fp32"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CLIP-DINOiser's label map, MaskCLIP's on the same features, and the objectness map
    (H x W in [0, 1]) of one image, from one backbone pass per window (``forward_panels``)."""
    k = len(model.class_names)
    (out,) = image_outputs(_Panels(model), [image], cfg, precision)
    return out[:k].argmax(0).cpu().numpy(), out[k : 2 * k].argmax(0).cpu().numpy(), out[2 * k].cpu().numpy()


def check_point(point: Sequence[int], shape: Sequence[int]) -> None:
    """Raise a ``UserError`` unless ``point`` = (x, y) is a pixel of an image of ``shape`` (H, W, ...)."""
    x, y = point
    if not (0 <= x < shape[1] and 0 <= y < shape[0]):
        raise UserError(f"query=[{x},{y}] is outside the {shape[1]}x{shape[0]} image")


@torch.no_grad()
def query_correlations(
    model: nn.Module, image: np.ndarray, point: tuple[int, int], *, scale: tuple[int, int] = SlideConfig.scale
) -> dict[str, tuple[np.ndarray, Tensor]]:
    """The correlations of the patch under pixel ``point`` = (x, y) with every patch, for each
    correlation source of ``model``: ``"CLIP-DINOiser"`` (its correlation head) and ``"DINO"``
    (DINO-MaskCLIP's teacher). The image is resized to the test scale and seen whole (no windows).

    Returns:
        name -> (H x W map at the image's size, the patch-grid row of the correlation matrix).
    """
    check_point(point, image.shape)
    resized = to_tensor(resize_keep_ratio(image, scale), next(model.parameters()).device)[None]
    sources = correlation_sources(model, resized)
    if not sources:
        raise UserError(f"{type(model).__name__} has no correlations to query (model=clip_dinoiser or dino_maskclip)")
    maps = {}
    for name, (matrix, patch) in sources.items():
        full, row = patch_map(matrix, patch, point, tuple(resized.shape[-2:]), image.shape[:2])
        maps[name] = (full.cpu().numpy(), row)
    return maps


def correlation_sources(model: nn.Module, resized: Tensor) -> dict[str, tuple[Tensor, tuple[int, int]]]:
    """Source name -> (N x N patch correlations of the 1 x 3 x h x w image ``resized``, the source's
    patch size): ``"CLIP-DINOiser"`` (the correlation head on the backbone's features), ``"DINO"``
    (DINO-MaskCLIP's teacher); none for a model without correlations (MaskCLIP)."""
    sources = {}
    if hasattr(model, "heads"):
        inter = model.backbone(resized, with_inter=True, with_dense=False).inter
        sources["CLIP-DINOiser"] = (model.heads(inter)[0][0], tuple(model.backbone.patch_size))
    if hasattr(model, "dino"):
        sources["DINO"] = (model.dino.correlations(resized)[0], tuple(model.dino.vit.patch_size))
    return sources


def patch_map(matrix: Tensor, patch: tuple[int, int], point: tuple[int, int], resized: tuple[int, int],
              size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The correlations of the patch under pixel ``point`` = (x, y) of an image of ``size`` (H, W),
    seen at ``resized`` (h, w): (H x W map, each patch's value spread over its pixels then resized
    bilinearly; the gh x gw row of ``matrix``)."""
    (h0, w0), (h, w), (ph, pw) = size, resized, patch
    x, y = point
    gh, gw = -(-h // ph), -(-w // pw)
    row = matrix[(int(y * h / h0) // ph) * gw + int(x * w / w0) // pw].view(gh, gw).float()
    grid = F.interpolate(row[None, None], size=(gh * ph, gw * pw), mode="nearest")[..., :h, :w]
    return F.interpolate(grid, size=(h0, w0), mode="bilinear", align_corners=False)[0, 0], row
