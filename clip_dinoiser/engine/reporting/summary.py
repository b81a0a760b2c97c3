"""Tables and plots for many runs: every run below some folders (an evaluation or a training run,
with ``config.yaml`` and ``results.json`` or ``metrics.jsonl``), one row per run.

Evaluation runs and training runs get a table each, whose columns are only the settings that
vary among the runs of that table (a training run has some 60 settings; most never vary).
Training runs' curves (``metrics.jsonl``) are drawn per scalar, a line per run.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...errors import UserError
from ...files import write_atomic
from ...readers import read_config, read_json, read_text
from ..job.runs import MARKER, METRICS

SUMMARY_FILES = ("summary.csv", "summary.md", "summary.png", "curves.png", "robustness.md", "robustness.csv",
                 "robustness.png")

# Settings that never change a result: never columns.
IGNORED = ("output", "overwrite", "progress", "num_workers", "loader_batch", "device", "sweep", "save_predictions",
           "save_examples", "limit", "train.output", "train.resume", "train.num_workers", "train.save_every",
           "train.log_every", "train.keep_checkpoints", "train.stop_after", "eval.num_workers", "eval.progress")


@dataclass
class Run:
    """A run folder as the summary sees it."""

    folder: str
    kind: str  # "eval" or "train"
    settings: dict[str, Any]
    results: dict[str, Any]
    curves: list[dict[str, float]] = field(default_factory=list)


def find_runs(folders: Sequence[str]) -> list[str]:
    """Every folder below ``folders`` (themselves included) holding ``results.json`` or
    ``metrics.jsonl``, sorted."""
    runs = set()
    for top in folders:
        if not os.path.isdir(top):
            raise FileNotFoundError(f"not a folder: {top}")
        for folder, _, files in os.walk(top):
            if "results.json" in files or METRICS in files:
                runs.add(folder)
    return sorted(runs)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}


def load_run(folder: str) -> Run:
    """A run folder's settings, results and curves (every file through its reader: a broken one
    is a one-line error naming it)."""
    from omegaconf import OmegaConf

    path = os.path.join(folder, "config.yaml")
    settings = _flatten(OmegaConf.to_container(read_config(path))) if os.path.lexists(path) else {}
    results_path = os.path.join(folder, "results.json")
    results = check_results(read_json(results_path), results_path) if os.path.lexists(results_path) else {}
    curves = read_curves(os.path.join(folder, METRICS)) if os.path.lexists(os.path.join(folder, METRICS)) else []
    kind = "train" if any(k.startswith("train.") for k in settings) or curves else "eval"
    return Run(folder, kind, settings, results, curves)


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def check_results(results: Any, path: str) -> dict[str, Any]:
    """A ``results.json`` as the evaluation writes it (benchmark -> {mIoU, ...}), or a one-line error."""
    if not isinstance(results, dict):
        raise UserError(f"results file {path} does not hold a mapping of benchmarks")
    for name, entry in results.items():
        if name == "average_mIoU" and _number(entry):
            continue
        if not isinstance(entry, dict) or not _number(entry.get("mIoU")) or not _number(entry.get("paper_mIoU")):
            raise UserError(f"results file {path}: '{name}' is not a benchmark's result ({{mIoU: number, ...}})")
    return results


def read_curves(path: str) -> list[dict[str, float]]:
    """``metrics.jsonl``: one object per line, an integer ``iteration`` and numbers; or a one-line error."""
    curves = []
    for n, line in enumerate(read_text(path, "metrics file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"metrics file {path}: line {n} is not JSON") from None
        if (not isinstance(row, dict) or not isinstance(row.get("iteration"), int)
                or not all(_number(v) for v in row.values())):
            raise UserError(f"metrics file {path}: line {n} is not {{iteration: integer, name: number, ...}}")
        curves.append(row)
    return curves


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """The settings whose values differ among ``runs`` (sorted), ignoring those that never change a result."""
    keys = sorted({k for r in runs for k in r.settings})
    return [k for k in keys if k not in IGNORED and not any(k.startswith(i + ".") for i in IGNORED)
            and len({json.dumps(r.settings.get(k), sort_keys=True) for r in runs}) > 1]


ZERO_SHOT_METRICS = MappingProxyType({"mIoU_seen": "seen", "mIoU_unseen": "unseen", "hIoU": "hIoU"})  # results.json


METHOD_KEY = "model.name"


def method_columns(runs: Sequence[Run], swept: list[str]) -> list[str]:
    """``swept`` for a table of several methods (runs that differ in ``model.name``): ``model.name``
    first, and without the other ``model.*`` settings that only follow the method (one value per
    method among the runs: SCLIP's attention, NACLIP's PAMR, ...), so each method is one row."""
    if METHOD_KEY not in swept:
        return swept
    by_method: dict[Any, list[Run]] = {}
    for r in runs:
        by_method.setdefault(r.settings.get(METHOD_KEY), []).append(r)

    def follows_method(key: str) -> bool:
        return all(len({json.dumps(r.settings.get(key), sort_keys=True) for r in group}) == 1
                   for group in by_method.values())

    rest = [k for k in swept if k != METHOD_KEY and not (k.startswith("model.") and follows_method(k))]
    return [METHOD_KEY, *rest]


def summary_rows(runs: Sequence[Run], names: dict[str, str]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(varying keys, benchmarks, rows) of runs of one kind: a row per run with its settings, the
    mIoU of each benchmark and their average, and a last row with the paper's numbers (with several
    methods, ``method_columns``: a row of published numbers per method that has them)."""
    swept = method_columns(runs, varying_keys(runs))
    benchmarks = list(dict.fromkeys(b for r in runs for b, v in r.results.items() if isinstance(v, dict)))
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": names[run.folder], **{k: run.settings.get(k) for k in swept}}
        row.update({b: run.results.get(b, {}).get("mIoU") for b in benchmarks})
        for b in benchmarks:  # a zero-shot target's seen / unseen mIoU and hIoU
            row.update({f"{b} {title}": run.results.get(b, {}).get(key) for key, title in ZERO_SHOT_METRICS.items()
                        if key in run.results.get(b, {})})
        rows.append(row)
    if benchmarks:
        rows += paper_rows(runs, swept, benchmarks)
    for row in rows:
        values = [row[b] for b in benchmarks]
        row["average"] = _mean(values)
    return swept, benchmarks, rows


