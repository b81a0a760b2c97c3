"""Test protocols as presets, and the numbers each method published under its own.

A protocol is everything between a benchmark's files and its mIoU that is not the model: the
keep-ratio resize, sliding windows or the whole image, what is averaged and resized, the input
normalisation, the prompt templates and the class names. Ours (CLIP-DINOiser's) is the default;
a published method's own protocol is a preset that reproduces its table (``protocol=maskclip``
on the command line, ``load(..., protocol="maskclip")`` in Python), and every model runs under
every protocol. A method's published numbers are printed beside ours only under its own preset.

Each preset is a set of config values (``slide.*``, ``data.*``, ``model.*``): ``PROTOCOLS`` holds
them once; ``register_configs`` (``config.py``) turns them into hydra's ``protocol`` group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Protocol:
    """One published test protocol.

    Attributes:
        name: the preset's name (``protocol=<name>``).
        source: where its settings come from.
        slide: ``slide.*`` values (``SlideConfig``; ``per_benchmark`` for a benchmark's own).
        model: ``model.*`` values (input normalisation, prompt templates).
        vocabulary_set: whose class names a benchmark is scored with (``data.vocabulary_set`` null).
    """

    name: str
    source: str
    slide: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    vocabulary_set: str = "clip_dinoiser"

    def node(self) -> dict[str, Any]:
        """The preset as a config node over a tool's whole config (hydra's ``_global_`` package)."""
        node: dict[str, Any] = {"protocol": self.name}
        for key in ("slide", "model"):
            if getattr(self, key):
                node[key] = _plain(getattr(self, key))
        return node


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


_MASKCLIP_CONTEXT = MappingProxyType({"scale": (520, 520)})  # configs/_base_/datasets/pascal_context*.py
PROTOCOLS: Mapping[str, Protocol] = MappingProxyType({p.name: p for p in [
    Protocol("clip_dinoiser", "CLIP-DINOiser's evaluation (Wysoczanska et al., ECCV 2024; its segmentation/configs): "
             "keep-ratio resize to (2048, 448), 448 x 448 windows with stride 224, probabilities averaged, CLIP's "
             "normalisation after zero padding, the 80 ImageNet templates, its class names"),
    Protocol("maskclip", "MaskCLIP's evaluation (Zhou et al., ECCV 2022; chongzhou96/MaskCLIP configs/maskclip/*.py "
             "and configs/_base_/datasets/*.py): test_cfg mode='whole' after a keep-ratio resize to (2048, 512) "
             "((520, 520) on PASCAL Context, (1024, 512) on Cityscapes), the head's scores resized, ImageNet "
             "mean/std (img_norm_cfg) with the ViT's zero padding after it, its mmseg ViT (LayerNorm eps 1e-6, exact "
             "GELU), the 85 templates and class names of tools/maskclip_utils/prompt_engineering.py",
             slide={"mode": "whole", "scale": (2048, 512), "scores": "logits",
                    "per_benchmark": {"context": _MASKCLIP_CONTEXT, "context59": _MASKCLIP_CONTEXT,
                                      "cityscapes": {"scale": (1024, 512)}}},
             model={"clip": {"input": "mmseg", "mmseg_vit": True}, "maskclip": {"templates": "maskclip85"}},
             vocabulary_set="maskclip"),
    Protocol("sclip", "SCLIP's evaluation (Wang et al., ECCV 2024; wangf3014/SCLIP b56bd30 clip_segmentor.py, "
             "configs/cfg_*.py): keep-ratio resize to (2048, 336) ((2048, 560) Cityscapes, (2048, 448) "
             "COCO-Stuff), 224 x 224 windows with stride 112, the cosines averaged and resized, CLIP's mean/std "
             "(SegDataPreProcessor, rounded) without padding, the 80 ImageNet templates, its class names "
             "(configs/cls_*.txt) each name a query, logit scale 65 on VOC and 50 on Context / COCO-Object with "
             "prob_thd 0.1 there, area_thd 0.1 on VOC",
             slide={"scale": (2048, 336), "crop": (224, 224), "stride": (112, 112), "scores": "logits",
                    "per_benchmark": {"cityscapes": {"scale": (2048, 560)}, "coco_stuff": {"scale": (2048, 448)}}},
             model={"clip": {"input": "floor"},
                    "per_benchmark": {"voc": {"maskclip": {"temperature": 65.0},
                                              "post": {"prob_thd": 0.1, "area_thd": 0.1}},
                                      "context": {"maskclip": {"temperature": 50.0}, "post": {"prob_thd": 0.1}},
                                      "coco_object": {"maskclip": {"temperature": 50.0}, "post": {"prob_thd": 0.1}}}},
             vocabulary_set="sclip"),
    Protocol("naclip", "NACLIP's evaluation (Hajimiri et al., WACV 2025; sinahmr/NACLIP 0cac3a6 naclip.py, "
             "configs/cfg_*.py): SCLIP's (resize to (2048, 336), (2048, 560) Cityscapes; 224 x 224 windows, stride "
             "112; cosines averaged; CLIP's rounded mean/std without padding; SCLIP's class names) except the whole "
             "image on VOC and VOC20 (slide_crop=0) and prob_thd 0.1 on VOC, Context, COCO-Object; PAMR is the "
             "model's (model.post.pamr_steps)",
             slide={"scale": (2048, 336), "crop": (224, 224), "stride": (112, 112), "scores": "logits",
                    "per_benchmark": {"voc": {"mode": "whole"}, "voc20": {"mode": "whole"},
                                      "cityscapes": {"scale": (2048, 560)}}},
             model={"clip": {"input": "floor"},
                    "per_benchmark": {b: {"post": {"prob_thd": 0.1}} for b in ("voc", "context", "coco_object")}},
             vocabulary_set="sclip"),
    Protocol("clearclip", "ClearCLIP's evaluation (Lan et al., ECCV 2024; mc-lan/ClearCLIP ad68a40 "
             "clearclip_segmentor.py, configs/cfg_*.py): keep-ratio resize to (2048, 448), 448 x 448 windows with "
             "stride 224 (224 x 224, stride 224 on Cityscapes), the cosines averaged and resized, CLIP's rounded "
             "mean/std with centred zero padding, its class names each name a query, prob_thd 0.5 VOC, 0.15 Context, "
             "0.4 COCO-Object",
             slide={"scale": (2048, 448), "crop": (448, 448), "stride": (224, 224), "scores": "logits",
                    "per_benchmark": {"cityscapes": {"crop": (224, 224), "stride": (224, 224)}}},
             model={"clip": {"input": "centre"},
                    "per_benchmark": {"voc": {"post": {"prob_thd": 0.5}}, "context": {"post": {"prob_thd": 0.15}},
                                      "coco_object": {"post": {"prob_thd": 0.4}}}},
             vocabulary_set="clearclip"),
    Protocol("proxyclip", "ProxyCLIP's evaluation (Lan et al., ECCV 2024; mc-lan/ProxyCLIP e7b767f "
             "proxyclip_segmentor.py, configs/cfg_*.py): keep-ratio resize to (2048, 336) ((2048, 448) Cityscapes "
             "and ADE20k), 336 x 336 windows with stride 112 (224 x 224 on Cityscapes), each padded around to a "
             "multiple of 56 (model.proxy.pad_to), the cosines averaged and resized, CLIP's rounded mean/std, its "
             "class names each name a query, prob_thd 0.2 VOC, 0.15 Context, 0.25 COCO-Object",
             slide={"scale": (2048, 336), "crop": (336, 336), "stride": (112, 112), "scores": "logits",
                    "per_benchmark": {"cityscapes": {"scale": (2048, 448), "crop": (224, 224)},
                                      "ade20k": {"scale": (2048, 448)}}},
             model={"clip": {"input": "floor"},
                    "per_benchmark": {"voc": {"post": {"prob_thd": 0.2}}, "context": {"post": {"prob_thd": 0.15}},
                                      "coco_object": {"post": {"prob_thd": 0.25}}}},
             vocabulary_set="proxyclip"),
]})
DEFAULT = "clip_dinoiser"


def get_protocol(name: str, key: str = "protocol") -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"{key}={name}: unknown test protocol (choose from {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base`` as plain dicts and lists, nested mappings merged key by key (``over`` wins)."""
    out = _plain(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else _plain(v)
    return out


# ----------------------------------------------------------------------------- MaskCLIP+ zero-shot

# MaskCLIP's zero-shot splits: the unseen classes (``suppress_labels``) of configs/maskclip_plus/zero_shot/*.py,
# as class indices of our benchmarks (after reduce_zero_label)
MASKCLIP_UNSEEN: Mapping[str, tuple[int, ...]] = MappingProxyType({
    "voc20": (15, 16, 17, 18, 19),  # potted plant, sheep, sofa, train, tv monitor (voc12aug_20)
    "voc": (16, 17, 18, 19, 20),  # the same, after the background (voc12aug)
    # cow, motorbike, sofa, cat, boat, fence, bird, tv monitor, keyboard, aeroplane (pascal_context, 60 classes)
    "context": (20, 34, 49, 15, 8, 25, 7, 55, 32, 1),
    "context59": (19, 33, 48, 14, 7, 24, 6, 54, 31, 0),  # the same classes without the background (derived)
    "coco_stuff": (19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160),
})

# The annotator of every MaskCLIP+ zero-shot config: MaskCLIP on OpenAI's R-50, no refinement, fed the
# ImageNet-normalised crop (MaskClipPlusHead's clip_cfg ResNetClip, the crop after Normalize), its text
# embeddings from its prompt engineering (85 templates, its class names)
_ZS_ANNOTATOR = MappingProxyType({"name": "maskclip", "bg_refine": False,
                                  "clip": MappingProxyType({"name": "RN50", "pretrained": "openai", "input": "mmseg"}),
                                  "maskclip": MappingProxyType({"ks_thresh": 0.0, "pd_thresh": 0.0,
                                                                "templates": "maskclip85"})})


def _zero_shot(benchmark: str, iterations: int, self_train_from: int, source: str, *, target: Mapping | None = None,
               train: Mapping | None = None) -> dict[str, Any]:
    return {"train": {"benchmark": benchmark, "unseen": "maskclip", "vocabulary_set": "maskclip",
                      "iterations": iterations, "self_train_from": self_train_from, **(train or {})},
            "target": dict(target or {}), "annotator": _ZS_ANNOTATOR, "zero_shot_source": source}


# tools/train_target.py zero_shot=<name>: MaskCLIP+'s zero-shot configs (CLIP-guided pseudo-labels on the unseen
# pixels from iteration 1, start_clip_guided=(1, N-1); the target's own from N, start_self_train=(N, -1))
ZERO_SHOT: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "voc20": _zero_shot("voc20", 20000, 2000, "maskclip_plus_r50_deeplabv2_r101-d8_512x512_20k_voc12aug_20"),
    "voc": _zero_shot("voc", 20000, 2000, "maskclip_plus_r50_deeplabv2_r101-d8_512x512_20k_voc12aug",
                      target={"cls_bg": True}),
    "context": _zero_shot("context", 40000, 4000, "maskclip_plus_r50_deeplabv3plus_r101-d8_480x480_40k_pascal_context",
                          target={"arch": "deeplabv3plus", "dilations": [1, 12, 24, 36], "c1_channels": 48,
                                  "cls_bg": True},
                          train={"lr": 0.004, "weight_decay": 1.0e-4}),
    "coco_stuff": _zero_shot("coco_stuff", 80000, 8000,
                             "maskclip_plus_r50_deeplabv2_r101-d8_512x512_80k_coco-stuff164k"),
})


