"""The short Python API: load a segmenter in one call, segment images in another.

    import clip_dinoiser

    segmenter = clip_dinoiser.load("clip_dinoiser", device="cpu")
    result = segmenter.segment("photo.jpg", ["cat", "sofa", "background"])
    results = segmenter.segment(["a.jpg", pil_image, array], ["cat", "dog"])   # a list: one call

Images are file paths, PIL images or H x W x 3 uint8 RGB arrays (H x W grayscale and float
arrays in [0, 1] are converted). Each goes through the evaluator's test-time pipeline (keep-ratio
resize, sliding windows, back to the image's size), so the labels equal ``tools/demo.py``'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import EvalConfig, Keys, SlideConfig, parse
from .errors import UserError
from .readers import read_image, to_rgb_uint8
from .values import check_precision
from .vocabulary import parse_vocabulary


@dataclass
class Segmentation:
    """One image's result.

    Attributes:
        labels: H x W int64 class indices into ``classes``.
        probs: K x H x W float32 class probabilities (sum 1 over the classes).
        classes: the class names, in index order.
    """

    labels: np.ndarray
    probs: np.ndarray
    classes: list[str] = field(default_factory=list)


def as_rgb(image: Any) -> np.ndarray:
    """A path, a PIL image or an array as H x W x 3 uint8 RGB."""
    if isinstance(image, str | os.PathLike):
        return read_image(os.fspath(image))
    if hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image
        return to_rgb_uint8(image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or 0 in array.shape:
        raise UserError(f"an image of shape {array.shape}: give H x W x 3 RGB (or a path, or a PIL image)")
    array = array[..., :3]
    if array.dtype != np.uint8:
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise UserError("a non-uint8 image must hold values in [0, 1]")
        array = np.round(array * 255.0).astype(np.uint8)
    return np.ascontiguousarray(array)


class Segmenter:
    """A loaded segmenter (``load``) and its test-time settings.

    Args:
        model: a segmenter from ``clip_dinoiser.models.build_model``.
        slide: the test-time geometry (the paper's by default).
        precision: fp32 / bf16 / fp16.
    """

    def __init__(self, model: torch.nn.Module, *, slide: SlideConfig | None = None, precision: str = "fp32") -> None:
        check_precision(precision)
        self.model, self.slide, self.precision = model, slide or SlideConfig(), precision

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def segment(self, images: Any, classes: Sequence[str]) -> Segmentation | list[Segmentation]:
        """Segment one image (a ``Segmentation``) or a list of images (a list) into ``classes``
        (comma-separated synonyms allowed in a name)."""
        from .engine.inference import image_outputs

        if isinstance(classes, str):
            classes = [classes]
        if not isinstance(classes, Sequence) or not classes:
            what = "is empty" if isinstance(classes, Sequence) else "is not a list"
            raise UserError(f"classes={classes!r} {what}: give a list of class names, e.g. ['cat', 'sofa']")
        single = not isinstance(images, list | tuple)
        if not single and not images:
            return []  # an empty batch: nothing to segment
        arrays = [as_rgb(x) for x in ([images] if single else images)]
        self.model.set_vocabulary(parse_vocabulary(list(classes)))
        names = list(self.model.class_names)
        probs = image_outputs(self.model, arrays, self.slide, self.precision)
        results = [Segmentation(p.argmax(dim=0).cpu().numpy(), p.cpu().numpy(), names) for p in probs]
        return results[0] if single else results


# How messages name the keys of ``load``: its settings are model.* keys, the model's own weights file is ``weights``.
API_KEYS = Keys("model", {"checkpoint": "weights"})
OWN_WEIGHTS = ("clip_dinoiser", "target")  # the models whose weights file ``weights`` gives


def load(name: str = "clip_dinoiser", weights: str | None = "released", device: str = "auto", *,
         precision: str = EvalConfig.precision, slide: SlideConfig | dict | None = None, **settings: Any) -> Segmenter:
    """Build a segmenter in one call.

    Args:
        name: ``clip_dinoiser`` (the paper), ``maskclip``, ``dino_maskclip`` or ``target`` (a
            MaskCLIP+ network of ``tools/train_target.py``).
        weights: the model's own weights file: CLIP-DINOiser's heads (``released``: a local copy
            ``checkpoints/last.pt``, else the authors' file, downloaded once; a heads file; None:
            random), a target network's ``last.pt``; maskclip and dino_maskclip have none.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: fp32 / bf16 / fp16.
        slide: test-time geometry (``SlideConfig`` or its keys).
        **settings: any other ``model.*`` key (``gamma=0.3``, ``clip={"pretrained": "file.pt"}``).
    """
    from .engine.cli import resolve_device
    from .models import build_model

    if "checkpoint" in settings:
        raise UserError(f"load(checkpoint={settings['checkpoint']!r}): the model's weights file is given as "
                        f"weights=, e.g. clip_dinoiser.load({name!r}, weights={settings['checkpoint']!r})")
    cfg = {"name": name, **settings}
    if name in OWN_WEIGHTS:
        cfg["checkpoint"] = weights
    model = build_model(cfg, API_KEYS).to(resolve_device(device))
    return Segmenter(model, slide=parse(SlideConfig, slide, "slide"), precision=precision)
