"""Score mIoU on the paper's benchmarks (or your own).

    python tools/eval.py data=voc data.root=data/VOCdevkit/VOC2012                # the released heads
    python tools/eval.py data=all data.root=data precision=bf16
    python tools/eval.py 'sweep={model.gamma:[0.1,0.2,0.3],model.bg_refine:[true,false]}'   # one pass, 6 settings
    torchrun --nproc_per_node=8 tools/eval.py data=ade20k output=outputs/eval/ade

Writes ``config.yaml``, ``results.json`` and ``results.csv`` into the run folder (``output``); a
sweep writes one such folder per setting below ``output`` and ``summary.{csv,md,png}`` in it.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from clip_dinoiser.config import EvalConfig, SlideConfig, parse, register_configs
from clip_dinoiser.engine.evaluation.sweep import decoding_fields, point_name, sweep_points
from clip_dinoiser.engine.job.cli import launch, main_process, multirun_dirs, resolve_device, user_errors_as_one_line
from clip_dinoiser.engine.job.runs import RESULT_FILES, RunFolder, claim_all, release_all
from clip_dinoiser.engine.job.signals import deferred
from clip_dinoiser.engine.reporting.summary import SUMMARY_FILES, write_summary
from clip_dinoiser.values import check_precision

if TYPE_CHECKING:
    from clip_dinoiser.data.benchmarks import Benchmark
    from clip_dinoiser.engine.evaluation.evaluate import BenchmarkResult, Evaluator

# torch, mmseg and the models are imported once the command line is checked: a mistyped key
# costs a fraction of a second, not the seconds those imports take.

log = logging.getLogger("eval")


def check_settings(cfg: DictConfig) -> tuple[list, SlideConfig, list[dict], list[RunFolder]]:
    """Every setting and input checked before a loader process or model starts (each error names
    its key or file): every number (finite, in range), the output folders (none of the files a
    run would write may exist, unless ``overwrite``), the datasets (at least one image each),
    device, precision and the sweep. Returns the benchmarks, the window geometry, the sweep's
    points and the run folders to write (one per point, and the sweep's own)."""
    settings = parse(EvalConfig, cfg, "")  # unknown keys, types, numbers out of range
    if settings.model.name == "target":  # its CLIP: the one its last.pt records (another: model.other_clip)
        from clip_dinoiser.models.build import recorded_clip

        settings.model = recorded_clip(settings.model)
        for key in ("name", "pretrained"):  # recorded as run in config.yaml, and in the summaries
            OmegaConf.update(cfg, f"model.clip.{key}", getattr(settings.model.clip, key))
    check_precision(settings.precision)
    if settings.data.corruption is not None:
        from clip_dinoiser.data.corruptions import check_corruption

        check_corruption(settings.data.corruption, settings.data.severity, "data.corruption")
    points = sweep_points(OmegaConf.to_container(cfg.sweep) if cfg.sweep is not None else None)
    folders = run_folders(cfg, points)
    for folder in folders:
        folder.check()
    resolve_device(settings.device)
    from clip_dinoiser.data.benchmarks import checked_benchmarks, corruption_of, reference_for
    from clip_dinoiser.models import check_model_config
    from clip_dinoiser.protocols import get_protocol

    protocol = get_protocol(settings.protocol)
    settings.data.vocabulary_set = settings.data.vocabulary_set or protocol.vocabulary_set
    benchmarks = [(reference_for(b, settings.model, settings.protocol, corruption_of(settings.data)), root)
                  for b, root in checked_benchmarks(settings.data, settings.slide)]
    for bench, _ in benchmarks:
        bench.vocabulary_in(settings.data.vocabulary_set)  # an unknown set: one line, now
    check_model_config(cfg.model)
    for p in points:
        if p.get("data.vocabulary") and not os.path.isfile(p["data.vocabulary"]):
            raise FileNotFoundError(f"vocabulary file not found: {p['data.vocabulary']} (sweep data.vocabulary)")
    return benchmarks, settings, points, folders


def multirun_folder(cfg: DictConfig) -> str | None:
    """In a hydra multirun: the sweep's folder, after pointing ``output`` at this job's own folder."""
    dirs = multirun_dirs()
    if dirs is None:
        return None
    OmegaConf.update(cfg, "output", dirs[0])  # no collisions between jobs
    return dirs[1]


def run_folders(cfg: DictConfig, points: list[dict]) -> list[RunFolder]:
    """The folders an evaluation writes: ``output``, or with a sweep one below it per point
    (and ``output`` for the sweep's summary)."""
    files = [*RESULT_FILES, *(["predictions"] if cfg.save_predictions else []),
             *(["examples"] if cfg.save_examples else [])]
    if not cfg.sweep:
        return [RunFolder(cfg.output, files, key="output", overwrite=cfg.overwrite)]
    top = RunFolder(cfg.output, SUMMARY_FILES, key="output", overwrite=cfg.overwrite)
    return [top] + [RunFolder(os.path.join(cfg.output, point_name(p)), files, key="output", overwrite=cfg.overwrite)
                    for p in points]


@user_errors_as_one_line
def run(cfg: DictConfig) -> list[list[BenchmarkResult]]:
    """Evaluate; returns the results per sweep point (one point without a sweep), per benchmark.
    In a hydra multirun (``-m``) each job's run folder is ``hydra.sweep.dir/<job number>`` and the
    sweep's summary (with the robustness table for corruption sweeps) is rewritten after every job."""
    sweep_dir = multirun_folder(cfg)
    log.info("checking the settings, the benchmarks' folders and the weights")
    benchmarks, settings, points, folders = check_settings(cfg)
    from clip_dinoiser.data.benchmarks import corruption_of, reference_for
    from clip_dinoiser.engine.evaluation.evaluate import Evaluator
    from clip_dinoiser.engine.job import distributed as dist
    from clip_dinoiser.models import build_model

    main_rank = dist.launched_rank() == 0
    if main_rank:
        claim_all(folders)  # a second evaluation into the same folders is refused from here on
    evaluator = Evaluator(slide=settings.slide, precision=cfg.precision, loader_batch=cfg.loader_batch,
                          num_workers=cfg.num_workers, limit=cfg.limit, progress=cfg.progress,
                          corruption=corruption_of(cfg.data), vocabulary_set=settings.data.vocabulary_set)
    per_point: list[list[tuple[Benchmark, BenchmarkResult]]] = [[] for _ in points]
    failed = True
    try:
        evaluator.start()  # before CUDA and the model: a fast fork, and the processes start meanwhile
        device = resolve_device(cfg.device)
        with dist.process_group(device) as (rank, world):
            if device.type == "cuda" and world > 1:
                device = resolve_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
            model = build_model(cfg.model).to(device)
            if getattr(model, "unseen", None):  # a zero-shot MaskCLIP+ target: its published numbers
                benchmarks = [(reference_for(b, settings.model, settings.protocol, corruption_of(settings.data),
                                             zero_shot=True), root) for b, root in benchmarks]
            point_folders = [f.path for f in folders[-len(points):]]
            for bench, root in benchmarks:
                for i, r in enumerate(_evaluate_points(evaluator, model, bench, root, cfg, points, point_folders)):
                    per_point[i].append((bench, r))
            if rank == 0:
                _write(cfg, points, folders, per_point)
                if sweep_dir:
                    log.info("sweep so far:\n%s", write_summary([sweep_dir], sweep_dir))
        failed = False
    finally:
        with deferred(deliver=not failed):  # a second Ctrl-C waits: the folders are released, not half left
            evaluator.close()
            if main_rank:
                release_all(folders, failed)
    return [[r for _, r in results] for results in per_point]


def _evaluate_points(evaluator: Evaluator, model, bench: Benchmark, root: str, cfg: DictConfig,
                     points: list[dict], folders: list[str]) -> list[BenchmarkResult]:
    """One benchmark under every sweep point, from one network pass per window."""
    from clip_dinoiser.engine.evaluation.predictions import PredictionWriter

    data = cfg.data
    settings = [evaluator.setting(model, bench, p.get("data.vocabulary", data.vocabulary),
                                  p.get("model.bg_refine", data.bg_refine), **decoding_fields(p)) for p in points]
    writers = [None] * len(points)
    if cfg.save_predictions or cfg.save_examples:
        writers = [PredictionWriter(folder, bench, os.path.join(root, bench.ann_dir), s.classes.names,
                                    predictions=cfg.save_predictions, examples=cfg.save_examples)
                   for folder, s in zip(folders, settings)]
    results = evaluator.evaluate_settings(model, bench, root, settings, writers)
    for p, r in zip(points, results):
        paper = "" if bench.paper_miou is None else f" (paper {bench.paper_miou:.1f})"
        log.info("%s%s: mIoU %.2f%s on %d images, %.1f images/s, %.1f windows/s", bench.name,
                 f" [{point_name(p)}]" if p else "", r.miou, paper, r.num_images, r.images_per_s,
                 r.windows / max(r.seconds, 1e-9))
        if r.unseen:
            from clip_dinoiser.protocols import published_miou

            pub = published_miou(cfg.protocol, cfg.model, bench.name, zero_shot=True, metric="mIoU(unseen)")
            log.info("%s: mIoU seen %.2f, unseen %.2f%s, hIoU %.2f (unseen: %s)", bench.name, r.miou_seen,
                     r.miou_unseen, f" (paper {pub.miou:.1f})" if pub else "", r.hiou or 0.0, ", ".join(r.unseen))
    return results


def _write(cfg: DictConfig, points: list[dict], folders: list[RunFolder],
           per_point: list[list[tuple[Benchmark, BenchmarkResult]]]) -> None:
    """Each point's run folder (its config with the point's values), then the summary of a sweep."""
    from clip_dinoiser.engine.evaluation.results import summary_table, write_results

    for point, folder, results in zip(points, folders[-len(points):], per_point):
        run_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        run_cfg.sweep, run_cfg.output = None, folder.path
        for key, value in point.items():
            OmegaConf.update(run_cfg, key, value)
        write_results(results, run_cfg, folder)
        log.info("%s\n%s", point_name(point) if point else "", summary_table(results))
    if cfg.sweep:
        log.info("sweep of %d settings:\n%s", len(points), write_summary([cfg.output], cfg.output))

    log.info("results in %s", os.path.abspath(cfg.output))


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main_process()
    register_configs()
    launch(main, schema=EvalConfig, groups={"model": "clip_dinoiser", "data": "voc", "corruption": "clean"})