def zero_shot_node(name: str) -> dict[str, Any]:
    """The preset ``zero_shot=<name>`` as a config node over tools/train_target.py's config."""
    node = {k: _plain(v) for k, v in ZERO_SHOT[name].items() if k != "zero_shot_source"}
    return {k: v for k, v in node.items() if v}


# ----------------------------------------------------------------------------- published numbers

@dataclass(frozen=True)
class Published:
    """A published mIoU and what it was measured with.

    Attributes:
        miou: the number.
        protocol: the protocol it was measured under.
        model: our model name that reproduces the method (``maskclip``, ``target``, ...).
        tower: open_clip architecture of the CLIP (``RN50``, ``ViT-B-16``, ...).
        pretrained: its weights tag.
        benchmark: our benchmark name.
        corruption: (name, severity) of the robustness protocol, or None (clean).
        zero_shot: MaskCLIP+'s zero-shot setting (a target trained with unseen classes).
        metric: ``mIoU``, or for a zero-shot target ``mIoU(unseen)``.
        method: the method's name as printed.
        source: where the number is printed.
    """

    miou: float
    protocol: str
    model: str
    tower: str
    pretrained: str
    benchmark: str
    corruption: tuple[str, int] | None = None
    zero_shot: bool = False
    metric: str = "mIoU"
    method: str = "MaskCLIP"
    source: str = ""


