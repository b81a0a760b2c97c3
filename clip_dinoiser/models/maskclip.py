"""MaskCLIP: dense zero-shot segmentation from CLIP's value path (Zhou et al., ECCV 2022)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .backbone import CLIPBackbone
from .refinement import background_refinement, key_smoothing, prompt_denoising
from .text import TextClassifier


class MaskCLIP(nn.Module):
    """CLIP backbone + text classifier, with MaskCLIP's optional refinements.

    Also the base of the CLIP-DINOiser models: ``classify`` turns dense features into class
    probabilities and applies PD, KS and background refinement.

    Args:
        backbone: frozen CLIP image tower.
        text: text classifier holding the vocabulary.
        temperature: softmax temperature on cosine similarities (100 in CLIP).
        ks_thresh: key-smoothing confidence threshold (0 = off).
        pd_thresh: prompt-denoising threshold (0 = off).
        bg_refine: background refinement: True, False, or None to apply it whenever the
            vocabulary has a class named ``background`` (needs an objectness source).
        delta: confidence threshold of the background refinement.
    """

    def __init__(
        self,
        backbone: CLIPBackbone,
        text: TextClassifier,
        *,
        temperature: float = 100.0,
        ks_thresh: float = 0.0,
        pd_thresh: float = 0.0,
        bg_refine: bool | None = None,
        delta: float = 0.99,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.text = text
        self.temperature = temperature
        self.ks_thresh = ks_thresh
        self.pd_thresh = pd_thresh
        self.bg_refine = bg_refine
        self.delta = delta

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.backbone.patch_size

    @property
    def class_names(self) -> list[str]:
        return self.text.class_names

    def set_vocabulary(self, names: Sequence[str]) -> None:
        """Set the classes to segment (comma-separated synonyms allowed in a name)."""
        self.text.set_vocabulary(names)

    @property
    def bg_index(self) -> int | None:
        """Index of the class named ``background`` (any synonym), or None."""
        for i, synonyms in enumerate(self.text.vocabulary):
            if any(s.lower() == "background" for s in synonyms):
                return i
        return None

    def uses_bg_refinement(self) -> bool:
        if self.bg_refine is False:
            return False
        if self.bg_index is None:
            if self.bg_refine:
                raise ValueError("background refinement is on but the vocabulary has no 'background' class")
            return False
        return True

    def classify(self, feats: Tensor, keys: Tensor | None = None, objectness: Tensor | None = None) -> Tensor:
        """Dense features -> class probabilities, B x K x h x w (fp32).

        Args:
            feats: B x D x h x w features in CLIP's joint space.
            keys: last-layer keys, needed when key smoothing is on.
            objectness: B x 1 x h x w foreground logits for the background refinement.
        """
        logits = self.text(feats, self.temperature)
        probs = logits.softmax(dim=1)
        if self.pd_thresh > 0:
            probs = prompt_denoising(logits, probs, self.pd_thresh).softmax(dim=1)
        if self.ks_thresh > 0:
            if keys is None:
                raise ValueError("key smoothing needs the last-layer keys")
            probs = key_smoothing(probs, keys, self.ks_thresh)
        if objectness is not None and self.uses_bg_refinement():
            probs = background_refinement(probs, objectness, self.bg_index, self.delta)
        return probs

    def forward(self, images: Tensor) -> Tensor:
        """B x 3 x H x W RGB in [0, 1] -> B x K x h x w class probabilities at the patch grid."""
        out = self.backbone(images, with_inter=False, with_keys=self.ks_thresh > 0)
        return self.classify(out.dense, out.keys)
