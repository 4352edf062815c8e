r"""``aensae reproduce`` (the main job) and ``aensae figures`` (redraw from the table).

``aensae reproduce [--config quick|paper|tiny|PATH] [--out DIR]`` runs the experiment grid
of the config (see :mod:`aensae.benchmarks.grid`), resumable, and writes ``DIR/results.csv``,
``DIR/figures/`` and ``DIR/report.md`` (see :mod:`aensae.benchmarks.runner`). Without
arguments it runs the quick config on CPU into ``results/quick``.

``aensae figures RESULTS_DIR`` redraws every figure and the report from
``RESULTS_DIR/results.csv`` (and ``speed.csv``) alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(top: Any, bench: Any) -> None:
    """Add ``aensae reproduce`` and ``aensae figures`` to ``top``."""
    p = top.add_parser("reproduce", help="run the experiment grid: table, figures, report",
                       description=__doc__.split("\n\n")[1],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="quick",
                   help="named config (quick, paper, tiny) or a TOML file")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: results/<config name>)")
    p.add_argument("--device", default=None,
                   help="override [experiment] device (e.g. cuda); part of the config hash")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes training groups in parallel (default: [experiment] "
                        "workers of the config; 0 = the cores available)")
    p.add_argument("--no-figures", action="store_true", help="skip figures and report")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=_reproduce_main)

    f = top.add_parser("figures", help="redraw figures and report from a results table",
                       description=__doc__.split("\n\n")[2])
    f.add_argument("results_dir", type=Path, help="folder holding results.csv")
    f.set_defaults(func=_figures_main)


def _reproduce_main(args: argparse.Namespace) -> int:
    from aensae.benchmarks.grid import load_config
    from aensae.benchmarks.runner import reproduce

    try:
        grid = load_config(args.config)
        if args.device is not None:
            grid.experiment["device"] = args.device
        out = args.out if args.out is not None else Path("results") / grid.name
        table = reproduce(grid, out, progress=args.progress, draw=not args.no_figures,
                          workers=args.workers)
    except (ValueError, FileNotFoundError) as err:
        print(f"aensae reproduce: error: {err}", file=sys.stderr)
        return 2
    print(f"results: {table}")
    if not args.no_figures:
        print(f"figures: {table.parent / 'figures'}\nreport:  {table.parent / 'report.md'}")
    return 0


def _figures_main(args: argparse.Namespace) -> int:
    from aensae.benchmarks.figures import draw_all
    from aensae.benchmarks.report import write_report

    try:
        files = draw_all(args.results_dir)
        report = write_report(args.results_dir)
    except (ValueError, FileNotFoundError) as err:
        print(f"aensae figures: error: {err}", file=sys.stderr)
        return 2
    for path in files:
        print(path)
    print(report)
    return 0
