"""Build segmenters from a ``ModelConfig`` (or a dict of its keys): a dict of builders, no registry.

Extension points, each a config key naming a built-in or the import path of your own callable:
``model.clip.backbone`` (the image tower), ``model.pooling`` (the pooling),
``model.teachers.<name>.type`` (DINO-MaskCLIP's correlation and objectness sources).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from torch import nn

from ..config import METHODS, Keys, LastBlockConfig, ModelConfig, TargetConfig, paper_teachers, parse, plain
from ..download import RELEASED_NAME, resolve_released
from ..errors import ConfigError, UserError
from ..plugins import locate
from ..readers import read_weights
from ..weights import (
    FILE,
    Weight,
    check_weights,
    clip_weight,
    file_weight,
    looks_like_file,
    released_weight,
    timm_weight,
)
from .backbone import Backbone, CLIPBackbone, as_mmseg_vit, is_resnet_config, load_open_clip, register_model_config
from .clip_dinoiser import CLIPDINOiser
from .heads import DINOiserHeads, load_heads
from .last_block import AttentionBlock, describe
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
    last_block = AttentionBlock(cfg.last_block.attention, cfg.last_block.arch, cfg.last_block.gaussian_std)
    if last_block != AttentionBlock():
        log.info("CLIP's last block: %s attention", describe(last_block))
    return CLIPBackbone.from_open_clip(clip_model, feats_idx=cfg.feats_idx, input=cfg.clip.input,
                                       last_block=last_block, pos_resize=cfg.clip.pos_resize)


# model.clip.backbone: factory(open_clip model, ModelConfig) -> Backbone
BACKBONES: Mapping[str, Callable[[nn.Module, ModelConfig], Backbone]] = MappingProxyType(
    {"open_clip": open_clip_backbone})
# model.pooling: (features, correlations, gamma) -> features
POOLINGS: Mapping[str, Pooling] = MappingProxyType({"guided": guided_pooling})


def build_clip(cfg: ModelConfig, keys: Keys = Keys()) -> tuple[Backbone, TextClassifier]:
    """The frozen image tower (``model.clip.backbone``) and the open_clip text classifier."""
    factory = locate(cfg.clip.backbone, BACKBONES, keys("clip.backbone"))
    name, model = load_clip(cfg, keys)
    return factory(model, cfg), build_text(cfg, model, name)


def load_clip(cfg: ModelConfig, keys: Keys = Keys()) -> tuple[str, nn.Module]:
    """(open_clip's model name, the open_clip model) of ``model.clip``."""
    name = register_model_config(cfg.clip.name)
    started = time.perf_counter()
    log.info("loading CLIP %s (%s)", name, cfg.clip.pretrained or "random weights")
    model = load_open_clip(name, cfg.clip.pretrained, keys("clip.pretrained"))
    log.info("CLIP %s loaded in %.1f s", name, time.perf_counter() - started)
    return name, model


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


def build_maskclip(cfg: ModelConfig, keys: Keys = Keys()) -> MaskCLIP:
    """MaskCLIP, or a peer that is MaskCLIP with another last block (SCLIP, NACLIP, ClearCLIP); with
    ``model.dinoiser``, its features pooled by CLIP-DINOiser's heads (``build_clip_dinoiser``)."""
    if cfg.dinoiser:
        return build_clip_dinoiser(cfg, keys=keys)
    backbone, text = build_clip(cfg, keys)
    return MaskCLIP(backbone, text, Decoding.from_config(cfg))


def build_clip_dinoiser(cfg: ModelConfig, training: bool = False, keys: Keys = Keys()) -> CLIPDINOiser:
    """CLIP-DINOiser with the heads of ``model.checkpoint``; ``training``: the heads are about to be
    trained (random heads are expected, not warned about). The backbone's last block is ``model.last_block``'s:
    MaskCLIP's value path by default, a peer's (``model=sclip model.dinoiser=true``) otherwise."""
    # "released": a local copy (checkpoints/last.pt), else the authors' last.pt downloaded once (before CLIP)
    checkpoint = resolve_released(cfg.checkpoint, "heads", cfg.checkpoint_url, key=keys("checkpoint"))
    pooling = locate(cfg.pooling, POOLINGS, keys("pooling"))
    backbone, text = build_clip(cfg, keys)
    heads = build_heads(cfg, backbone.width, checkpoint, training, keys)
    return CLIPDINOiser(backbone, text, heads, Decoding.from_config(cfg), pooling)


def build_heads(cfg: ModelConfig, width: int, checkpoint: str | None, training: bool = False,
                keys: Keys = Keys()) -> DINOiserHeads:
    """CLIP-DINOiser's heads on a tower of ``width`` channels, with the weights of ``checkpoint`` (a file)."""
    heads = DINOiserHeads(in_dim=width, proj_dim=cfg.proj_dim, kernel_size=cfg.kernel_size)
    if checkpoint:
        log.info("loading the CLIP-DINOiser heads %s", checkpoint)
        load_heads(heads, checkpoint)
    elif not training:
        log.warning("%s is not set: the CLIP-DINOiser heads are random", keys("checkpoint"))
    return heads


def build_proxyclip(cfg: ModelConfig, keys: Keys = Keys()) -> nn.Module:
    """ProxyCLIP with the proxy of ``model.proxy`` (a timm ViT: DINO's by default); with ``model.dinoiser``,
    its features pooled by CLIP-DINOiser's heads."""
    from ..teachers import FrozenViT, load_timm_vit  # needs timm
    from .proxyclip import ProxyCLIP

    heads = pooling = None
    if cfg.dinoiser:
        checkpoint = resolve_released(cfg.checkpoint, "heads", cfg.checkpoint_url, key=keys("checkpoint"))
        pooling = locate(cfg.pooling, POOLINGS, keys("pooling"))
    p = cfg.proxy
    log.info("loading ProxyCLIP's proxy %s (%s)", p.arch, p.pretrained or "random weights")
    proxy = FrozenViT(load_timm_vit(p.arch, p.pretrained, keys("proxy.pretrained"), **dict(p.kwargs)))
    backbone, text = build_clip(cfg, keys)
    if cfg.dinoiser:
        heads = build_heads(cfg, backbone.width, checkpoint, keys=keys)
    return ProxyCLIP(backbone, text, proxy, Decoding.from_config(cfg), beta=p.beta, gamma=p.gamma, pad_to=p.pad_to,
                     heads=heads, pooling=pooling)


def build_dino_maskclip(cfg: ModelConfig, keys: Keys = Keys()) -> nn.Module:
    from ..teachers import build_teachers, by_head  # needs timm
    from .dino_maskclip import DINOMaskCLIP

    pooling = locate(cfg.pooling, POOLINGS, keys("pooling"))
    teachers = build_teachers(model_teachers(cfg), keys("teachers"))
    dino, found = by_head(teachers, "correlation"), by_head(teachers, "objectness")
    if dino is None:
        raise ConfigError(f"{keys('teachers')}: dino_maskclip needs a correlation teacher (type: dino)")
    backbone, text = build_clip(cfg, keys)
    return DINOMaskCLIP(backbone, text, dino, found, Decoding.from_config(cfg), pooling)


def model_teachers(cfg: ModelConfig) -> Mapping[str, Any]:
    """``model.teachers``, or the paper's teachers where it is null."""
    return cfg.teachers if cfg.teachers is not None else paper_teachers()


RECORDED = "recorded"  # model=target's model.clip.name / .pretrained: the CLIP its last.pt records


def read_target_checkpoint(path: str | None, keys: Keys = Keys(), *, lazy: bool = False) -> dict[str, Any]:
    """A target network's ``last.pt`` (``tools/train_target.py``), or a one-line error naming it."""
    ckpt = read_weights(path or "", "target checkpoint", keys("checkpoint"), lazy=lazy)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("target"), dict) or "model_state_dict" not in ckpt:
        raise UserError(f"{path} is not a target network's last.pt (tools/train_target.py) ({keys('checkpoint')})")
    return ckpt