def paper_rows(runs: Sequence[Run], swept: list[str], benchmarks: list[str]) -> list[dict[str, Any]]:
    """The published numbers beside the runs: one ``paper`` row, or with several methods a
    ``paper: <method>`` row for each method whose runs carry any."""
    def published(group: Sequence[Run]) -> dict[str, Any]:
        return {b: next((r.results[b].get("paper_mIoU") for r in group if b in r.results), None) for b in benchmarks}

    if METHOD_KEY in swept:
        rows = []
        for method in dict.fromkeys(r.settings.get(METHOD_KEY) for r in runs):
            numbers = published([r for r in runs if r.settings.get(METHOD_KEY) == method])
            if any(v is not None for v in numbers.values()):
                rows.append({"run": f"paper: {method}", **{k: None for k in swept}, METHOD_KEY: method, **numbers})
        if rows:
            return rows
    return [{"run": "paper", **{k: None for k in swept}, **published(runs)}]


def text(value: Any, score: bool = False) -> str:
    """A cell: mIoU with two decimals, settings with four significant digits (5e-05, not 0.00)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.2f}" if score else f"{value:.4g}"
    return str(value)


@dataclass
class Table:
    """A table of runs; ``missing``: the points it expects and has no run for; ``clashes``: runs
    that would have shared a cell with another (each is named, none overwrites another)."""

    kind: str
    columns: list[str]
    scores: list[str]
    rows: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(text(r.get(c), c in self.scores) for c in self.columns) + " |" for r in self.rows]
        notes = listed(f"Missing points ({len(self.missing)}: no run, its cell shows -)", self.missing)
        notes += listed(f"Runs not shown ({len(self.clashes)}: the same point as a run shown)", self.clashes)
        return "\n".join(lines) + "\n" + notes


def listed(title: str, items: Sequence[str]) -> str:
    """A markdown list under ``title`` ("" when there is nothing to list)."""
    return f"\n{title}:\n\n" + "".join(f"- {item}\n" for item in items) if items else ""


def tables(runs: Sequence[Run]) -> list[Table]:
    """One table per kind of run present (evaluation runs first)."""
    names = run_names([r.folder for r in runs])
    out = []
    for kind in ("eval", "train"):
        group = [r for r in runs if r.kind == kind]
        if group:
            swept, benchmarks, rows = summary_rows(group, names)
            zero_shot = [c for c in dict.fromkeys(c for r in rows for c in r) if c.rsplit(" ", 1)[-1] in
                         ZERO_SHOT_METRICS.values() and c.rsplit(" ", 1)[0] in benchmarks]
            columns = ["run", *swept, *benchmarks, *(["average"] if benchmarks else []), *zero_shot]
            out.append(Table(kind, columns, [*benchmarks, "average", *zero_shot], rows))
    return out


def run_names(folders: Sequence[str]) -> dict[str, str]:
    if len(folders) == 1:
        return {folders[0]: os.path.basename(os.path.abspath(folders[0])) or "."}
    common = os.path.commonpath([os.path.abspath(f) for f in folders])
    return {f: os.path.relpath(os.path.abspath(f), common) for f in folders}


SWEEP_RECORD = "multirun.yaml"  # hydra's record of a sweep (-m), in the sweep's folder
FINISHED = ("results.json", "last.pt")  # a job that has either of these has finished


def missing_jobs(folders: Sequence[str]) -> list[str]:
    """The points of the sweeps below ``folders`` that have no results, each with its settings:
    a job of a hydra sweep (``multirun.yaml``: its command expanded as hydra expands it) whose
    folder holds neither ``results.json`` nor ``last.pt`` (not started, stopped, failed or still
    running), and any folder still claimed by a run (``.in_use``) without results."""
    out = []
    for top in folders:
        for folder, subfolders, files in os.walk(top):
            subfolders.sort()
            if SWEEP_RECORD in files:
                for number, overrides in enumerate(sweep_jobs(os.path.join(folder, SWEEP_RECORD)) or []):
                    job = os.path.join(folder, str(number))
                    if not any(os.path.isfile(os.path.join(job, f)) for f in FINISHED):
                        state = "not started" if not os.path.isdir(job) else "no results"
                        out.append(f"{job} ({state}): {' '.join(overrides)}")
            elif MARKER in files and not any(f in files for f in FINISHED):
                out.append(f"{folder} (claimed by a run, no results: still running, or stopped)")
    return list(dict.fromkeys(out))


def sweep_jobs(record: str) -> list[list[str]] | None:
    """The overrides of each job of the hydra sweep recorded in ``record`` (``multirun.yaml``), in
    hydra's job order (``<sweep folder>/<job number>``); None when the sweep's jobs are not in
    numbered folders or its command cannot be expanded here (a glob over a group of another
    config folder)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob
    from omegaconf import OmegaConf

    hydra = OmegaConf.to_container(read_config(record, "hydra's record of a sweep")).get("hydra") or {}
    if (hydra.get("sweep") or {}).get("subdir") != "${hydra.job.num}":
        return None
    params = [f"{k}={v}" for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items()]
    task = [*params, *((hydra.get("overrides") or {}).get("task") or [])]
    dirs = [s["path"] for s in (hydra.get("runtime") or {}).get("config_sources") or [] if s.get("schema") == "file"]
    parser = OverridesParser.create()
    try:
        expanded = []
        for o in parser.parse_overrides(task):
            if isinstance(o.value(), Glob):
                options = sorted({f[:-5] for d in dirs if os.path.isdir(os.path.join(d, o.key_or_group))
                                  for f in os.listdir(os.path.join(d, o.key_or_group)) if f.endswith(".yaml")})
                chosen = o.value().filter(options)
                if not chosen:
                    return None
                expanded.append(f"{o.get_key_element()}={','.join(chosen)}")
            else:
                expanded.append(o.input_line)
        (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(expanded), None)
    except Exception:  # hydra's grammar of another version: no list rather than a wrong one
        return None
    swept = {o.key_or_group for o in parser.parse_overrides(expanded) if o.is_sweep_override()}
    return [[a for a in job if a.split("=", 1)[0].lstrip("+~") in swept] for job in batch]


