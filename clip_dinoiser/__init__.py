"""CLIP-DINOiser: open-vocabulary semantic segmentation from one CLIP forward pass.

    import clip_dinoiser

    segmenter = clip_dinoiser.load(device="cpu")   # the released heads and OpenCLIP's ViT-B/16
    result = segmenter.segment("photo.jpg", ["cat", "sofa", "background"])
    result.labels                                  # H x W class indices
    result.probs                                   # K x H x W probabilities

``import clip_dinoiser`` is cheap: torch and the models load on the first ``load``.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Segmentation", "Segmenter", "__version__", "load"]


def __getattr__(name: str) -> Any:
    """``load``, ``Segmenter`` and ``Segmentation`` of ``clip_dinoiser.api``, imported on first use."""
    if name in ("load", "Segmenter", "Segmentation"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'clip_dinoiser' has no attribute {name!r}")
