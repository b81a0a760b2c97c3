"""The one training loop, for every training task (the heads' distillation, MaskCLIP+ targets).

What a task brings (``Task``): the module that learns, its optimizer and schedule, its dataset
and one step's losses. What the loop gives every task, written once here: resumable seeded
batches, DDP under torchrun, checkpoints (atomic, rotated), resume from the newest readable
one, every exit saving its last iteration (the end, ``train.stop_after``, SIGINT, SIGTERM),
curves (``metrics.jsonl`` always, TensorBoard files when ``tensorboard`` is installed), a
progress bar showing the loss (and each teacher's loss and agreement), and a line of them in the
log (``train.log``) every ``train.log_every`` iterations.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ...data.train_images import ResumableBatchSampler
from ...errors import ConfigError, UserError
from ...files import WriteError, append_atomic, save_atomic
from ...readers import read_weights
from ..job import distributed as dist
from ..job.inputs import INPUTS, Input, check_inputs, record_inputs
from ..job.runs import METRICS, RunFolder
from ..job.signals import Interrupted, StopRequest, handled, ignore_signals, raise_if_stopped, resume_command
from .events import EventFile

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"


class Task(Protocol):
    """A training task for ``run_loop``.

    Attributes:
        module: what learns: wrapped in DDP under torchrun, saved in checkpoints
            (``model_state_dict``).
    """

    module: nn.Module

    def make_optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer (param groups may carry a ``name``: its learning rate is logged as
        ``lr/<name>``) and a scheduler stepped once per iteration."""

    def dataset(self) -> Dataset:
        """Items are asked for as (index, seed) pairs (``ResumableBatchSampler``)."""

    def losses(self, batch: Any, module: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        """(the loss to minimise, scalars to log) for one batch on the device; ``module`` is
        ``self.module`` or its DDP wrapper (call that one, so gradients are averaged)."""

    def prepare(self, start: int) -> None:
        """Before the first iteration (``start``: the one a resumed run continues from): train mode."""

    def save_final(self, path: str) -> str:
        """Write the trained result (``last.pt``) in the task's own format; returns a line for the log."""

    def inputs(self) -> Mapping[str, Input]:
        """What identifies each input the run reads (``engine/job/inputs.py``), by the key that
        names it: recorded in a new run's folder, compared on resume."""


def checkpoints(run_dir: str) -> list[str]:
    """The run's checkpoints, oldest first (the names carry the iteration, zero-padded)."""
    return sorted(glob.glob(os.path.join(run_dir, CHECKPOINTS, "iter_*.pt")))


def latest_checkpoint(run_dir: str) -> str | None:
    files = checkpoints(run_dir)
    return files[-1] if files else None


def restore(run_dir: str, module: nn.Module, optimizer, scheduler) -> tuple[int, str]:
    """Load the newest readable checkpoint of ``run_dir``; returns (its iteration, its path). An
    unreadable (truncated) newer one is named in a warning and the next older one is used."""
    files = checkpoints(run_dir)[::-1]
    for path in files:
        try:
            ckpt = read_weights(path, "checkpoint")
            module.load_state_dict(ckpt["model_state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        except (UserError, KeyError, TypeError, ValueError, RuntimeError) as e:  # truncated or foreign
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path, str(e).splitlines()[0])
            continue
        return int(ckpt["iteration"]), path
    raise UserError(f"no readable checkpoint in {run_dir}/{CHECKPOINTS} ({len(files)} unreadable)")


class Curves:
    """Per-iteration scalars of rank 0: ``metrics.jsonl`` (one JSON object per iteration) and,
    when ``tensorboard`` is installed, TensorBoard event files in ``tensorboard/`` (``events.py``),
    both appended through the one writer (a full disk: one line naming the file, no half line).
    Values stay on the device until ``flush`` (every ``every`` iterations: one synchronisation,
    not one per scalar). A resumed run first drops the lines after its checkpoint's iteration."""

    def __init__(self, run: RunFolder | None, start: int, every: int = 20) -> None:
        self.run, self.every, self._rows = run, every, []
        self._tb = None
        if run is None:
            return
        self.path = run.record(METRICS)
        if os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as f:
                kept = [ln for ln in f if ln.strip() and _iteration_of(ln) <= start]
            run.write_text(METRICS, "".join(kept))
        self._tb = EventFile.open(run.record(TENSORBOARD), purge_step=start + 1 if start else None)

    def add(self, iteration: int, scalars: Mapping[str, Tensor | float]) -> None:
        if self.run is None:
            return
        self._rows.append((iteration, dict(scalars)))
        if len(self._rows) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        tensors = [v.detach().float().reshape(()) for _, row in self._rows for v in row.values()
                   if isinstance(v, Tensor)]
        values = iter(torch.stack(tensors).tolist() if tensors else [])
        lines = [(iteration, {k: next(values) if isinstance(v, Tensor) else float(v) for k, v in row.items()})
                 for iteration, row in self._rows]
        self._rows.clear()
        append_atomic(self.path, "".join(json.dumps({"iteration": it, **line}) + "\n"
                                         for it, line in lines).encode("utf-8"))
        if self._tb is not None:
            self._tb.add(lines)

    def close(self) -> None:
        self.flush()


def _iteration_of(line: str) -> int:
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # an unreadable line is dropped on resume


def check_schedule(total: int, start: int, run_dir: str, length_key: str = "train.epochs") -> None:
    """A resumed run must have iterations left: its length (``length_key``) cannot end before the checkpoint."""
    if start > total:
        raise ConfigError(f"{length_key} gives {total} iterations but {run_dir} is at iteration {start}: a run "
                          f"cannot be shortened (raise {length_key}, or start a new run)")
    if start == total and os.path.isfile(os.path.join(run_dir, "last.pt")):
        raise ConfigError(f"{run_dir} finished all its {total} iterations: raise {length_key} to train on")


def run_loop(task: Task, sampler: ResumableBatchSampler, tcfg: Mapping[str, Any], run: RunFolder | None,
             device: torch.device, rank: int, world: int, start: int, optimizer, scheduler) -> int:
    """Iterations ``start`` .. ``sampler.total`` - 1 of ``task``; returns the last finished one.

    Raises ``Interrupted`` (with the run folder and the saved iteration) after SIGINT / SIGTERM,
    once the iteration under way has finished and been saved.
    """
    module: nn.Module = task.module
    if world > 1:
        module = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                     else None)
    loader = _loader(task.dataset(), sampler, tcfg, device)
    keep, save_every = int(tcfg["keep_checkpoints"]), int(tcfg["save_every"])
    stop_after = tcfg.get("stop_after")  # iterations in this call
    end = sampler.total if stop_after is None else min(sampler.total, start + int(stop_after))

    def save(iteration: int) -> None:
        if rank == 0 and run is not None:
            _save_checkpoint(run, iteration, task.module, optimizer, scheduler, keep, saved)

    curves = Curves(run if rank == 0 else None, start)
    bar = tqdm(total=sampler.total, initial=start, desc="train", unit="it", disable=rank != 0, dynamic_ncols=True)
    log_every = int(tcfg.get("log_every") or 50)
    done = saved = start
    started = time.perf_counter()
    finished = False
    try:
        with StopRequest() as stop:
            for it, batch in enumerate(loader, start):
                raise_if_stopped()
                loss, scalars = _step(task, module, batch, device, optimizer, scheduler)
                done = it + 1
                lrs = _learning_rates(optimizer)
                curves.add(done, {"loss": loss.detach(), **scalars, **lrs})
                stopping = _agreed(stop.requested, device, world) or done >= end
                if rank == 0:
                    first = done == start + 1
                    _progress(bar, loss, scalars, show=first or done % 20 == 0 or stopping,
                              line=first or done % log_every == 0 or stopping, iteration=(done, sampler.total),
                              lrs=lrs, seconds=(time.perf_counter() - started) / (done - start))
                if done % save_every == 0 or stopping or done % 20 == 0:
                    _check_finite(loss, done, saved, device, world)
                if done % save_every == 0 or stopping:
                    save(done)
                    saved = done
                if stopping:
                    break
        if stop.requested:
            raise Interrupted(stop.signum)
        finished = True
    except Interrupted as e:  # after a second signal, the iteration under way is lost; the last save stays
        e.run_dir, e.iteration = (run.path if run else None), (saved if saved > 0 else None)
        raise handled(e) from None
    finally:
        bar.close()
        _close(curves, finished)
    return done


def _close(curves: Curves, finished: bool) -> None:
    """The curves' last lines written; after a failure, an error of theirs gives way to the one under way."""
    try:
        curves.close()
    except OSError:
        if finished:
            raise


def _check_finite(loss: Tensor, done: int, saved: int, device: torch.device, world: int) -> None:
    """Stop a diverged run before it saves non-finite weights (all processes together)."""
    if _agreed(not bool(torch.isfinite(loss.detach()).all()), device, world):
        raise UserError(f"training diverged: the loss is {loss.item()} at iteration {done} (lower the learning "
                        f"rates); the last checkpoint kept is iteration {saved}")


def _step(task: Task, module: nn.Module, batch: Any, device: torch.device, optimizer,
          scheduler) -> tuple[Tensor, dict[str, Tensor]]:
    batch = _to(batch, device)
    loss, scalars = task.losses(batch, module)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss, scalars


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        return type(batch)(_to(b, device) for b in batch)
    return batch


def _agreed(requested: bool, device: torch.device, world: int) -> bool:
    """Whether any process was asked to stop (all processes stop at the same iteration)."""
    if world == 1:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    return bool(dist.all_reduce_sum(flag).item() > 0)


def _learning_rates(optimizer) -> dict[str, float]:
    return {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}


def _progress(bar: tqdm, loss: Tensor, scalars: Mapping[str, Tensor | float], *, show: bool, line: bool,
              iteration: tuple[int, int], lrs: Mapping[str, float], seconds: float) -> None:
    """Advance the bar; with ``show``, its text is the step's ``step_summary``; with ``line``, the
    summary, the learning rates and the pace go to the log (``train.log``)."""
    if show or line:
        text = step_summary(loss, scalars)
        if show:
            bar.set_postfix_str(text, refresh=False)
        if line:
            rates = ", ".join(f"{k[3:]} {v:.3g}" for k, v in lrs.items())
            log.info("iteration %d/%d: %s; lr %s; %.2f s/iteration", *iteration, text, rates, seconds)
    bar.update(1)


def step_summary(loss: Tensor, scalars: Mapping[str, Tensor | float]) -> str:
    """A step in words: ``loss 0.9162 (dino 0.6931, found 0.2231), agreement dino 0.512, found 0.901``
    (each teacher's loss and the agreement of its head with its target; for MaskCLIP+, the share
    of ignored pseudo-labels). One device synchronisation."""
    keys = [k for k in scalars if k.startswith(("loss/", "agreement/")) or k == "pseudo/ignored"]
    values = torch.stack([torch.as_tensor(v).detach().float().reshape(()).cpu()
                          for v in (loss, *(scalars[k] for k in keys))]).tolist()
    named = dict(zip(keys, values[1:]))
    text = f"loss {values[0]:.4f}"
    parts = {prefix: [f"{k[len(prefix):]} {v:.4f}" if prefix == "loss/" else f"{k[len(prefix):]} {v:.3f}"
                      for k, v in named.items() if k.startswith(prefix)] for prefix in ("loss/", "agreement/")}
    if parts["loss/"]:
        text += f" ({', '.join(parts['loss/'])})"
    if parts["agreement/"]:
        text += f", agreement {', '.join(parts['agreement/'])}"
    if "pseudo/ignored" in named:
        text += f", ignored pixels {named['pseudo/ignored']:.3f}"
    return text


def _loader(dataset: Dataset, sampler: ResumableBatchSampler, tcfg: Mapping[str, Any],
            device: torch.device) -> DataLoader:
    workers = dist.loader_processes(tcfg.get("num_workers"))
    log.info("reading the images with %d data-loading processes", workers)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=ignore_signals)


