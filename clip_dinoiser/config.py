"""Typed settings: one dataclass per component, every default written once, here.

The YAML files in ``configs/`` hold only what differs from these defaults; hydra composes them
on top of the dataclasses (``register_configs``), so a typo in a key or a wrong type fails at
the command line. The Python API goes through the same classes (``parse``): an unknown key
or a wrong type is a ``ConfigError`` naming the key::

    parse(ModelConfig, {"name": "clip_dinoiser", "gama": 0.3}, "model")
    # ConfigError: model.gama: unknown key (ModelConfig has: name, clip, ...)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from .errors import ConfigError
from .values import (
    COUNT,
    FRACTION,
    INTEGER,
    NON_NEGATIVE_INT,
    ODD_SIZE,
    PORT,
    POSITIVE,
    PRECISION_NAMES,
    SEVERITY,
    Kind,
    choice,
    kind,
    validate,
)

T = TypeVar("T")

INPUTS = ("clip", "mmseg", "floor", "centre")  # model.clip.input (models/backbone.py: input_stats, prepare_input)
POS_RESIZES = ("size", "dino")  # model.clip.pos_resize (models/backbone.py: interpolate_pos_embed)
ATTENTIONS = ("value", "vanilla", "csa", "qq", "kk", "naclip", "nonly")  # model.last_block.attention (last_block.py)
ARCHS = ("vanilla", "reduced")  # model.last_block.arch
SYNONYMS = ("mean", "max")  # model.maskclip.synonyms (models/text.py)
CORRUPTIONS = "clip_dinoiser.data.corruptions:CORRUPTIONS"  # data.corruption (imported when a value is checked)
VOCABULARY_SETS = "clip_dinoiser.data.benchmarks:vocabulary_sets"  # data.vocabulary_set


@dataclass
class CLIPConfig:
    """The frozen CLIP: open_clip text tower, and the image tower the ``backbone`` factory builds."""

    name: str = "ViT-B-16"  # open_clip architecture, or an open_clip model-config JSON file
    pretrained: str | None = "laion2b_s34b_b88k"  # pretrained tag, a local checkpoint file, or null (random)
    backbone: str = "open_clip"  # image tower: 'open_clip' or 'package.module.factory' (see README, Extending)
    input: str = choice(INPUTS, default="clip")  # clip: pad, then the tower's mean/std; mmseg: ImageNet's, then pad;
    # floor: CLIP's mean/std, cropped to the patch grid (SCLIP, NACLIP); centre: padded around after it (ClearCLIP)
    mmseg_vit: bool = False  # a ViT as MaskCLIP's mmseg port ran it: LayerNorm eps 1e-6, exact GELU (ResNets: no-op)
    pos_resize: str = choice(POS_RESIZES, default="size")  # positional embedding: to the grid's size, or dino's factor


@dataclass
class MaskCLIPConfig:
    """MaskCLIP's classifier and refinements."""

    ks_thresh: float = kind(FRACTION, default=0.0)  # key smoothing (0 = off)
    pd_thresh: float = kind(FRACTION, default=0.0)  # prompt denoising (0 = off)
    temperature: float = kind(POSITIVE, default=100.0)  # softmax temperature on cosine similarities
    templates: str = "imagenet80"  # imagenet80 (80 CLIP templates), maskclip85 (MaskCLIP's: 80 + 5 scene) or none
    synonyms: str = choice(SYNONYMS, default="mean")  # a class of several names: mean embedding, or max probability


@dataclass
class LastBlockConfig:
    """CLIP's last residual block as the dense methods change it (``models/last_block.py``)."""

    attention: str = choice(ATTENTIONS, default="value")  # value (MaskCLIP), csa (SCLIP), qq (ClearCLIP), naclip, ...
    arch: str = choice(ARCHS, default="vanilla")  # vanilla: residual and FFN kept; reduced: the attention output only
    gaussian_std: float = kind(POSITIVE, default=5.0)  # NACLIP's neighbourhood, in patches (naclip, nonly)


