"""CLIP-DINOiser: open-vocabulary semantic segmentation from one CLIP forward pass."""

__version__ = "0.1.0"
