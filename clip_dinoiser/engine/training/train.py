"""Distillation of DINO correlations and FOUND objectness into the CLIP-DINOiser heads (paper Sec. 3.2).

The task (``Distiller``: frozen CLIP + heads + teachers, the paper's optimizer and schedule) runs
in the one training loop of ``loop.py``; ``train`` sets up its run folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ...config import HEADS, TrainSettings, parse, plain
from ...data.train_images import ResumableBatchSampler, TrainImages, list_images, seeded_order, unreadable_image
from ...download import resolve_released
from ...errors import ConfigError, UserError
from ...models import CLIPDINOiser, check_model_config, load_heads, model_config, save_heads
from ...models.build import build_clip_dinoiser, model_weights
from ...teachers import Teacher, build_teachers, by_head, teacher_configs, teacher_weights
from ...values import check_precision
from ...weights import Weight, check_weights, released_weight
from ..evaluation.inference import autocast
from ..job import distributed as dist
from ..job.inputs import Input, files_input
from ..job.resume import check_resume_folder
from ..job.runs import RunFolder
from .loop import CHECKPOINTS, batch_split_check, in_run_folder, latest_checkpoint, run_folder, run_task
from .loop import start_run as start_training

log = logging.getLogger(__name__)

# train.<key> holding the learning rate of each head
HEAD_LR = MappingProxyType({"correlation": "corr_lr", "objectness": "found_lr"})


def make_optimizer(heads: nn.Module, teachers: Mapping[str, Teacher],
                   cfg: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the heads that a teacher trains, each at its learning rate (``train.corr_lr``,
    ``train.found_lr``; the param group is named after the head), with a step decay per
    iteration at ``train.milestones``. A head without a teacher is frozen."""
    parts = heads.parts()
    trained = [head for head in parts if any(t.head == head for t in teachers.values())]
    for head, part in parts.items():
        part.requires_grad_(head in trained)
    optimizer = torch.optim.AdamW([{"params": parts[h].parameters(), "lr": float(cfg[HEAD_LR[h]]), "name": h}
                                   for h in trained])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg["milestones"]),
                                                     gamma=float(cfg["step_lr_gamma"]))
    return optimizer, scheduler


def resume_checkpoint(run_dir: str) -> str:
    """The checkpoint to resume ``run_dir`` from (its newest), or a ``FileNotFoundError``."""
    check_resume_folder(run_dir)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint ({CHECKPOINTS}/iter_*.pt) in {run_dir} to resume from (train.resume)")
    return path


def check_run_inputs(cfg: Mapping[str, Any], *, folder: bool = True) -> None:
    """Every folder, file and number a training run names, checked before any model is loaded:
    the run folder (resumable, or writable and holding no run unless ``overwrite``), the image
    folder, the numbers of ``train``, CLIP's, the initial heads' and the teachers' weights
    (``folder=False``: the run folder is already claimed)."""
    tcfg = parse(TrainSettings, cfg["train"], "train")  # unknown keys, wrong types, numbers out of range
    if tcfg.resume:
        resume_checkpoint(tcfg.resume)
    if folder:
        run_folder(cfg).check()
    check_precision(cfg.get("precision", "fp32"))
    if not os.path.isdir(str(tcfg.data)):
        raise FileNotFoundError(f"training image folder not found: {tcfg.data} (train.data)")
    model_config(student_config(cfg))  # keys, numbers
    teacher_configs(cfg["teachers"])
    check_weights(run_weights(cfg))  # every weights file; the missing ones in one message


def run_weights(cfg: Mapping[str, Any]) -> list[Weight]:
    """Every weights file a training run loads (``weights.Weight`` rows): CLIP's, the heads it
    starts from (``train.init``) and the teachers'."""
    init = released_weight(cfg["train"].get("init"), "heads", "train.init", "heads to start from",
                           cfg["model"].get("checkpoint_url"))
    return [*model_weights(model_config(student_config(cfg))), *([init] if init else []),
            *teacher_weights(cfg["teachers"])]


