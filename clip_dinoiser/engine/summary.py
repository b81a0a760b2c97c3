"""One table and one plot for many runs: the runs below some folders (each with ``results.json``
and ``config.yaml``), one row per run, the settings that differ between them as columns."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from typing import Any

SUMMARY_FILES = ("summary.csv", "summary.md", "summary.png")

# Settings that never change a result: not columns of the summary.
IGNORED = ("output", "overwrite", "progress", "num_workers", "loader_batch", "device", "sweep", "save_predictions",
           "save_examples", "limit", "train.output", "train.resume", "train.num_workers", "train.save_every",
           "train.keep_checkpoints", "train.stop_after", "eval.num_workers", "eval.progress")


def find_runs(folders: Sequence[str]) -> list[str]:
    """Every folder below ``folders`` (themselves included) holding ``results.json``, sorted."""
    runs = set()
    for top in folders:
        if not os.path.isdir(top):
            raise FileNotFoundError(f"not a folder: {top}")
        for folder, _, files in os.walk(top):
            if "results.json" in files:
                runs.add(folder)
    return sorted(runs)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}


def load_run(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flat settings of ``config.yaml``, ``results.json``) of a run folder."""
    from omegaconf import OmegaConf

    path = os.path.join(folder, "config.yaml")
    settings = _flatten(OmegaConf.to_container(OmegaConf.load(path))) if os.path.isfile(path) else {}
    with open(os.path.join(folder, "results.json")) as f:
        return settings, json.load(f)


def summary_rows(runs: Sequence[str]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(swept keys, benchmarks, rows): a row per run with its swept values, the mIoU of each
    benchmark, the average over them, and a last row with the paper's numbers ('paper')."""
    loaded = [load_run(r) for r in runs]
    keys = sorted({k for s, _ in loaded for k in s} - set(IGNORED))
    swept = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s, _ in loaded}) > 1
             and not any(k.startswith(i + ".") for i in IGNORED)]
    benchmarks = list(dict.fromkeys(b for _, res in loaded for b in res if isinstance(res[b], dict)))
    rows = []
    for run, (settings, results) in zip(runs, loaded):
        row: dict[str, Any] = {"run": os.path.relpath(run, os.path.commonpath(runs)) if len(runs) > 1 else "."}
        row.update({k: settings.get(k) for k in swept})
        row.update({b: results.get(b, {}).get("mIoU") for b in benchmarks})
        rows.append(row)
    paper = {"run": "paper", **{k: "" for k in swept}}
    paper.update({b: next((res[b].get("paper_mIoU") for _, res in loaded if b in res), None) for b in benchmarks})
    rows.append(paper)
    for row in rows:
        values = [row[b] for b in benchmarks]
        row["average"] = None if any(v is None for v in values) else sum(values) / len(values)
    return swept, benchmarks, rows


def _text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def write_summary(folders: Sequence[str], out_dir: str) -> str:
    """``summary.csv``, ``summary.md`` and ``summary.png`` of the runs below ``folders`` in
    ``out_dir``; returns the markdown table."""
    runs = find_runs(folders)
    if not runs:
        raise FileNotFoundError(f"no run (a folder with results.json) under {', '.join(folders)}")
    swept, benchmarks, rows = summary_rows(runs)
    columns = ["run", *swept, *benchmarks, "average"]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows({c: "" if row.get(c) is None else row.get(c) for c in columns} for row in rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_text(row.get(c)) for c in columns) + " |" for row in rows]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(table)
    plot_summary(swept, benchmarks, rows[:-1], os.path.join(out_dir, "summary.png"))
    return table


def plot_summary(swept: list[str], benchmarks: list[str], rows: list[dict[str, Any]], path: str) -> None:
    """mIoU per benchmark against the swept value: one line per benchmark for one numeric
    setting, grouped bars (one group per run) otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    numeric = len(swept) == 1 and all(isinstance(r[swept[0]], int | float) and not isinstance(r[swept[0]], bool)
                                      for r in rows)
    if numeric:
        order = sorted(rows, key=lambda r: r[swept[0]])
        for b in benchmarks:
            ax.plot([r[swept[0]] for r in order], [r[b] for r in order], marker="o", label=b)
        ax.set_xlabel(swept[0])
    else:
        labels = [",".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in swept) or r["run"] for r in rows]
        width = 0.8 / max(len(benchmarks), 1)
        for j, b in enumerate(benchmarks):
            ax.bar([i + j * width for i in range(len(rows))], [r[b] or 0 for r in rows], width, label=b)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
