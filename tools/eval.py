"""Score mIoU on the paper's benchmarks (or your own).

    python tools/eval.py data=voc data.root=data/VOCdevkit/VOC2012 model.checkpoint=checkpoints/last.pt
    python tools/eval.py data=all data.root=data precision=bf16
    python tools/eval.py 'sweep={model.gamma:[0.1,0.2,0.3],model.bg_refine:[true,false]}'   # one pass, 6 settings
    torchrun --nproc_per_node=8 tools/eval.py data=ade20k output=outputs/eval/ade

Writes ``config.yaml``, ``results.json`` and ``results.csv`` into the run folder (``output``); a
sweep writes one such folder per setting below ``output`` and ``summary.{csv,md,png}`` in it.
"""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from clip_dinoiser.config import DataConfig, SlideConfig, parse, register_configs
from clip_dinoiser.data.benchmarks import Benchmark, checked_benchmarks
from clip_dinoiser.engine import distributed as dist
from clip_dinoiser.engine.cli import launch, resolve_device, user_errors_as_one_line
from clip_dinoiser.engine.evaluate import BenchmarkResult, Evaluator
from clip_dinoiser.engine.inference import check_precision
from clip_dinoiser.engine.predictions import PredictionWriter
from clip_dinoiser.engine.results import summary_table, write_results
from clip_dinoiser.engine.summary import write_summary
from clip_dinoiser.engine.sweep import decoding_fields, point_name, sweep_points
from clip_dinoiser.files import check_output_dir
from clip_dinoiser.models import build_model, check_model_config
from clip_dinoiser.values import check_number

log = logging.getLogger("eval")


def check_settings(cfg: DictConfig) -> tuple[list[tuple[Benchmark, str]], SlideConfig, list[dict]]:
    """Every setting and input checked before a loader process or model starts (each error names
    its key or file): the output folder, the datasets (at least one image each), numbers, device,
    precision, the window geometry and the sweep. Returns the benchmarks, the window geometry
    and the sweep's points."""
    check_output_dir(cfg.output, "output")
    if os.path.isfile(os.path.join(cfg.output, "results.json")) and not cfg.overwrite:
        raise FileExistsError(f"output={cfg.output} already holds results.json: choose another folder or set "
                              "overwrite=true")
    if cfg.limit is not None:
        check_number(cfg.limit, "limit", minimum=1)
    check_number(cfg.num_workers, "num_workers", minimum=0)
    check_number(cfg.loader_batch, "loader_batch", minimum=1)
    check_precision(cfg.precision)
    resolve_device(cfg.device)
    slide = parse(SlideConfig, cfg.slide, "slide")
    benchmarks = checked_benchmarks(parse(DataConfig, cfg.data, "data"), slide.scale)
    check_model_config(cfg.model)
    check_number(cfg.save_examples, "save_examples", minimum=0)
    points = sweep_points(OmegaConf.to_container(cfg.sweep) if cfg.sweep is not None else None)
    for p in points:
        if p.get("data.vocabulary") and not os.path.isfile(p["data.vocabulary"]):
            raise FileNotFoundError(f"vocabulary file not found: {p['data.vocabulary']} (sweep data.vocabulary)")
    return benchmarks, slide, points


@user_errors_as_one_line
def run(cfg: DictConfig) -> list[list[BenchmarkResult]]:
    """Evaluate; returns the results per sweep point (one point without a sweep), per benchmark."""
    benchmarks, slide, points = check_settings(cfg)
    evaluator = Evaluator(slide=slide, precision=cfg.precision, loader_batch=cfg.loader_batch,
                          num_workers=cfg.num_workers, limit=cfg.limit, progress=cfg.progress)
    evaluator.start()  # before CUDA and the model: a fast fork, and the processes start meanwhile
    device = resolve_device(cfg.device)
    folders = [cfg.output] if not cfg.sweep else [os.path.join(cfg.output, point_name(p)) for p in points]
    per_point: list[list[tuple[Benchmark, BenchmarkResult]]] = [[] for _ in points]
    try:
        with dist.process_group(device) as (rank, world):
            if device.type == "cuda" and world > 1:
                device = resolve_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
            model = build_model(cfg.model).to(device)
            for bench, root in benchmarks:
                for i, r in enumerate(_evaluate_points(evaluator, model, bench, root, cfg, points, folders)):
                    per_point[i].append((bench, r))
            if rank == 0:
                _write(cfg, points, folders, per_point)
    finally:
        evaluator.close()
    return [[r for _, r in results] for results in per_point]


def _evaluate_points(evaluator: Evaluator, model, bench: Benchmark, root: str, cfg: DictConfig,
                     points: list[dict], folders: list[str]) -> list[BenchmarkResult]:
    """One benchmark under every sweep point, from one network pass per window."""
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
    return results


def _write(cfg: DictConfig, points: list[dict], folders: list[str],
           per_point: list[list[tuple[Benchmark, BenchmarkResult]]]) -> None:
    """Each point's run folder (its config with the point's values), then the summary of a sweep."""
    for point, folder, results in zip(points, folders, per_point):
        run_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        run_cfg.sweep, run_cfg.output = None, folder
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
    register_configs()
    launch(main)