def _same(value: str | None, recorded: str | None) -> bool:
    """The same CLIP setting: equal, or the same local file named two ways."""
    if value == recorded:
        return True
    return bool(value and recorded and os.path.isfile(value) and os.path.isfile(recorded)
                and os.path.samefile(value, recorded))


def recorded_clip(cfg: ModelConfig, keys: Keys = Keys(), *, warn: bool = False) -> ModelConfig:
    """``model=target``'s CLIP: the one its ``last.pt`` records (the CLIP whose text embeddings the
    network was trained against) where ``model.clip`` says ``recorded`` (the default); another
    CLIP is a different classifier than the one trained, refused in one line unless
    ``model.other_clip=true`` (then ``warn``: a warning says so). Other models, and a checkpoint
    not there yet, are left as they are."""
    if cfg.name != "target" or not cfg.checkpoint or not os.path.isfile(cfg.checkpoint):
        return cfg
    recorded = read_target_checkpoint(cfg.checkpoint, keys, lazy=True).get("clip") or {}
    chosen = {k: recorded.get(k) if getattr(cfg.clip, k) == RECORDED else getattr(cfg.clip, k)
              for k in ("name", "pretrained")}
    if not chosen["name"]:
        raise ConfigError(f"{keys('clip.name')}: {cfg.checkpoint} records no CLIP (a run of an earlier version): "
                          f"give {keys('clip.name')} and {keys('clip.pretrained')}, the annotator's")
    if recorded and not all(_same(chosen[k], recorded.get(k)) for k in chosen):
        given = f"{chosen['name']} / {chosen['pretrained']}"
        trained = f"{recorded.get('name')} / {recorded.get('pretrained')}"
        if not cfg.other_clip:
            raise ConfigError(f"{keys('clip')}={given}: {cfg.checkpoint} was trained against the class embeddings of "
                              f"CLIP {trained} (recorded in it); another CLIP makes another classifier: leave "
                              f"{keys('clip')} out, or set {keys('other_clip')}=true to score it anyway")
        if warn:
            log.warning("%s: classifying with CLIP %s, not %s which the target was trained against (%s=true)",
                        cfg.checkpoint, given, trained, keys("other_clip"))
    return replace(cfg, clip=replace(cfg.clip, **chosen))


