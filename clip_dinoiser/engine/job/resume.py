"""Resuming a training run from its own folder: the run's saved settings, with only the keys
that cannot change its result (or extend it) given anew; any other change is refused."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from ...errors import UserError
from ...readers import read_config

SESSION_ONLY = ("train.stop_after",)  # applies to one invocation: never taken from the saved run


def resume_free(length_key: str) -> tuple[str, ...]:
    """The keys a resumed training run may be given anew: those that do not change what it
    computes, and ``length_key`` (``train.epochs``, ``train.iterations``), which extends it."""
    return ("train.resume", length_key, "train.num_workers", "train.save_every", "train.log_every",
            "train.keep_checkpoints", "train.stop_after", "device")


def running_tool() -> str:
    """``tools/<script>.py`` of this process (``tools/train.py`` when run otherwise)."""
    import sys

    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "train.py"
    return f"tools/{script}"


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_resume_folder(run_dir: str) -> None:
    """A ``FileNotFoundError`` unless the run folder to resume (``train.resume``) exists."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder to resume not found: {run_dir} (train.resume)")


# The tools that make run folders, with the top-level keys only their config.yaml has.
RUN_TOOLS = (("tools/train.py", ("teachers",)), ("tools/train_target.py", ("annotator", "target")),
             ("tools/eval.py", ("data", "slide")))


def made_by(saved: Any) -> str | None:
    """The tool whose run folder's ``config.yaml`` ``saved`` is (by the top-level keys only its
    config has), or None."""
    keys = set(saved) if isinstance(saved, Mapping) else set()
    for tool, own in RUN_TOOLS:
        if keys & set(own) and ("train" in keys) == (tool != "tools/eval.py"):
            return tool
    return None


def missing_settings(saved: Any, schema: type, prefix: str = "") -> list[str]:
    """The keys of ``schema`` without a default (``???``) that ``saved`` lacks, by full name."""
    import dataclasses

    missing = []
    for f in dataclasses.fields(schema):
        value = saved.get(f.name) if isinstance(saved, Mapping) else None
        if f.default is not dataclasses.MISSING and f.default == MISSING and value is None:
            missing.append(f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(f.default_factory) and isinstance(value, Mapping):
            missing += missing_settings(value, f.default_factory, f"{prefix}{f.name}.")
    return missing


def check_run_config(saved: Any, path: str, schema: type, tool: str) -> None:
    """One line unless ``saved`` (a run's ``config.yaml``) is a complete config of ``tool``: which
    tool made the run, if another; which settings it lacks."""
    maker = made_by(saved)
    if maker is not None and maker != tool:
        run_dir = os.path.dirname(path)
        if maker == "tools/eval.py":
            raise UserError(f"{run_dir} is an evaluation's run folder (tools/eval.py): only a training run resumes "
                            "(train.resume=<a folder of tools/train.py or tools/train_target.py>)")
        raise UserError(f"{run_dir} was made by {maker}, not {tool}: resume it with python {maker} "
                        f"train.resume={run_dir}")
    missing = missing_settings(saved, schema)
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: a run's config.yaml holds every setting it ran with (was "
                        "it edited?); restore it, or start a new run")


def resume_config(cfg: DictConfig, overrides: list[str], free: Sequence[str],
                  schema: type | None = None) -> tuple[dict, list[str]]:
    """The saved config of the run ``cfg.train.resume`` with the command line's overrides of the
    ``free`` keys applied; (config, the changes made). Any other override that differs from the
    run's value is refused, naming the keys. ``schema``: the tool's config (``TrainConfig``): a
    run made by another tool, or a config.yaml lacking settings, is refused in one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run_dir = cfg.train.resume
    saved_path = os.path.join(run_dir, "config.yaml")
    check_resume_folder(run_dir)
    if not os.path.isfile(saved_path):
        raise FileNotFoundError(f"{saved_path} not found: cannot resume a run without its settings")
    saved = read_config(saved_path)
    if schema is not None:
        check_run_config(OmegaConf.to_container(saved), saved_path, schema, running_tool())
    for key in SESSION_ONLY:
        OmegaConf.update(saved, key, _plain(OmegaConf.select(cfg, key)), force_add=True)
    changes, refused = [], []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        new, old = _plain(OmegaConf.select(cfg, key)), _plain(OmegaConf.select(saved, key))
        if key in free:
            if new != old:
                OmegaConf.update(saved, key, new, force_add=True)
                if key != "train.resume":  # the resume itself is no change of the run
                    changes.append(f"{key}: {old} -> {new}")
        elif new != old:
            refused.append(f"{key} ({old} -> {new})")
    if refused:
        raise UserError(f"resuming {run_dir} would change {', '.join(refused)}; a run keeps its settings "
                         f"(only {', '.join(k for k in free if k != 'train.resume')} may change): "
                         "start a new run instead")
    return OmegaConf.to_container(saved, resolve=True), changes


