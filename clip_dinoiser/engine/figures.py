"""What the demo and the web app show: one image segmented, with the panels that explain the method.

    seg = segment_for_figure(model, image, slide=SlideConfig(), query=(120, 80))
    rgb = figure(image, seg, model.class_names)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from torch import nn

from ..config import SlideConfig
from ..visualize import heat_map, make_palette, overlay, side_by_side, text_px
from .inference import query_correlations, segment, segment_panels


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
    """Input | MaskCLIP | the model | objectness | correlations of the queried patch, one legend."""
    palette = make_palette(len(names))
    segs = ([("MaskCLIP", data.maskclip)] if data.maskclip is not None else []) + [(data.title, data.labels)]
    panels = [("Input", image)] + [(title, overlay(image, seg, palette, alpha)) for title, seg in segs]
    if data.objectness is not None:
        panels.append(("Objectness", heat_map(data.objectness)))
    for name, corr in data.correlations.items():
        source = "Correlations" if name == data.title else f"{name} correlations"
        panels.append((f"{source} of ({data.query[0]}, {data.query[1]})",
                       _marked(heat_map(corr.clip(0, 1)), data.query)))
    shown = sorted(set().union(*(np.unique(seg).tolist() for _, seg in segs)))
    return side_by_side(panels, [(names[i], tuple(int(c) for c in palette[i])) for i in shown])