def build_target_model(cfg: ModelConfig, keys: Keys = Keys()) -> nn.Module:
    """A MaskCLIP+ target network trained by ``tools/train_target.py`` (``model.checkpoint``: its
    ``last.pt``, which records the network's settings), classifying with the class embeddings of
    CLIP's text tower (``model.clip``: by default the CLIP its annotator used, recorded in
    ``last.pt``; ``recorded_clip``)."""
    from .target import TargetModel, build_target, load_target_state

    log.info("loading the target network %s", cfg.checkpoint)
    cfg = recorded_clip(cfg, keys, warn=True)
    ckpt = read_target_checkpoint(cfg.checkpoint, keys)
    name, model = load_clip(cfg, keys)
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
    # the training-free peers: MaskCLIP's segmenter with the method's last block and decoding (config.METHODS)
    "sclip": build_maskclip,
    "naclip": build_maskclip,
    "clearclip": build_maskclip,
    "proxyclip": build_proxyclip,
})


def model_weights(cfg: ModelConfig, keys: Keys = Keys()) -> list[Weight]:
    """The weights files the model of ``cfg`` loads (``weights.Weight`` rows, with the keys as the
    user spells them): CLIP's, the heads (``clip_dinoiser``), the teachers' (``dino_maskclip``),
    the trained network (``target``)."""
    rows = [] if RECORDED in (cfg.clip.name, cfg.clip.pretrained) else [  # recorded in a target missing itself
        clip_weight(cfg.clip.name, cfg.clip.pretrained, keys("clip.pretrained"))]
    if cfg.name == "proxyclip":
        rows.append(timm_weight(cfg.proxy.pretrained, keys("proxy.pretrained"), "ProxyCLIP's proxy weights"))
    if cfg.name == "clip_dinoiser" or (cfg.dinoiser and cfg.name in DINOISER_ON):
        rows.append(released_weight(cfg.checkpoint, "heads", keys("checkpoint"), "heads checkpoint",
                                    cfg.checkpoint_url))
    if cfg.name == "dino_maskclip":
        from ..teachers import teacher_weights

        rows += teacher_weights(model_teachers(cfg), keys("teachers"))
    if cfg.name == "target":
        rows.append(file_weight(cfg.checkpoint, keys("checkpoint"), "target network (last.pt of a MaskCLIP+ run)"))
    if cfg.name not in MODEL_BUILDERS:  # a builder of your own may load other weights: only the files it names
        rows = [w for w in rows if w is not None and w.kind == FILE]
    return [w for w in rows if w is not None]


