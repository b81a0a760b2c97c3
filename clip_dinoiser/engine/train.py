"""Distillation of DINO correlations and FOUND objectness into the CLIP-DINOiser heads (paper Sec. 3.2)."""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.train_images import ResumableBatchSampler, TrainImages, list_images, sample_subset
from ..files import check_output_dir
from ..models import CLIPDINOiser, build_model, check_model_files, save_heads
from ..teachers import DINOTeacher, FOUNDTeacher, build_teachers, check_teacher_files
from . import distributed as dist
from .inference import autocast

log = logging.getLogger(__name__)


def distillation_losses(
    corr_logits: Tensor, obj_logits: Tensor, dino_target: Tensor, found_target: Tensor
) -> tuple[Tensor, Tensor]:
    """BCE-with-logits of the student's correlations (negatives clamped to 0) against DINO's
    binarised correlations, and of the objectness logits against FOUND's mask (both means)."""
    corr_loss = F.binary_cross_entropy_with_logits(corr_logits.float().clamp(min=0), dino_target)
    obj_loss = F.binary_cross_entropy_with_logits(obj_logits.float(), found_target)
    return corr_loss, obj_loss


def make_optimizer(heads: nn.Module, cfg: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with the paper's per-head learning rates and a step decay per iteration."""
    optimizer = torch.optim.AdamW([
        {"params": heads.obj_proj.parameters(), "lr": float(cfg["corr_lr"])},
        {"params": heads.bkg_decoder.parameters(), "lr": float(cfg["found_lr"])},
    ])
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


def check_run_inputs(cfg: Mapping[str, Any]) -> None:
    """Every folder and file a training run names, checked before any model is loaded: the run
    folder (resumable, or writable), the image folder, CLIP's and the teachers' local weights."""
    tcfg = cfg["train"]
    if tcfg.get("resume"):
        resume_checkpoint(tcfg["resume"])
    else:
        check_output_dir(tcfg["output"], "train.output")
    if not os.path.isdir(str(tcfg["data"])):
        raise FileNotFoundError(f"training image folder not found: {tcfg['data']} (train.data)")
    check_model_files({**cfg["model"], "name": "clip_dinoiser", "checkpoint": None})
    check_teacher_files(cfg["teachers"])


class Distiller:
    """Student (frozen CLIP + trainable heads) and the two frozen teachers, one training step at a time."""

    def __init__(self, student: CLIPDINOiser, dino: DINOTeacher, found: FOUNDTeacher, *, gamma: float,
                 precision: str = "fp32") -> None:
        self.student, self.dino, self.found = student, dino, found
        self.gamma, self.precision = gamma, precision

    def losses(self, images: Tensor, heads: nn.Module | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(corr loss, objectness loss, agreement of the student's positive correlations with DINO's)."""
        heads = heads or self.student.heads
        device = images.device
        with autocast(device, self.precision):
            with torch.no_grad():
                inter = self.student.backbone.forward_inter(images)
                dino_target = self.dino.target(images, self.gamma)
                found_target = self.found.target(images, tuple(inter.shape[-2:]))
            corr_logits, obj_logits = heads(inter)
        corr_loss, obj_loss = distillation_losses(corr_logits, obj_logits, dino_target, found_target)
        agreement = ((corr_logits.detach() > 0).float() == dino_target).float().mean()
        return corr_loss, obj_loss, agreement


def build_distiller(cfg: Mapping[str, Any], device: torch.device) -> Distiller:
    model_cfg = {**cfg["model"], "checkpoint": None, "name": "clip_dinoiser"}
    torch.manual_seed(int(cfg["train"]["seed"]))  # the heads' initialisation
    student = build_model(model_cfg).to(device)
    dino, found = build_teachers(cfg["teachers"])
    return Distiller(student, dino.to(device), found.to(device), gamma=float(model_cfg.get("gamma", 0.2)),
                     precision=cfg["precision"])


def train(cfg: Mapping[str, Any], device: torch.device) -> str:
    """Run (or resume) a distillation; returns the path of the final ``last.pt``.

    ``cfg`` holds ``model``, ``teachers``, ``train`` and ``precision`` as in ``configs/train.yaml``.
    """
    tcfg = cfg["train"]
    rank, world = dist.init_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    check_run_inputs(cfg)
    run_dir = tcfg.get("resume") or tcfg["output"]
    files = sample_subset(list_images(tcfg["data"]), tcfg.get("ds_size"), int(tcfg["seed"]))
    batch_size = int(tcfg["batch_size"])
    if batch_size % world or 0 < len(files) % batch_size < world:
        raise ValueError(f"train.batch_size={batch_size} with {len(files)} images does not split evenly over "
                         f"the {world} processes (every process needs images in every batch)")

    distiller = build_distiller(cfg, device)
    heads = distiller.student.heads.train()
    optimizer, scheduler = make_optimizer(heads, tcfg)
    start = 0
    ckpt_path = resume_checkpoint(run_dir) if tcfg.get("resume") else None
    if ckpt_path:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        heads.load_state_dict(ckpt["model_state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start = int(ckpt["iteration"])
        log.info("resuming %s from iteration %d", run_dir, start)
    trainable: nn.Module = heads
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        trainable = nn.parallel.DistributedDataParallel(heads, device_ids=device_ids)

    sampler = ResumableBatchSampler(len(files), batch_size, int(tcfg["epochs"]), int(tcfg["seed"]), start=start,
                                    rank=rank, world=world)
    workers = int(tcfg["num_workers"])
    dataset = TrainImages(files, int(tcfg["im_size"]), antialias=bool(tcfg.get("antialias", False)))
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers > 0 else None)
    total = sampler.total
    stop_after = tcfg.get("stop_after")
    save_every = int(tcfg["save_every"])
    if rank == 0:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    bar = tqdm(total=total, initial=start, desc="train", unit="it", disable=rank != 0, dynamic_ncols=True)
    t0, seen = time.perf_counter(), 0
    for it, images in enumerate(loader, start):
        images = images.to(device, non_blocking=True)
        corr_loss, obj_loss, agreement = distiller.losses(images, trainable)
        loss = corr_loss + obj_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += images.shape[0] * world
        done = it + 1
        if rank == 0 and (done % 20 == 0 or done == total):
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss.item():.4f}", corr=f"{corr_loss.item():.4f}",
                            obj=f"{obj_loss.item():.4f}", agree=f"{agreement.item():.3f}", img_s=f"{rate:.1f}")
            log.debug("iter %d loss %.5f corr %.5f obj %.5f", done, loss.item(), corr_loss.item(), obj_loss.item())
        bar.update(1)
        if rank == 0 and (done % save_every == 0 or done == total):
            _save_checkpoint(run_dir, done, heads, optimizer, scheduler, keep=int(tcfg.get("keep_checkpoints", 2)))
        if stop_after is not None and done >= int(stop_after) and done < total:
            log.info("stopping after iteration %d (train.stop_after)", done)
            bar.close()
            dist.cleanup()
            return ""
    bar.close()
    last = os.path.join(run_dir, "last.pt")
    if rank == 0:
        epochs = int(tcfg["epochs"])
        save_heads(heads, last, epoch=epochs - 1)
        log.info("done: %d iterations; heads in %s", total, last)
    dist.barrier()
    dist.cleanup()
    return last


def _save_checkpoint(run_dir: str, iteration: int, heads: nn.Module, optimizer, scheduler, keep: int) -> None:
    path = os.path.join(run_dir, "checkpoints", f"iter_{iteration:07d}.pt")
    torch.save({"iteration": iteration, "model_state_dict": heads.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, path + ".tmp")
    os.replace(path + ".tmp", path)  # never leave a half-written checkpoint behind
    for old in sorted(glob.glob(os.path.join(run_dir, "checkpoints", "iter_*.pt")))[:-keep]:
        os.remove(old)