@dataclass
class PostConfig:
    """After the windows are averaged and resized to the image (SCLIP, NACLIP, ClearCLIP's evaluators)."""

    pamr_steps: int = kind(NON_NEGATIVE_INT, default=0)  # PAMR iterations on the image (0 = off; NACLIP: 10)
    pamr_dilations: list[int] = kind(COUNT, default_factory=lambda: [8, 16])  # PAMR's neighbourhoods (pixels)
    prob_thd: float = kind(FRACTION, default=0.0)  # a pixel whose top probability is below goes to class 0 (0 = off)
    area_thd: float = kind(FRACTION, default=0.0)  # a class under this share of the other pixels is dropped (SCLIP)


NON_NEGATIVE = Kind(low=0)


@dataclass
class ProxyConfig:
    """ProxyCLIP's proxy (``models/proxyclip.py``): a vision foundation model whose patch features give the
    attention of CLIP's last block (DINO ViT-B/8 in ProxyCLIP's code; ViT-B/16: ``vit_base_patch16_224``)."""

    arch: str = "vit_base_patch8_224"  # timm architecture
    pretrained: str | None = "vit_base_patch8_224.dino"  # timm name.tag, a local weights file, or null (random)
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm overrides (tests build tiny models)
    beta: float = kind(NON_NEGATIVE, default=1.2)  # the similarities' shift: minus beta times their mean
    gamma: float = kind(POSITIVE, default=3.0)  # their scale after the shift (negatives masked)
    pad_to: int = kind(COUNT, default=56)  # windows padded around to a multiple (their compute_padsize(.., 56))


# The student's heads, named by the teachers that train them (``Teacher.head``):
# correlation: B x N x N logits (N = h * w patches); objectness: B x 1 x h x w logits.
HEADS = ("correlation", "objectness")


@dataclass
class TeacherConfig:
    """One frozen teacher. ``type``: 'dino' (correlations), 'found' (objectness) or
    'package.module.factory' (a teacher of your own, called with this config)."""

    type: str = "dino"  # dino (correlations), found (objectness), or package.module.factory
    arch: str = "vit_base_patch16_224"  # timm architecture
    pretrained: str | None = "vit_base_patch16_224.dino"  # timm name.tag, a local weights file, or null
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm overrides (tests build tiny models)
    decoder: str | None = None  # FOUND: decoder_weights.pt, or 'released' (downloaded once)
    decoder_url: str | None = None  # download address for 'released' (default: FOUND's repository)
    antialias: bool = False  # FOUND: antialiased resize to the CLIP grid (the reference: no)
    options: dict[str, Any] = field(default_factory=dict)  # settings of a teacher of your own


def paper_teachers() -> dict[str, TeacherConfig]:
    """The paper's teachers: DINO ViT-B/16 correlations, FOUND (DINO ViT-S/8 + decoder) objectness."""
    return {
        "dino": TeacherConfig(),
        "found": TeacherConfig(type="found", arch="vit_small_patch8_224", pretrained="vit_small_patch8_224.dino",
                               decoder="released"),
    }


