"""MaskCLIP: dense zero-shot segmentation from CLIP's value path (Zhou et al., ECCV 2022).

Every segmenter here works in two steps: ``features`` (the network passes: CLIP, the heads or
the teachers) and ``decode`` (pooling, classifier and refinements under a ``Decoding``). One
``features`` call can be decoded under many settings (inference sweeps).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..ops import full_precision
from .backbone import Backbone, scores_to_pixels
from .pamr import pamr
from .refinement import area_threshold, background_refinement, key_smoothing, low_confidence_to_first, prompt_denoising
from .text import Classes, TextClassifier, max_over_synonyms

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
        synonyms: a class of several names: ``mean`` (one embedding, the names' mean) or ``max``
            (each name a class of its own in the softmax; a class's probability is its best
            name's: SCLIP, NACLIP, ClearCLIP). With ``max`` and ``logits``, ``decode`` returns the
            Q names' scores and ``finish`` takes the softmax and the maximum.
        pamr_steps, pamr_dilations: PAMR on the scores at the image's size (``pamr.py``; 0: off).
        prob_thd: a pixel whose highest class probability is below goes to class 0 (0: off).
        area_thd: a class (other than class 0) whose predicted pixels are fewer than this share
            of all pixels not predicted as class 0 loses its probability (SCLIP on VOC; 0: off).
        per_benchmark: a benchmark's own values of these fields (``for_benchmark``).
    """

    gamma: float
    delta: float
    bg_refine: bool | None
    ks_thresh: float
    pd_thresh: float
    temperature: float
    scores: str = "probs"
    synonyms: str = "mean"
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)
    prob_thd: float = 0.0
    area_thd: float = 0.0
    per_benchmark: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_config(cls, cfg) -> Decoding:
        """From a ``ModelConfig``, with ``model.per_benchmark``'s values as each benchmark's own."""
        from ..config import ModelConfig, parse, plain
        from ..protocols import merge

        own = cls.fields_of(cfg)
        per_benchmark = {}
        base = {k: v for k, v in plain(cfg).items() if k != "per_benchmark"}
        for name, over in (cfg.per_benchmark or {}).items():
            fields = cls.fields_of(parse(ModelConfig, merge(base, over), f"model.per_benchmark.{name}"))
            per_benchmark[name] = MappingProxyType({k: v for k, v in fields.items() if own[k] != v})
        return cls(**own, per_benchmark=MappingProxyType(per_benchmark))

    @staticmethod
    def fields_of(cfg) -> dict[str, Any]:
        """The Decoding fields set by a ``ModelConfig`` (``per_benchmark`` aside)."""
        m, post = cfg.maskclip, cfg.post
        return {"gamma": cfg.gamma, "delta": cfg.delta, "bg_refine": cfg.bg_refine, "ks_thresh": m.ks_thresh,
                "pd_thresh": m.pd_thresh, "temperature": m.temperature, "synonyms": m.synonyms,
                "pamr_steps": int(post.pamr_steps), "pamr_dilations": tuple(int(d) for d in post.pamr_dilations),
                "prob_thd": post.prob_thd, "area_thd": post.area_thd}

    def for_benchmark(self, name: str) -> Decoding:
        """These settings on benchmark ``name``: its ``per_benchmark`` values over the others."""
        return replace(self, **self.per_benchmark.get(name, {}))

    @property
    def post_processes(self) -> bool:
        """Whether ``finish`` has work at the image's size (PAMR, thresholds, the max rule on logits)."""
        return (self.pamr_steps > 0 or self.prob_thd > 0 or self.area_thd > 0
                or (self.synonyms == "max" and self.scores == "logits"))


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

    has_objectness = False  # whether ``features`` gives objectness (the background refinement's input)

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
        logits = self.text(dense, d.temperature, classes, d.synonyms)
        refine = feats.objectness is not None and refines_background(d.bg_refine, classes)
        if d.synonyms == "max":  # the names' softmax, then each class its best name's (SCLIP's postprocess_result)
            if d.pd_thresh > 0:
                raise ConfigError("model.maskclip.synonyms=max: prompt denoising (model.maskclip.pd_thresh) "
                                  "drops classes, not names: use synonyms=mean with it")
            if d.scores == "logits" and d.ks_thresh <= 0 and not refine:
                return logits.float()  # Q names' scores: ``finish`` reduces them after the windows
            probs = max_over_synonyms(logits.softmax(dim=1), classes.name_queries()[1], len(classes.vocabulary))
        else:
            probs = logits.softmax(dim=1)
        if d.pd_thresh > 0:
            logits = prompt_denoising(logits, probs, d.pd_thresh)
            probs = logits.softmax(dim=1)
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

    def decoding_for(self, benchmark: str) -> Decoding:
        """``decoding`` with benchmark ``benchmark``'s own values (``model.per_benchmark``)."""
        return self.decoding.for_benchmark(benchmark)

    def to_pixels(self, scores: Tensor, size: tuple[int, int]) -> Tensor:
        """B x C x h x w scores of inputs of ``size`` (H, W) -> B x C x H x W, as the backbone's
        input mode maps its patch grid onto the input (``backbone.scores_to_pixels``)."""
        mode = getattr(self.backbone, "input", "clip")
        return scores_to_pixels(scores, size, tuple(getattr(self.backbone, "patch_size", (1, 1))), mode)

    def finish(self, scores: Tensor, image: Tensor, decoding: Decoding | None = None,
               classes: Classes | None = None) -> Tensor:
        """The window-averaged C x H x W scores of an image, resized to its size, -> K x H x W class
        probabilities (``decoding.post_processes``; otherwise ``scores`` unchanged): PAMR on the
        image's normalised pixels (``image``: 3 x h x w at the test scale, uint8 or [0, 1],
        resized to H x W bilinearly), the names' softmax and maximum (``synonyms=max`` with
        ``logits``), the softmax (other ``logits``), the area and probability thresholds."""
        d, classes = decoding or self.decoding, classes or self.text.current
        if not d.post_processes:
            return scores
        k = len(classes.vocabulary)
        if d.pamr_steps > 0:
            scores = pamr(self.pamr_image(image, tuple(scores.shape[-2:])), scores[None], d.pamr_steps,
                          d.pamr_dilations)[0]
        if self.returns_logits(d, classes):
            probs = scores.softmax(dim=0)
            if d.synonyms == "max":
                probs = max_over_synonyms(probs[None], classes.name_queries()[1], k)[0]
        else:
            probs = scores
        if d.area_thd > 0:
            probs = area_threshold(probs, d.area_thd)
        if d.prob_thd > 0:
            probs = low_confidence_to_first(probs, d.prob_thd)
        return probs

    def returns_logits(self, decoding: Decoding, classes: Classes) -> bool:
        """Whether ``decode`` under ``decoding`` returns scores before the softmax (``logits``, with
        no key smoothing and no background refinement making probabilities)."""
        d = decoding
        refine = self.has_objectness and refines_background(d.bg_refine, classes)
        return d.scores == "logits" and d.ks_thresh <= 0 and not refine

    def score_channels(self, decoding: Decoding, classes: Classes) -> int:
        """Channels ``decode`` returns: Q names for ``synonyms=max`` logits, K classes otherwise."""
        if decoding.synonyms == "max" and self.returns_logits(decoding, classes):
            return len(classes.name_queries()[1])
        return len(classes.vocabulary)

    def pamr_image(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        """The 1 x 3 x H x W image PAMR reads: normalised as the backbone's input (mean/std), then
        resized bilinearly to ``size`` (SCLIP / NACLIP: the preprocessed input resized to the
        original image)."""
        x = image.float()[None]
        if image.dtype == torch.uint8:
            x = x / 255.0
        mean, std = getattr(self.backbone, "mean", None), getattr(self.backbone, "std", None)
        if mean is not None and std is not None:
            x = (x - mean.to(x)) / std.to(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
