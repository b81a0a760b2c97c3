"""MaskCLIP+'s target network (Zhou et al., ECCV 2022, Sec. 3.3): a standard segmentation network
whose classifier is the frozen, L2-normalised text embeddings of the vocabulary, trained from the
pseudo-labels of a frozen annotator; it stays open-vocabulary (a new vocabulary is a new buffer).

The pieces follow MaskCLIP's repository (chongzhou96/MaskCLIP), written anew:

- backbone: mmseg's ``ResNetV1c`` depth 101, ``d8`` (strides 1,2,1,1, dilations 1,1,2,4,
  ``contract_dilation``: the first block of a dilated stage uses half the dilation). timm's
  ``resnet101c`` is the same network (deep 3x3 stem 32-32-64, no average-pool downsampling,
  stride on the 3x3 conv), and ``features_only=True, output_stride=8`` dilates it the same way
  (a stage's first block keeps the previous stage's dilation: 1 then 2 in layer3, 2 then 4 in
  layer4). Deviation: the weights. MaskCLIP+ started from ``open-mmlab://resnet101_v1c``; timm
  lists ``resnet101c.gluon_in1k`` (GluonCV's ResNet-101 v1c) for this network. A local file in
  timm's or mmseg's key names (``stem.*``, the open-mmlab checkpoint) loads too.
  (Their ViT-B/16 configs, ``maskclip_plus_vit16_deeplabv2_r101-d8_*``, inherit
  ``_base_/models/maskclip_plus_vit16.py`` without overriding ``depth=50`` /
  ``resnet50_v1c``: despite the name, they built a ResNet-50; the RN50 configs do set 101.)
- decode module: ``ASPPHeadV2`` (``mmseg/models/decode_heads/aspp_headv2.py``): one
  ``ConvModule`` per dilation 6/12/18/24 on the last features, summed. ``MaskClipPlusHead`` passes
  its ``norm_cfg`` (SyncBN) and ``BaseDecodeHead``'s default ``act_cfg`` (ReLU) down, so each
  branch is conv3x3 (no bias: mmcv's ``bias='auto'`` with a norm) -> BN -> ReLU, initialised by
  mmcv's ``kaiming_init`` (normal, fan_out, relu); the width is the text width (512 for ViT-B/16).
  Unlike the original DeepLabv2, the branches are summed *features*, not class scores.
- classifier: ``MaskClipPlusHead.cls_seg``: ``F.conv2d(feat, text_embeddings[:, :, None, None])``,
  no bias, ``norm_feat=False`` (features not normalised), no temperature, ``dropout_ratio=0``;
  the embeddings are normalise(mean over templates of normalised text features)
  (``tools/maskclip_utils/prompt_engineering.py``), as ``TextClassifier`` gives them.
- input normalisation: ImageNet mean/std on RGB (``img_norm_cfg``), done here on [0, 1] input.
- the alternative ``deeplabv3plus`` is mmseg's ``DepthwiseSeparableASPPHead`` (image pooling,
  1x1 and depthwise-separable dilated branches, concatenated, 3x3 bottleneck, a 48-channel
  stride-4 skip, two depthwise-separable 3x3 convs), dilations 1/12/24/36 as MaskCLIP+'s
  zero-shot Context config.

Norm layers are ``BatchNorm2d`` kept in training mode during training (MaskCLIP+: SyncBN,
``norm_eval=False``); under DDP convert them with :func:`convert_sync_batchnorm`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import DROPOUT, TargetConfig
from ..download import hub_offline_if_unreachable
from ..errors import ConfigError, UserError
from ..files import check_local_file
from ..readers import read_weights, state_dict_of, state_mismatch
from ..values import COUNT, NON_NEGATIVE_INT
from ..weights import Weight, local_or_value, timm_weight
from .maskclip import Decoding, Features
from .text import Classes

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # MaskCLIP+ img_norm_cfg (123.675, 116.28, 103.53) / 255
IMAGENET_STD = (0.229, 0.224, 0.225)  # (58.395, 57.12, 57.375) / 255

ARCH_DILATIONS = MappingProxyType({"deeplabv2": (6, 12, 18, 24), "deeplabv3plus": (1, 12, 24, 36)})


# ----------------------------------------------------------------------------- building blocks


class ConvBNReLU(nn.Sequential):
    """mmcv's ``ConvModule`` with a norm and ReLU: conv (no bias) -> BatchNorm2d -> ReLU, the conv
    initialised as mmcv does (Kaiming normal, fan_out, relu) and the norm to (1, 0)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *, dilation: int = 1,
                 groups: int = 1) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class SeparableConv(nn.Sequential):
    """mmcv's ``DepthwiseSeparableConvModule``: depthwise ConvBNReLU, then pointwise ConvBNReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(in_channels, in_channels, kernel_size, dilation=dilation, groups=in_channels)
        self.pointwise = ConvBNReLU(in_channels, out_channels, 1)


def _branch(in_channels: int, channels: int, dilation: int, separable: bool = False) -> nn.Module:
    """One ASPP branch: 1x1 for dilation 1 (as mmseg's ASPP modules), else a dilated 3x3."""
    if dilation == 1:
        return ConvBNReLU(in_channels, channels, 1)
    if separable:
        return SeparableConv(in_channels, channels, 3, dilation=dilation)
    return ConvBNReLU(in_channels, channels, 3, dilation=dilation)


class ASPPv2(nn.Module):
    """DeepLabv2's ASPP as MaskCLIP+'s ``ASPPHeadV2``: parallel dilated ConvBNReLU on the last
    backbone features, summed. B x C x h x w (list, last used) -> B x channels x h x w."""

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int] = ARCH_DILATIONS["deeplabv2"]) -> None:
        super().__init__()
        self.dilations = tuple(dilations)
        self.branches = nn.ModuleList(_branch(in_channels, channels, d) for d in self.dilations)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = feats[-1]
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class ASPPv3Plus(nn.Module):
    """DeepLabv3+ as mmseg's ``DepthwiseSeparableASPPHead``. Reads [stride-4 features, last
    features]; returns B x channels x H/4 x W/4 (the skip's grid; the last features' grid when
    ``c1_channels`` is 0)."""

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int] = ARCH_DILATIONS["deeplabv3plus"],
                 *, c1_in_channels: int, c1_channels: int = 48) -> None:
        super().__init__()
        self.dilations = tuple(dilations)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1))
        self.branches = nn.ModuleList(_branch(in_channels, channels, d, separable=True) for d in self.dilations)
        self.bottleneck = ConvBNReLU((len(self.dilations) + 1) * channels, channels, 3)
        self.c1_bottleneck = ConvBNReLU(c1_in_channels, c1_channels, 1) if c1_channels > 0 else None
        self.sep_bottleneck = nn.Sequential(SeparableConv(channels + c1_channels, channels, 3),
                                            SeparableConv(channels, channels, 3))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = feats[-1]
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = self.bottleneck(torch.cat([pooled, *(b(x) for b in self.branches)], dim=1))
        if self.c1_bottleneck is not None:
            c1 = self.c1_bottleneck(feats[0])
            out = F.interpolate(out, size=c1.shape[-2:], mode="bilinear", align_corners=False)
            out = torch.cat([out, c1], dim=1)
        return self.sep_bottleneck(out)