@dataclass
class ModelConfig:
    """A segmenter: ``clip_dinoiser`` (the paper), ``maskclip``, ``dino_maskclip``, or a training-free
    peer (``sclip``, ``naclip``, ``clearclip``: ``METHODS``)."""

    name: str = "clip_dinoiser"  # clip_dinoiser, maskclip, dino_maskclip, sclip, naclip, clearclip, proxyclip
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    text_cache: str | None = "auto"  # class-name embeddings on disk: auto, a folder, or null (off)
    checkpoint: str | None = "released"  # heads: 'released' (the authors' last.pt, downloaded once), a file, or null
    checkpoint_url: str | None = None  # download address for 'released' (default: the authors' repository)
    feats_idx: int = kind(INTEGER, default=-3)  # block whose ln_2 output feeds the heads
    gamma: float = kind(FRACTION, default=0.2)  # correlation threshold of the guided pooling (and training target)
    delta: float = kind(FRACTION, default=0.99)  # confidence threshold of the background refinement
    proj_dim: int = kind(COUNT, default=256)  # channels of the correlation head
    kernel_size: int = kind(ODD_SIZE, default=3)  # kernel of the correlation head (odd: keeps the patch grid)
    bg_refine: bool | None = None  # true / false / null = when the vocabulary has 'background'
    pooling: str = "guided"  # 'guided' (paper Eq. 1) or 'package.module.function'
    maskclip: MaskCLIPConfig = field(default_factory=MaskCLIPConfig)
    last_block: LastBlockConfig = field(default_factory=LastBlockConfig)  # CLIP's last block (SCLIP, NACLIP, ...)
    post: PostConfig = field(default_factory=PostConfig)  # PAMR and thresholds at the image's size
    per_benchmark: dict[str, Any] = field(default_factory=dict)  # a benchmark's own: {voc: {post: {prob_thd: 0.1}}}
    teachers: dict[str, Any] | None = None  # dino_maskclip: its teachers (null: the paper's)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)  # proxyclip: the proxy model and its attention
    dinoiser: bool = False  # maskclip and the peers: CLIP-DINOiser's heads pool their features (model.checkpoint)
    other_clip: bool = False  # model=target: classify with model.clip though its last.pt records another CLIP


# The training-free peers (model=sclip, naclip, clearclip): each method's settings over ModelConfig's, from its
# authors' code (models/peers.py cites each; configs/model/<name>.yaml holds the same, a test checks it)
METHODS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "sclip": {"clip": {"pretrained": "openai", "pos_resize": "dino"}, "bg_refine": False,
              "maskclip": {"temperature": 40.0, "synonyms": "max"}, "last_block": {"attention": "csa"}},
    "naclip": {"clip": {"pretrained": "openai", "pos_resize": "dino"}, "bg_refine": False,
               "maskclip": {"temperature": 40.0, "synonyms": "max"},
               "last_block": {"attention": "naclip", "arch": "reduced", "gaussian_std": 5.0},
               "post": {"pamr_steps": 10, "pamr_dilations": [8, 16]}},
    "clearclip": {"clip": {"pretrained": "openai", "pos_resize": "dino"}, "bg_refine": False,
                  "maskclip": {"temperature": 50.0, "synonyms": "max"},
                  "last_block": {"attention": "qq", "arch": "reduced"}},
    # ProxyCLIP: its last block is built per call from the proxy's features (models/proxyclip.py); the proxy's
    # settings are ProxyConfig's defaults; CLIP's input is cropped to its patch grid after the padding to 56
    "proxyclip": {"clip": {"pretrained": "openai", "pos_resize": "dino", "input": "floor"}, "bg_refine": False,
                  "maskclip": {"temperature": 40.0, "synonyms": "max"}},
})


DROPOUT = Kind(low=0, high=1, high_open=True)


@dataclass
class TargetConfig:
    """The target network of MaskCLIP+ (defaults: ``configs/_base_/models/maskclip_plus_*.py``)."""

    arch: str = "deeplabv2"  # decode module: deeplabv2 (ASPPHeadV2) or deeplabv3plus (DepthwiseSeparableASPPHead)
    backbone: str = "resnet101c"  # timm CNN with features_only and output_stride (resnet101c = mmseg ResNetV1c)
    pretrained: str | None = "resnet101c.gluon_in1k"  # timm name.tag, a local state dict (timm/mmseg keys), or null
    output_stride: int = kind(COUNT, default=8)  # backbone stride after dilation (MaskCLIP+: d8)
    dilations: list[int] | None = kind(COUNT, default=None)  # ASPP dilations; null: the arch's (see ARCH_DILATIONS)
    c1_channels: int = kind(NON_NEGATIVE_INT, default=48)  # deeplabv3plus: channels of the stride-4 skip (0: none)
    dropout: float = kind(DROPOUT, default=0.0)  # Dropout2d before the classifier (MaskCLIP+: dropout_ratio=0)
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm create_model overrides (tests build tiny models)
    norm_eval: bool = False  # BatchNorm statistics frozen during training (MaskCLIP+: false, SyncBN under DDP)
    cls_bg: bool = False  # a learned embedding classifies 'background' (MaskCLIP+'s zero-shot VOC / Context)