def check_model_files(cfg: ModelConfig, keys: Keys | str = Keys()) -> None:
    """Every weights file of ``cfg`` found (``model_weights``; missing ones listed together, each
    with its key), before any weights are loaded."""
    keys = Keys.of(keys)
    if cfg.name == "target" and (not cfg.checkpoint or cfg.checkpoint == RELEASED_NAME):
        raise FileNotFoundError(f"model=target needs its trained network: {keys('checkpoint')}=<run folder>/last.pt "
                                f"(got {cfg.checkpoint})")
    check_weights(model_weights(cfg, keys))


# Models that read a ViT's blocks or patch grid: not on a ResNet tower.
VIT_ONLY = MappingProxyType({
    "clip_dinoiser": "its heads read the ViT block model.feats_idx",
    "dino_maskclip": "DINO's correlations are on a ViT's 16-pixel patch grid",
    "sclip": "it changes the self-attention of the ViT's last block",
    "naclip": "it changes the self-attention of the ViT's last block",
    "clearclip": "it changes the self-attention of the ViT's last block",
    "proxyclip": "its proxy's attention replaces the self-attention of the ViT's last block",
})
# model.dinoiser: the models whose dense features CLIP-DINOiser's heads may pool (clip_dinoiser always does)
DINOISER_ON = ("maskclip", "sclip", "naclip", "clearclip", "proxyclip")
# the CLIP weights the released heads were trained on (their block feats_idx): others need heads of their own
RELEASED_HEADS_CLIP = ("ViT-B-16", "laion2b_s34b_b88k")
TRAIN_HEADS = ("python tools/train.py model.clip.pretrained={pretrained} train.data=<image folder> "
               "train.output=<run folder>")

# model.per_benchmark: the keys a benchmark may change (those applied after the network passes: Decoding's)
PER_BENCHMARK_KEYS = ("gamma", "delta", "bg_refine", "maskclip.ks_thresh", "maskclip.pd_thresh",
                      "maskclip.temperature", "maskclip.synonyms", "post.pamr_steps", "post.pamr_dilations",
                      "post.prob_thd", "post.area_thd")


def with_method_defaults(cfg: Any) -> Any:
    """``cfg`` (keys of a model config) over its method's own defaults (``config.METHODS``) where
    ``model.name`` is a training-free peer; a ``ModelConfig`` is returned as it is."""
    if isinstance(cfg, ModelConfig) or cfg is None:
        return cfg
    from ..protocols import merge

    keys = plain(cfg)
    name = keys.get("name", ModelConfig.name) if isinstance(keys, dict) else None
    return merge(METHODS[name], keys) if name in METHODS else cfg


def check_per_benchmark(cfg: ModelConfig, keys: Keys) -> None:
    """Every ``model.per_benchmark`` entry sets only ``PER_BENCHMARK_KEYS``, each a valid value."""
    from ..protocols import merge

    for bench, over in cfg.per_benchmark.items():
        where = f"{keys.prefix}.per_benchmark.{bench}"
        if not isinstance(over, dict):
            raise ConfigError(f"{where}: give the benchmark's keys, e.g. {{post: {{prob_thd: 0.1}}}}")
        for key in _dotted(over):
            if key not in PER_BENCHMARK_KEYS:
                raise ConfigError(f"{where}.{key}: only settings applied after the network passes differ per "
                                  f"benchmark ({', '.join(PER_BENCHMARK_KEYS)})")
        base = {k: v for k, v in plain(cfg).items() if k != "per_benchmark"}
        parse(ModelConfig, merge(base, over), where)


