"""CLIP-DINOiser (Wysoczanska et al., ECCV 2024): MaskCLIP features cleaned by guided pooling
with correlations and objectness predicted from CLIP itself by two light conv heads."""

from __future__ import annotations

import torch
from torch import Tensor

from .backbone import BackboneOutput, CLIPBackbone
from .heads import DINOiserHeads
from .maskclip import MaskCLIP
from .pooling import guided_pooling
from .text import TextClassifier


class CLIPDINOiser(MaskCLIP):
    """Backbone -> heads -> guided pooling -> classifier -> background refinement.

    Args:
        backbone: frozen CLIP image tower.
        text: text classifier.
        heads: correlation and objectness heads.
        gamma: correlation threshold of the guided pooling (0.2).
        **kwargs: MaskCLIP options (``delta``, ``bg_refine``, ``ks_thresh``, ...).
    """

    def __init__(
        self, backbone: CLIPBackbone, text: TextClassifier, heads: DINOiserHeads, *, gamma: float = 0.2, **kwargs
    ) -> None:
        super().__init__(backbone, text, **kwargs)
        self.heads = heads
        self.gamma = gamma

    def forward_heads(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Frozen backbone then heads (training): correlations B x N x N and objectness logits
        B x 1 x h x w. Gradients flow into the heads only; CLIP stops after block ``feats_idx``."""
        with torch.no_grad():
            inter = self.backbone.forward_inter(images)
        return self.heads(inter)

    def _forward(self, images: Tensor) -> tuple[BackboneOutput, Tensor, Tensor]:
        """(backbone output, class probabilities B x K x h x w, objectness logits B x 1 x h x w)."""
        out = self.backbone(images, with_inter=True, with_keys=self.ks_thresh > 0)
        corrs, objectness = self.heads(out.inter)
        pooled = guided_pooling(out.dense, corrs, self.gamma)
        return out, self.classify(pooled, out.keys, objectness), objectness

    def forward(self, images: Tensor) -> Tensor:
        """B x 3 x H x W RGB in [0, 1] -> B x K x h x w class probabilities at the patch grid."""
        return self._forward(images)[1]

    def forward_panels(self, images: Tensor) -> Tensor:
        """What the method adds, from one backbone pass (figures): B x (2K + 1) x h x w holding
        CLIP-DINOiser's probabilities (K), MaskCLIP's on the same features (K: no pooling, no
        background refinement) and the objectness head's foreground probability (1)."""
        out, probs, objectness = self._forward(images)
        return torch.cat([probs, self.classify(out.dense, out.keys), torch.sigmoid(objectness)], dim=1)
