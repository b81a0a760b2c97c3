"""Build segmenters from plain configs: a dict of builders, no registry."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..download import resolve_released
from ..files import check_local_file
from ..values import check_number
from .backbone import CLIPBackbone, load_open_clip, register_model_config
from .clip_dinoiser import CLIPDINOiser
from .heads import DINOiserHeads, load_heads
from .maskclip import MaskCLIP
from .text import TextClassifier, split_towers
from .text_cache import TextEmbeddingCache, default_cache_dir, weights_identity

log = logging.getLogger(__name__)


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if node is None or part not in node:
            return default
        node = node[part]
    return node


def _num(cfg: Mapping[str, Any], key: str, default: float, kind: type) -> Any:
    """A number from the model config, or a ValueError naming ``model.<key>`` (``model.gamma=abc``)."""
    return check_number(_get(cfg, key, default), f"model.{key}", kind)


def build_clip(cfg: Mapping[str, Any]) -> tuple[CLIPBackbone, TextClassifier]:
    """The frozen CLIP image tower and text classifier shared by every model."""
    import open_clip

    name = register_model_config(_get(cfg, "clip.name", "ViT-B-16"))
    model = load_open_clip(name, _get(cfg, "clip.pretrained"))
    backbone = CLIPBackbone.from_open_clip(model, feats_idx=_num(cfg, "feats_idx", -3, int))
    _, text_model = split_towers(model)
    text = TextClassifier(text_model, open_clip.get_tokenizer(name),
                          templates=_get(cfg, "maskclip.templates", "imagenet80"),
                          disk_cache=text_cache(name, _get(cfg, "clip.pretrained"), _get(cfg, "text_cache", "auto")))
    return backbone, text


def text_cache(name: str, pretrained: str | None, folder: str | bool | None) -> TextEmbeddingCache | None:
    """The on-disk text cache of ``model.text_cache`` (``auto``: ``default_cache_dir()``; null /
    false: off); none for random weights."""
    identity = weights_identity(name, pretrained)
    if not folder or identity is None:
        return None
    return TextEmbeddingCache(default_cache_dir() if folder in ("auto", True) else str(folder), identity)


def _maskclip_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "temperature": _num(cfg, "maskclip.temperature", 100.0, float),
        "ks_thresh": _num(cfg, "maskclip.ks_thresh", 0.0, float),
        "pd_thresh": _num(cfg, "maskclip.pd_thresh", 0.0, float),
        "bg_refine": _get(cfg, "bg_refine"),
        "delta": _num(cfg, "delta", 0.99, float),
    }


def build_maskclip(cfg: Mapping[str, Any]) -> MaskCLIP:
    backbone, text = build_clip(cfg)
    return MaskCLIP(backbone, text, **_maskclip_kwargs(cfg))


def build_clip_dinoiser(cfg: Mapping[str, Any]) -> CLIPDINOiser:
    # "released": the authors' last.pt, downloaded once into the cache (before CLIP is loaded)
    checkpoint = resolve_released(_get(cfg, "checkpoint"), "heads", _get(cfg, "checkpoint_url"))
    backbone, text = build_clip(cfg)
    heads = DINOiserHeads(
        in_dim=backbone.width,
        proj_dim=_num(cfg, "proj_dim", 256, int),
        kernel_size=_num(cfg, "kernel_size", 3, int),
    )
    if checkpoint:
        load_heads(heads, checkpoint)
    else:
        log.warning("model.checkpoint is not set: the CLIP-DINOiser heads are random")
    return CLIPDINOiser(backbone, text, heads, gamma=_num(cfg, "gamma", 0.2, float), **_maskclip_kwargs(cfg))


def build_dino_maskclip(cfg: Mapping[str, Any]) -> nn.Module:
    from .dino_maskclip import build as build_dino  # needs the teachers (timm)

    backbone, text = build_clip(cfg)
    return build_dino(cfg, backbone, text, **_maskclip_kwargs(cfg))


MODEL_BUILDERS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "maskclip": build_maskclip,
    "clip_dinoiser": build_clip_dinoiser,
    "dino_maskclip": build_dino_maskclip,
}


MODEL_NUMBERS = {"feats_idx": int, "gamma": float, "delta": float, "proj_dim": int, "kernel_size": int,
                 "maskclip.temperature": float, "maskclip.ks_thresh": float, "maskclip.pd_thresh": float}


def check_model_files(cfg: Mapping[str, Any]) -> None:
    """Fail on a missing local file that ``cfg`` names, before any weights are loaded."""
    check_local_file(_get(cfg, "clip.pretrained"), "CLIP checkpoint", "model.clip.pretrained")
    name = _get(cfg, "name", "clip_dinoiser")
    if name == "clip_dinoiser":
        check_local_file(_get(cfg, "checkpoint"), "heads checkpoint", "model.checkpoint")
    if name == "dino_maskclip":
        for teacher in ("dino", "found"):
            key = f"teachers.{teacher}.pretrained"
            check_local_file(_get(cfg, key), "teacher weights", f"model.{key}")


def build_model(cfg: Mapping[str, Any]) -> MaskCLIP:
    """Build the model named ``cfg["name"]`` (``clip_dinoiser``, ``maskclip``, ``dino_maskclip``)."""
    check_model_config(cfg)
    return MODEL_BUILDERS[_get(cfg, "name", "clip_dinoiser")](cfg).eval()


def check_model_config(cfg: Mapping[str, Any]) -> None:
    """The model name, its numbers (``model.gamma=abc`` fails naming the key) and its local files,
    checked before any weights are loaded."""
    name = _get(cfg, "name", "clip_dinoiser")
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model '{name}' (choose from {sorted(MODEL_BUILDERS)})")
    for key, kind in MODEL_NUMBERS.items():
        _num(cfg, key, 0, kind)
    check_model_files(cfg)
