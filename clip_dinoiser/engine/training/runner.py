"""What a training tool does around its task, written once for every training tool
(``tools/train.py``, ``tools/train_target.py``): the run's config (its own saved one on resume,
changes refused), every check before a folder or model, the claimed run folder and its
``train.log``, the end-of-run evaluation and, in a hydra multirun, the sweep's summary."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ...config import TrainEvalConfig, parse
from ...files import append_atomic
from ..job.resume import resume_config
from ..job.runs import RunFolder

log = logging.getLogger("train")


@dataclass(frozen=True)
class TrainingTool:
    """A training tool's parts.

    Attributes:
        settings: the dataclass of ``train.*`` (checked first: cheap).
        resume_free: the keys a resumed run may be given anew.
        engine: the task's module, imported once the cheap checks passed. It provides
            ``check_run_inputs(config, *, folder)`` (every input, before any folder or model;
            ``folder``: the run folder too), ``start_run(config, run) -> RunFolder`` (``run``
            claimed, a new run's ``config.yaml`` written) and ``train(config, device, run=None, *,
            checked=False) -> last.pt | None`` (``checked``: ``check_run_inputs`` has run).
        evaluated: the model config that scores the run's ``last.pt``.
        schema: the tool's whole config (``TrainConfig``, ``TrainTargetConfig``): every key of a
            command is checked against it under its full name before anything runs.
    """

    settings: type
    resume_free: Sequence[str]
    engine: str
    evaluated: Callable[[Mapping[str, Any], str], dict[str, Any]]
    schema: type


def run_training_tool(cfg: DictConfig, tool: TrainingTool) -> str | None:
    """Train (or resume) one run; with ``eval.enabled``, score its ``last.pt`` at the end. In a
    multirun (``-m``) each job's run folder is ``hydra.sweep.dir/<job number>`` and the sweep's
    summary is rewritten after every job."""
    from hydra.core.hydra_config import HydraConfig

    from ..job import distributed as dist
    from ..job.cli import interrupted_message, multirun_dirs, resolve_device
    from ..job.signals import Interrupted, deferred

    resuming = bool(cfg.train.resume)
    overrides = list(HydraConfig.get().overrides.task)
    config, changes = (resume_config(cfg, overrides, tool.resume_free, tool.schema) if resuming
                       else (OmegaConf.to_container(cfg, resolve=True), []))
    multirun = multirun_dirs()
    if multirun and not resuming:
        config["train"]["output"] = multirun[0]  # no collisions between jobs
    parse(tool.schema, config, "")  # every key, type, number and name, under its full name, first: cheap
    evaluation = parse(TrainEvalConfig, config.get("eval"), "eval")
    device = resolve_device(config["device"])
    main_rank = dist.launched_rank() == 0
    engine = importlib.import_module(tool.engine)
    engine.check_run_inputs(config, folder=main_rank)  # before any folder is made or model loaded
    from ...data.benchmarks import checked_benchmarks

    # the end-of-run evaluation's settings now, not after the training; its datasets when it will run
    checked_benchmarks(evaluation.data, evaluation.slide, "eval.data", datasets=evaluation.enabled)
    if not main_rank:
        return engine.train(config, device, checked=True)
    from .loop import latest_checkpoint, run_folder

    folder, handler = run_folder(config), None  # made here: a signal during start_run still releases it
    failed = True
    try:
        engine.start_run(config, folder)
        handler = _log_to(folder.record("train.log"))
        if resuming:  # "resuming ... from iteration N" comes once the inputs and the checkpoint are checked
            log.info("train.resume=%s%s", folder.path, f", given anew: {'; '.join(changes)}" if changes else "")
        try:
            last = engine.train(config, device, run=folder, checked=True)
        except Interrupted as e:  # what the terminal is told (stderr), written in train.log too
            handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, interrupted_message(e), None, None))
            raise
        if last and evaluation.enabled:
            _evaluate(tool.evaluated(config, last), evaluation, device, folder)
            if multirun:
                from ..reporting.summary import write_summary

                sweep_dir = multirun[1]
                log.info("sweep so far:\n%s", write_summary([sweep_dir], sweep_dir))
        failed = False
        return last
    finally:
        with deferred(deliver=not failed):  # a second Ctrl-C waits: no half-removed run blocks the next one
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
            # a new run that failed (or was stopped) before its first checkpoint leaves nothing behind
            folder.release(failed=failed, discard=failed and not resuming and latest_checkpoint(folder.path) is None)


def _evaluate(model_cfg: dict[str, Any], evaluation: TrainEvalConfig, device, folder: RunFolder) -> None:
    from ..evaluation.results import evaluate_model, summary_table

    results = evaluate_model(model_cfg, evaluation, device, folder)
    log.info("%s\n%s", folder.path, summary_table(results))


def _log_to(path: str) -> logging.Handler:
    """The run's ``train.log`` (appended on resume) receives every log line of the run."""
    handler = RunLog(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


class RunLog(logging.Handler):
    """``train.log``: each line appended whole through the one writer (``files.append_atomic``). A
    full disk stops the file, with one warning on the terminal (which keeps every line), instead of
    logging's "--- Logging error ---" and a traceback per line."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path, self.failed = path, False

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        try:
            append_atomic(self.path, (self.format(record) + "\n").encode("utf-8"))
        except OSError as e:
            self.failed = True
            print(f"warning: {e}; {os.path.basename(self.path)} stops here, the terminal keeps every line",
                  file=sys.stderr)
