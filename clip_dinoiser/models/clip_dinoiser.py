"""CLIP-DINOiser (Wysoczanska et al., ECCV 2024): MaskCLIP features cleaned by guided pooling
with correlations and objectness predicted from CLIP itself by two light conv heads."""

from __future__ import annotations

import torch
from torch import Tensor

from .backbone import Backbone
from .heads import DINOiserHeads
from .maskclip import Decoding, Features, MaskCLIP, Pooling
from .text import TextClassifier


class CLIPDINOiser(MaskCLIP):
    """Backbone -> heads -> pooling -> classifier -> background refinement, in one CLIP pass.

    Args:
        backbone: frozen image tower.
        text: text classifier.
        heads: correlation and objectness heads.
        decoding: the settings of ``decode``.
        pooling: the pooling (the paper's guided pooling, Eq. 1).
    """

    def __init__(self, backbone: Backbone, text: TextClassifier, heads: DINOiserHeads, decoding: Decoding,
                 pooling: Pooling) -> None:
        super().__init__(backbone, text, decoding, pooling)
        self.heads = heads

    has_objectness = True

    def features(self, images: Tensor, *, keys: bool = False) -> Features:
        out = self.backbone(images, with_inter=True, with_keys=keys)
        corrs, objectness = self.heads(out.inter)
        return Features(out.dense, out.keys, corrs, objectness)

    def forward_panels(self, images: Tensor) -> Tensor:
        """What the method adds, from one backbone pass (figures): B x (2K + 1) x h x w holding
        CLIP-DINOiser's probabilities (K), MaskCLIP's on the same features (K: no pooling, no
        background refinement) and the objectness head's foreground probability (1)."""
        feats = self.features(images, keys=self.decoding.ks_thresh > 0)
        maskclip = self.decode(Features(feats.dense, feats.keys))
        return torch.cat([self.decode(feats), maskclip, torch.sigmoid(feats.objectness)], dim=1)
