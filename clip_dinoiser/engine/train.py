"""Distillation of DINO correlations and FOUND objectness into the CLIP-DINOiser heads (paper Sec. 3.2)."""

from __future__ import annotations

import glob
import logging
import os
import signal
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import HEADS, TrainSettings, parse, plain
from ..data.train_images import ResumableBatchSampler, TrainImages, list_images, seeded_order, unreadable_image
from ..errors import ConfigError, UserError
from ..files import check_output_dir, save_atomic
from ..models import CLIPDINOiser, build_model, check_model_config, save_heads
from ..teachers import Teacher, build_teachers, by_head, check_teacher_files
from ..values import check_number, check_numbers
from . import distributed as dist
from .inference import autocast, check_precision

log = logging.getLogger(__name__)


# train.<key> holding the learning rate of each head
HEAD_LR = MappingProxyType({"correlation": "corr_lr", "objectness": "found_lr"})


def make_optimizer(heads: nn.Module, teachers: Mapping[str, Teacher],
                   cfg: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the heads that a teacher trains, each at its learning rate (``train.corr_lr``,
    ``train.found_lr``), with a step decay per iteration. A head without a teacher is frozen."""
    parts = heads.parts()
    trained = [head for head in parts if any(t.head == head for t in teachers.values())]
    for head, part in parts.items():
        part.requires_grad_(head in trained)
    optimizer = torch.optim.AdamW([{"params": parts[h].parameters(), "lr": float(cfg[HEAD_LR[h]])} for h in trained])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg["milestones"]),
                                                     gamma=float(cfg["step_lr_gamma"]))
    return optimizer, scheduler


def latest_checkpoint(run_dir: str) -> str | None:
    files = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "iter_*.pt")))
    return files[-1] if files else None


def resume_checkpoint(run_dir: str) -> str:
    """The checkpoint to resume ``run_dir`` from (its newest), or a ``FileNotFoundError``."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder to resume not found: {run_dir} (train.resume)")
    path = latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint (checkpoints/iter_*.pt) in {run_dir} to resume from (train.resume)")
    return path


# train.<key>: (type, minimum); None values are allowed for ds_size and stop_after
TRAIN_NUMBERS = MappingProxyType({"ds_size": (int, 1), "batch_size": (int, 1), "epochs": (int, 1),
                                  "corr_lr": (float, 0),
                 "found_lr": (float, 0), "step_lr_gamma": (float, 0), "im_size": (int, 16), "num_workers": (int, 0),
                 "seed": (int, 0), "save_every": (int, 1), "keep_checkpoints": (int, 1), "stop_after": (int, 1)})


def holds_run(folder: str) -> bool:
    """Whether ``folder`` has a run's checkpoints or heads (a new run there would mix with them)."""
    return os.path.isfile(os.path.join(folder, "last.pt")) or bool(latest_checkpoint(folder))


def clear_run(folder: str) -> None:
    """Remove an earlier run's checkpoints and heads (``overwrite=true``)."""
    for path in glob.glob(os.path.join(folder, "checkpoints", "iter_*.pt")) + [os.path.join(folder, "last.pt")]:
        if os.path.isfile(path):
            os.remove(path)


def check_run_inputs(cfg: Mapping[str, Any]) -> None:
    """Every folder, file and number a training run names, checked before any model is loaded:
    the run folder (resumable, or writable and not holding another run unless ``overwrite``),
    the image folder, the numbers of ``train``, CLIP's and the teachers' local weights."""
    tcfg = cfg["train"]
    parse(TrainSettings, tcfg, "train")  # unknown keys and wrong types
    if tcfg.get("resume"):
        resume_checkpoint(tcfg["resume"])
    else:
        check_output_dir(tcfg["output"], "train.output")
        if holds_run(tcfg["output"]) and not cfg.get("overwrite"):
            raise FileExistsError(f"train.output={tcfg['output']} already holds a run: continue it with "
                                  f"train.resume={tcfg['output']}, choose another folder, or set overwrite=true")
    for key, (kind, minimum) in TRAIN_NUMBERS.items():
        if tcfg.get(key) is not None or key not in ("ds_size", "stop_after"):
            check_number(tcfg.get(key), f"train.{key}", kind, minimum=minimum)
    check_numbers(tcfg["milestones"], "train.milestones", minimum=0)
    check_precision(cfg.get("precision", "fp32"))
    if not os.path.isdir(str(tcfg["data"])):
        raise FileNotFoundError(f"training image folder not found: {tcfg['data']} (train.data)")
    check_model_config({**cfg["model"], "name": "clip_dinoiser", "checkpoint": None})  # keys, numbers, files
    check_teacher_files(cfg["teachers"])