def write_summary(folders: Sequence[str], out_dir: str) -> str:
    """``summary.csv`` / ``.md``, ``summary.png`` (the mIoU of the runs that have one) and
    ``curves.png`` (training curves) of the runs below ``folders``, in ``out_dir``; returns the markdown."""
    paths = find_runs(folders)
    if not paths:
        raise FileNotFoundError(f"no run (a folder with results.json or {METRICS}) under {', '.join(folders)}")
    runs = [load_run(p) for p in paths]
    found = tables(runs)
    titles = {"eval": "Evaluation runs", "train": "Training runs"}
    markdown = "\n".join(f"## {titles[t.kind]}\n\n{t.markdown()}" if len(found) > 1 else t.markdown() for t in found)
    table = robustness_table(runs)
    if table is not None:
        markdown += "\n## Robustness (MaskCLIP's protocol: mIoU per corruption and severity)\n\n" + table.markdown()
    jobs = missing_jobs(folders)
    markdown += listed(f"\n## Sweep points without results ({len(jobs)})", jobs)
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, "summary.md"), lambda f: f.write(markdown))
    write_atomic(os.path.join(out_dir, "summary.csv"), lambda f: _write_csv(f, found))
    from .plots import plot_curves, plot_summary, scored_tables

    chart = os.path.join(out_dir, "summary.png")
    if scored_tables(found):
        write_atomic(chart, lambda f: plot_summary(found, f), binary=True)
    elif os.path.isfile(chart):  # no mIoU to chart (training runs without an evaluation): no empty chart
        os.remove(chart)
    if any(r.curves for r in runs):
        names = run_names(paths)
        write_atomic(os.path.join(out_dir, "curves.png"),
                     lambda f: plot_curves({names[r.folder]: r.curves for r in runs if r.curves}, f), binary=True)
    if table is not None:
        gaps = listed(f"\nSweep points without results ({len(jobs)})", jobs)
        write_atomic(os.path.join(out_dir, "robustness.md"), lambda f: f.write(table.markdown() + gaps))
        write_atomic(os.path.join(out_dir, "robustness.csv"), lambda f: _write_csv(f, [table]))
        from .plots import plot_robustness

        write_atomic(os.path.join(out_dir, "robustness.png"), lambda f: plot_robustness(table, f), binary=True)
    return markdown


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean, or None when there is no value or one is missing."""
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


SEVERITY_COLUMNS = tuple(f"severity {s}" for s in range(1, 6))


def run_score(run: Run) -> float | None:
    """A run's mIoU: its benchmark's, or the average over its benchmarks."""
    scores = [v.get("mIoU") for v in run.results.values() if isinstance(v, dict)]
    return _mean(scores)


ROBUSTNESS_KEYS = ("data.corruption", "data.severity")
TOWER = "tower"  # the robustness table's column for model.clip.name (MaskCLIP's ViT-B/16 vs R-50)


def robustness_table(runs: Sequence[Run]) -> Table | None:
    """When evaluation runs differ in ``data.corruption``: a row per (model, tower, benchmark, any
    other setting that differs among the runs, corruption) with the mIoU at each severity, their
    mean (over severities 1 to 5, the clean score not among them; "-" unless all five are there)
    and the clean mIoU of the same model, tower, benchmark and settings (the reference) beside
    them. Every point of the grid (each row's identity with the clean score and each corruption
    and severity run anywhere in the table) without a run is listed in ``missing``; a run for a
    point another run already holds is listed in ``clashes``, never written over it."""
    evals = [r for r in runs if r.kind == "eval"]
    if not any(r.settings.get("data.corruption") for r in evals):
        return None
    named = (*ROBUSTNESS_KEYS, "model.name", "model.clip.name", "data.name")  # columns of their own
    others = [k for k in varying_keys(evals) if k not in named]
    towers = len({r.settings.get("model.clip.name") for r in evals}) > 1
    names = run_names([r.folder for r in evals])

    def identity(r: Run) -> dict[str, Any]:
        ident = {"model": r.settings.get("model.name")}
        if towers:
            ident[TOWER] = r.settings.get("model.clip.name")
        ident["benchmark"] = "+".join(b for b, v in r.results.items() if isinstance(v, dict))
        ident.update({k: r.settings.get(k) for k in others})
        return ident

    def key(ident: dict[str, Any]) -> str:
        return json.dumps(ident, sort_keys=True, default=str)

    cells: dict[tuple[str, str, int | None], Run] = {}  # (identity, corruption or "", severity) -> its run
    idents: dict[str, dict[str, Any]] = {}
    clashes = []
    for r in sorted(evals, key=lambda r: r.folder):
        ident = identity(r)
        corruption = r.settings.get("data.corruption") or ""
        cell = (key(ident), corruption, r.settings.get("data.severity") if corruption else None)
        if cell in cells:
            clashes.append(f"{names[r.folder]}: {point(ident, corruption, cell[2])}, as {names[cells[cell].folder]}")
            continue
        cells[cell] = r
        idents.setdefault(key(ident), ident)
    corruptions = sorted({c for _, c, _ in cells if c})
    severities = sorted({s for _, c, s in cells if c})
    rows, missing = [], []
    for k in sorted(idents):
        if not any(c for i, c, _ in cells if i == k):
            continue  # clean runs only: not a robustness row
        clean = cells.get((k, "", None))
        if clean is None:
            missing.append(point(idents[k], "", None))
        for corruption in corruptions:
            row = {**idents[k], "corruption": corruption, "clean": run_score(clean) if clean else None}
            for severity in severities:
                r = cells.get((k, corruption, severity))
                if r is None:
                    missing.append(point(idents[k], corruption, severity))
                else:
                    row[f"severity {severity}"] = run_score(r)
            row["mean"] = _mean([row.get(c) for c in SEVERITY_COLUMNS])
            rows.append(row)
    columns = [*idents[next(iter(idents))].keys(), "corruption", *SEVERITY_COLUMNS, "mean", "clean"]
    return Table("robustness", columns, [*SEVERITY_COLUMNS, "mean", "clean"], rows, missing, clashes)


def point(ident: dict[str, Any], corruption: str, severity: int | None) -> str:
    """A point of the robustness grid in words: ``model=maskclip benchmark=voc corruption=fog severity=3``."""
    parts = [f"{k}={v}" for k, v in ident.items()]
    parts += [f"corruption={corruption}", f"severity={severity}"] if corruption else ["clean"]
    return " ".join(parts)


def _write_csv(f, found: list[Table]) -> None:
    columns = list(dict.fromkeys(c for t in found for c in t.columns))
    if len(found) > 1:
        columns.insert(1, "kind")
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    for t in found:
        for row in t.rows:
            writer.writerow({c: t.kind if c == "kind" else ("" if row.get(c) is None else row.get(c))
                             for c in columns})
