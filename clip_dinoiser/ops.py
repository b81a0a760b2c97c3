"""Tensor helpers shared by the models and the teachers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(images: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """Zero-pad B x C x H x W images right/bottom so that H, W are multiples of ``patch_size``."""
    ph, pw = patch_size
    h, w = images.shape[-2:]
    return F.pad(images, (0, (pw - w % pw) % pw, 0, (ph - h % ph) % ph), value=0.0)


def full_precision(tensor: Tensor) -> torch.autocast:
    """Autocast off on ``tensor``'s device type: the products inside run in their inputs' dtype.

    For the small products whose results are thresholded or scaled by a temperature (cosine
    correlations compared with gamma, the classifier's cosines times 100, the pooling's weighted
    means): under bf16 autocast their rounding (about 4e-3 relative) would move entries across the
    threshold, and they cost about 1 % of a window's FLOPs in fp32.
    """
    return torch.autocast(tensor.device.type, enabled=False)
