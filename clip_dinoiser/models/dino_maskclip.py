"""DINO-guided MaskCLIP: guided pooling with the DINO teacher's own correlations and FOUND's
objectness at inference (training-free; the upper bound CLIP-DINOiser distils)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..teachers import DINOTeacher, FOUNDTeacher, build_dino_teacher, build_found_teacher
from ..values import check_number
from .backbone import CLIPBackbone
from .maskclip import MaskCLIP
from .pooling import guided_pooling
from .text import TextClassifier


class DINOMaskCLIP(MaskCLIP):
    """Backbone + DINO correlations -> guided pooling -> classifier -> FOUND background refinement.

    Args:
        dino: DINO teacher giving the correlations.
        found: FOUND teacher for the background refinement (None: no refinement).
        gamma: correlation threshold.
    """

    def __init__(self, backbone: CLIPBackbone, text: TextClassifier, dino: DINOTeacher,
                 found: FOUNDTeacher | None = None, *, gamma: float = 0.2, **kwargs) -> None:
        super().__init__(backbone, text, **kwargs)
        self.dino = dino
        self.found = found
        self.gamma = gamma

    def forward(self, images: Tensor) -> Tensor:
        out = self.backbone(images, with_inter=False, with_keys=self.ks_thresh > 0)
        corrs = self.dino.correlations(images)
        dense = out.dense
        grid = self.dino.vit.grid(images)
        if dense.shape[-2:] != grid:  # the reference resizes CLIP features to the DINO grid
            dense = F.interpolate(dense, size=grid, mode="bilinear", align_corners=False)
        pooled = guided_pooling(dense, corrs, self.gamma)
        objectness = None
        if self.found is not None:
            objectness = torch.logit(self.found.probabilities(images, size=grid))
        return self.classify(pooled, out.keys, objectness)


def build(cfg: Mapping[str, Any], backbone: CLIPBackbone, text: TextClassifier, **kwargs) -> DINOMaskCLIP:
    teachers = cfg.get("teachers") or {}
    dino = build_dino_teacher(teachers["dino"])
    found = build_found_teacher(teachers["found"]) if (teachers.get("found") or {}).get("decoder") else None
    gamma = check_number(cfg.get("gamma", 0.2), "model.gamma", float)
    return DINOMaskCLIP(backbone, text, dino, found, gamma=gamma, **kwargs)
