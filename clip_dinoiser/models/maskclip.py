"""MaskCLIP: dense zero-shot segmentation from CLIP's value path (Zhou et al., ECCV 2022).

Every segmenter here works in two steps: ``features`` (the network passes: CLIP, the heads or
the teachers) and ``decode`` (pooling, classifier and refinements under a ``Decoding``). One
``features`` call can be decoded under many settings (inference sweeps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ..ops import full_precision
from .backbone import Backbone
from .refinement import background_refinement, key_smoothing, prompt_denoising
from .text import Classes, TextClassifier

Pooling = Callable[[Tensor, Tensor, float], Tensor]  # (B x D x h x w, B x N x N, gamma) -> B x D x h x w


@dataclass(frozen=True)
class Decoding:
    """The settings applied after the network passes (``ModelConfig`` holds their defaults).

    Attributes:
        gamma: correlation threshold of the pooling.
        delta: confidence threshold of the background refinement.
        bg_refine: True, False, or None to refine whenever the vocabulary has 'background'.
        ks_thresh: key-smoothing threshold (0 = off).
        pd_thresh: prompt-denoising threshold (0 = off).
        temperature: softmax temperature on cosine similarities.
        scores: what ``decode`` returns: ``probs`` (the softmax), or ``logits`` (the classifier's
            temperature-scaled scores, as MaskCLIP's head returns them for mmseg to resize: where
            key smoothing or the background refinement applies, they make probabilities, and
            those are returned, as in MaskCLIP).
    """

    gamma: float
    delta: float
    bg_refine: bool | None
    ks_thresh: float
    pd_thresh: float
    temperature: float
    scores: str = "probs"

    @classmethod
    def from_config(cls, cfg) -> Decoding:
        """From a ``ModelConfig``."""
        m = cfg.maskclip
        return cls(cfg.gamma, cfg.delta, cfg.bg_refine, m.ks_thresh, m.pd_thresh, m.temperature)


@dataclass
class Features:
    """What the network passes give for a batch of images.

    Attributes:
        dense: B x D x h x w features in CLIP's joint space.
        keys: last-layer attention keys B x (h*w) x W (key smoothing), or None.
        corrs: B x N x N patch correlations for the pooling, or None (no pooling).
        objectness: B x 1 x h x w foreground logits for the background refinement, or None.
    """

    dense: Tensor
    keys: Tensor | None = None
    corrs: Tensor | None = None
    objectness: Tensor | None = None


def refines_background(bg_refine: bool | None, classes: Classes) -> bool:
    """Whether the background refinement applies (``bg_refine`` None: iff there is a background class)."""
    if bg_refine is False:
        return False
    if classes.bg_index is None:
        if bg_refine:
            raise ConfigError("background refinement is on but the vocabulary has no 'background' class")
        return False
    return True


class MaskCLIP(nn.Module):
    """CLIP backbone + text classifier, with MaskCLIP's optional refinements; the base of the
    CLIP-DINOiser models, which add correlations (pooling) and objectness in ``features``.

    Args:
        backbone: frozen image tower (``Backbone``).
        text: text classifier holding the vocabulary.
        decoding: settings of ``decode`` (``model.decoding = dataclasses.replace(...)`` changes them).
        pooling: ``(features, correlations, gamma) -> features`` for models with correlations.
    """

    def __init__(self, backbone: Backbone, text: TextClassifier, decoding: Decoding,
                 pooling: Pooling | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.text = text
        self.decoding = decoding
        self.pooling = pooling

    @property
    def class_names(self) -> list[str]:
        return self.text.class_names

    def set_vocabulary(self, names: Sequence[str]) -> None:
        """Set the classes to segment (comma-separated synonyms allowed in a name)."""
        self.text.set_vocabulary(names)

    def features(self, images: Tensor, *, keys: bool = False) -> Features:
        """B x 3 x H x W RGB in [0, 1] -> MaskCLIP features (and the last-layer keys)."""
        out = self.backbone(images, with_inter=False, with_keys=keys)
        return Features(out.dense, out.keys)

    def decode(self, feats: Features, decoding: Decoding | None = None, classes: Classes | None = None) -> Tensor:
        """Features -> class probabilities, B x K x h x w (fp32): pooling (when there are
        correlations), classifier, prompt denoising, key smoothing, background refinement
        (``decoding.scores`` = ``logits``: the scores before the softmax where no refinement
        makes probabilities).

        Args:
            decoding: the settings (default: ``self.decoding``).
            classes: the vocabulary (default: the current one).
        """
        with full_precision(feats.dense):  # thresholds and a temperature of 100: fp32 under autocast too
            return self._decode(feats, decoding or self.decoding, classes or self.text.current)

    def _decode(self, feats: Features, d: Decoding, classes: Classes) -> Tensor:
        dense = feats.dense.float()
        if feats.corrs is not None:
            dense = self.pooling(dense, feats.corrs.float(), d.gamma)
        logits = self.text(dense, d.temperature, classes)
        probs = logits.softmax(dim=1)
        if d.pd_thresh > 0:
            logits = prompt_denoising(logits, probs, d.pd_thresh)
            probs = logits.softmax(dim=1)
        refine = feats.objectness is not None and refines_background(d.bg_refine, classes)
        if d.scores == "logits" and d.ks_thresh <= 0 and not refine:
            return logits.float()
        if d.ks_thresh > 0:
            if feats.keys is None:
                raise ValueError("key smoothing needs the last-layer keys: features(images, keys=True)")
            probs = key_smoothing(probs, feats.keys, d.ks_thresh)
        if refine:
            probs = background_refinement(probs, feats.objectness, classes.bg_index, d.delta)
        return probs

    def forward(self, images: Tensor) -> Tensor:
        """B x 3 x H x W RGB in [0, 1] -> B x K x h x w class probabilities at the patch grid."""
        return self.decode(self.features(images, keys=self.decoding.ks_thresh > 0))