def _save_checkpoint(run: RunFolder, iteration: int, module: nn.Module, optimizer, scheduler, keep: int,
                     saved: int) -> None:
    """Checkpoint ``iteration``, then keep the newest ``keep``. A full disk (quota, read-only file
    system) stops the run in one line naming the file and the checkpoint kept (``saved``)."""
    path = run.file(os.path.join(CHECKPOINTS, f"iter_{iteration:07d}.pt"))
    try:
        save_atomic({"iteration": iteration, "model_state_dict": module.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path)
    except WriteError as e:  # what was saved before stays
        kept = (f"iteration {saved} is the newest checkpoint kept: free space, then {resume_command(run.path)} "
                "continues from it" if saved else "no checkpoint was saved")
        err = WriteError(f"{e}; {kept}")
        err.errno = e.errno
        raise err from None
    for old in checkpoints(run.path)[:-keep]:
        os.remove(old)


RUN_FILES = ("config.yaml", "train.log", "last.pt", CHECKPOINTS, METRICS, TENSORBOARD, INPUTS, "results.json",
             "results.csv")


def run_folder(cfg: Mapping[str, Any]) -> RunFolder:
    """A training run's folder (``train.output``, or ``train.resume``'s), not yet claimed."""
    tcfg = cfg["train"]
    if tcfg.get("resume"):
        return RunFolder(tcfg["resume"], RUN_FILES, key="train.resume", resume=True)
    return RunFolder(tcfg["output"], RUN_FILES, key="train.output", overwrite=bool(cfg.get("overwrite")))


def start_run(cfg: Mapping[str, Any], saved: Mapping[str, Any] | None = None, run: RunFolder | None = None
              ) -> RunFolder:
    """Claim the run folder (``run``: that object, else ``run_folder(cfg)``); a new run then clears
    an earlier run's files (``overwrite=true``) and writes its ``config.yaml`` (``saved``: what to
    record, default ``cfg``). A caller that passes ``run`` can release it whatever happens here."""
    run = (run or run_folder(cfg)).claim()
    if not cfg["train"].get("resume"):
        if cfg.get("overwrite"):
            run.clear()
        run.write_config(saved if saved is not None else cfg)
    return run


def in_run_folder(cfg: Mapping[str, Any], device: torch.device, run: RunFolder | None, body, *,
                  start: Any = start_run) -> str | None:
    """``body(cfg, device, rank, world, run folder or None)`` under torchrun's process group (joined
    here, left only if made here), in the run folder: the caller's (claimed), else claimed here by
    ``start(cfg)`` on rank 0 and released after. Other ranks get no folder."""
    with dist.process_group(device) as (rank, world):
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        own = run is None and rank == 0
        run = start(cfg) if own else run
        try:
            return body(cfg, device, rank, world, run if rank == 0 else None)
        finally:
            if own:
                run.release()


def run_task(task: Task, sampler: ResumableBatchSampler, tcfg: Mapping[str, Any], run: RunFolder | None,
             device: torch.device, rank: int, world: int) -> str | None:
    """A whole run of ``task``: its optimizer; on resume, its inputs compared with the ones it
    recorded (``inputs.json``, a change refused), the newest checkpoint and its iterations left
    (else one line; only then the log says "resuming"); the loop, then ``last.pt``; returns its
    path, or None when ``train.stop_after`` ended this call."""
    optimizer, scheduler = task.make_optimizer()
    resuming = bool(tcfg.get("resume"))
    run_dir = tcfg.get("resume") or tcfg["output"]
    inputs = task.inputs()
    unrecorded = check_inputs(run_dir, inputs) if resuming else list(inputs)
    start, checkpoint = restore(run_dir, task.module, optimizer, scheduler) if resuming else (0, None)
    check_schedule(sampler.total, start, run_dir, "train.epochs" if sampler.iterations is None else
                   "train.iterations")
    if resuming:
        log.info("resuming %s from iteration %d (%s)", run_dir, start, os.path.basename(checkpoint))
        if unrecorded:
            log.warning("%s has no record of %s (a run of an earlier version): recorded now, not checked", run_dir,
                        ", ".join(unrecorded))
    if run is not None and unrecorded:
        record_inputs(run.write_json, inputs)
    sampler.start = start
    task.prepare(start)
    if run is not None:
        os.makedirs(run.record(CHECKPOINTS), exist_ok=True)
    done = run_loop(task, sampler, tcfg, run, device, rank, world, start, optimizer, scheduler)
    if done < sampler.total:
        log.info("stopped after iteration %d of %d (train.stop_after): continue with %s", done, sampler.total,
                 resume_command(run_dir))
        return None
    last = os.path.join(run_dir, "last.pt")
    if rank == 0:
        log.info("done: %d iterations; %s", sampler.total, task.save_final(last))
    dist.barrier()
    return last


def batch_split_check(batch_size: int, n: int, world: int) -> None:
    """Every process needs images in every batch (DDP)."""
    if batch_size % world or 0 < n % batch_size < world:
        raise ConfigError(f"train.batch_size={batch_size} with {n} images does not split evenly over the {world} "
                          "processes (every process needs images in every batch)")

