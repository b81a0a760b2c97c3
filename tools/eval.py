"""Score mIoU on the paper's benchmarks (or your own).

    python tools/eval.py data=voc data.root=data/VOCdevkit/VOC2012 model.checkpoint=checkpoints/last.pt
    python tools/eval.py data=all data.root=data precision=bf16
    torchrun --nproc_per_node=8 tools/eval.py data=ade20k output=outputs/eval/ade

Writes ``config.yaml``, ``results.json`` and ``results.csv`` into the run folder (``output``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from clip_dinoiser.config import DataConfig, SlideConfig, parse, register_configs
from clip_dinoiser.data.benchmarks import Benchmark, build_dataset, selected_benchmarks
from clip_dinoiser.engine import distributed as dist
from clip_dinoiser.engine.cli import launch, resolve_device, user_errors_as_one_line
from clip_dinoiser.engine.evaluate import BenchmarkResult, Evaluator
from clip_dinoiser.engine.inference import check_precision
from clip_dinoiser.files import check_output_dir
from clip_dinoiser.models import build_model, check_model_config
from clip_dinoiser.values import check_number

log = logging.getLogger("eval")


def summary_table(results: list[tuple[Benchmark, BenchmarkResult]]) -> str:
    """The results in the order given, with the paper's numbers ('-' where it has none) and the average."""
    heads = [b.title for b, _ in results] + (["Avg"] if len(results) > 1 else [])
    ours = [r.miou for _, r in results]
    paper = [b.paper_miou for b, _ in results]
    if len(results) > 1:
        ours.append(sum(ours) / len(ours))
        paper.append(None if None in paper else sum(paper) / len(paper))
    width = max(len(h) for h in heads) + 2

    def row(title: str, values: list[float | None]) -> str:
        return f"{title:<8}" + "".join(f"{'-' if v is None else f'{v:.1f}':>{width}}" for v in values)

    return "\n".join([f"{'':<8}" + "".join(f"{h:>{width}}" for h in heads), row("mIoU", ours), row("paper", paper)])


def _json_number(x: float | None) -> float | None:
    """NaN (a class absent from the images and never predicted) -> null: results.json stays valid JSON."""
    return None if x is None or math.isnan(x) else x


def write_results(results: list[tuple[Benchmark, BenchmarkResult]], cfg: DictConfig, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    OmegaConf.save(cfg, os.path.join(folder, "config.yaml"), resolve=True)
    payload = {r.name: {"mIoU": _json_number(r.miou), "paper_mIoU": b.paper_miou, "images": r.num_images,
                        "windows": r.windows, "seconds": r.seconds, "images_per_s": r.images_per_s,
                        "class_IoU": {k: _json_number(v) for k, v in r.class_iou.items()}} for b, r in results}
    if len(results) > 1:
        payload["average_mIoU"] = _json_number(sum(r.miou for _, r in results) / len(results))
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(payload, f, indent=2, allow_nan=False)
    with open(os.path.join(folder, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["benchmark", "mIoU", "paper_mIoU", "images", "images_per_s"])
        for b, r in results:
            writer.writerow([r.name, f"{r.miou:.2f}", "" if b.paper_miou is None else b.paper_miou, r.num_images,
                             f"{r.images_per_s:.2f}"])


def check_settings(cfg: DictConfig) -> tuple[list[tuple[Benchmark, str]], SlideConfig]:
    """Every setting and input checked before a loader process or model starts (each error names
    its key or file): the output folder, the datasets (at least one image each), numbers, device,
    precision and the window geometry. Returns the benchmarks and the window geometry."""
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
    benchmarks = selected_benchmarks(parse(DataConfig, cfg.data, "data"))
    for bench, root in benchmarks:  # a missing dataset or an empty split fails before any model loads
        build_dataset(bench, root, scale=slide.scale)
    check_model_config(cfg.model)
    return benchmarks, slide


@user_errors_as_one_line
def run(cfg: DictConfig) -> list[BenchmarkResult]:
    benchmarks, slide = check_settings(cfg)
    evaluator = Evaluator(slide=slide, precision=cfg.precision, loader_batch=cfg.loader_batch,
                          num_workers=cfg.num_workers, limit=cfg.limit, progress=cfg.progress)
    evaluator.start()  # before CUDA and the model: a fast fork, and the processes start meanwhile
    device = resolve_device(cfg.device)
    try:
        with dist.process_group(device) as (rank, world):
            if device.type == "cuda" and world > 1:
                device = resolve_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
            model = build_model(cfg.model).to(device)
            results = [(bench, _evaluate_one(evaluator, model, bench, root, cfg.data)) for bench, root in benchmarks]
            if rank == 0:
                write_results(results, cfg, cfg.output)
                log.info("\n%s", summary_table(results))
                log.info("results in %s", os.path.abspath(cfg.output))
    finally:
        evaluator.close()
    return [r for _, r in results]


def _evaluate_one(evaluator: Evaluator, model, bench: Benchmark, root: str, data: DictConfig) -> BenchmarkResult:
    r = evaluator.evaluate(model, bench, root, vocabulary=data.vocabulary, bg_refine=data.bg_refine)
    paper = "" if bench.paper_miou is None else f" (paper {bench.paper_miou:.1f})"
    log.info("%s: mIoU %.2f%s on %d images, %.1f images/s, %.1f windows/s", bench.name, r.miou, paper,
             r.num_images, r.images_per_s, r.windows / max(r.seconds, 1e-9))
    return r


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    register_configs()
    launch(main)
