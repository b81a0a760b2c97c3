"""Frozen teachers for distillation: DINO correlations and FOUND objectness."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .dino import DINOTeacher
from .found import FOUNDTeacher, load_found_decoder
from .vit import FrozenViT, dino_pos_embed, load_timm_vit

__all__ = ["DINOTeacher", "FOUNDTeacher", "FrozenViT", "build_teachers", "dino_pos_embed", "load_found_decoder",
           "load_timm_vit"]


def build_dino_teacher(cfg: Mapping[str, Any]) -> DINOTeacher:
    vit = load_timm_vit(cfg["arch"], cfg.get("pretrained"), **dict(cfg.get("kwargs") or {}))
    return DINOTeacher(FrozenViT(vit))


def build_found_teacher(cfg: Mapping[str, Any]) -> FOUNDTeacher:
    decoder_path = cfg.get("decoder")
    if not decoder_path:
        raise ValueError("teachers.found.decoder is not set: give FOUND's decoder_weights.pt")
    vit = FrozenViT(load_timm_vit(cfg["arch"], cfg.get("pretrained"), **dict(cfg.get("kwargs") or {})))
    return FOUNDTeacher(vit, load_found_decoder(decoder_path, vit.dim))


def build_teachers(cfg: Mapping[str, Any]) -> tuple[DINOTeacher, FOUNDTeacher]:
    """Both teachers from the ``teachers`` config node (``dino`` and ``found`` entries)."""
    return build_dino_teacher(cfg["dino"]), build_found_teacher(cfg["found"])
