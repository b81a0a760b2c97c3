"""Frozen teachers for distillation: DINO correlations and FOUND objectness."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..download import RELEASED_NAME, resolve_released
from ..files import check_local_file
from .dino import DINOTeacher
from .found import FOUNDTeacher, load_found_decoder
from .vit import FrozenViT, dino_pos_embed, load_timm_vit

__all__ = ["DINOTeacher", "FOUNDTeacher", "FrozenViT", "build_teachers", "check_teacher_files", "dino_pos_embed",
           "load_found_decoder", "load_timm_vit"]


def _frozen_vit(cfg: Mapping[str, Any], teacher: str) -> FrozenViT:
    kwargs = dict(cfg.get("kwargs") or {})
    return FrozenViT(load_timm_vit(cfg["arch"], cfg.get("pretrained"), f"teachers.{teacher}.pretrained", **kwargs))


def build_dino_teacher(cfg: Mapping[str, Any]) -> DINOTeacher:
    return DINOTeacher(_frozen_vit(cfg, "dino"))


def build_found_teacher(cfg: Mapping[str, Any]) -> FOUNDTeacher:
    check_found_files(cfg)
    # "released": FOUND's decoder_weights.pt, downloaded once into the cache
    decoder = resolve_released(cfg["decoder"], "found_decoder", cfg.get("decoder_url"))
    vit = _frozen_vit(cfg, "found")
    return FOUNDTeacher(vit, load_found_decoder(decoder, vit.dim), antialias=bool(cfg.get("antialias", False)))


def check_found_files(cfg: Mapping[str, Any]) -> None:
    """FOUND's decoder is set (a file that exists, or ``released``); a local backbone file, if named, exists."""
    decoder_path = cfg.get("decoder")
    if not decoder_path:
        raise ValueError("teachers.found.decoder is not set: give FOUND's decoder_weights.pt or 'released'")
    if decoder_path != RELEASED_NAME and not os.path.isfile(decoder_path):
        raise FileNotFoundError(f"FOUND decoder weights not found: {decoder_path} (teachers.found.decoder)")
    check_local_file(cfg.get("pretrained"), "teacher weights", "teachers.found.pretrained")


def check_teacher_files(cfg: Mapping[str, Any]) -> None:
    """Fail on a missing teacher file before any model is loaded (``teachers`` config node)."""
    check_local_file(cfg["dino"].get("pretrained"), "teacher weights", "teachers.dino.pretrained")
    check_found_files(cfg["found"])


def build_teachers(cfg: Mapping[str, Any]) -> tuple[DINOTeacher, FOUNDTeacher]:
    """Both teachers from the ``teachers`` config node (``dino`` and ``found`` entries)."""
    check_teacher_files(cfg)
    return build_dino_teacher(cfg["dino"]), build_found_teacher(cfg["found"])