def _dotted(node: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        out += _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def model_config(cfg: ModelConfig | Mapping[str, Any], prefix: Keys | str = "model") -> ModelConfig:
    """``cfg`` as a checked ``ModelConfig``: an unknown key or a wrong type is a ``ConfigError``
    naming it, as are the model name and the extension points (which are imported here), and a
    model on a tower it cannot use."""
    keys = Keys.of(prefix)
    cfg = parse(ModelConfig, with_method_defaults(cfg), keys.prefix)
    locate(cfg.name, MODEL_BUILDERS, keys("name"))  # a built-in, or the import path of your own builder
    cfg = recorded_clip(cfg, keys)  # model=target: the CLIP its last.pt records
    locate(cfg.clip.backbone, BACKBONES, keys("clip.backbone"))
    locate(cfg.pooling, POOLINGS, keys("pooling"))
    if cfg.maskclip.synonyms == "max" and cfg.maskclip.pd_thresh > 0:
        raise ConfigError(f"{keys('maskclip.synonyms')}=max: prompt denoising ({keys('maskclip.pd_thresh')}) drops "
                          "classes, not names; use synonyms=mean with it")
    check_per_benchmark(cfg, keys)
    check_method(cfg, keys)
    if cfg.clip.backbone == "open_clip" and (cfg.name in VIT_ONLY or cfg.last_block != LastBlockConfig()
                                             or cfg.dinoiser):
        name = register_model_config(cfg.clip.name)
        if is_resnet_config(name) and cfg.name in VIT_ONLY:
            raise ConfigError(f"{keys('clip.name')}={cfg.clip.name} is a ResNet tower: {keys('name')}={cfg.name} "
                              f"needs a ViT ({VIT_ONLY[cfg.name]}); {keys.prefix}=maskclip runs on ResNets")
        if is_resnet_config(name) and cfg.dinoiser:
            raise ConfigError(f"{keys('dinoiser')}=true: {keys('clip.name')}={cfg.clip.name} is a ResNet tower; "
                              f"CLIP-DINOiser's heads need a ViT ({VIT_ONLY['clip_dinoiser']})")
        if is_resnet_config(name):
            changed = "attention" if cfg.last_block.attention != LastBlockConfig.attention else "arch"
            raise ConfigError(f"{keys('last_block.' + changed)}={getattr(cfg.last_block, changed)}: "
                              f"{keys('clip.name')}={cfg.clip.name} is a ResNet tower, whose attention pool has "
                              "no last block to change (a ViT's)")
    return cfg


def check_method(cfg: ModelConfig, keys: Keys) -> None:
    """The settings a method cannot run with: ``model.dinoiser`` on a model that is not MaskCLIP or a peer, or
    with the released heads on other CLIP weights than theirs; key smoothing on ProxyCLIP (its features are on
    its proxy's grid, the keys on CLIP's)."""
    if cfg.dinoiser and cfg.name not in DINOISER_ON and cfg.name != "clip_dinoiser":
        raise ConfigError(f"{keys('dinoiser')}=true: {keys('name')}={cfg.name} has no dense CLIP features to pool "
                          f"(choose from {', '.join(DINOISER_ON)})")
    if cfg.dinoiser and cfg.name in DINOISER_ON and cfg.checkpoint == RELEASED_NAME:
        pretrained = cfg.clip.pretrained or ""
        if (cfg.clip.name.removesuffix("-quickgelu"), pretrained) != RELEASED_HEADS_CLIP and not looks_like_file(
                pretrained):
            raise ConfigError(f"{keys('checkpoint')}={RELEASED_NAME}: the released heads read block -3 of "
                              f"{' / '.join(RELEASED_HEADS_CLIP)}, not of {cfg.clip.name} / {pretrained or 'random'}; "
                              f"train heads on it ({TRAIN_HEADS.format(pretrained=pretrained or 'null')}) and give "
                              f"{keys('checkpoint')}=<run folder>/last.pt")
    if cfg.name == "proxyclip" and cfg.maskclip.ks_thresh > 0:
        raise ConfigError(f"{keys('maskclip.ks_thresh')}={cfg.maskclip.ks_thresh}: ProxyCLIP's features are on its "
                          "proxy's grid, the keys key smoothing reads on CLIP's (0 = off)")


def check_model_config(cfg: ModelConfig | Mapping[str, Any], prefix: Keys | str = "model") -> ModelConfig:
    """``model_config`` and its weights files, checked before any weights are loaded (``prefix``:
    where the config sits, for messages: ``model``, ``annotator``, or ``Keys``)."""
    cfg = model_config(cfg, prefix)
    check_model_files(cfg, prefix)
    return cfg


def build_model(cfg: ModelConfig | Mapping[str, Any], keys: Keys | str = "model") -> MaskCLIP:
    """Build the model ``cfg.name`` (``clip_dinoiser``, ``maskclip``, ``dino_maskclip``, ``target``,
    or the import path of your own builder) in eval mode. ``keys``: how messages name the keys
    (``annotator`` for MaskCLIP+'s annotator; ``Keys``)."""
    keys = Keys.of(keys)
    cfg = check_model_config(cfg, keys)
    builder = locate(cfg.name, MODEL_BUILDERS, keys("name"))
    return (builder(cfg, keys=keys) if cfg.name in MODEL_BUILDERS else builder(cfg)).eval()
