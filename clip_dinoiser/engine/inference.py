"""Test-time pipeline shared by the evaluator and the demo.

Order (as the reference's mmseg 0.x ``slide`` inference): resize keeping the ratio to
scale (2048, 448) -> sliding windows 448 x 448, stride 224 -> each window's patch-grid
probabilities resized bilinearly to the window -> summed and divided by the window count ->
resized bilinearly to the original image size -> argmax.

Windows are batched through the model, across images when several are given.
"""

from __future__ import annotations

import contextlib
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

    Args:
        model: maps B x 3 x h x w RGB in [0, 1] to B x K x h' x w' probabilities.
        images: 3 x H_i x W_i RGB tensors in [0, 1] (already resized to the test scale),
            on the model's device.
        out_sizes: size to resize each averaged map to (the original image size); None keeps
            the input size.

    Returns:
        K x H x W probability maps (fp32), one per image.
    """
    boxes = [window_boxes(*img.shape[-2:], cfg.crop, cfg.stride) for img in images]
    canvases: list[Tensor | None] = [None] * len(images)
    counts = [torch.zeros(img.shape[-2:], device=img.device) for img in images]
    device = images[0].device
    for chunk in _chunks([(i, box) for i, bs in enumerate(boxes) for box in bs], cfg.window_batch):
        # Windows of one chunk may differ in size (images smaller than the crop): group by size.
        by_size: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int]]]] = {}
        for i, (y1, y2, x1, x2) in chunk:
            by_size.setdefault((y2 - y1, x2 - x1), []).append((i, (y1, y2, x1, x2)))
        for size, items in by_size.items():
            crops = torch.stack([images[i][:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in items])
            with autocast(device, precision):
                probs = model(crops)
            probs = F.interpolate(probs.float(), size=size, mode="bilinear", align_corners=False)
            for p, (i, (y1, y2, x1, x2)) in zip(probs, items):
                if canvases[i] is None:
                    canvases[i] = p.new_zeros((p.shape[0], *images[i].shape[-2:]))
                canvases[i][:, y1:y2, x1:x2] += p
                counts[i][y1:y2, x1:x2] += 1
    outputs = []
    for i, (canvas, count) in enumerate(zip(canvases, counts)):
        probs = canvas / count
        if out_sizes is not None and tuple(out_sizes[i]) != tuple(probs.shape[-2:]):
            probs = F.interpolate(probs[None], size=tuple(out_sizes[i]), mode="bilinear", align_corners=False)[0]
        outputs.append(probs)
    return outputs


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
