"""Collect runs into one table and one plot.

    python tools/summarize.py outputs/eval/sweep outputs/train_sweep/2026-11-24_10-00-00

Every folder below the given ones that holds ``results.json`` (and its ``config.yaml``) is a run;
the settings that differ between runs become columns. Writes ``summary.csv``, ``summary.md`` and
``summary.png`` (mIoU per benchmark against the swept value) into ``--output`` (default: the
first folder) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import sys

from clip_dinoiser.engine.summary import write_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="folders holding runs (searched recursively)")
    p.add_argument("--output", help="where summary.{csv,md,png} go (default: the first folder)")
    args = p.parse_args(argv)
    try:
        print(write_summary(args.folders, args.output or args.folders[0]), end="")
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
