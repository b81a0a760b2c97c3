"""Tensor helpers shared by the models and the teachers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(images: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """Zero-pad B x C x H x W images right/bottom so that H, W are multiples of ``patch_size``."""
    ph, pw = patch_size
    h, w = images.shape[-2:]
    return F.pad(images, (0, (pw - w % pw) % pw, 0, (ph - h % ph) % ph), value=0.0)
