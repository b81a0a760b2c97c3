"""The summary's plots (matplotlib, no display): mIoU per run, and training curves."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import IO, Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_summary(tables: Sequence[Any], f: IO) -> None:
    """mIoU per benchmark, one panel per table (``summary.Table``): a line against the setting
    when one numeric setting varies, grouped bars otherwise. The legend sits beside the axes and
    the run labels are wrapped, so neither covers the bars."""
    plt = _pyplot()
    scored = [t for t in tables if any(c for c in t.scores if c != "average" and c in t.columns)] or list(tables)
    widths = [max(6.0, 1.2 + 0.9 * len(t.rows)) for t in scored]
    fig, axes = plt.subplots(1, len(scored), figsize=(sum(widths) + 2.5, 4.2), dpi=100, squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, table in zip(axes[0], scored):
        _plot_table(ax, table)
    fig.tight_layout()
    fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)


def _plot_table(ax, table: Any) -> None:
    benchmarks = [c for c in table.scores if c != "average" and c in table.columns]
    rows = [r for r in table.rows if r["run"] != "paper"]
    swept = [c for c in table.columns if c not in ("run", *table.scores)]
    numeric = len(swept) == 1 and all(isinstance(r[swept[0]], int | float) and not isinstance(r[swept[0]], bool)
                                      for r in rows)
    if numeric:
        order = sorted(rows, key=lambda r: r[swept[0]])
        for b in benchmarks:
            ax.plot([r[swept[0]] for r in order], [r[b] for r in order], marker="o", label=b)
        ax.set_xlabel(swept[0])
    else:
        labels = ["\n".join(textwrap.wrap(", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in swept) or r["run"],
                                          18)) for r in rows]
        width = 0.8 / max(len(benchmarks), 1)
        for j, b in enumerate(benchmarks):
            ax.bar([i + j * width for i in range(len(rows))], [r[b] or 0 for r in rows], width, label=b)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], labels, fontsize=8)
    ax.set_title("Evaluation runs" if table.kind == "eval" else "Training runs", fontsize=10)
    ax.set_ylabel("mIoU (%)")
    if benchmarks:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def plot_curves(curves: Mapping[str, list[dict[str, float]]], f: IO) -> None:
    """One panel per logged scalar (losses, learning rates, target statistics) against the
    iteration, a line per run."""
    plt = _pyplot()
    keys = sorted({k for rows in curves.values() for row in rows for k in row
                   if k != "iteration" and not k.startswith("classes/")},  # per-class shares: too many panels
                  key=lambda k: (not k.startswith("loss"), k))
    cols = min(3, len(keys)) or 1
    nrows = -(-len(keys) // cols) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols + 2, 3.0 * nrows), dpi=100, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, rows in curves.items():
            points = [(r["iteration"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), label=name, linewidth=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        if key.startswith("lr/"):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)


def plot_robustness(table: Any, f: IO) -> None:
    """MaskCLIP's robustness figure: one panel per model (and benchmark and setting), mIoU against
    severity, a line per corruption and tower (MaskCLIP compares ViT-B/16 with R-50: one line style
    per tower), each tower's clean mIoU as a dashed reference line."""
    plt = _pyplot()
    tower_key = "tower" if "tower" in table.columns else None
    panel_keys = [c for c in table.columns[: table.columns.index("corruption")] if c != tower_key]

    def panel(r: dict) -> str:
        return ", ".join(str(r[k]) for k in panel_keys if r.get(k) not in (None, ""))

    panels = list(dict.fromkeys(panel(r) for r in table.rows))
    towers = list(dict.fromkeys(r.get(tower_key) for r in table.rows)) if tower_key else [None]
    corruptions = list(dict.fromkeys(r["corruption"] for r in table.rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", ":", "-.", (0, (5, 1))]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 2.5, 4.2), dpi=100, squeeze=False,
                             sharey=True)
    for ax, title in zip(axes[0], panels):
        rows = [r for r in table.rows if panel(r) == title]
        for r in rows:
            points = [(s, r.get(f"severity {s}")) for s in range(1, 6) if r.get(f"severity {s}") is not None]
            tower = r.get(tower_key) if tower_key else None
            if points:
                ax.plot(*zip(*points), marker="o", linewidth=1.2,
                        color=colours[corruptions.index(r["corruption"]) % len(colours)],
                        linestyle=styles[towers.index(tower) % len(styles)],
                        label=r["corruption"] if tower is None else f"{r['corruption']} ({tower})")
        for tower in towers:
            clean = next((r.get("clean") for r in rows if (r.get(tower_key) if tower_key else None) == tower), None)
            if clean is not None:
                ax.axhline(clean, color="black", linestyle="--" if tower == towers[0] else ":", linewidth=1,
                           label="clean" if tower is None else f"clean ({tower})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("severity")
        ax.set_xticks(range(1, 6))
        ax.set_ylabel("mIoU (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)