def student_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The student's model config: CLIP-DINOiser whose heads start from ``train.init`` (null: random)."""
    return {**cfg["model"], "name": "clip_dinoiser", "checkpoint": None}


class Distiller:
    """Student (frozen CLIP + trainable heads) and its frozen teachers: the distillation task.

    Args:
        student: the CLIP-DINOiser whose heads learn.
        teachers: name -> teacher, at most one per head (``Teacher.head``).
        gamma: the correlation threshold of the targets (``model.gamma``).
    """

    def __init__(self, student: CLIPDINOiser, teachers: Mapping[str, Teacher], *, gamma: float,
                 precision: str = "fp32", settings: Mapping[str, Any] | None = None,
                 files: list[str] | None = None) -> None:
        if not teachers:
            raise ConfigError("teachers: no teacher to train the heads with")
        for head in {t.head for t in teachers.values()}:
            by_head(teachers, head)  # one teacher per head
        self.student, self.teachers = student, dict(teachers)
        self.gamma, self.precision = gamma, precision
        self.settings, self.files = dict(settings or {}), files or []

    @property
    def module(self) -> nn.Module:
        return self.student.heads

    def make_optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        return make_optimizer(self.student.heads, self.teachers, self.settings)

    def dataset(self) -> TrainImages:
        return TrainImages(self.files, int(self.settings["im_size"]), antialias=bool(self.settings["antialias"]))

    def targets(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(the heads' input features, each teacher's target), without gradients."""
        with torch.no_grad(), autocast(images.device, self.precision):
            inter = self.student.backbone(images, with_inter=True, with_dense=False).inter
            grid = tuple(inter.shape[-2:])
            return inter, {name: t.target(images, grid, self.gamma) for name, t in self.teachers.items()}

    def losses(self, images: Tensor, heads: nn.Module | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(the teachers' losses summed, scalars per teacher: ``loss/<name>``, ``agreement/<name>``
        of the binarised head output with its target, ``target_positive/<name>``)."""
        heads = heads or self.student.heads
        inter, targets = self.targets(images)
        with autocast(images.device, self.precision):
            outputs = dict(zip(HEADS, heads(inter)))
        total, scalars = 0.0, {}
        for name, teacher in self.teachers.items():
            logits, target = outputs[teacher.head], targets[name]
            loss = teacher.loss(logits, target)
            total = total + loss
            scalars[f"loss/{name}"] = loss.detach()
            scalars[f"agreement/{name}"] = ((logits.detach() > 0).float() == target).float().mean()
            scalars[f"target_positive/{name}"] = target.float().mean()
        return total, scalars

    def step(self, images: Tensor, optimizer: torch.optim.Optimizer, scheduler: Any = None,
             heads: nn.Module | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """One optimisation step outside the loop (benchmarks): returns (the loss, scalars)."""
        loss, scalars = self.losses(images, heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return loss, scalars

    def prepare(self, start: int) -> None:
        self.student.heads.train()

    def save_final(self, path: str) -> str:
        save_heads(self.student.heads, path, epoch=int(self.settings["epochs"]) - 1)
        return f"heads in {path}"

    def inputs(self) -> dict[str, Input]:
        """The images it trains on (``train.data``'s sample): a resumed run must find the same."""
        return {"train.data": files_input(self.files)}


def build_distiller(cfg: Mapping[str, Any], device: torch.device, files: list[str] | None = None) -> Distiller:
    """The task of ``cfg``: student with heads from ``train.init`` (random, seeded, when null)."""
    tcfg = plain(parse(TrainSettings, cfg["train"], "train"))
    torch.manual_seed(int(tcfg["seed"]))  # the heads' initialisation
    student = build_clip_dinoiser(check_model_config(student_config(cfg)), training=True).eval()
    if tcfg.get("init"):
        path = resolve_released(tcfg["init"], "heads", cfg["model"].get("checkpoint_url"), key="train.init")
        load_heads(student.heads, path)
    student = student.to(device)
    teachers = {name: t.to(device) for name, t in build_teachers(cfg["teachers"]).items()}
    return Distiller(student, teachers, gamma=student.decoding.gamma, precision=cfg.get("precision", "fp32"),
                     settings=tcfg, files=files)


def training_images(tcfg: Mapping[str, Any]) -> list[str]:
    """The run's image sample: ``ds_size`` files drawn with the seed, each header checked once.

    An unreadable file stops the run with one line naming it, unless ``train.skip_bad_images``:
    then it is logged and replaced by the next readable file of the seeded order, so the sample
    keeps its size.
    """
    folder, size, seed = tcfg["data"], tcfg.get("ds_size"), int(tcfg["seed"])
    files = list_images(folder)
    if size is not None and size > len(files):
        log.warning("train.ds_size=%d but %s holds %d images: training on all of them", size, folder, len(files))
    wanted = len(files) if size is None else min(size, len(files))
    # sample_subset's draw, then the rest of the same seeded order as replacements
    order = list(files) if wanted == len(files) else seeded_order(files, seed)
    chosen, bad = [], []
    for path in tqdm(order, desc="checking images", unit="img", total=len(order), leave=False):
        if len(chosen) == wanted:
            break
        reason = unreadable_image(path)
        if reason is None:
            chosen.append(path)
            continue
        if not tcfg.get("skip_bad_images"):
            raise UserError(f"cannot read training image {path}: {reason} (remove it, or set "
                            "train.skip_bad_images=true to skip unreadable images)")
        bad.append(path)
    if bad:
        log.warning("skipped %d unreadable images (train.skip_bad_images), e.g. %s", len(bad), bad[0])
    if not chosen:
        raise UserError(f"no readable images under {folder}")
    return chosen


def train(cfg: Mapping[str, Any], device: torch.device, run: RunFolder | None = None, *,
          checked: bool = False) -> str | None:
    """Run (or resume) a distillation; returns the path of the final ``last.pt``, or None when
    ``train.stop_after`` ended this call early (its last iteration is saved).

    ``cfg`` holds ``model``, ``teachers``, ``train`` and ``precision`` as in ``configs/train.yaml``.
    ``run``: the run folder, already claimed by the caller (else claimed here, and its
    ``config.yaml`` written for a new run). Under torchrun the process group is joined here
    (and left only if it was made here). Raises ``signals.Interrupted`` after SIGINT / SIGTERM,
    once the last finished iteration is saved. ``checked``: the caller has run ``check_run_inputs``.
    """
    cfg = {**cfg, "train": plain(parse(TrainSettings, cfg["train"], "train"))}  # checked, with the defaults
    if not checked:
        check_run_inputs(cfg, folder=run is None and dist.launched_rank() == 0)
    return in_run_folder(cfg, device, run, _train, start=start_run)


def start_run(cfg: Mapping[str, Any], run: RunFolder | None = None) -> RunFolder:
    """The run folder claimed (``loop.start_run``), its ``config.yaml`` recording the settings as run."""
    return start_training(cfg, saved_config(cfg), run)


def saved_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What a run folder's ``config.yaml`` records: the settings as run (the student's heads come
    from ``train.init``, never from ``model.checkpoint``)."""
    return {**cfg, "model": {**cfg["model"], "checkpoint": None}}


def _train(cfg: Mapping[str, Any], device: torch.device, rank: int, world: int, run: RunFolder | None) -> str | None:
    tcfg = cfg["train"]
    files = training_images(tcfg)
    batch_size = int(tcfg["batch_size"])
    batch_split_check(batch_size, len(files), world)
    task = build_distiller(cfg, device, files)
    sampler = ResumableBatchSampler(len(files), batch_size, int(tcfg["epochs"]), int(tcfg["seed"]), rank=rank,
                                    world=world)
    return run_task(task, sampler, tcfg, run, device, rank, world)
