"""MaskCLIP+ (Zhou et al., ECCV 2022, Sec. 3.3) on our annotators: a standard segmentation
network (the "target") trained on a benchmark's training images from the pseudo-labels that a
frozen segmenter of ours (the "annotator") gives each augmented crop, in the one training loop
of ``loop.py``. In the annotation-free setting label files of the training split are never opened.

Zero-shot (transductive) setting (``train.unseen``, Sec. 4.3; ``zero_shot=<benchmark>`` presets):
the seen classes' pixels keep their ground truth; the pixels of the unseen classes (which the
label reader turns into ``UNSEEN`` before anything else sees them) get the annotator's argmax over
the unseen classes only (its vocabulary is those classes: MaskCLIP+'s ``assign_label`` on
``clip_unlabeled_cats``), then from ``train.self_train_from`` the target's own argmax over them.

Per iteration: the loader gives augmented crops (MaskCLIP+'s random resize, crop, flip and
photometric distortion; padded pixels marked invalid); the annotator labels the whole batch in
one pass (its class probabilities resized bilinearly to the crop, then the argmax; pixels whose
probability is below ``train.conf_thresh`` and padded pixels are ignored); the target's logits,
resized to the crop, are scored with cross-entropy (ignore index 255). From iteration
``train.self_train_from`` the target's own predictions replace the annotator's: the live model's
logits of the same step, detached (as MaskCLIP+'s ``assign_label`` on its own features; no
frozen copy, so a resumed run self-trains exactly as an uninterrupted one).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import Keys, TargetConfig, TargetTrainSettings, parse, plain
from ...data.seg_train import (
    FOLDER,
    UNSEEN,
    SeenLabels,
    SegAugment,
    TargetTrainImages,
    augment_for,
    get_train_split,
    label_files,
    split_files,
    training_split,
)
from ...data.train_images import ResumableBatchSampler, check_images
from ...errors import ConfigError
from ...files import save_atomic
from ...models import build_model, model_config
from ...models.build import model_weights
from ...models.target import backbone_weight, build_target, check_target_config, convert_sync_batchnorm
from ...values import NON_NEGATIVE_INT, check_precision
from ...vocabulary import Vocabulary, read_vocabulary_file
from ...weights import Weight, check_weights
from ..evaluation.inference import autocast
from ..job import distributed as dist
from ..job.inputs import Input, file_input, files_input
from ..job.resume import check_resume_folder
from ..job.runs import RunFolder
from .loop import (
    batch_split_check,
    in_run_folder,
    run_folder,
    run_task,
)
from .loop import start_run as start_training

log = logging.getLogger(__name__)

IGNORE = 255


def vocabulary_path(tcfg: TargetTrainSettings) -> str:
    """The class-name file of ``train.vocabulary``, else of the benchmark's ``train.vocabulary_set``."""
    from ...data.benchmarks import BENCHMARKS

    if tcfg.vocabulary or tcfg.benchmark == FOLDER:
        return tcfg.vocabulary
    return BENCHMARKS[tcfg.benchmark].vocabulary_in(tcfg.vocabulary_set, "train.vocabulary_set")


def run_inputs(tcfg: TargetTrainSettings, root: str, files: list[str], labels: list[str] | None) -> dict[str, Input]:
    """What a MaskCLIP+ run reads, by the key that names it: the class-name file, the split files,
    the images (and, zero-shot, their label files)."""
    inputs = {"train.vocabulary": file_input(vocabulary_path(tcfg))}
    for f in split_files(tcfg.benchmark, root):
        inputs[f"train.data split {os.path.relpath(f, root)}"] = file_input(f)
    inputs["train.data"] = files_input(files)
    if labels:
        inputs["train.unseen labels"] = files_input(labels)
    return inputs


def split_and_vocabulary(tcfg: TargetTrainSettings) -> tuple[str, list[str], Vocabulary]:
    """(the data folder, its training images, the class names) of ``train.benchmark``: a
    benchmark's training split in its mmseg layout (images only), or any image folder with a
    class-name file (``train.benchmark=folder``)."""
    from ...data.benchmarks import BENCHMARKS, DATA_ROOT

    if tcfg.benchmark == FOLDER:
        if not tcfg.data or not tcfg.vocabulary:
            raise ConfigError("train.benchmark=folder needs train.data=<image folder> and "
                              "train.vocabulary=<class-name file>")
        root = tcfg.data
    else:
        if tcfg.benchmark not in BENCHMARKS:
            raise ConfigError(f"train.benchmark={tcfg.benchmark}: unknown (choose from {', '.join(BENCHMARKS)}, "
                              f"or {FOLDER})")
        root = tcfg.data or os.path.join(DATA_ROOT, get_train_split(tcfg.benchmark).root)
    vocabulary = read_vocabulary_file(vocabulary_path(tcfg), "train.vocabulary" if tcfg.vocabulary else None)
    if len(vocabulary) >= UNSEEN:
        raise ConfigError(f"{len(vocabulary)} classes: at most {UNSEEN - 1} (labels {UNSEEN} and {IGNORE} are "
                          "'unseen' and 'ignored')")
    return root, training_split(tcfg.benchmark, root), vocabulary


