"""Results of an evaluation on disk: results.json, results.csv (and the run's config.yaml), and
the table printed at the end."""

from __future__ import annotations

import csv
import math
from typing import Any

from ...config import TrainEvalConfig
from ...data.benchmarks import Benchmark, corruption_of, selected_benchmarks
from ..job.distributed import loader_processes
from ..job.runs import RunFolder
from .evaluate import BenchmarkResult, Evaluator


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

    lines = [f"{'':<8}" + "".join(f"{h:>{width}}" for h in heads), row("mIoU", ours), row("paper", paper)]
    if any(r.unseen for _, r in results):  # zero-shot: MaskCLIP+'s Table 4 columns
        for title, attr in (("seen", "miou_seen"), ("unseen", "miou_unseen"), ("hIoU", "hiou")):
            values = [getattr(r, attr) for _, r in results]
            lines.append(row(title, values + ([None] if len(results) > 1 else [])))
    return "\n".join(lines)


def _json_number(x: float | None) -> float | None:
    """NaN (a class absent from the images and never predicted) -> null: results.json stays valid JSON."""
    return None if x is None or math.isnan(x) else x


def zero_shot_fields(r: BenchmarkResult) -> dict[str, Any]:
    """results.json's seen / unseen mIoU and hIoU of a zero-shot model's result (none otherwise)."""
    if not r.unseen:
        return {}
    return {"mIoU_seen": _json_number(r.miou_seen), "mIoU_unseen": _json_number(r.miou_unseen),
            "hIoU": _json_number(r.hiou), "unseen_classes": list(r.unseen)}


def write_results(results: list[tuple[Benchmark, BenchmarkResult]], cfg: Any, run: RunFolder) -> None:
    """``results.json`` and ``results.csv`` in the claimed ``run`` folder, and ``cfg`` as
    ``config.yaml`` (None: kept)."""
    if cfg is not None:
        run.write_config(cfg)
    payload = {r.name: {"mIoU": _json_number(r.miou), "paper_mIoU": b.paper_miou, "images": r.num_images,
                        "windows": r.windows, "seconds": r.seconds, "images_per_s": r.images_per_s,
                        **zero_shot_fields(r), "class_IoU": {k: _json_number(v) for k, v in r.class_iou.items()}}
               for b, r in results}
    if len(results) > 1:
        payload["average_mIoU"] = _json_number(sum(r.miou for _, r in results) / len(results))
    run.write_json("results.json", payload)

    zero_shot = any(r.unseen for _, r in results)

    def write_csv(f) -> None:
        writer = csv.writer(f)
        writer.writerow(["benchmark", "mIoU", "paper_mIoU", "images", "images_per_s",
                         *(["mIoU_seen", "mIoU_unseen", "hIoU"] if zero_shot else [])])
        for b, r in results:
            extra = [("" if v is None else f"{v:.2f}") for v in (r.miou_seen, r.miou_unseen, r.hiou)]
            writer.writerow([r.name, f"{r.miou:.2f}", "" if b.paper_miou is None else b.paper_miou, r.num_images,
                             f"{r.images_per_s:.2f}", *(extra if zero_shot else [])])

    run.write("results.csv", write_csv)


def evaluate_model(model_cfg: dict[str, Any], cfg: TrainEvalConfig, device,
                   run: RunFolder) -> list[tuple[Benchmark, BenchmarkResult]]:
    """Score the model of ``model_cfg`` (a training run's result) on ``cfg.data`` and write
    ``results.json`` / ``results.csv`` into the training ``run`` folder (its ``config.yaml`` is
    left as it is)."""
    from ...models import build_model

    benchmarks = selected_benchmarks(cfg.data)
    model = build_model(model_cfg).to(device)
    with Evaluator(slide=cfg.slide, precision=cfg.precision, num_workers=loader_processes(cfg.num_workers, 4),
                   limit=cfg.limit, corruption=corruption_of(cfg.data),
                   vocabulary_set=cfg.data.vocabulary_set) as ev:
        results = [(b, ev.evaluate(model, b, root, vocabulary=cfg.data.vocabulary, bg_refine=cfg.data.bg_refine))
                   for b, root in benchmarks]
    write_results(results, None, run)
    return results
