"""Test-time pipeline shared by the evaluator and the demo.

Order (as the reference's mmseg 0.x ``slide`` inference): resize keeping the ratio to
scale (2048, 448) -> sliding windows 448 x 448, stride 224 -> each window's patch-grid
probabilities resized bilinearly to the window -> summed and divided by the window count ->
resized bilinearly to the original image size -> argmax.

Windows are batched through the model, across images when several are given.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SlideConfig:
    """Test-time geometry.

    Attributes:
        scale: (long, short) bounds of the keep-ratio resize, as mmseg's ``Resize``.
        crop: window size (h, w).
        stride: window stride (h, w).
        window_batch: windows per model call.
    """

    scale: tuple[int, int] = (2048, 448)
    crop: tuple[int, int] = (448, 448)
    stride: tuple[int, int] = (224, 224)
    window_batch: int = 32

    @classmethod
    def from_cfg(cls, cfg) -> SlideConfig:
        """From a config node with ``scale``, ``crop``, ``stride``, ``window_batch``."""
        return cls(tuple(cfg["scale"]), tuple(cfg["crop"]), tuple(cfg["stride"]), int(cfg["window_batch"]))


def resize_keep_ratio(image: np.ndarray, scale: tuple[int, int] = (2048, 448)) -> np.ndarray:
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
    """Autocast context for ``precision`` (fp32 = none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}' (choose from {sorted(PRECISIONS)})")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=PRECISIONS[precision])


@torch.no_grad()
def slide_inference(
    model: nn.Module,
    images: Sequence[Tensor],
    *,
    cfg: SlideConfig = SlideConfig(),
    out_sizes: Sequence[tuple[int, int]] | None = None,
    precision: str = "fp32",
) -> list[Tensor]:
    """Window-averaged class probabilities for each image.

    Images of equal size share their window boxes and are processed together: the same box of
    every image goes through the model in one call, with up to ``cfg.window_batch`` windows
    per call (at least one box of every image in the group).

    Args:
        model: maps B x 3 x h x w RGB in [0, 1] to B x K x h' x w' probabilities.
        images: 3 x H_i x W_i RGB tensors in [0, 1] (already resized to the test scale),
            on the model's device.
        out_sizes: size to resize each averaged map to (the original image size); None keeps
            the input size.

    Returns:
        K x H x W probability maps (fp32), one per image.
    """
    outputs: list[Tensor] = [images[0]] * len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    for indices in groups.values():
        probs = _slide_group(model, torch.stack([images[i] for i in indices]), cfg, precision)
        for p, i in zip(probs, indices):
            if out_sizes is not None and tuple(out_sizes[i]) != tuple(p.shape[-2:]):
                p = F.interpolate(p[None], size=tuple(out_sizes[i]), mode="bilinear", align_corners=False)[0]
            outputs[i] = p
    return outputs


def _slide_group(model: nn.Module, batch: Tensor, cfg: SlideConfig, precision: str) -> Tensor:
    """Sliding-window average over B same-size images: B x 3 x H x W -> B x K x H x W (fp32)."""
    b, _, h, w = batch.shape
    boxes = window_boxes(h, w, cfg.crop, cfg.stride)
    per_call = max(1, cfg.window_batch // b)
    canvas = None
    for chunk in _chunks(boxes, per_call):
        crops = torch.cat([batch[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])  # box-major
        with autocast(batch.device, precision):
            probs = model(crops)
        y1, y2, x1, x2 = chunk[0]  # all windows of an image have one size
        probs = F.interpolate(probs.float(), size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
        if canvas is None:
            canvas = probs.new_zeros((b, probs.shape[1], h, w))
        for j, (y1, y2, x1, x2) in enumerate(chunk):
            canvas[:, :, y1:y2, x1:x2] += probs[j * b : (j + 1) * b]
    return canvas / _window_counts(h, w, cfg.crop, cfg.stride, str(batch.device))


@functools.lru_cache(maxsize=64)
def _window_counts(h: int, w: int, crop: tuple[int, int], stride: tuple[int, int], device: str) -> Tensor:
    """How many windows cover each pixel, H x W (cached per image size)."""
    count = torch.zeros(h, w)
    for y1, y2, x1, x2 in window_boxes(h, w, crop, stride):
        count[y1:y2, x1:x2] += 1
    return count.to(device)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


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
    device = next(model.parameters()).device
    resized = to_tensor(resize_keep_ratio(image, cfg.scale), device)
    (probs,) = slide_inference(model, [resized], cfg=cfg, out_sizes=[image.shape[:2]], precision=precision)
    return probs.argmax(dim=0).cpu().numpy(), probs
