r"""``aensae reproduce`` (the main job) and ``aensae figures`` (redraw from the table).

``aensae reproduce [--config quick|paper|tiny|PATH] [--out DIR]`` runs the experiment grid
of the config (see :mod:`aensae.benchmarks.grid`), resumable, and writes ``DIR/results.csv``,
``DIR/figures/`` and ``DIR/report.md`` (see :mod:`aensae.benchmarks.runner`). Without
arguments it runs the quick config on CPU into ``results/quick``. A folder holding another
config's results is refused; ``--overwrite`` removes them first (only files aensae wrote).

A config with ``[data] kind = "llm"`` (``llm-quick``, ``llm-pythia70m``,
``llm-llama3.1-8b``) runs the LLM grid instead (:mod:`aensae.benchmarks.llm_grid`):
harvest, calibrated training passes, spliced evaluation with exact codes, the same
three outputs.

``aensae figures RESULTS_DIR`` redraws every figure and the report from
``RESULTS_DIR/results.csv`` (and ``speed.csv``) alone. The table is checked first; the new
figures and report replace the old ones together, or not at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aensae._io import check_output_dir
from aensae._validation import InputError, check_device
from aensae.benchmarks._options import add_command
from aensae.benchmarks.grid import named_configs

__all__ = ["register"]


def register(top: Any, bench: Any) -> None:
    """Add ``aensae reproduce`` and ``aensae figures`` to ``top``."""
    p = add_command(top, "reproduce", help="run the experiment grid: table, figures, report",
                    doc="\n\n".join(__doc__.split("\n\n")[1:3]))
    p.add_argument("--config", default="quick",
                   help=f"named config ({', '.join(named_configs())}) or a TOML file path")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: results/<experiment name>)")
    p.add_argument("--device", default=None,
                   help="torch device replacing [experiment] device: auto, cpu, cuda, "
                        "cuda:1, ... (part of the config hash; default: the config's)")
    p.add_argument("--overwrite", action="store_true",
                   help="first remove what an earlier reproduce wrote into --out (any "
                        "config); refused if --out holds files aensae did not write")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes training groups in parallel (default: [experiment] "
                        "workers of the config; 0: the cores available)")
    p.add_argument("--no-figures", action="store_true", help="skip figures and report")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show progress bars")
    p.set_defaults(func=_reproduce_main)

    f = add_command(top, "figures", help="redraw figures and report from a results table",
                    doc=__doc__.split("\n\n")[3])
    f.add_argument("results_dir", metavar="RESULTS_DIR",
                   help="folder holding results.csv (and speed.csv)")
    f.set_defaults(func=_figures_main)


def _reproduce_main(args: argparse.Namespace) -> int:
    from aensae.benchmarks.grid import config_kind, load_config
    from aensae.benchmarks.runner import reproduce

    if config_kind(args.config) == "llm":
        return _reproduce_llm(args)
    grid = load_config(args.config)
    if args.device is not None:
        check_device("--device", args.device)
        grid.experiment["device"] = args.device
    out = args.out if args.out is not None else Path("results") / grid.name
    table = reproduce(grid, out, progress=args.progress, draw=not args.no_figures,
                      overwrite=args.overwrite, workers=args.workers)
    print(f"results: {table}")
    if not args.no_figures:
        print(f"figures: {table.parent / 'figures'}\nreport:  {table.parent / 'report.md'}")
    return 0


def _reproduce_llm(args: argparse.Namespace) -> int:
    """``[data] kind = "llm"``: :func:`aensae.benchmarks.llm_grid.reproduce_llm`."""
    from aensae.benchmarks.grid import read_config
    from aensae.benchmarks.llm_config import check_hub_model, load_llm_config

    data = read_config(args.config)[0].get("data")
    if isinstance(data, dict):  # a hub model out of reach: one line, before torch loads
        check_hub_model(data.get("model"), data.get("revision"))
    cfg = load_llm_config(args.config)
    if args.workers is not None:
        raise InputError(f"--workers {args.workers}: an LLM config runs in one process (its "
                         "SAEs train together on the same batches); leave --workers out")
    if args.device is not None:
        check_device("--device", args.device)
        cfg.experiment["device"] = args.device
    from aensae.benchmarks.llm_grid import reproduce_llm

    out = args.out if args.out is not None else Path("results") / cfg.name
    table = reproduce_llm(cfg, out, progress=args.progress, draw=not args.no_figures,
                          overwrite=args.overwrite)
    print(f"results: {table}")
    if not args.no_figures:
        print(f"figures: {table.parent / 'figures'}\nreport:  {table.parent / 'report.md'}")
    return 0


def _figures_main(args: argparse.Namespace) -> int:
    from aensae.benchmarks.llm_grid import is_llm_results, write_llm_figures
    from aensae.benchmarks.runner import write_figures

    folder = args.results_dir
    if folder == "" or not Path(folder).is_dir():
        raise InputError(f"RESULTS_DIR {folder!r}: no such folder")
    check_output_dir("RESULTS_DIR", folder)
    draw = write_llm_figures if is_llm_results(folder) else write_figures
    for path in draw(folder):
        print(path)
    return 0
