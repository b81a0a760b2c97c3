"""The summary's plots (matplotlib, no display): mIoU per run, and training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO, Any

LABEL_WIDTH = 18  # characters per line of a bar's label (a setting longer than this keeps its own line whole)
CLASS_LINES = 12  # classes drawn in the class-share panel of a MaskCLIP+ run (the largest; the rest summed)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scored_tables(tables: Sequence[Any]) -> list[Any]:
    """The tables with an mIoU to plot (training runs without an evaluation have none)."""
    return [t for t in tables if any(c for c in t.scores if c != "average" and c in t.columns)]


def plot_summary(tables: Sequence[Any], f: IO) -> None:
    """mIoU per benchmark, one panel per table with scores (``summary.Table``; ``scored_tables``):
    a line against the setting when one numeric setting varies, grouped bars otherwise, each bar
    with its value written on it (a zero shows). The legend sits beside the axes and the run
    labels are wrapped between settings, never inside one, so neither covers the bars."""
    plt = _pyplot()
    scored = scored_tables(tables)
    if not scored:
        raise ValueError("no table has an mIoU to plot")
    widths = [max(6.0, 1.2 + 0.9 * len(t.rows)) for t in scored]
    fig, axes = plt.subplots(1, len(scored), figsize=(sum(widths) + 2.5, 4.2), dpi=100, squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, table in zip(axes[0], scored):
        plot_table(ax, table)
    fig.tight_layout()
    fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)


def plot_table(ax, table: Any) -> None:
    """One table's bar chart on ``ax``: a group of bars per benchmark, one bar per run, values written on them."""
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
        labels = run_labels(rows, swept)
        width = 0.8 / max(len(benchmarks), 1)
        for j, b in enumerate(benchmarks):
            values = [r[b] for r in rows]
            bars = ax.bar([i + j * width for i in range(len(rows))], [v or 0 for v in values], width, label=b)
            ax.bar_label(bars, ["-" if v is None else f"{v:.1f}" for v in values], fontsize=7, padding=1)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], labels, fontsize=8)
        ax.margins(y=0.12)  # room for the values above the highest bar
    ax.set_title("Evaluation runs" if table.kind == "eval" else "Training runs", fontsize=10)
    ax.set_ylabel("mIoU (%)")
    if benchmarks:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def run_labels(rows: Sequence[Mapping[str, Any]], swept: Sequence[str]) -> list[str]:
    """A label per run: its varying settings (``gamma=0.1``; the full key where two keys end
    alike; a clean run of a robustness sweep reads ``clean``, not ``corruption=None, severity=1``),
    wrapped between settings, never inside one. Runs whose settings read the same get their
    run name too, so distinct runs never share a label."""
    last = [k.rsplit(".", 1)[-1] for k in swept]
    shown = {k: (k if last.count(k.rsplit(".", 1)[-1]) > 1 else k.rsplit(".", 1)[-1]) for k in swept}
    texts = []
    for r in rows:
        parts = []
        for k in swept:
            if k == "data.severity" and r.get("data.corruption") is None and "data.corruption" in swept:
                continue  # a clean run has no severity
            if k == "data.corruption" and r.get(k) is None:
                parts.append("clean")
                continue
            parts.append(f"{shown[k]}={r.get(k)}")
        texts.append(parts or [str(r["run"])])
    joined = [", ".join(p) for p in texts]
    for i, text in enumerate(joined):
        if joined.count(text) > 1:
            texts[i] = [str(rows[i]["run"]), *texts[i]]
    return [_wrapped(parts) for parts in texts]


def _wrapped(parts: Sequence[str]) -> str:
    """``parts`` joined by ", " into lines of at most ``LABEL_WIDTH`` characters, a line break only
    between two parts (a part longer than a line keeps a line of its own)."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= LABEL_WIDTH:
            lines[-1] += f", {part}"
        else:
            lines.append(part)
    return "\n".join(lines)


def curves_figure(curves: Mapping[str, list[dict[str, float]]]):
    """The figure of ``plot_curves`` (matplotlib ``Figure``): one panel per logged scalar (losses,
    agreements, learning rates, target statistics) against the iteration, a line per run; and a
    MaskCLIP+ run's pseudo-labels' class shares (``classes/<name>``) in a panel of its own, a line
    per class (the largest ``CLASS_LINES``, the rest summed as "other classes")."""
    plt = _pyplot()
    keys = sorted({k for rows in curves.values() for row in rows for k in row
                   if k != "iteration" and not k.startswith("classes/")},
                  key=lambda k: (not k.startswith("loss"), k))
    shares = [name for name, rows in curves.items() if any(k.startswith("classes/") for row in rows for k in row)]
    panels = len(keys) + len(shares)
    cols = min(3, panels) or 1
    nrows = -(-panels // cols) or 1
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
    for ax, name in zip(list(axes.flat)[len(keys):], shares):
        _class_shares(ax, name, curves[name], many=len(curves) > 1)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    if keys:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def _class_shares(ax, run: str, rows: Sequence[Mapping[str, float]], many: bool) -> None:
    """A line per class: its share of the labelled pixels of each step's pseudo-labels."""
    names = list(dict.fromkeys(k for row in rows for k in row if k.startswith("classes/")))
    mean = {k: sum(row.get(k, 0.0) for row in rows) / max(len(rows), 1) for k in names}
    top = sorted(names, key=lambda k: -mean[k])[:CLASS_LINES]
    its = [row["iteration"] for row in rows]
    for k in top:
        ax.plot(its, [row.get(k, 0.0) for row in rows], linewidth=1, label=k.split("/", 1)[1])
    rest = [k for k in names if k not in top]
    if rest:
        ax.plot(its, [sum(row.get(k, 0.0) for k in rest) for row in rows], linewidth=1, linestyle="--",
                color="grey", label=f"{len(rest)} other classes")
    ax.set_title(f"classes/ (share of labelled pixels){': ' + run if many else ''}", fontsize=9)
    ax.set_xlabel("iteration", fontsize=8)
    ax.legend(fontsize=6, ncol=2, loc="upper right")


def plot_curves(curves: Mapping[str, list[dict[str, float]]], f: IO) -> None:
    """``curves_figure`` as a PNG in ``f``."""
    plt = _pyplot()
    fig = curves_figure(curves)
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