def unseen_classes(tcfg: TargetTrainSettings, num_classes: int) -> tuple[int, ...] | None:
    """``train.unseen`` as class indices of ``train.benchmark`` (``maskclip``: MaskCLIP's split),
    or None (annotation-free)."""
    from ...protocols import MASKCLIP_UNSEEN

    value = tcfg.unseen
    if value is None:
        return None
    if tcfg.benchmark == FOLDER:
        raise ConfigError("train.unseen: the zero-shot setting reads a benchmark's labels; train.benchmark=folder "
                          "has none")
    if value == "maskclip":
        if tcfg.benchmark not in MASKCLIP_UNSEEN:
            raise ConfigError(f"train.unseen=maskclip: MaskCLIP has no zero-shot split of {tcfg.benchmark} (it has "
                              f"{', '.join(MASKCLIP_UNSEEN)}); give the unseen class indices: 'train.unseen=[3,7]'")
        value = MASKCLIP_UNSEEN[tcfg.benchmark]
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"train.unseen={value}: a list of class indices ('train.unseen=[15,16]'), maskclip or null")
    unseen = tuple(NON_NEGATIVE_INT.check(v, f"train.unseen[{i}]") for i, v in enumerate(value))
    if not unseen or len(set(unseen)) != len(unseen) or len(unseen) >= num_classes:
        raise ConfigError(f"train.unseen={list(value)}: distinct class indices, at least one, and fewer than the "
                          f"{num_classes} classes (some must be seen)")
    beyond = [i for i in unseen if i >= num_classes]
    if beyond:
        raise ConfigError(f"train.unseen={list(value)}: {beyond[0]} is not a class index of {tcfg.benchmark} "
                          f"(0..{num_classes - 1})")
    return unseen


def seen_labels(tcfg: TargetTrainSettings, num_classes: int, unseen: tuple[int, ...]) -> SeenLabels:
    """How the zero-shot setting reads ``train.benchmark``'s labels."""
    from ...data.benchmarks import BENCHMARKS, reduces_zero_label

    return SeenLabels(unseen, num_classes, reduces_zero_label(BENCHMARKS[tcfg.benchmark]))


def augmentation(tcfg: TargetTrainSettings) -> SegAugment:
    """MaskCLIP+'s augmentation of the benchmark's split, with any setting the run overrides."""
    base = augment_for(get_train_split("coco_stuff" if tcfg.benchmark == FOLDER else tcfg.benchmark))
    return SegAugment(scale=tuple(tcfg.scale or base.scale), ratio_range=tuple(tcfg.ratio_range),
                      crop=tuple(tcfg.crop or base.crop), photometric=tcfg.photometric)


def iterations(tcfg: TargetTrainSettings) -> int:
    """``train.iterations``, or MaskCLIP+'s schedule for the benchmark."""
    if tcfg.iterations is not None:
        return int(tcfg.iterations)
    return get_train_split("coco_stuff" if tcfg.benchmark == FOLDER else tcfg.benchmark).iters


def check_run_inputs(cfg: Mapping[str, Any], *, folder: bool = True) -> None:
    """Every setting, folder and file of a MaskCLIP+ run, before any model is built (``folder``:
    the run folder too)."""
    tcfg = parse(TargetTrainSettings, cfg["train"], "train")
    if tcfg.resume:
        check_resume_folder(tcfg.resume)
    if folder:
        run_folder(cfg).check()
    check_precision(cfg.get("precision", "fp32"))
    check_target_config(parse(TargetConfig, cfg.get("target"), "target"))
    model_config(cfg["annotator"], ANNOTATOR)
    if tcfg.min_lr > tcfg.lr:
        raise ConfigError(f"train.min_lr={tcfg.min_lr} is above train.lr={tcfg.lr}: the poly schedule decays from "
                          "lr to min_lr")
    total = iterations(tcfg)
    if tcfg.self_train_from is not None and tcfg.self_train_from > total:
        raise ConfigError(f"train.self_train_from={tcfg.self_train_from} is beyond the run's {total} iterations "
                          "(train.iterations): self-training would never start")
    root, files, vocabulary = split_and_vocabulary(tcfg)
    if unseen_classes(tcfg, len(vocabulary)) is not None:
        label_files(tcfg.benchmark, root, files)
    check_weights(run_weights(cfg))  # every weights file; the missing ones in one message
    check_images(files)  # every image's header, as the heads' training does: not when the loader reaches it