_MASKCLIP_README = "MaskCLIP, configs/maskclip/README.md (annotation-free; OpenAI CLIP; test_cfg whole)"
_PLUS_README = ("MaskCLIP, configs/maskclip_plus/README.md (DeepLabv2-R101-d8 target; the tower is the annotator's "
                "CLIP, OpenAI weights)")
_PLUS_ABSTRACT = "MaskCLIP (Zhou et al., ECCV 2022), abstract: mIoU of the unseen classes, MaskCLIP+ zero-shot"
PUBLISHED: tuple[Published, ...] = (
    # MaskCLIP, annotation-free (no KS/PD)
    *(Published(miou, "maskclip", "maskclip", tower, "openai", bench, source=_MASKCLIP_README)
      for tower, row in (("RN50", (41.5, 18.5, 10.2)), ("RN50x16", (50.9, 20.3, 13.6)),
                         ("ViT-B-16", (49.5, 21.7, 12.5)))
      for bench, miou in zip(("voc20", "context59", "coco_stuff"), row)),
    Published(30.9, "maskclip", "maskclip", "RN50", "openai", "voc20", ("speckle_noise", 1), source=_MASKCLIP_README),
    # MaskCLIP+, annotation-free: 2k / 4k / 8k iterations (COCO-Stuff R-50: 13.8, "slightly different than
    # the paper")
    *(Published(miou, "maskclip", "target", tower, "openai", bench, method="MaskCLIP+", source=_PLUS_README)
      for tower, row in (("RN50", (58.0, 23.9, 13.8)), ("RN50x16", (67.5, 25.2, 17.3)),
                         ("ViT-B-16", (None, 31.1, 18.0)))
      for bench, miou in zip(("voc20", "context59", "coco_stuff"), row) if miou is not None),
    # MaskCLIP+, zero-shot (R-50 annotator): the README's mIoU over all classes ("slightly different than the
    # paper") and the abstract's mIoU over the unseen classes
    *(Published(miou, "maskclip", "target", "RN50", "openai", bench, zero_shot=True, method="MaskCLIP+",
                source=_PLUS_README) for bench, miou in (("voc20", 87.8), ("context", 48.4), ("coco_stuff", 39.7))),
    *(Published(miou, "maskclip", "target", "RN50", "openai", bench, zero_shot=True, metric="mIoU(unseen)",
                method="MaskCLIP+", source=_PLUS_ABSTRACT)
      for bench, miou in (("voc20", 86.1), ("context", 66.7), ("coco_stuff", 54.7))),
)


