"""The short Python API: load a segmenter in one call, segment images in another.

    import clip_dinoiser

    segmenter = clip_dinoiser.load("clip_dinoiser", device="cpu")
    result = segmenter.segment("photo.jpg", ["cat", "sofa", "background"])
    results = segmenter.segment(["a.jpg", pil_image, array], ["cat", "dog"])   # a list: one call
    result.overlay().show()                  # what the demo shows, one call each
    result.save("out/")                      # the demo's files: photo_mask.png, photo_labels.png, photo_figure.png
    result.objectness                        # H x W foreground probability
    result.correlations(120, 80)             # H x W correlations of the patch under that pixel

Images are file paths, PIL images or H x W x 3 uint8 RGB arrays (H x W grayscale and float
arrays in [0, 1] are converted). Each goes through the evaluator's test-time pipeline (keep-ratio
resize, sliding windows, back to the image's size), so the labels equal ``tools/demo.py``'s, and
the pictures are made by the demo's own functions (``engine/reporting/figures.py``, ``visualize.py``).
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
    """One image's result, and what the demo shows of it.

    Attributes:
        labels: H x W int64 class indices into ``classes``.
        probs: K x H x W float32 class probabilities (sum 1 over the classes).
        classes: the class names, in index order.
        image: the H x W x 3 uint8 RGB image segmented.
        name: the image's file name without its suffix (``image`` for arrays and PIL images): the
            stem of ``save``'s files.

    The pictures and maps below run the segmenter again when first asked for (the objectness and
    MaskCLIP's labels: one pass over the windows; correlations: one pass over the whole image,
    then any patch is a look-up), with the demo's functions.
    """

    labels: np.ndarray
    probs: np.ndarray
    classes: list[str] = field(default_factory=list)
    image: np.ndarray | None = field(default=None, repr=False)
    name: str = "image"
    _source: Any = field(default=None, repr=False, compare=False)  # (the Segmenter, the vocabulary)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def overlay(self, alpha: float = 0.5):
        """The labels over the image at opacity ``alpha`` with a legend of the classes present (a
        PIL image; the demo's ``<name>_mask.png``)."""
        from .visualize import label_images

        return label_images(self._image(), self.labels, self.classes, alpha)[0]

    def label_map(self):
        """The labels as an indexed PIL image, pixel value = class index (the demo's ``<name>_labels.png``)."""
        from .visualize import indexed_image, palette_for

        return indexed_image(self.labels, palette_for(self.classes))

    @property
    def objectness(self) -> np.ndarray | None:
        """H x W foreground probability of CLIP-DINOiser's objectness head (None for models without one)."""
        return self._panels().objectness

    @property
    def maskclip_labels(self) -> np.ndarray | None:
        """MaskCLIP's H x W labels from the same backbone features (CLIP-DINOiser; None otherwise)."""
        return self._panels().maskclip

    def correlations(self, x: int, y: int) -> dict[str, np.ndarray]:
        """The correlations of the patch under pixel (``x``, ``y``) with the whole image, H x W, per
        source: ``"CLIP-DINOiser"`` (its correlation head), ``"DINO"`` (DINO-MaskCLIP's teacher);
        empty for MaskCLIP. A ``UserError`` for a point outside the image."""
        from .engine.reporting.figures import correlation_maps, image_correlations

        if "correlations" not in self._cache:
            segmenter, _ = self._segmenter()
            self._cache["correlations"] = image_correlations(segmenter.model, self._image(),
                                                             scale=segmenter.slide.scale)
        return correlation_maps(self._cache["correlations"], (int(x), int(y)))

    def figure(self, query: tuple[int, int] | None = None, alpha: float = 0.5):
        """The demo's figure (a PIL image): input | MaskCLIP | the model | objectness, and with
        ``query`` = (x, y) the correlations of that pixel's patch; one legend, colour scales."""
        from PIL import Image

        from .engine.reporting.figures import figure

        return Image.fromarray(figure(self._image(), self._figure_data(query), self.classes, alpha=alpha))

    def save(self, folder: str, *, stem: str | None = None, figure: bool = True, alpha: float = 0.5,
             query: tuple[int, int] | None = None, overwrite: bool = False) -> list[str]:
        """The demo's files in ``folder``: ``<stem>_mask.png`` (``overlay``), ``<stem>_labels.png``
        (``label_map``) and with ``figure`` ``<stem>_figure.png`` (``figure``); ``stem``: the
        image's ``name``. Existing files are replaced only with ``overwrite``. Returns the paths."""
        from .engine.job.runs import refuse_existing
        from .engine.reporting.figures import picture_paths, write_pictures
        from .files import check_output_dir

        stem = stem or self.name
        check_output_dir(folder, "folder")
        if not overwrite:
            refuse_existing(picture_paths(folder, stem, with_figure=figure), f"save({folder!r})", "saving")
        os.makedirs(folder, exist_ok=True)
        data = self._figure_data(query) if figure else self._labels_only()
        return write_pictures(folder, stem, self._image(), data, self.classes, alpha=alpha, with_figure=figure)

    def _image(self) -> np.ndarray:
        if self.image is None:
            raise UserError("this Segmentation holds no image: make it with Segmenter.segment")
        return self.image

    def _segmenter(self) -> tuple[Segmenter, Any]:
        if self._source is None:
            raise UserError("this Segmentation has no segmenter to compute more with: make it with Segmenter.segment")
        return self._source

    def _labels_only(self):
        from .engine.reporting.figures import FigureData

        return FigureData(self.labels, "")

    def _panels(self):
        """The demo's figure data of this image (``segment_for_figure``), computed once."""
        if "panels" not in self._cache:
            from .engine.reporting.figures import segment_for_figure

            segmenter, vocabulary = self._segmenter()
            segmenter.model.set_vocabulary(vocabulary)  # the segmenter may have moved on to other classes
            self._cache["panels"] = segment_for_figure(segmenter.model, self._image(), slide=segmenter.slide,
                                                       precision=segmenter.precision, compare=True)
        return self._cache["panels"]

    def _figure_data(self, query: tuple[int, int] | None):
        from dataclasses import replace

        data = replace(self._panels(), labels=self.labels)
        if query is None:
            return data
        point = (int(query[0]), int(query[1]))
        return replace(data, query=point, correlations=self.correlations(*point))


def image_name(image: Any) -> str:
    """The stem of an image's files: its file name without the suffix; ``image`` for arrays and
    PIL images (their ``filename``, when opened from a file)."""
    path = os.fspath(image) if isinstance(image, str | os.PathLike) else getattr(image, "filename", "")
    return os.path.splitext(os.path.basename(str(path)))[0] or "image"


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
        precision: auto (bf16 on a CPU with native bf16: AMX, AVX512-BF16; else fp32), fp32, bf16 or fp16.
    """

    def __init__(self, model: torch.nn.Module, *, slide: SlideConfig | None = None, precision: str = "auto") -> None:
        check_precision(precision)
        self.model, self.slide, self.precision = model, slide or SlideConfig(), precision

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def segment(self, images: Any, classes: Sequence[str]) -> Segmentation | list[Segmentation]:
        """Segment one image (a ``Segmentation``) or a list of images (a list) into ``classes``
        (comma-separated synonyms allowed in a name)."""
        from .engine.evaluation.inference import image_probabilities

        if isinstance(classes, str):
            classes = [classes]
        if not isinstance(classes, Sequence) or not classes:
            what = "is empty" if isinstance(classes, Sequence) else "is not a list"
            raise UserError(f"classes={classes!r} {what}: give a list of class names, e.g. ['cat', 'sofa']")
        single = not isinstance(images, list | tuple)
        if not single and not images:
            return []  # an empty batch: nothing to segment
        sources = [images] if single else list(images)
        arrays = [as_rgb(x) for x in sources]
        vocabulary = parse_vocabulary(list(classes))
        self.model.set_vocabulary(vocabulary)
        names = list(self.model.class_names)
        probs = image_probabilities(self.model, arrays, self.slide, self.precision)
        results = [Segmentation(p.argmax(dim=0).cpu().numpy(), p.cpu().numpy(), names, array, image_name(source),
                                (self, vocabulary))
                   for p, array, source in zip(probs, arrays, sources)]
        return results[0] if single else results


# How messages name the keys of ``load``: its settings are model.* keys, the model's own weights file is ``weights``.
API_KEYS = Keys("model", {"checkpoint": "weights"})
OWN_WEIGHTS = ("clip_dinoiser", "target")  # the models whose weights file ``weights`` gives


def load(name: str = "clip_dinoiser", weights: str | None = "released", device: str = "auto", *,
         precision: str = EvalConfig.precision, slide: SlideConfig | dict | None = None,
         protocol: str = EvalConfig.protocol, **settings: Any) -> Segmenter:
    """Build a segmenter in one call.

    Args:
        name: ``clip_dinoiser`` (the paper), ``maskclip``, ``dino_maskclip``, ``target`` (a
            MaskCLIP+ network of ``tools/train_target.py``), or a training-free peer: ``sclip``,
            ``naclip``, ``clearclip``, ``proxyclip`` (with the method's own settings, ``config.METHODS``).
        weights: the model's own weights file: CLIP-DINOiser's heads (``released``: a local copy
            ``checkpoints/last.pt``, else the authors' file, downloaded once; a heads file; None:
            random), a target network's ``last.pt``; maskclip and dino_maskclip have none.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: auto (bf16 on a CPU with native bf16: AMX, AVX512-BF16; else fp32), fp32, bf16 or fp16.
        slide: test-time geometry (``SlideConfig``, or its keys over the protocol's).
        protocol: the test protocol preset (``clip_dinoiser``, ``maskclip``, ``sclip``, ``naclip``,
            ``clearclip``, ``proxyclip``: ``protocols.py``), its ``slide`` and ``model`` values under yours.
        **settings: any other ``model.*`` key (``gamma=0.3``, ``clip={"pretrained": "file.pt"}``).
    """
    from .engine.job.cli import resolve_device
    from .models import build_model
    from .protocols import get_protocol, merge

    if "checkpoint" in settings:
        raise UserError(f"load(checkpoint={settings['checkpoint']!r}): the model's weights file is given as "
                        f"weights=, e.g. clip_dinoiser.load({name!r}, weights={settings['checkpoint']!r})")
    preset = get_protocol(protocol)
    cfg = merge(preset.model, {"name": name, **settings})
    if name in OWN_WEIGHTS:
        cfg["checkpoint"] = weights
    if name == "target":  # its CLIP: the one its last.pt records, unless clip= names one (and other_clip=True)
        from .models.build import RECORDED

        cfg["clip"] = {"name": RECORDED, "pretrained": RECORDED, **(cfg.get("clip") or {})}
    if not isinstance(slide, SlideConfig):
        slide = merge(preset.slide, slide or {})
    model = build_model(cfg, API_KEYS).to(resolve_device(device))
    return Segmenter(model, slide=parse(SlideConfig, slide, "slide"), precision=precision)