SLIDE_MODES = ("slide", "whole")
SCORES = ("probs", "logits")


@dataclass
class SlideConfig:
    """The test protocol's geometry (mmseg's ``slide`` or ``whole`` inference) and what it averages.

    Defaults: CLIP-DINOiser's protocol; ``protocol=maskclip`` (``protocols.py``) sets MaskCLIP's."""

    mode: str = choice(SLIDE_MODES, default="slide")  # slide: windows averaged; whole: the resized image at once
    scale: tuple[int, int] = kind(COUNT, length=2, default=(2048, 448))  # (long, short) bounds of the resize
    crop: tuple[int, int] = kind(COUNT, length=2, default=(448, 448))  # window size (h, w)
    stride: tuple[int, int] = kind(COUNT, length=2, default=(224, 224))  # window stride (h, w)
    window_batch: int = kind(COUNT, default=64)  # windows per model call
    scores: str = choice(SCORES, default="probs")  # averaged and resized: probs, or logits (MaskCLIP, see Decoding)
    per_benchmark: dict[str, Any] = field(default_factory=dict)  # a benchmark's own keys: {context59: {scale: ...}}

    def for_benchmark(self, name: str) -> SlideConfig:
        """This protocol on benchmark ``name``: its ``per_benchmark`` entry over the other keys."""
        own = self.per_benchmark.get(name)
        if not own:
            return dataclasses.replace(self, per_benchmark={})
        if "per_benchmark" in own:
            raise ConfigError(f"slide.per_benchmark.{name}.per_benchmark: not nested")
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "per_benchmark"}
        return parse(SlideConfig, {**base, **dict(own)}, f"slide.per_benchmark.{name}")


@dataclass
class BenchmarkConfig:
    """A benchmark of your own, in the mmseg layout: ``root/img_dir/*img_suffix`` with labels
    ``root/ann_dir/*seg_map_suffix`` (pixel value = class index, 255 = ignored)."""

    classes: str = MISSING  # class-name file, one class per line (the prompts and the label order)
    img_dir: str = "images"  # image folder under the root
    ann_dir: str = "annotations"  # label folder under the root
    split: str | None = None  # file of image names (without suffix) under root; null: every image
    img_suffix: str = ".jpg"  # image file suffix
    seg_map_suffix: str = ".png"  # label file suffix
    reduce_zero_label: bool = False  # label 0 is ignored and every other label shifts down by one
    bg_refine: bool = False  # background refinement (needs a class named 'background')
    paper_miou: float | None = None  # a reference mIoU to print next to yours
    title: str | None = None  # column title in the summary table (default: the name)


@dataclass
class DataConfig:
    """What ``tools/eval.py`` scores: one of the paper's benchmarks, ``all``, or your own."""

    name: str = "voc"  # a benchmark of the paper (voc, context, ...), all, or your own (with data.benchmark)
    root: str | None = None  # its folder (null: data/<the benchmark's mmseg folder>; data/ for 'all')
    names: list[str] | None = None  # data=all: the benchmarks (null: the paper's eight)
    vocabulary: str | None = None  # class-name file (null: the benchmark's own names)
    vocabulary_set: str | None = choice(VOCABULARY_SETS, default=None)  # clip_dinoiser, maskclip; null: the protocol's
    bg_refine: bool | None = None  # null: the paper's choice per benchmark
    benchmark: dict[str, Any] = field(default_factory=dict)  # your own benchmark: BenchmarkConfig's keys ({}: none)
    corruption: str | None = choice(CORRUPTIONS, what="corruption", default=None)  # ImageNet-C, before the resize
    severity: int = kind(SEVERITY, default=1)  # its severity, 1..5


