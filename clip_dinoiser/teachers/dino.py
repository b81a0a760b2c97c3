"""DINO teacher: patch correlations of the last block's value features (paper Sec. 3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..ops import full_precision
from .base import Teacher
from .vit import FrozenViT


class DINOTeacher(Teacher):
    """Correlations ``F^T F`` of per-patch L2-normalised value features of a frozen ViT (DINO
    ViT-B/16 in the paper; any timm ViT, with register tokens too), for the correlation head.

    Args:
        vit: the frozen ViT.
    """

    head = "correlation"

    def __init__(self, vit: FrozenViT) -> None:
        super().__init__()
        self.vit = vit

    @torch.no_grad()
    def correlations(self, images: Tensor) -> Tensor:
        """B x 3 x H x W in [0, 1] -> B x N x N cosine correlations of the value features (fp32)."""
        _, _, v = self.vit.last_qkv(images)
        with full_precision(v):  # thresholded at gamma: fp32 under autocast too
            v = F.normalize(v.float(), dim=-1)
            return v @ v.transpose(1, 2)

    @torch.no_grad()
    def target(self, images: Tensor, grid: tuple[int, int], gamma: float) -> Tensor:
        """Binary distillation target: correlation >= gamma (and > 0), B x N x N float."""
        if self.vit.grid(images) != tuple(grid):
            raise UserError(f"the DINO grid {self.vit.grid(images)} differs from the student's {tuple(grid)} "
                             "(give both ViTs the same patch size)")
        corrs = self.correlations(images)
        if gamma:
            corrs = corrs.masked_fill(corrs < gamma, 0.0)
        return (corrs > 0).float()

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """BCE-with-logits of the student's correlations, negatives clamped to 0 (as the reference)."""
        return super().loss(logits.float().clamp(min=0), target)
