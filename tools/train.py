"""Distil DINO correlations and FOUND objectness into the CLIP-DINOiser heads.

    python tools/train.py train.data=/path/to/imagenet/train      # FOUND decoder: the released file
    python tools/train.py train.resume=outputs/train/2024-01-01_00-00-00
    python tools/train.py -m model.feats_idx=-2,-3 train.data=... eval.enabled=true eval.data.name=voc
    torchrun --nproc_per_node=4 tools/train.py train.data=... precision=bf16

The run folder gets config.yaml, train.log, checkpoints/ and last.pt (released format).
A resumed run takes every setting from its config.yaml; only the keys in ``RESUME_FREE`` may
be given anew (``train.epochs`` extends the run, and is recorded in train.log).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from clip_dinoiser.config import TrainConfig, TrainEvalConfig, parse, register_configs
from clip_dinoiser.data.benchmarks import checked_benchmarks
from clip_dinoiser.engine.cli import launch, resolve_device, user_errors_as_one_line
from clip_dinoiser.engine.loop import latest_checkpoint
from clip_dinoiser.engine.results import evaluate_checkpoint, summary_table
from clip_dinoiser.engine.summary import write_summary
from clip_dinoiser.engine.train import check_run_inputs, start_run, train
from clip_dinoiser.errors import UserError
from clip_dinoiser.readers import read_config

log = logging.getLogger("train")

# Settings that do not change what a run computes, or extend it (train.epochs); any other
# setting given with train.resume must equal the run's own.
RESUME_FREE = ("train.resume", "train.epochs", "train.num_workers", "train.save_every", "train.keep_checkpoints",
               "train.stop_after", "device")
SESSION_ONLY = ("train.stop_after",)  # applies to one invocation: never taken from the saved run


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[dict, list[str]]:
    """The saved config of the run ``cfg.train.resume`` with the command line's ``RESUME_FREE``
    overrides applied; (config, the changes made). Any other override that differs from the
    run's value is refused, naming the keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run_dir = cfg.train.resume
    saved_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder to resume not found: {run_dir} (train.resume)")
    if not os.path.isfile(saved_path):
        raise FileNotFoundError(f"{saved_path} not found: cannot resume a run without its settings")
    saved = read_config(saved_path)
    for key in SESSION_ONLY:
        OmegaConf.update(saved, key, _plain(OmegaConf.select(cfg, key)), force_add=True)
    changes, refused = [], []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        new, old = _plain(OmegaConf.select(cfg, key)), _plain(OmegaConf.select(saved, key))
        if key in RESUME_FREE:
            if new != old:
                OmegaConf.update(saved, key, new, force_add=True)
                changes.append(f"{key}: {old} -> {new}")
        elif new != old:
            refused.append(f"{key} ({old} -> {new})")
    if refused:
        raise UserError(f"resuming {run_dir} would change {', '.join(refused)}; a run keeps its settings "
                         f"(only {', '.join(k for k in RESUME_FREE if k != 'train.resume')} may change): "
                         "start a new run instead")
    return OmegaConf.to_container(saved, resolve=True), changes


@user_errors_as_one_line
def run(cfg: DictConfig) -> str | None:
    """Train (or resume) one run; with ``eval.enabled``, score its ``last.pt`` at the end. In a
    multirun (``-m``) each job's run folder is ``hydra.sweep.dir/<job number>`` and the sweep's
    summary is rewritten after every job."""
    resuming = bool(cfg.train.resume)
    config, changes = (resume_config(cfg, list(HydraConfig.get().overrides.task)) if resuming
                       else (OmegaConf.to_container(cfg, resolve=True), []))
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and not resuming:
        config["train"]["output"] = HydraConfig.get().runtime.output_dir  # no collisions between jobs
    device = resolve_device(config["device"])
    check_run_inputs(config, folder=os.environ.get("RANK", "0") == "0")  # before any folder is made or model loaded
    evaluation = parse(TrainEvalConfig, config.get("eval"), "eval")
    if evaluation.enabled:  # its datasets exist, before the training
        checked_benchmarks(evaluation.data, evaluation.slide.scale)
    if os.environ.get("RANK", "0") != "0":
        return train(config, device)
    folder = start_run(config)
    handler = _log_to(folder.record("train.log"))
    failed = True
    try:
        if resuming:
            log.info("resume of %s%s", folder.path, f" with {'; '.join(changes)}" if changes else "")
        last = train(config, device, run=folder)
        if last and evaluation.enabled:
            results = evaluate_checkpoint(config["model"], last, evaluation, device, folder)
            log.info("%s\n%s", folder.path, summary_table(results))
            if multirun:
                sweep_dir = HydraConfig.get().sweep.dir
                log.info("sweep so far:\n%s", write_summary([sweep_dir], sweep_dir))
        failed = False
        return last
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        # a new run that failed before its first checkpoint leaves nothing behind
        folder.release(failed=failed, discard=failed and not resuming and latest_checkpoint(folder.path) is None)


def _log_to(path: str) -> logging.Handler:
    """The run's ``train.log`` (appended on resume) receives every log line of the run."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    register_configs()
    launch(main, schema=TrainConfig, groups={"model": "clip_dinoiser", "teachers": "paper"})