# ----------------------------------------------------------------------------- the target network


class TargetSegmenter(nn.Module):
    """Backbone -> decode module -> frozen text classifier (MaskCLIP+'s target network).

    Args:
        backbone: timm ``features_only`` model returning a list of feature maps.
        head: decode module reading ``[features[i] for i in levels]``, giving B x D x h x w.
        levels: backbone feature levels the head reads.
        dropout: Dropout2d probability before the classifier.

    The class embeddings (K x D, L2-normalised) are a non-persistent buffer set by
    ``set_classes``: not trained, not in the state dict, moved by ``.to()``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, levels: Sequence[int], *, dropout: float = 0.0,
                 bg_width: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.levels = tuple(levels)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        # MaskCLIP+'s cls_bg: nn.Parameter(torch.randn(1, text_channels)), normalised in cls_seg
        self.bg_embedding = nn.Parameter(torch.randn(1, bg_width)) if bg_width else None
        self.bg_index: int | None = None
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("class_embeddings", torch.empty(0), persistent=False)

    def set_classes(self, embeddings: Tensor, bg_index: int | None = None) -> None:
        """Make ``embeddings`` (K x D text embeddings; normalised here) the classifier; with a
        learned background embedding (``cls_bg``) it replaces row ``bg_index`` (the class named
        'background', which it needs)."""
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"class embeddings must be K x D with K >= 1, got {tuple(embeddings.shape)}")
        if self.bg_embedding is not None and bg_index is None:
            raise ConfigError("target.cls_bg=true needs a class named 'background' in the vocabulary")
        emb = F.normalize(embeddings.detach().float(), dim=-1)
        self.class_embeddings = emb.to(self.pixel_mean.device)
        self.bg_index = bg_index

    def embed(self, images: Tensor) -> Tensor:
        """B x 3 x H x W RGB in [0, 1] -> B x D x h x w decode features (the classifier's input)."""
        feats = self.backbone((images - self.pixel_mean) / self.pixel_std)
        return self.head([feats[i] for i in self.levels])

    def classify(self, feats: Tensor, embeddings: Tensor | None = None, bg_index: int | None = None) -> Tensor:
        """B x D x h x w features -> B x K x h x w logits: ``cls_seg``, a 1x1 conv with the class
        embeddings (default: those of ``set_classes``; with ``cls_bg``, the normalised learned
        embedding in the background's row), no bias, no normalisation, no temperature."""
        if embeddings is None:
            emb, bg_index = self.class_embeddings, self.bg_index
        else:
            emb = embeddings
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise RuntimeError("the target has no classes: call set_classes(embeddings) first")
        emb = emb.to(device=feats.device, dtype=feats.dtype)
        if self.bg_embedding is not None:
            if bg_index is None:
                raise ConfigError("this target learned a background embedding (cls_bg): its vocabulary needs a class "
                                  "named 'background'")
            bg = F.normalize(self.bg_embedding, dim=-1).to(emb.dtype)
            emb = torch.cat([emb[:bg_index], bg, emb[bg_index + 1:]])
        feats = self.dropout(feats)
        return F.conv2d(feats, emb[:, :, None, None])

    def forward(self, images: Tensor) -> Tensor:
        """B x 3 x H x W RGB in [0, 1] -> B x K x h x w logits at the head's grid (H/8 for deeplabv2)."""
        return self.classify(self.embed(images))

    def logits_at_input(self, images: Tensor) -> Tensor:
        """``forward``'s logits resized bilinearly (align_corners=False) to H x W, as mmseg's
        decode heads resize them for the loss."""
        return F.interpolate(self(images), size=images.shape[-2:], mode="bilinear", align_corners=False)


class TargetModel(nn.Module):
    """A target network behind the segmenters' interface (``features`` / ``decode``, see
    ``maskclip.py``), so the evaluator, the demo and sweeps run it as any other model.

    ``decode`` returns ``softmax(logits)`` over the classes of ``classes`` (their embeddings are the
    classifier weights). Of ``Decoding`` it uses nothing: MaskCLIP+ has no temperature, the
    background refinement needs objectness (none here) and is skipped; key smoothing and prompt
    denoising act on CLIP's features and are refused.

    Args:
        target: the trained network.
        text: ``TextClassifier`` (``text.classes(vocabulary)`` gives the embeddings).
    """

    def __init__(self, target: TargetSegmenter, text: nn.Module) -> None:
        super().__init__()
        self.target = target
        self.text = text
        self.decoding = Decoding(gamma=0.0, delta=0.0, bg_refine=False, ks_thresh=0.0, pd_thresh=0.0,
                                 temperature=1.0)
        self.unseen: Mapping[str, Any] | None = None  # zero-shot: {benchmark, indices, names} of its unseen classes

    @property
    def class_names(self) -> list[str]:
        return self.text.class_names

    def set_vocabulary(self, names: Sequence[str]) -> None:
        """Set the classes to segment (the text classifier's and the target's)."""
        self.text.set_vocabulary(names)
        self.target.set_classes(self.text.current.embeddings, self.text.current.bg_index)

    def features(self, images: Tensor, *, keys: bool = False) -> Features:
        """B x 3 x H x W RGB in [0, 1] -> the target's decode features (``keys`` is ignored: none)."""
        return Features(self.target.embed(images))

    def decode(self, feats: Features, decoding: Decoding | None = None, classes: Classes | None = None) -> Tensor:
        """Features -> class probabilities B x K x h x w (fp32); ``decoding.scores`` = ``logits``:
        the classifier's scores (MaskCLIP+'s head output)."""
        d = decoding or self.decoding
        if d.ks_thresh > 0 or d.pd_thresh > 0:
            raise ConfigError("key smoothing and prompt denoising apply to CLIP's features, not to a target network")
        classes = classes or self.text.current
        logits = self.target.classify(feats.dense, classes.embeddings, classes.bg_index).float()
        return logits if d.scores == "logits" else logits.softmax(dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """B x 3 x H x W RGB in [0, 1] -> B x K x h x w class probabilities."""
        return self.decode(self.features(images))


# ----------------------------------------------------------------------------- building


def _mmseg_resnet_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """mmseg / mmcv ResNetV1c key names -> timm's: the deep stem ``stem.{0,1,3,4,6,7}`` is timm's
    ``conv1.{0,1,3,4,6}`` + ``bn1``; the stages (``layerN.i.convK``, ``bnK``, ``downsample``) coincide."""
    renamed = {}
    for k, v in state.items():
        if k.startswith("stem."):
            idx, rest = k.removeprefix("stem.").split(".", 1)
            k = f"bn1.{rest}" if idx == "7" else f"conv1.{idx}.{rest}"
        renamed[k] = v
    return renamed


def read_backbone_state(path: str, key: str = "target.pretrained") -> dict[str, Tensor]:
    """A backbone state dict from ``path``: plain, or under ``state_dict`` / ``model``, with
    ``module.`` / ``backbone.`` prefixes stripped and mmseg ResNet names mapped to timm's."""
    state = state_dict_of(read_weights(path, "target backbone weights", key))
    if state is None:
        raise UserError(f"target backbone weights {path} ({key}): not a state dict of tensors")
    return _mmseg_resnet_keys(state)


def _create(name: str, pretrained: bool, output_stride: int, kwargs: Mapping[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, output_stride=output_stride,
                                 **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"target.backbone={name}: unknown timm model") from e
        raise
    except (TypeError, AssertionError) as e:  # models without output_stride / features_only support
        raise ConfigError(f"target.backbone={name}: timm cannot build it with features_only and "
                          f"output_stride={output_stride} ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                          ) from e


def backbone_weight(pretrained: str | None, key: str = "target.pretrained") -> Weight | None:
    """The backbone's weights file (``weights.Weight`` row; None: random weights)."""
    return timm_weight(pretrained, key, "target backbone weights")


def load_backbone(name: str, pretrained: str | None, *, output_stride: int = 8,
                  kwargs: Mapping[str, Any] | None = None, key: str = "target.pretrained") -> nn.Module:
    """A timm ``features_only`` backbone dilated to ``output_stride``, with its weights.

    Args:
        name: timm architecture (``resnet101c``).
        pretrained: timm ``name.tag`` (downloaded by timm on first use; its local copy
            ``<name.tag>.safetensors`` in the weights folder is used when there is one, see
            ``weights.py``), a local state-dict file (timm key names, or mmseg's ResNetV1c
            names), or None / empty for random weights.
        output_stride: stride of the last features.
        kwargs: timm ``create_model`` overrides.
        key: the config key of ``pretrained``, for messages.
    """
    kwargs = dict(kwargs or {})
    check_local_file(pretrained, "target backbone weights", key)
    if pretrained and not os.path.isfile(pretrained) and pretrained.split(".")[0] != name:
        raise ConfigError(f"{key}={pretrained} holds weights of {pretrained.split('.')[0]}, not of "
                          f"target.backbone={name}")
    log.info("building the target network's backbone %s (%s)", name, pretrained or "random weights")
    pretrained = local_or_value(backbone_weight(pretrained, key))
    if pretrained and os.path.isfile(pretrained):
        model = _create(name, False, output_stride, kwargs)
        _load_state(model, read_backbone_state(pretrained, key), pretrained)
    elif pretrained:
        try:
            with hub_offline_if_unreachable():
                model = _create(pretrained, True, output_stride, kwargs)
        except ConfigError:
            raise
        except Exception as e:  # offline machine, unknown tag
            raise UserError(f"cannot load target backbone '{pretrained}' from timm: {str(e).splitlines()[0]} "
                            f"(offline? pass a local weights file as {key})") from e
    else:
        model = _create(name, False, output_stride, kwargs)
    reached = model.feature_info.reduction()[-1]
    if reached != output_stride:
        raise ConfigError(f"target.backbone={name}: its last features have stride {reached}, not "
                          f"target.output_stride={output_stride}")
    return model


def _load_state(model: nn.Module, state: Mapping[str, Tensor], path: str) -> None:
    """Load ``state`` into ``model``; keys the features-only model lacks (the classifier) are dropped."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise UserError(f"target backbone weights {path} do not fit the backbone: missing {missing[:5]}"
                        f"{' ...' if len(missing) > 5 else ''}")
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise UserError(f"target backbone weights {path} do not fit the backbone: {wrong[0]} is "
                        f"{tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}")
    dropped = sorted(k for k in state if k not in own)
    if dropped:
        log.info("target backbone weights %s: %d entries not in the backbone ignored (%s ...)", path, len(dropped),
                 dropped[0])
    model.load_state_dict({k: state[k] for k in own})


def _levels(backbone: nn.Module, low_level: bool) -> tuple[int, ...]:
    """Feature levels a head reads: the last one, after the last stride-4 one when ``low_level``."""
    last = len(backbone.feature_info.reduction()) - 1
    if not low_level:
        return (last,)
    fours = [i for i, r in enumerate(backbone.feature_info.reduction()) if r == 4]
    if not fours:
        raise ConfigError("target.arch=deeplabv3plus needs stride-4 backbone features; the backbone has strides "
                          f"{backbone.feature_info.reduction()}")
    return fours[-1], last


def _deeplabv2(backbone: nn.Module, width: int, cfg: TargetConfig) -> tuple[nn.Module, tuple[int, ...]]:
    levels = _levels(backbone, low_level=False)
    channels = backbone.feature_info.channels()
    return ASPPv2(channels[levels[-1]], width, cfg.dilations or ARCH_DILATIONS["deeplabv2"]), levels


def _deeplabv3plus(backbone: nn.Module, width: int, cfg: TargetConfig) -> tuple[nn.Module, tuple[int, ...]]:
    levels = _levels(backbone, low_level=True)
    channels = backbone.feature_info.channels()
    head = ASPPv3Plus(channels[levels[-1]], width, cfg.dilations or ARCH_DILATIONS["deeplabv3plus"],
                      c1_in_channels=channels[levels[0]], c1_channels=cfg.c1_channels)
    return head, levels


ArchBuilder = Callable[[nn.Module, int, TargetConfig], tuple[nn.Module, tuple[int, ...]]]
ARCHS: Mapping[str, ArchBuilder] = MappingProxyType({"deeplabv2": _deeplabv2, "deeplabv3plus": _deeplabv3plus})


def check_target_config(cfg: TargetConfig) -> None:
    """One-line ``ConfigError`` for a wrong arch or number (before any model is built)."""
    if cfg.arch not in ARCHS:
        raise ConfigError(f"target.arch={cfg.arch}: unknown (choose from {', '.join(ARCHS)})")
    COUNT.check(cfg.output_stride, "target.output_stride")
    NON_NEGATIVE_INT.check(cfg.c1_channels, "target.c1_channels")
    DROPOUT.check(cfg.dropout, "target.dropout")
    if cfg.dilations is not None:
        if len(cfg.dilations) == 0:
            raise ConfigError("target.dilations=[]: give at least one dilation (or null for the arch's)")
        for i, d in enumerate(cfg.dilations):
            COUNT.check(d, f"target.dilations[{i}]")


def build_target(cfg: TargetConfig, text_width: int) -> TargetSegmenter:
    """The target network of ``cfg`` whose decode features have ``text_width`` channels (CLIP's
    joint space: 512 for ViT-B/16), without classes (``set_classes``)."""
    check_target_config(cfg)
    backbone = load_backbone(cfg.backbone, cfg.pretrained, output_stride=cfg.output_stride, kwargs=cfg.kwargs)
    head, levels = ARCHS[cfg.arch](backbone, text_width, cfg)
    return TargetSegmenter(backbone, head, levels, dropout=cfg.dropout, bg_width=text_width if cfg.cls_bg else None)


def load_target_state(target: TargetSegmenter, state: Mapping[str, Tensor], path: str) -> None:
    """A trained target's state dict into ``target``: every key and shape, or one line naming what differs."""
    missing, unexpected, shapes = state_mismatch(target.state_dict(), state)
    if missing or unexpected or shapes:
        raise UserError(f"target checkpoint {path} does not fit its recorded network: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, other shapes {shapes[:3]}")
    target.load_state_dict(state)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm as SyncBatchNorm (MaskCLIP+ trained with SyncBN): call it
    before wrapping the model in DistributedDataParallel."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