@dataclass
class EvalConfig:
    model: ModelConfig = MISSING
    protocol: str = "clip_dinoiser"  # the test protocol preset (configs: protocol=maskclip; protocols.py)
    data: DataConfig = MISSING
    device: str = "auto"  # auto / cpu / cuda (torchrun: one GPU per rank)
    precision: str = choice(PRECISION_NAMES, what="precision", default="auto")  # auto: bf16 on native-bf16 CPUs
    loader_batch: int = kind(COUNT, default=8)  # images per loader item (consecutive images share model calls)
    num_workers: int | None = kind(NON_NEGATIVE_INT, default=None)  # loader processes per rank (null: CPU cores, <= 8)
    limit: int | None = kind(COUNT, default=None)  # evaluate only the first N images of each benchmark
    progress: bool = True  # progress bar
    output: str = "outputs/eval/${now:%Y-%m-%d_%H-%M-%S}"  # run folder: config, results.json, results.csv
    overwrite: bool = False  # replace the results of an earlier run in the same output folder
    slide: SlideConfig = field(default_factory=SlideConfig)
    sweep: Any = None  # {model.gamma:[0.1,0.2],...}: inference settings scored in one pass (engine/evaluation/sweep.py)
    save_predictions: bool = False  # the scored label maps: <output>/predictions/<benchmark>/*.png
    save_examples: int = kind(NON_NEGATIVE_INT, default=0)  # N figures image | truth | prediction per benchmark


@dataclass
class DemoConfig:
    model: ModelConfig = MISSING
    protocol: str = "clip_dinoiser"  # the test protocol preset (configs: protocol=maskclip; protocols.py)
    image: str = MISSING  # an image file, a folder of images, or a glob ('photos/*.jpg')
    prompts: Any | None = None  # class names '[cat,sofa,background]'; 'a,b' in one name = synonyms
    prompts_file: str | None = None  # or a UTF-8 text file, one class per line
    output: str = "outputs/demo"  # folder for <name>_mask.png, <name>_labels.png, <name>_figure.png
    device: str = "auto"  # auto / cpu / cuda
    precision: str = choice(PRECISION_NAMES, what="precision", default="auto")  # auto: bf16 on native-bf16 CPUs
    alpha: float = kind(FRACTION, default=0.5)  # overlay opacity
    figure: bool = True  # also write <name>_figure.png: input | MaskCLIP | CLIP-DINOiser | objectness
    query: list[int] | None = kind(NON_NEGATIVE_INT, length=2, default=None)  # [x, y]: correlations of this pixel
    progress: bool = True  # progress bar
    overwrite: bool = False  # replace the outputs of an earlier run with the same image names
    slide: SlideConfig = field(default_factory=SlideConfig)


@dataclass
class AppConfig:
    model: ModelConfig = MISSING
    protocol: str = "clip_dinoiser"  # the test protocol preset (configs: protocol=maskclip; protocols.py)
    host: str = "127.0.0.1"  # 0.0.0.0 to serve other machines
    port: int = kind(PORT, default=7860)
    examples: list[str] = field(default_factory=list)  # image files offered as examples on the page
    device: str = "auto"  # auto / cpu / cuda
    precision: str = choice(PRECISION_NAMES, what="precision", default="auto")  # auto: bf16 on native-bf16 CPUs
    alpha: float = kind(FRACTION, default=0.5)  # overlay opacity
    slide: SlideConfig = field(default_factory=SlideConfig)


