"""DINO-guided MaskCLIP: pooling with a correlation teacher's own correlations (DINO) and an
objectness teacher's mask (FOUND) at inference (training-free; the upper bound CLIP-DINOiser
distils)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import Backbone
from .maskclip import Decoding, Features, MaskCLIP, Pooling
from .text import TextClassifier


class DINOMaskCLIP(MaskCLIP):
    """Backbone + teacher correlations -> pooling -> classifier -> teacher background refinement.

    Args:
        dino: correlation source, ``correlations(images) -> B x N x N`` on its ``vit.grid(images)``.
        found: objectness source, ``probabilities(images, size) -> B x 1 x h x w`` (None: no refinement).
    """

    def __init__(self, backbone: Backbone, text: TextClassifier, dino: nn.Module, found: nn.Module | None,
                 decoding: Decoding, pooling: Pooling) -> None:
        super().__init__(backbone, text, decoding, pooling)
        self.dino = dino
        self.found = found

    @property
    def has_objectness(self) -> bool:
        return self.found is not None

    def features(self, images: Tensor, *, keys: bool = False) -> Features:
        out = self.backbone(images, with_inter=False, with_keys=keys)
        dense = out.dense
        grid = self.dino.vit.grid(images)
        if dense.shape[-2:] != grid:  # the reference resizes CLIP features to the DINO grid
            dense = F.interpolate(dense, size=grid, mode="bilinear", align_corners=False)
        objectness = None
        if self.found is not None:
            objectness = torch.logit(self.found.probabilities(images, size=grid))
        return Features(dense, out.keys, self.dino.correlations(images), objectness)
