"""What the demo, the web app and the Python API's results show: one image segmented, with the
panels that explain the method.

    seg = segment_for_figure(model, image, slide=SlideConfig(), query=(120, 80))
    rgb = figure(image, seg, model.class_names)
    write_pictures("out", "photo", image, seg, model.class_names)   # the demo's three files
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from ...config import SlideConfig
from ...files import write_atomic
from ...visualize import (
    heat_map,
    label_images,
    overlay,
    palette_for,
    panel_width,
    side_by_side,
    text_px,
    titled_panel,
)
from ..evaluation.inference import (
    check_point,
    correlation_sources,
    patch_map,
    query_correlations,
    resize_keep_ratio,
    segment,
    segment_panels,
    to_tensor,
)


@dataclass
class FigureData:
    """One image's segmentation and its explanatory panels (all at the image's size).

    Attributes:
        labels: H x W class indices of the model.
        title: the model's name in the figure.
        maskclip: MaskCLIP's labels from the same backbone pass (CLIP-DINOiser only).
        objectness: the background head's foreground probability (CLIP-DINOiser only).
        correlations: source name -> H x W correlations of the queried patch.
        query: the queried pixel (x, y), if any.
    """

    labels: np.ndarray
    title: str
    maskclip: np.ndarray | None = None
    objectness: np.ndarray | None = None
    correlations: dict[str, np.ndarray] = field(default_factory=dict)
    query: tuple[int, int] | None = None


def segment_for_figure(model: nn.Module, image: np.ndarray, *, slide: SlideConfig = SlideConfig(),
                       precision: str = "fp32", compare: bool = True,
                       query: tuple[int, int] | None = None) -> FigureData:
    """Segment ``image`` with the model's vocabulary; with ``compare``, MaskCLIP's labels and the
    objectness map come from the same backbone pass (CLIP-DINOiser); with ``query``, the
    correlation maps of the patch under that pixel."""
    if compare and hasattr(model, "forward_panels"):
        labels, maskclip, objectness = segment_panels(model, image, cfg=slide, precision=precision)
        data = FigureData(labels, "CLIP-DINOiser", maskclip, objectness)
    else:
        labels, _ = segment(model, image, cfg=slide, precision=precision)
        data = FigureData(labels, {"CLIPDINOiser": "CLIP-DINOiser", "DINOMaskCLIP": "DINO-MaskCLIP"}.get(
            type(model).__name__, type(model).__name__))
    if query is not None:
        data.query = (int(query[0]), int(query[1]))
        maps = query_correlations(model, image, data.query, scale=slide.scale)
        data.correlations = {name: full for name, (full, _) in maps.items()}
    return data


def _marked(heat: np.ndarray, point: tuple[int, int]) -> np.ndarray:
    """A red ring around ``point`` on a heat map."""
    im = Image.fromarray(heat)
    r = max(4, text_px(heat.shape[0]) // 2)
    x, y = point
    ImageDraw.Draw(im).ellipse([x - r, y - r, x + r, y + r], outline=(255, 0, 0), width=max(2, r // 3))
    return np.asarray(im)


def figure(image: np.ndarray, data: FigureData, names: list[str], *, alpha: float = 0.5) -> np.ndarray:
    """Input | MaskCLIP | the model | objectness | correlations of the queried patch, one legend;
    the heat maps with their colour scale."""
    palette = palette_for(names)
    segs = ([("MaskCLIP", data.maskclip)] if data.maskclip is not None else []) + [(data.title, data.labels)]
    panels = [("Input", image)] + [(title, overlay(image, seg, palette, alpha)) for title, seg in segs]
    if data.objectness is not None:
        panels.append(("Objectness", heat_map(data.objectness), "foreground probability"))
    for name, corr in data.correlations.items():
        source = "Correlations" if name == data.title else f"{name} correlations"
        panels.append((f"{source} of ({data.query[0]}, {data.query[1]})",
                       _marked(heat_map(corr.clip(0, 1)), data.query), "cosine similarity"))
    shown = sorted(set().union(*(np.unique(seg).tolist() for _, seg in segs)))
    return side_by_side(panels, [(names[i], tuple(int(c) for c in palette[i])) for i in shown])


PICTURES = ("mask", "labels", "figure")  # the demo's files: <stem>_<kind>.png


def picture_paths(folder: str, stem: str, *, with_figure: bool = True) -> list[str]:
    """The demo's files of one image: ``<stem>_mask.png``, ``<stem>_labels.png`` and, with the
    figure, ``<stem>_figure.png``."""
    return [os.path.join(folder, f"{stem}_{kind}.png") for kind in PICTURES[: 3 if with_figure else 2]]


def write_pictures(folder: str, stem: str, image: np.ndarray, data: FigureData, names: list[str], *,
                   alpha: float = 0.5, with_figure: bool = True) -> list[str]:
    """The demo's files of one image in ``folder`` (``picture_paths``), each written atomically (an
    interrupted run never leaves half a PNG): the overlay with a legend of the classes present,
    the indexed label map (pixel value = class index) and the figure (``figure``)."""
    pictures = list(label_images(image, data.labels, names, alpha))
    if with_figure:
        pictures.append(Image.fromarray(figure(image, data, names, alpha=alpha)))
    paths = picture_paths(folder, stem, with_figure=with_figure)
    for path, im in zip(paths, pictures):
        write_atomic(path, lambda f, im=im: im.save(f, format="PNG"), binary=True)
    return paths


# The web app: its panels one by one, and clicks answered from correlations kept per image.


@dataclass
class ImageCorrelations:
    """Every patch's correlations with every patch of one image at the test scale, for each
    correlation source of a model: a click is answered by indexing a row (``correlation_maps``),
    with no backbone pass.

    Attributes:
        matrices: source name ("CLIP-DINOiser" or "DINO") -> (N x N correlations on the CPU, the
            source's patch size (h, w)); empty for a model without correlations (MaskCLIP).
        resized: (h, w) of the image at the test scale.
        size: (H, W) of the image.
    """

    matrices: dict[str, tuple[Tensor, tuple[int, int]]]
    resized: tuple[int, int]
    size: tuple[int, int]


@torch.no_grad()
def image_correlations(model: nn.Module, image: np.ndarray, *,
                       scale: tuple[int, int] = SlideConfig.scale) -> ImageCorrelations:
    """What ``query_correlations`` reads for any point of ``image``, computed once: the backbone up
    to the heads' block (CLIP-DINOiser) or the DINO teacher (DINO-MaskCLIP) on the image resized
    to the test scale, whole."""
    resized = to_tensor(resize_keep_ratio(image, scale), next(model.parameters()).device)[None]
    sources = correlation_sources(model, resized)
    matrices = {name: (matrix.float().cpu(), patch) for name, (matrix, patch) in sources.items()}
    return ImageCorrelations(matrices, tuple(resized.shape[-2:]), tuple(image.shape[:2]))


def correlation_maps(corrs: ImageCorrelations, point: tuple[int, int]) -> dict[str, np.ndarray]:
    """Source name -> H x W correlations of the patch under ``point`` = (x, y), as
    ``query_correlations`` computes them (a ``UserError`` for a point outside the image)."""
    check_point(point, corrs.size)
    return {name: patch_map(matrix, patch, point, corrs.resized, corrs.size)[0].numpy()
            for name, (matrix, patch) in corrs.matrices.items()}


def page_panels(image: np.ndarray, data: FigureData, names: list[str], *,
                alpha: float = 0.5) -> dict[str, np.ndarray | None]:
    """The web page's panels, each on its own at ``panel_width`` with its title and legend:
    "segmentation" (the model's), "maskclip" and "objectness" (None when not computed)."""
    palette, width = palette_for(names), panel_width(image.shape[1])

    def legend(labels: np.ndarray) -> list[tuple[str, tuple[int, int, int]]]:
        return [(names[i], tuple(int(c) for c in palette[i])) for i in np.unique(labels).tolist()]

    def segmentation(title: str, labels: np.ndarray | None) -> np.ndarray | None:
        if labels is None:
            return None
        return titled_panel(title, overlay(image, labels, palette, alpha), width=width, legend=legend(labels))

    objectness = None
    if data.objectness is not None:
        objectness = titled_panel("Objectness (background head)", heat_map(data.objectness), width=width,
                                  bar="foreground probability")
    return {"segmentation": segmentation(data.title, data.labels),
            "maskclip": segmentation("MaskCLIP (same backbone pass)", data.maskclip), "objectness": objectness}


def correlation_panel(data: FigureData) -> np.ndarray | None:
    """The correlations of ``data.query``'s patch as a page panel (one per source, stacked), the
    point ringed; None without a query."""
    if data.query is None or not data.correlations:
        return None
    panels = []
    for name, corr in data.correlations.items():
        source = "Correlations" if name == data.title else f"{name} correlations"
        panels.append(titled_panel(f"{source} of the patch at ({data.query[0]}, {data.query[1]})",
                                   heat_map(corr.clip(0, 1)), width=panel_width(corr.shape[1]),
                                   bar="cosine similarity", mark=data.query))
    return np.concatenate(panels, axis=0)
