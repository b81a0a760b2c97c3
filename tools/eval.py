"""Score mIoU on the paper's benchmarks.

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

from clip_dinoiser.data.benchmarks import BENCHMARKS, PAPER_MIOU, PAPER_ORDER, build_dataset, get_benchmark
from clip_dinoiser.engine import distributed as dist
from clip_dinoiser.engine.cli import resolve_device, user_errors_as_one_line
from clip_dinoiser.engine.evaluate import BenchmarkResult, evaluate_benchmark, start_loader
from clip_dinoiser.engine.inference import SlideConfig, check_precision
from clip_dinoiser.files import check_output_dir
from clip_dinoiser.models import build_model, check_model_config
from clip_dinoiser.values import check_number

log = logging.getLogger("eval")


def selected_benchmarks(data: DictConfig) -> list[tuple[str, str]]:
    """(benchmark name, data root) pairs from the ``data`` config node."""
    if data.name == "all":
        names = list(data.names)
        for name in names:
            get_benchmark(name)
        return [(name, os.path.join(data.root, BENCHMARKS[name].root)) for name in names]
    get_benchmark(data.name)
    return [(data.name, data.root)]


def summary_table(results: list[BenchmarkResult]) -> str:
    """The results in the paper's column order, with the paper's numbers and the average."""
    order = sorted(results, key=lambda r: PAPER_ORDER.index(r.name))
    heads = [BENCHMARKS[r.name].title for r in order] + (["Avg"] if len(order) > 1 else [])
    ours = [r.miou for r in order]
    paper = [PAPER_MIOU[r.name] for r in order]
    if len(order) > 1:
        ours.append(sum(ours) / len(ours))
        paper.append(sum(paper) / len(paper))
    width = max(len(h) for h in heads) + 2
    lines = [f"{'':<8}" + "".join(f"{h:>{width}}" for h in heads),
             f"{'mIoU':<8}" + "".join(f"{v:>{width}.1f}" for v in ours),
             f"{'paper':<8}" + "".join(f"{v:>{width}.1f}" for v in paper)]
    return "\n".join(lines)


def _json_number(x: float) -> float | None:
    """NaN (a class absent from the images and never predicted) -> null: results.json stays valid JSON."""
    return None if math.isnan(x) else x


def write_results(results: list[BenchmarkResult], cfg: DictConfig, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    OmegaConf.save(cfg, os.path.join(folder, "config.yaml"), resolve=True)
    payload = {r.name: {"mIoU": _json_number(r.miou), "paper_mIoU": PAPER_MIOU[r.name], "images": r.num_images,
                        "windows": r.windows, "seconds": r.seconds, "images_per_s": r.images_per_s,
                        "class_IoU": {k: _json_number(v) for k, v in r.class_iou.items()}} for r in results}
    if len(results) > 1:
        payload["average_mIoU"] = _json_number(sum(r.miou for r in results) / len(results))
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(payload, f, indent=2, allow_nan=False)
    with open(os.path.join(folder, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["benchmark", "mIoU", "paper_mIoU", "images", "images_per_s"])
        for r in results:
            writer.writerow([r.name, f"{r.miou:.2f}", PAPER_MIOU[r.name], r.num_images, f"{r.images_per_s:.2f}"])


def check_settings(cfg: DictConfig) -> tuple[list[tuple[str, str]], SlideConfig]:
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
    slide = SlideConfig.from_cfg(cfg.slide)
    benchmarks = selected_benchmarks(cfg.data)
    for name, root in benchmarks:  # a missing dataset or an empty split fails before any model loads
        build_dataset(get_benchmark(name), root, scale=slide.scale)
    check_model_config(OmegaConf.to_container(cfg.model, resolve=True))
    return benchmarks, slide


@user_errors_as_one_line
def run(cfg: DictConfig) -> list[BenchmarkResult]:
    benchmarks, slide = check_settings(cfg)
    start_loader(cfg.num_workers, cfg.loader_batch)  # before CUDA and the model: fast fork, starts meanwhile
    device = resolve_device(cfg.device)
    dist.init_distributed(device)
    if device.type == "cuda" and dist.is_distributed():
        device = resolve_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True)).to(device)
    results = []
    try:
        for name, root in benchmarks:
            r = evaluate_benchmark(
                model, get_benchmark(name), root, slide=slide, precision=cfg.precision,
                vocabulary=cfg.data.vocabulary, bg_refine=cfg.data.bg_refine, loader_batch=cfg.loader_batch,
                num_workers=cfg.num_workers, limit=cfg.limit, progress=cfg.progress,
            )
            log.info("%s: mIoU %.2f (paper %.1f) on %d images, %.1f images/s, %.1f windows/s", name, r.miou,
                     PAPER_MIOU[name], r.num_images, r.images_per_s, r.windows / max(r.seconds, 1e-9))
            results.append(r)
        if dist.rank() == 0:
            write_results(results, cfg, cfg.output)
            log.info("\n%s", summary_table(results))
            log.info("results in %s", os.path.abspath(cfg.output))
    finally:
        dist.cleanup()
    return results


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
