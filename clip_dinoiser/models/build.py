"""Build segmenters from a ``ModelConfig`` (or a dict of its keys): a dict of builders, no registry.

Extension points, each a config key naming a built-in or the import path of your own callable:
``model.clip.backbone`` (the image tower), ``model.pooling`` (the pooling),
``model.teachers.<name>.type`` (DINO-MaskCLIP's correlation and objectness sources).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from ..config import ModelConfig, TargetConfig, paper_teachers, parse
from ..download import RELEASED_NAME, resolve_released
from ..errors import ConfigError, UserError
from ..files import check_local_file
from ..plugins import locate
from ..readers import read_weights
from .backbone import Backbone, CLIPBackbone, as_mmseg_vit, is_resnet_config, load_open_clip, register_model_config
from .clip_dinoiser import CLIPDINOiser
from .heads import DINOiserHeads, load_heads
from .maskclip import Decoding, MaskCLIP, Pooling
from .pooling import guided_pooling
from .resnet import CLIPResNetBackbone, is_resnet_tower
from .text import TextClassifier, text_tower
from .text_cache import TextEmbeddingCache, default_cache_dir, weights_identity

log = logging.getLogger(__name__)


def open_clip_backbone(clip_model: nn.Module, cfg: ModelConfig) -> Backbone:
    """The built-in image tower: open_clip's ViT or ResNet with MaskCLIP's value path."""
    if is_resnet_tower(clip_model.visual):  # model.clip.mmseg_vit is a ViT's setting (MaskCLIP's ResNet is CLIP's)
        return CLIPResNetBackbone.from_open_clip(clip_model, input=cfg.clip.input)
    if cfg.clip.mmseg_vit:
        as_mmseg_vit(clip_model.visual)
    return CLIPBackbone.from_open_clip(clip_model, feats_idx=cfg.feats_idx, input=cfg.clip.input)


# model.clip.backbone: factory(open_clip model, ModelConfig) -> Backbone
BACKBONES: Mapping[str, Callable[[nn.Module, ModelConfig], Backbone]] = MappingProxyType(
    {"open_clip": open_clip_backbone})
# model.pooling: (features, correlations, gamma) -> features
POOLINGS: Mapping[str, Pooling] = MappingProxyType({"guided": guided_pooling})


def build_clip(cfg: ModelConfig) -> tuple[Backbone, TextClassifier]:
    """The frozen image tower (``model.clip.backbone``) and the open_clip text classifier."""
    factory = locate(cfg.clip.backbone, BACKBONES, "model.clip.backbone")
    name, model = load_clip(cfg)
    return factory(model, cfg), build_text(cfg, model, name)


def load_clip(cfg: ModelConfig) -> tuple[str, nn.Module]:
    """(open_clip's model name, the open_clip model) of ``model.clip``."""
    name = register_model_config(cfg.clip.name)
    return name, load_open_clip(name, cfg.clip.pretrained)


def build_text(cfg: ModelConfig, model: nn.Module, name: str) -> TextClassifier:
    """The text classifier of the open_clip ``model`` (its text tower, templates, disk cache)."""
    import open_clip

    return TextClassifier(text_tower(model), open_clip.get_tokenizer(name), templates=cfg.maskclip.templates,
                          disk_cache=text_cache(name, cfg.clip.pretrained, cfg.text_cache))


def text_cache(name: str, pretrained: str | None, folder: str | None) -> TextEmbeddingCache | None:
    """The on-disk text cache of ``model.text_cache`` (``auto``: ``default_cache_dir()``; null /
    false: off); none for random weights."""
    identity = weights_identity(name, pretrained)
    if not folder or str(folder).lower() in ("false", "none", "off") or identity is None:
        return None
    return TextEmbeddingCache(default_cache_dir() if folder == "auto" else str(folder), identity)


def build_maskclip(cfg: ModelConfig) -> MaskCLIP:
    backbone, text = build_clip(cfg)
    return MaskCLIP(backbone, text, Decoding.from_config(cfg))


def build_clip_dinoiser(cfg: ModelConfig, training: bool = False) -> CLIPDINOiser:
    """CLIP-DINOiser with the heads of ``model.checkpoint``; ``training``: the heads are about to be
    trained (random heads are expected, not warned about)."""
    # "released": the authors' last.pt, downloaded once into the cache (before CLIP is loaded)
    checkpoint = resolve_released(cfg.checkpoint, "heads", cfg.checkpoint_url, key="model.checkpoint")
    pooling = locate(cfg.pooling, POOLINGS, "model.pooling")
    backbone, text = build_clip(cfg)
    heads = DINOiserHeads(in_dim=backbone.width, proj_dim=cfg.proj_dim, kernel_size=cfg.kernel_size)
    if checkpoint:
        load_heads(heads, checkpoint)
    elif not training:
        log.warning("model.checkpoint is not set: the CLIP-DINOiser heads are random")
    return CLIPDINOiser(backbone, text, heads, Decoding.from_config(cfg), pooling)


def build_dino_maskclip(cfg: ModelConfig) -> nn.Module:
    from ..teachers import build_teachers, by_head  # needs timm
    from .dino_maskclip import DINOMaskCLIP

    pooling = locate(cfg.pooling, POOLINGS, "model.pooling")
    teachers = build_teachers(model_teachers(cfg), "model.teachers")
    dino, found = by_head(teachers, "correlation"), by_head(teachers, "objectness")
    if dino is None:
        raise ConfigError("model.teachers: dino_maskclip needs a correlation teacher (type: dino)")
    backbone, text = build_clip(cfg)
    return DINOMaskCLIP(backbone, text, dino, found, Decoding.from_config(cfg), pooling)


def model_teachers(cfg: ModelConfig) -> Mapping[str, Any]:
    """``model.teachers``, or the paper's teachers where it is null."""
    return cfg.teachers if cfg.teachers is not None else paper_teachers()


def build_target_model(cfg: ModelConfig) -> nn.Module:
    """A MaskCLIP+ target network trained by ``tools/train_target.py`` (``model.checkpoint``: its
    ``last.pt``, which records the network's settings), classifying with the class embeddings of
    CLIP's text tower (``model.clip``: the CLIP its annotator used)."""
    from .target import TargetModel, build_target, load_target_state

    ckpt = read_weights(cfg.checkpoint or "", "target checkpoint", "model.checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("target"), dict) or "model_state_dict" not in ckpt:
        raise UserError(f"{cfg.checkpoint} is not a target network's last.pt (tools/train_target.py) "
                        "(model.checkpoint)")
    recorded = ckpt.get("clip") or {}
    if recorded and (recorded.get("name"), recorded.get("pretrained")) != (cfg.clip.name, cfg.clip.pretrained):
        log.warning("the target was trained with the class embeddings of CLIP %s / %s; model.clip gives %s / %s",
                    recorded.get("name"), recorded.get("pretrained"), cfg.clip.name, cfg.clip.pretrained)
    name, model = load_clip(cfg)
    text = build_text(cfg, model, name)  # only the text tower classifies: no image tower is built
    target = build_target(parse(TargetConfig, {**ckpt["target"], "pretrained": None}, "target"), text.dim)
    load_target_state(target, ckpt["model_state_dict"], cfg.checkpoint)
    model = TargetModel(target, text)
    model.unseen = ckpt.get("unseen")  # a zero-shot target: its unseen classes (mIoU seen / unseen / hIoU)
    return model


MODEL_BUILDERS: Mapping[str, Callable[[ModelConfig], nn.Module]] = MappingProxyType({
    "maskclip": build_maskclip,
    "clip_dinoiser": build_clip_dinoiser,
    "dino_maskclip": build_dino_maskclip,
    "target": build_target_model,
})


def check_model_files(cfg: ModelConfig) -> None:
    """Fail on a missing local file that ``cfg`` names, before any weights are loaded."""
    check_local_file(cfg.clip.pretrained, "CLIP checkpoint", "model.clip.pretrained")
    if cfg.name == "clip_dinoiser":
        if cfg.checkpoint and cfg.checkpoint != RELEASED_NAME and not os.path.isfile(cfg.checkpoint):
            kind = "is a folder" if os.path.isdir(cfg.checkpoint) else "not found"
            raise FileNotFoundError(f"heads checkpoint {kind}: {cfg.checkpoint} (model.checkpoint; "
                                    "model.checkpoint=released downloads the authors' heads, 7 MB)")
    if cfg.name == "dino_maskclip":
        from ..teachers import check_teacher_files

        check_teacher_files(model_teachers(cfg), "model.teachers")
    if cfg.name == "target" and (not cfg.checkpoint or cfg.checkpoint == RELEASED_NAME
                                 or not os.path.isfile(cfg.checkpoint)):
        raise FileNotFoundError(f"model=target needs its trained network: model.checkpoint=<run folder>/last.pt "
                                f"(got {cfg.checkpoint})")


# Models that read a ViT's blocks or patch grid: not on a ResNet tower.
VIT_ONLY = MappingProxyType({
    "clip_dinoiser": "its heads read the ViT block model.feats_idx",
    "dino_maskclip": "DINO's correlations are on a ViT's 16-pixel patch grid",
})


def model_config(cfg: ModelConfig | Mapping[str, Any], prefix: str = "model") -> ModelConfig:
    """``cfg`` as a checked ``ModelConfig``: an unknown key or a wrong type is a ``ConfigError``
    naming it, as are the model name and the extension points (which are imported here), and a
    model on a tower it cannot use."""
    cfg = parse(ModelConfig, cfg, prefix)
    locate(cfg.name, MODEL_BUILDERS, f"{prefix}.name")  # a built-in, or the import path of your own builder
    locate(cfg.clip.backbone, BACKBONES, f"{prefix}.clip.backbone")
    locate(cfg.pooling, POOLINGS, f"{prefix}.pooling")
    if cfg.name in VIT_ONLY and cfg.clip.backbone == "open_clip":
        name = register_model_config(cfg.clip.name)
        if is_resnet_config(name):
            raise ConfigError(f"{prefix}.clip.name={cfg.clip.name} is a ResNet tower: {prefix}.name={cfg.name} needs "
                              f"a ViT ({VIT_ONLY[cfg.name]}); {prefix}=maskclip runs on ResNets")
    return cfg


def check_model_config(cfg: ModelConfig | Mapping[str, Any], prefix: str = "model") -> ModelConfig:
    """``model_config`` and its local files, checked before any weights are loaded (``prefix``:
    where the config sits, for messages: ``model``, ``annotator``)."""
    cfg = model_config(cfg, prefix)
    check_model_files(cfg)
    return cfg


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> MaskCLIP:
    """Build the model ``cfg.name`` (``clip_dinoiser``, ``maskclip``, ``dino_maskclip``, ``target``,
    or the import path of your own builder) in eval mode."""
    cfg = check_model_config(cfg)
    return locate(cfg.name, MODEL_BUILDERS, "model.name")(cfg).eval()