@dataclass
class TrainSettings:
    data: str = MISSING  # image folder (any nesting; e.g. ImageNet's train/)
    output: str = "outputs/train/${now:%Y-%m-%d_%H-%M-%S}"  # run folder
    resume: str | None = None  # a run folder: continue from its newest checkpoint
    init: str | None = None  # heads to start from (fine-tuning): 'released' or a heads file; null: random
    ds_size: int | None = kind(COUNT, default=1000)  # images sampled from the folder with the seed (null: all)
    skip_bad_images: bool = False  # true: unreadable images are logged and replaced (else the run stops)
    batch_size: int = kind(COUNT, default=16)  # global batch (split over torchrun processes)
    epochs: int = kind(COUNT, default=100)  # passes over the sampled images
    corr_lr: float = kind(POSITIVE, default=5.0e-5)  # the correlation head (obj_proj)
    found_lr: float = kind(POSITIVE, default=1.0e-2)  # the objectness head (bkg_decoder)
    milestones: list[int] = kind(NON_NEGATIVE_INT, default_factory=lambda: [5000])  # iterations of the decays
    step_lr_gamma: float = kind(POSITIVE, default=0.1)  # learning-rate factor at each milestone
    im_size: int = kind(Kind(integer=True, low=16), default=448)  # training crop size
    antialias: bool = False  # image resize without antialiasing, as the reference (torchvision 0.13.1)
    num_workers: int | None = kind(NON_NEGATIVE_INT, default=None)  # loader processes per rank (null: CPU cores, <= 8)
    seed: int = kind(NON_NEGATIVE_INT, default=0)  # sample, order, augmentations and initial heads
    save_every: int = kind(COUNT, default=500)  # iterations between checkpoints
    log_every: int = kind(COUNT, default=50)  # iterations between the loss lines in train.log and the console
    keep_checkpoints: int = kind(COUNT, default=2)  # newest checkpoints kept in checkpoints/
    stop_after: int | None = kind(COUNT, default=None)  # stop (and save) after this many iterations in this call


@dataclass
class TrainEvalConfig:
    """Evaluation of a training run's ``last.pt`` at its end (results.json in the run folder)."""

    enabled: bool = False  # score last.pt at the end of the run (results.json in the run folder)
    data: DataConfig = field(default_factory=DataConfig)
    slide: SlideConfig = field(default_factory=SlideConfig)
    precision: str = choice(PRECISION_NAMES, what="precision", default="auto")  # auto: bf16 on native-bf16 CPUs
    num_workers: int | None = kind(NON_NEGATIVE_INT, default=None)  # loader processes (null: CPU cores, <= 4)
    limit: int | None = kind(COUNT, default=None)  # evaluate only the first N images of each benchmark


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    teachers: dict[str, Any] = MISSING  # name -> TeacherConfig (configs: teachers=paper)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)  # off by default
    device: str = "auto"  # auto / cpu / cuda (torchrun: one GPU per rank)
    overwrite: bool = False  # a new run may replace the checkpoints and heads of an earlier run in train.output
    precision: str = choice(PRECISION_NAMES, what="precision", default="fp32")  # fp32 (the paper) / bf16 / auto


@dataclass
class TargetTrainSettings:
    """MaskCLIP+ (Zhou et al., ECCV 2022, Sec. 3.3): a target network trained from an annotator's
    pseudo-labels on a benchmark's training images (defaults: MaskCLIP's annotation-free configs)."""

    benchmark: str = "context59"  # whose training split and classes: voc20, context59, coco_stuff, ade20k, ...
    data: str | None = None  # its folder (null: data/<the benchmark's mmseg folder>); an image folder for 'folder'
    vocabulary: str | None = None  # class-name file (null: the benchmark's; needed for benchmark=folder)
    vocabulary_set: str | None = choice(VOCABULARY_SETS, default=None)  # class names: clip_dinoiser (null), maskclip
    unseen: Any = None  # zero-shot: the unseen class indices ([15,...]) or 'maskclip' (its split); null: none
    output: str = "outputs/train_target/${now:%Y-%m-%d_%H-%M-%S}"  # run folder
    resume: str | None = None  # a run folder: continue from its newest checkpoint
    iterations: int | None = kind(COUNT, default=None)  # null: MaskCLIP+'s (2k VOC, 4k Context, 8k COCO-Stuff/ADE)
    batch_size: int = kind(COUNT, default=16)  # global batch (MaskCLIP+: 4 GPUs x 4)
    lr: float = kind(POSITIVE, default=0.01)  # SGD
    momentum: float = kind(FRACTION, default=0.9)
    weight_decay: float = kind(Kind(low=0), default=5.0e-4)
    poly_power: float = kind(POSITIVE, default=0.9)  # lr = (lr - min_lr) * (1 - it / iterations) ** power + min_lr
    min_lr: float = kind(Kind(low=0), default=1.0e-4)
    crop: tuple[int, int] | None = kind(COUNT, length=2, default=None)  # null: 480 Context, 512 others
    scale: tuple[int, int] | None = kind(COUNT, length=2, default=None)  # null: (520, 520) Context, (2048, 512) others
    ratio_range: tuple[float, float] = kind(POSITIVE, length=2, default=(0.5, 2.0))  # random resize ratio
    photometric: bool = True  # mmseg's PhotoMetricDistortion
    conf_thresh: float = kind(FRACTION, default=0.0)  # pixels whose label probability is below: ignored (0: off)
    self_train_from: int | None = kind(COUNT, default=None)  # from this iteration the target labels (null: never)
    num_workers: int | None = kind(NON_NEGATIVE_INT, default=None)  # loader processes per rank (null: CPU cores, <= 8)
    seed: int = kind(NON_NEGATIVE_INT, default=0)  # order, augmentations and the head's initialisation
    save_every: int = kind(COUNT, default=500)  # iterations between checkpoints
    log_every: int = kind(COUNT, default=50)  # iterations between the loss lines in train.log and the console
    keep_checkpoints: int = kind(COUNT, default=2)  # newest checkpoints kept in checkpoints/
    stop_after: int | None = kind(COUNT, default=None)  # stop (and save) after this many iterations in this call