def start_run(cfg: Mapping[str, Any], run: RunFolder | None = None) -> RunFolder:
    """The run folder claimed (``loop.start_run``), its ``config.yaml`` recording the settings."""
    return start_training(cfg, None, run)


ANNOTATOR = Keys("annotator")  # the annotator's keys: annotator.clip.pretrained, annotator.checkpoint, ...


def run_weights(cfg: Mapping[str, Any]) -> list[Weight]:
    """Every weights file a MaskCLIP+ run loads (``weights.Weight`` rows): the annotator's and the
    target's backbone."""
    backbone = backbone_weight(parse(TargetConfig, cfg.get("target"), "target").pretrained)
    return [*model_weights(model_config(cfg["annotator"], ANNOTATOR), ANNOTATOR), *([backbone] if backbone else [])]


def poly_schedule(optimizer: torch.optim.Optimizer, total: int, power: float, min_lr: float):
    """mmcv's ``poly`` policy per iteration: lr = (base - min_lr) * (1 - it / total) ** power + min_lr."""
    bases = [g["lr"] for g in optimizer.param_groups]

    def factor(base: float):
        return lambda it: ((base - min_lr) * (1 - min(it, total) / total) ** power + min_lr) / base

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(b) for b in bases])


@torch.no_grad()
def pseudo_labels(probs: Tensor, size: tuple[int, int], valid: Tensor, conf_thresh: float) -> Tensor:
    """B x K x h x w class probabilities -> B x H x W labels: resized bilinearly to ``size``, the
    argmax; ``IGNORE`` where the winning probability is below ``conf_thresh`` or the pixel is padding."""
    probs = F.interpolate(probs.float(), size=size, mode="bilinear", align_corners=False)
    confidence, labels = probs.max(dim=1)
    labels = labels.masked_fill(~valid, IGNORE)
    if conf_thresh > 0:
        labels = labels.masked_fill(confidence < conf_thresh, IGNORE)
    return labels