# The training-free peers' published tables: OpenAI's ViT-B/16 (their clip.load / open_clip 'openai'), each method's
# default settings (config.METHODS), under its own protocol
_SCLIP_README = "SCLIP, README.md 'Results' (wangf3014/SCLIP b56bd30; default setup, no PAMR)"
_NACLIP_README = "NACLIP, README.md 'Results' (sinahmr/NACLIP 0cac3a6; reduced arch, naclip attention, std 5, PAMR on)"
_CLEARCLIP_README = ("ClearCLIP, README.md's results table (assets/results.png: the paper's appendix Table 2, five "
                     "benchmarks without a background class; mc-lan/ClearCLIP ad68a40)")
_ORDER8 = ("voc", "context", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")
PUBLISHED += (
    *(Published(miou, "sclip", "sclip", "ViT-B-16", "openai", bench, method="SCLIP", source=_SCLIP_README)
      for bench, miou in zip(_ORDER8, (59.63, 31.74, 33.52, 81.54, 34.46, 22.77, 32.34, 16.45))),
    *(Published(miou, "naclip", "naclip", "ViT-B-16", "openai", bench, method="NACLIP", source=_NACLIP_README)
      for bench, miou in zip(_ORDER8, (64.07, 34.99, 36.19, 83.03, 38.35, 25.69, 38.27, 19.05))),
    *(Published(miou, "clearclip", "clearclip", "ViT-B-16", pretrained, bench, method="ClearCLIP",
                source=_CLEARCLIP_README)
      for pretrained, row in (("openai", (80.9, 35.9, 23.9, 30.0, 16.7)),
                              ("laion2b_s34b_b88k", (81.4, 34.1, 23.1, 31.8, 18.9)))
      for bench, miou in zip(("voc20", "context59", "coco_stuff", "cityscapes", "ade20k"), row)),
)


def runs_as_published(model: Mapping[str, Any]) -> bool:
    """Whether ``model`` (a ``ModelConfig`` as a mapping) has its method's published settings: MaskCLIP
    without key smoothing or prompt denoising; a training-free peer with its own last block, classifier
    and post-processing (``config.METHODS``; its protocol's per-benchmark values aside)."""
    from .config import METHODS, ModelConfig, parse, plain

    name = model.get("name")
    maskclip = model.get("maskclip") or {}
    if name == "maskclip":
        return not (maskclip.get("ks_thresh") or maskclip.get("pd_thresh"))
    if name not in METHODS:
        return True
    ours = plain(parse(ModelConfig, {k: v for k, v in model.items() if k != "per_benchmark"}, "model"))
    own = plain(parse(ModelConfig, METHODS[name], "model"))
    keys = (("last_block",), ("post",), ("maskclip", "temperature"), ("maskclip", "synonyms"),
            ("maskclip", "templates"), ("maskclip", "ks_thresh"), ("maskclip", "pd_thresh"), ("clip", "pos_resize"),
            ("clip", "mmseg_vit"))

    def get(node: Any, path: tuple[str, ...]) -> Any:
        for p in path:
            node = node[p]
        return node

    return all(get(ours, k) == get(own, k) for k in keys)


def published_miou(protocol: str, model: Mapping[str, Any], benchmark: str,
                   corruption: tuple[str, int] | None = None, *, zero_shot: bool = False,
                   metric: str = "mIoU") -> Published | None:
    """The published ``metric`` of the method ``model`` (a ``ModelConfig`` as a mapping) on
    ``benchmark`` under ``protocol``, where its settings are the published ones (``runs_as_published``);
    None where nothing was published."""
    clip = model.get("clip") or {}
    if not runs_as_published(model):
        return None
    tower = str(clip.get("name") or "").removesuffix("-quickgelu")  # the same weights under open_clip's other name
    wanted = (protocol, model.get("name"), tower, clip.get("pretrained"), benchmark,
              tuple(corruption) if corruption else None, zero_shot, metric)
    for p in PUBLISHED:
        if (p.protocol, p.model, p.tower, p.pretrained, p.benchmark, p.corruption, p.zero_shot, p.metric) == wanted:
            return p
    return None