@dataclass
class TrainTargetConfig:
    annotator: ModelConfig = MISSING  # the frozen segmenter that labels the crops (configs/annotator/)
    target: TargetConfig = field(default_factory=TargetConfig)  # the network trained
    train: TargetTrainSettings = field(default_factory=TargetTrainSettings)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)  # off by default
    device: str = "auto"  # auto / cpu / cuda (torchrun: one GPU per rank)
    precision: str = choice(PRECISION_NAMES, what="precision", default="fp32")  # autocast of annotator, target
    overwrite: bool = False  # a new run may replace an earlier run's files in train.output


def register_configs() -> None:
    """Register the dataclasses with hydra's ConfigStore (the entry points in ``tools/`` call this
    before ``hydra.main``): ``<group>/schema`` under the YAML files, ``teachers/paper``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="annotator", name="schema", node=ModelConfig)
    cs.store(group="data", name="schema", node=DataConfig)
    cs.store(group="teachers", name="paper", node=paper_teachers())
    from .protocols import PROTOCOLS

    for protocol in PROTOCOLS.values():  # protocol=<name>: a preset over slide.*, data.*, model.*
        cs.store(group="protocol", name=protocol.name, node=protocol.node(), package="_global_")
    from .protocols import ZERO_SHOT, zero_shot_node

    cs.store(group="zero_shot", name="none", node={}, package="_global_")  # annotation-free (the default)
    for name in ZERO_SHOT:  # tools/train_target.py zero_shot=<benchmark>: MaskCLIP+'s zero-shot configs
        cs.store(group="zero_shot", name=name, node=zero_shot_node(name), package="_global_")
    for name, node in (("eval_schema", EvalConfig), ("demo_schema", DemoConfig), ("app_schema", AppConfig),
                       ("train_schema", TrainConfig), ("train_target_schema", TrainTargetConfig)):
        cs.store(name=name, node=node)


@dataclass(frozen=True)
class Keys:
    """How the user spells the keys of one model config, for messages: where the config sits
    (``model``; ``annotator`` for MaskCLIP+'s annotator) and the keys a caller names otherwise
    (the Python API's ``weights=`` for ``checkpoint``). ``Keys("annotator")("clip.pretrained")``
    is ``annotator.clip.pretrained``."""

    prefix: str = "model"
    renamed: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, key: str) -> str:
        if key in self.renamed:
            return self.renamed[key]
        return f"{self.prefix}.{key}" if self.prefix else key

    @classmethod
    def of(cls, where: str | Keys) -> Keys:
        """``where`` as ``Keys`` (a plain prefix such as ``model`` or ``annotator``, or ``Keys``)."""
        return where if isinstance(where, Keys) else cls(where)


def parse(cls: type[T], cfg: Any, prefix: str) -> T:
    """``cfg`` (a dict, a DictConfig or a ``cls`` instance) over ``cls``'s defaults, as a ``cls``
    instance. An unknown key, a wrong type or a missing value is a one-line ``ConfigError``
    naming the key (``prefix.key``)."""
    if isinstance(cfg, cls):
        return validate(cfg, prefix)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), cfg if cfg is not None else {})
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise config_error(e, prefix) from None
    return validate(obj, prefix)


def config_error(e: OmegaConfBaseException, prefix: str = "") -> ConfigError:
    """A one-line ``ConfigError`` from an OmegaConf error, naming the full key (an unknown key:
    and the valid keys of its place)."""
    key = ".".join(p for p in (prefix, str(getattr(e, "full_key", "") or "")) if p)
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    owner = getattr(e, "object_type", None)
    named = re.search(r"Key '[^']*' (?:is )?not in (?:struct|'(\w+)')", first)
    if named and named.group(1) in _SCHEMAS:
        owner = _SCHEMAS[named.group(1)]
    if named and dataclasses.is_dataclass(owner):
        return ConfigError(f"{key}: unknown key ({owner.__name__} has: {', '.join(known_keys(owner))})")
    if key.startswith("data.benchmark.") and "not in struct" in first:
        return ConfigError(f"{key}: a benchmark of your own is given with a +: '+data.benchmark={{classes:names.txt,"
                           "img_dir:images,ann_dir:annotations}' (or in a data config file)")
    if isinstance(e, ValidationError):
        return ConfigError(f"{key}: {first}")
    return ConfigError(f"{key}: {first}" if key else first)


def _field(cls: Any, dotted: str) -> dataclasses.Field | None:
    """The field ``dotted`` (``maskclip.ks_thresh``) of the dataclass ``cls``, or None."""
    head, _, rest = dotted.partition(".")
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    f = fields.get(head)
    if f is None or not rest:
        return f
    nested = _SCHEMAS.get(str(f.type).split(" ")[0])
    return _field(nested, rest) if nested is not None else None


def field_kind(cls: type, dotted: str) -> Kind:
    """The kind of number of the field ``dotted`` (``maskclip.ks_thresh``) of the dataclass ``cls``."""
    return _field(cls, dotted).metadata["kind"]


def field_length(cls: type, dotted: str) -> int | None:
    """The list length of the field ``dotted`` of the dataclass ``cls`` (``kind(length=...)``), or None."""
    f = _field(cls, dotted)
    return None if f is None else f.metadata.get("length")


def field_type(cls: type, dotted: str) -> str | None:
    """The annotation (as written) of the field ``dotted`` of the dataclass ``cls``, or None."""
    f = _field(cls, dotted)
    return None if f is None else str(f.type)


def check_switches(overrides: list[str], schema: type) -> None:
    """A switch (a ``bool`` field) given on the command line must say true, false or (where
    allowed) null: OmegaConf would take ``overwrite=2`` as true."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("-")])
    except Exception:  # hydra's own grammar errors are reported by hydra
        return
    for o in parsed:
        kind = field_type(schema, o.key_or_group) or ""
        if not kind.startswith("bool"):
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        allowed = ("true", "false", "null") if "None" in kind else ("true", "false")
        for value in values:
            if str(value).lower() not in allowed:
                raise ConfigError(f"{o.key_or_group}={value}: a switch is {' or '.join(allowed)}")


def known_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def plain(cfg: Any) -> Any:
    """A DictConfig / dataclass as plain dicts and lists (resolved), anything else unchanged."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    return cfg


# The dataclasses by name (an OmegaConf error names its node's type).
_SCHEMAS = MappingProxyType({c.__name__: c for c in (
    CLIPConfig, MaskCLIPConfig, LastBlockConfig, PostConfig, TeacherConfig, ModelConfig, SlideConfig, BenchmarkConfig,
    DataConfig, EvalConfig, DemoConfig, AppConfig, TrainSettings, TrainEvalConfig, TrainConfig, TargetConfig,
    TargetTrainSettings, TrainTargetConfig)})