class Distiller:
    """Student (frozen CLIP + trainable heads) and its frozen teachers, one step at a time.

    Args:
        student: the CLIP-DINOiser whose heads learn.
        teachers: name -> teacher, at most one per head (``Teacher.head``).
        gamma: the correlation threshold of the targets (``model.gamma``).
    """

    def __init__(self, student: CLIPDINOiser, teachers: Mapping[str, Teacher], *, gamma: float,
                 precision: str = "fp32") -> None:
        if not teachers:
            raise ConfigError("teachers: no teacher to train the heads with")
        for head in {t.head for t in teachers.values()}:
            by_head(teachers, head)  # one teacher per head
        self.student, self.teachers = student, dict(teachers)
        self.gamma, self.precision = gamma, precision

    def losses(self, images: Tensor, heads: nn.Module | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """name -> (its loss, the agreement of the student's binarised head output with its target)."""
        heads = heads or self.student.heads
        with autocast(images.device, self.precision):
            with torch.no_grad():
                inter = self.student.backbone(images, with_inter=True, with_dense=False).inter
                grid = tuple(inter.shape[-2:])
                targets = {name: t.target(images, grid, self.gamma) for name, t in self.teachers.items()}
            outputs = dict(zip(HEADS, heads(inter)))
        losses = {}
        for name, teacher in self.teachers.items():
            logits, target = outputs[teacher.head], targets[name]
            agreement = ((logits.detach() > 0).float() == target).float().mean()
            losses[name] = (teacher.loss(logits, target), agreement)
        return losses

    def step(self, images: Tensor, optimizer: torch.optim.Optimizer, scheduler: Any = None,
             heads: nn.Module | None = None) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """One optimisation step on ``images`` (the teachers' losses summed; the scheduler, if
        given, steps too); returns (the summed loss, ``losses``)."""
        losses = self.losses(images, heads)
        loss = sum(value for value, _ in losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return loss, losses


def build_distiller(cfg: Mapping[str, Any], device: torch.device) -> Distiller:
    model_cfg = {**cfg["model"], "checkpoint": None, "name": "clip_dinoiser"}
    torch.manual_seed(int(cfg["train"]["seed"]))  # the heads' initialisation
    student = build_model(model_cfg).to(device)
    teachers = {name: t.to(device) for name, t in build_teachers(cfg["teachers"]).items()}
    return Distiller(student, teachers, gamma=student.decoding.gamma, precision=cfg["precision"])


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint of the last finished iteration was written."""

    def __init__(self, run_dir: str, iteration: int) -> None:
        super().__init__(f"interrupted after iteration {iteration}")
        self.run_dir, self.iteration = run_dir, iteration


class _StopRequest:
    """While active, the first SIGINT (Ctrl-C) only asks the loop to stop after the current
    iteration, so the checkpoint never holds a half-applied optimizer step; a second one stops
    at once. Loader processes ignore SIGINT (``ignore_sigint``) and are shut down by the loop."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C keeps its default behaviour
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this iteration (Ctrl-C again to stop at once)")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def ignore_sigint(_worker_id: int) -> None:
    """Loader processes leave Ctrl-C to the main process (which checkpoints, then stops them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


def restore(run_dir: str, heads: nn.Module, optimizer, scheduler) -> int:
    """Load the newest readable checkpoint of ``run_dir``; returns its iteration. An unreadable
    (truncated) newer one is named in a warning and the next older one is used."""
    files = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "iter_*.pt")), reverse=True)
    for path in files:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            heads.load_state_dict(ckpt["model_state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        except Exception as e:  # truncated or foreign file
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path, str(e).splitlines()[0])
            continue
        log.info("resuming %s from iteration %d (%s)", run_dir, int(ckpt["iteration"]), os.path.basename(path))
        return int(ckpt["iteration"])
    raise UserError(f"no readable checkpoint in {run_dir}/checkpoints ({len(files)} unreadable)")


def train(cfg: Mapping[str, Any], device: torch.device) -> str | None:
    """Run (or resume) a distillation; returns the path of the final ``last.pt``, or None when
    ``train.stop_after`` ended it early.

    ``cfg`` holds ``model``, ``teachers``, ``train`` and ``precision`` as in ``configs/train.yaml``.
    Under torchrun the process group is joined here (and left only if it was made here).
    Raises ``TrainingInterrupted`` after Ctrl-C, once the last finished iteration is saved.
    """
    cfg = {**cfg, "train": plain(parse(TrainSettings, cfg["train"], "train"))}  # checked, with the defaults
    with dist.process_group(device) as (rank, world):
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return _train(cfg, device, rank, world)


def _train(cfg: Mapping[str, Any], device: torch.device, rank: int, world: int) -> str | None:
    tcfg = cfg["train"]
    check_run_inputs(cfg)
    run_dir = tcfg.get("resume") or tcfg["output"]
    if not tcfg.get("resume") and cfg.get("overwrite") and rank == 0:
        clear_run(run_dir)
    files = training_images(tcfg)
    batch_size = int(tcfg["batch_size"])
    if batch_size % world or 0 < len(files) % batch_size < world:
        raise ConfigError(f"train.batch_size={batch_size} with {len(files)} images does not split evenly over "
                          f"the {world} processes (every process needs images in every batch)")
    distiller = build_distiller(cfg, device)
    heads = distiller.student.heads.train()
    optimizer, scheduler = make_optimizer(heads, distiller.teachers, tcfg)
    start = restore(run_dir, heads, optimizer, scheduler) if tcfg.get("resume") else 0
    trainable: nn.Module = heads
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        trainable = nn.parallel.DistributedDataParallel(heads, device_ids=device_ids)
    sampler = ResumableBatchSampler(len(files), batch_size, int(tcfg["epochs"]), int(tcfg["seed"]), start=start,
                                    rank=rank, world=world)
    loader = training_loader(files, sampler, tcfg, device)
    if rank == 0:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)

    def save(iteration: int) -> None:
        if rank == 0:
            _save_checkpoint(run_dir, iteration, heads, optimizer, scheduler, keep=int(tcfg["keep_checkpoints"]))

    end = _loop(distiller, trainable, optimizer, scheduler, loader, device, start, sampler.total, tcfg, save,
                run_dir, rank, world)
    if end < sampler.total:
        return None
    last = os.path.join(run_dir, "last.pt")
    if rank == 0:
        save_heads(heads, last, epoch=int(tcfg["epochs"]) - 1)
        log.info("done: %d iterations; heads in %s", sampler.total, last)
    dist.barrier()
    return last


def training_loader(files: list[str], sampler: ResumableBatchSampler, tcfg: Mapping[str, Any],
                    device: torch.device) -> DataLoader:
    """Augmented training crops in the batches of ``sampler``."""
    workers = int(tcfg["num_workers"])
    dataset = TrainImages(files, int(tcfg["im_size"]), antialias=bool(tcfg["antialias"]))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=ignore_sigint)


def _loop(distiller: Distiller, trainable: nn.Module, optimizer, scheduler, loader: DataLoader,
          device: torch.device, start: int, total: int, tcfg: Mapping[str, Any], save, run_dir: str, rank: int,
          world: int) -> int:
    """Iterations ``start`` .. ``total``-1; returns the number of finished iterations."""
    stop_after, save_every = tcfg.get("stop_after"), int(tcfg["save_every"])
    bar = tqdm(total=total, initial=start, desc="train", unit="it", disable=rank != 0, dynamic_ncols=True)
    t0, seen, done = time.perf_counter(), 0, start
    with _StopRequest() as stop:
        for it, images in enumerate(loader, start):
            images = images.to(device, non_blocking=True)
            loss, losses = distiller.step(images, optimizer, scheduler, trainable)
            seen += images.shape[0] * world
            done = it + 1
            if rank == 0 and (done % 20 == 0 or done == total):
                bar.set_postfix(loss=f"{loss.item():.4f}", **{n: f"{v.item():.4f}" for n, (v, _) in losses.items()},
                                **{f"{n}_agree": f"{a.item():.3f}" for n, (_, a) in losses.items()},
                                img_s=f"{seen / (time.perf_counter() - t0):.1f}")
            bar.update(1)
            if done % save_every == 0 or done == total:
                save(done)
            if stop.requested:
                if done % save_every and done != total:
                    save(done)
                bar.close()
                raise TrainingInterrupted(run_dir, done)
            if stop_after is not None and done >= int(stop_after) and done < total:
                log.info("stopping after iteration %d (train.stop_after)", done)
                break
    bar.close()
    return done


def _save_checkpoint(run_dir: str, iteration: int, heads: nn.Module, optimizer, scheduler, keep: int) -> None:
    path = os.path.join(run_dir, "checkpoints", f"iter_{iteration:07d}.pt")
    save_atomic({"iteration": iteration, "model_state_dict": heads.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict()}, path)
    for old in sorted(glob.glob(os.path.join(run_dir, "checkpoints", "iter_*.pt")))[:-keep]:
        os.remove(old)
