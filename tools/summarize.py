"""Collect runs into tables and plots.

    python tools/summarize.py outputs/eval/sweep outputs/train_sweep/2026-11-24_10-00-00
    python tools/summarize.py outputs/train/run_a outputs/train/run_b --output comparisons/ab

Every folder below the given ones that holds ``results.json`` or ``metrics.jsonl`` is a run.
Evaluation runs and training runs get a table each, whose columns are the settings that vary
among them. Writes ``summary.md``, ``summary.csv``, ``summary.png`` (mIoU per run) and, for
training runs, ``curves.png`` (losses, learning rates and target statistics per iteration) into
``--output`` (default: beside the inputs, ``<folder>_summary`` or ``<common parent>/summary``),
and prints the tables.
"""

from __future__ import annotations

import argparse
import os
import sys

from clip_dinoiser.engine.job.cli import main_process, user_errors_as_one_line
from clip_dinoiser.engine.reporting.summary import write_summary
from clip_dinoiser.files import check_output_dir


def default_output(folders: list[str]) -> str:
    """Beside the inputs, never inside them: ``runs_summary`` for ``runs``, else ``<common parent>/summary``."""
    paths = [os.path.abspath(f) for f in folders]
    if len(paths) == 1:
        return paths[0].rstrip(os.sep) + "_summary"
    return os.path.join(os.path.dirname(os.path.commonpath(paths)) if len(set(paths)) == 1 else
                        os.path.commonpath(paths), "summary")


@user_errors_as_one_line
def run(args: argparse.Namespace) -> int:
    output = args.output or default_output(args.folders)
    check_output_dir(output, "--output")  # writable; not a file, a dangling link or a link loop
    print(write_summary(args.folders, output), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="folders holding runs (searched recursively)")
    p.add_argument("--output", help="where the summary files go (default: beside the inputs)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main_process()
    sys.exit(main())
