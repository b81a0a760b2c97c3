"""DINO teacher: patch correlations of the last block's value features (paper Sec. 3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vit import FrozenViT


class DINOTeacher(nn.Module):
    """Correlations ``F^T F`` of per-patch L2-normalised DINO value features.

    Args:
        vit: frozen DINO ViT (ViT-B/16 in the paper).
    """

    def __init__(self, vit: FrozenViT) -> None:
        super().__init__()
        self.vit = vit

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.vit.patch_size

    @torch.no_grad()
    def correlations(self, images: Tensor) -> Tensor:
        """B x 3 x H x W in [0, 1] -> B x N x N cosine correlations of the value features (fp32)."""
        _, _, v = self.vit.last_qkv(images)
        v = F.normalize(v.float(), dim=-1)
        return v @ v.transpose(1, 2)

    @torch.no_grad()
    def target(self, images: Tensor, gamma: float) -> Tensor:
        """Binary distillation target: correlation >= gamma (and > 0), B x N x N float."""
        corrs = self.correlations(images)
        if gamma:
            corrs = corrs.masked_fill(corrs < gamma, 0.0)
        return (corrs > 0).float()