class TargetTraining:
    """The MaskCLIP+ task: a target network, its frozen annotator and the vocabulary.

    Args:
        target: the network that learns (its classifier set to the vocabulary's embeddings).
        annotator: a frozen segmenter with the vocabulary set (``forward``: B x K x h x w probabilities).
        settings: ``TargetTrainSettings`` (plain dict).
        files: the training images.
        names: the class names (for the histogram in the curves).
        record: what ``last.pt`` records beside the weights (``target``: the network's settings,
            ``clip``: the CLIP whose text embeddings are the classifier).
    """

    def __init__(self, target: nn.Module, annotator: nn.Module, settings: Mapping[str, Any], files: list[str],
                 names: list[str], *, precision: str = "fp32", record: Mapping[str, Any] | None = None,
                 unseen: tuple[int, ...] | None = None, labels: list[str] | None = None,
                 seen: SeenLabels | None = None, inputs: Mapping[str, Input] | None = None,
                 templates: str = "imagenet80") -> None:
        self.module, self.annotator = target, annotator.eval().requires_grad_(False)
        self._inputs = dict(inputs or {"train.data": files_input(files)})
        self.settings, self.files, self.names, self.precision = dict(settings), files, names, precision
        self.record = dict(record or {})
        self.unseen, self.label_files, self.seen = unseen, labels, seen  # zero-shot (annotator: the unseen classes)
        self.iteration = 0
        self.augment = augmentation(parse(TargetTrainSettings, self.settings, "train"))
        self.templates = templates  # the annotator's prompt templates (the classifier's text)

    def make_optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        s = self.settings
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD([{"params": trainable, "name": "target"}], lr=float(s["lr"]),
                                    momentum=float(s["momentum"]), weight_decay=float(s["weight_decay"]))
        total = iterations(parse(TargetTrainSettings, s, "train"))
        return optimizer, poly_schedule(optimizer, total, float(s["poly_power"]), float(s["min_lr"]))

    def dataset(self) -> TargetTrainImages:
        return TargetTrainImages(self.files, self.augment, labels=self.label_files, seen=self.seen)

    def labels(self, images: Tensor, valid: Tensor, logits: Tensor, gt: Tensor | None = None) -> tuple[Tensor, str]:
        """The step's labels and who gave the pseudo-labels (``annotator`` or ``self``): every pixel's
        pseudo-label, or in the zero-shot setting (``gt``: the crop's labels, ``UNSEEN`` on the
        unseen classes' pixels) the ground truth with the unseen pixels pseudo-labelled among the
        unseen classes."""
        start = self.settings.get("self_train_from")
        thresh = float(self.settings["conf_thresh"])
        size = tuple(images.shape[-2:])
        by_annotator = start is None or self.iteration + 1 < int(start)
        if gt is not None and not bool((gt == UNSEEN).any()):  # nothing to label (MaskCLIP+ skips CLIP too)
            return gt.long(), "annotator" if by_annotator else "self"
        if by_annotator:
            with torch.no_grad(), autocast(images.device, self.precision):
                probs = self.annotator(images)  # over the unseen classes only, in the zero-shot setting
        else:
            scores = logits.detach().float()
            probs = (scores if gt is None else scores[:, list(self.unseen)]).softmax(1)
        pseudo = pseudo_labels(probs, size, valid, thresh)
        source = "annotator" if by_annotator else "self"
        if gt is None:
            return pseudo, source
        ids = torch.tensor(self.unseen, device=pseudo.device)
        named = torch.where(pseudo == IGNORE, IGNORE, ids[pseudo.clamp(max=len(self.unseen) - 1)])
        return torch.where(gt == UNSEEN, named, gt.long()), source

    def losses(self, batch: Any, module: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        images, valid, *gt = batch
        with autocast(images.device, self.precision):
            logits = F.interpolate(module(images), size=images.shape[-2:], mode="bilinear", align_corners=False)
        labels, source = self.labels(images, valid, logits, gt[0] if gt else None)
        self.iteration += 1
        loss = segmentation_loss(logits, labels)
        stats = label_statistics(labels, self.names, source)
        if gt:
            stats["pseudo/unseen"] = (gt[0] == UNSEEN).float().mean()
        return loss, stats

    def prepare(self, start: int) -> None:
        self.iteration = start
        self.module.train()
        if self.record["target"]["norm_eval"]:
            _freeze_norms(self.module)

    def save_final(self, path: str) -> str:
        save_atomic(self.final_state(), path)
        return f"the target network in {path} (evaluate: {eval_command(self.settings, self.templates, path)})"

    def inputs(self) -> dict[str, Input]:
        return self._inputs

    def final_state(self) -> dict[str, Any]:
        """``last.pt``: the network's weights and everything needed to rebuild it (``model=target``)."""
        return {"model_state_dict": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
                **self.record, "vocabulary": list(self.names)}


def eval_command(settings: Mapping[str, Any], templates: str, path: str) -> str:
    """The command that scores the trained network on its benchmark's validation split, as it was
    trained: the benchmark and its folder, its class names (file or set) and prompt templates; the
    CLIP is the one ``last.pt`` records. For ``train.benchmark=folder`` (no labels) the benchmark
    is left to give."""
    import shlex

    from ...config import MaskCLIPConfig

    args = ["python tools/eval.py", "model=target", f"model.checkpoint={shlex.quote(path)}"]
    if settings["benchmark"] == FOLDER:
        args.append("data=<a benchmark with labels>")
    else:
        args.append(f"data={settings['benchmark']}")
        if settings.get("data"):
            args.append(f"data.root={shlex.quote(str(settings['data']))}")
        if settings.get("vocabulary_set"):
            args.append(f"data.vocabulary_set={settings['vocabulary_set']}")
    if settings.get("vocabulary"):
        args.append(f"data.vocabulary={shlex.quote(str(settings['vocabulary']))}")
    if templates != MaskCLIPConfig.templates:
        args.append(f"model.maskclip.templates={templates}")
    return " ".join(args)


def segmentation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """MaskCLIP+'s loss, mmseg 0.20's ``CrossEntropyLoss`` with ``ignore_index=255``: the mean over
    ALL pixels of the crop, the ignored ones counting 0 (not the mean over the labelled ones); every
    process then has the same pixel count, so DDP's averaged gradients equal one process's."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="none").mean()


def _freeze_norms(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def label_statistics(labels: Tensor, names: list[str], source: str) -> dict[str, Tensor]:
    """Pseudo-label statistics of a step: the ignored fraction, the share of each class among the
    labelled pixels (``classes/<name>``) and who labelled (1 = the target itself)."""
    flat = labels.flatten()
    labelled = flat[flat != IGNORE]
    counts = torch.bincount(labelled, minlength=len(names)).float()
    share = counts / counts.sum().clamp(min=1)
    stats = {"pseudo/ignored": (flat == IGNORE).float().mean(),
             "pseudo/self_trained": torch.tensor(1.0 if source == "self" else 0.0)}
    stats.update({f"classes/{n}": share[i] for i, n in enumerate(names)})
    return stats


def recorded_clip_of(annotator: Mapping[str, Any]) -> dict[str, Any]:
    """What ``last.pt`` records of the annotator's CLIP (the text embeddings the target's classifier
    is made of; ``model=target`` classifies with it by default): name and weights, a local file
    by its absolute path (the evaluation may run elsewhere)."""
    clip = annotator.get("clip") or {}
    return {k: os.path.abspath(v) if isinstance(v, str) and os.path.isfile(v) else v
            for k, v in ((k, clip.get(k)) for k in ("name", "pretrained"))}


def build_task(cfg: Mapping[str, Any], device: torch.device, world: int) -> TargetTraining:
    """The annotator (frozen, the vocabulary set), the target (its classifier = the vocabulary's
    text embeddings of the annotator's CLIP) and the training images of ``cfg``."""
    tcfg = parse(TargetTrainSettings, cfg["train"], "train")
    root, files, vocabulary = split_and_vocabulary(tcfg)
    unseen = unseen_classes(tcfg, len(vocabulary))
    annotator = build_model(cfg["annotator"], ANNOTATOR).to(device)
    annotator.set_vocabulary(vocabulary)
    classes = annotator.text.current
    torch.manual_seed(int(tcfg.seed))  # the head's initialisation
    target_cfg = parse(TargetConfig, cfg.get("target"), "target")
    target = build_target(target_cfg, annotator.text.dim or classes.embeddings.shape[1])
    target.set_classes(classes.embeddings, classes.bg_index)
    if world > 1 and device.type == "cuda" and not target_cfg.norm_eval:
        target = convert_sync_batchnorm(target)  # MaskCLIP+'s SyncBN
    names = [synonyms[0] for synonyms in vocabulary]
    record = {"target": plain(target_cfg), "clip": recorded_clip_of(cfg["annotator"])}
    labels = seen = None
    if unseen is not None:
        annotator.set_vocabulary([vocabulary[i] for i in unseen])  # it labels the unseen pixels among these
        labels, seen = label_files(tcfg.benchmark, root, files), seen_labels(tcfg, len(vocabulary), unseen)
        record["unseen"] = {"benchmark": tcfg.benchmark, "indices": list(unseen), "names": [names[i] for i in unseen]}
    return TargetTraining(target.to(device), annotator, plain(tcfg), files, names,
                          precision=cfg.get("precision", "fp32"), record=record, unseen=unseen, labels=labels,
                          seen=seen, inputs=run_inputs(tcfg, root, files, labels),
                          templates=(cfg["annotator"].get("maskclip") or {}).get("templates", "imagenet80"))


def train(cfg: Mapping[str, Any], device: torch.device, run: RunFolder | None = None, *,
          checked: bool = False) -> str | None:
    """Run (or resume) a MaskCLIP+ training; returns the path of ``last.pt``, or None when
    ``train.stop_after`` ended this call early. ``cfg`` holds ``annotator``, ``target``, ``train``
    and ``precision`` (``TrainTargetConfig``); ``run`` and ``checked`` as ``engine.training.train.train``'s."""
    cfg = {**cfg, "train": plain(parse(TargetTrainSettings, cfg["train"], "train"))}
    if not checked:
        check_run_inputs(cfg, folder=run is None and dist.launched_rank() == 0)
    return in_run_folder(cfg, device, run, _train_target)


def _train_target(cfg: Mapping[str, Any], device: torch.device, rank: int, world: int,
                  run: RunFolder | None) -> str | None:
    tcfg = cfg["train"]
    task = build_task(cfg, device, world)
    batch_size, total = int(tcfg["batch_size"]), iterations(parse(TargetTrainSettings, tcfg, "train"))
    batch_split_check(batch_size, len(task.files), world)
    epochs = max(1, math.ceil(total * batch_size / max(len(task.files), 1)))
    sampler = ResumableBatchSampler(len(task.files), batch_size, epochs, int(tcfg["seed"]), rank=rank, world=world,
                                    iterations=total)
    return run_task(task, sampler, tcfg, run, device, rank, world)
