"""Resuming a training run from its own folder: the run's saved settings, with only the keys
that cannot change its result (or extend it) given anew; any other change is refused."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ...errors import UserError
from ...readers import read_config

SESSION_ONLY = ("train.stop_after",)  # applies to one invocation: never taken from the saved run


def resume_free(length_key: str) -> tuple[str, ...]:
    """The keys a resumed training run may be given anew: those that do not change what it
    computes, and ``length_key`` (``train.epochs``, ``train.iterations``), which extends it."""
    return ("train.resume", length_key, "train.num_workers", "train.save_every", "train.log_every",
            "train.keep_checkpoints", "train.stop_after", "device")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_resume_folder(run_dir: str) -> None:
    """A ``FileNotFoundError`` unless the run folder to resume (``train.resume``) exists."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder to resume not found: {run_dir} (train.resume)")


def resume_config(cfg: DictConfig, overrides: list[str], free: Sequence[str]) -> tuple[dict, list[str]]:
    """The saved config of the run ``cfg.train.resume`` with the command line's overrides of the
    ``free`` keys applied; (config, the changes made). Any other override that differs from the
    run's value is refused, naming the keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run_dir = cfg.train.resume
    saved_path = os.path.join(run_dir, "config.yaml")
    check_resume_folder(run_dir)
    if not os.path.isfile(saved_path):
        raise FileNotFoundError(f"{saved_path} not found: cannot resume a run without its settings")
    saved = read_config(saved_path)
    for key in SESSION_ONLY:
        OmegaConf.update(saved, key, _plain(OmegaConf.select(cfg, key)), force_add=True)
    changes, refused = [], []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        new, old = _plain(OmegaConf.select(cfg, key)), _plain(OmegaConf.select(saved, key))
        if key in free:
            if new != old and key != "train.resume":
                OmegaConf.update(saved, key, new, force_add=True)
                changes.append(f"{key}: {old} -> {new}")
        elif new != old:
            refused.append(f"{key} ({old} -> {new})")
    if refused:
        raise UserError(f"resuming {run_dir} would change {', '.join(refused)}; a run keeps its settings "
                         f"(only {', '.join(k for k in free if k != 'train.resume')} may change): "
                         "start a new run instead")
    return OmegaConf.to_container(saved, resolve=True), changes


