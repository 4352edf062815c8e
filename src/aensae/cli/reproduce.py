r"""``aensae reproduce`` (the main job) and ``aensae figures`` (redraw from the table).

``aensae reproduce [--config quick|paper|tiny|PATH] [--out DIR]`` runs the experiment grid
of the config (see :mod:`aensae.experiments.spiked.config`), resumable, and writes
``DIR/results.csv``, ``DIR/figures/`` and ``DIR/report.md`` (see
:mod:`aensae.experiments.spiked.driver`). Without
arguments it runs the quick config on CPU into ``results/quick``. A folder holding another
config's results is refused; ``--overwrite`` removes them first (only files aensae wrote).
``--executor local|submitit|ray`` chooses where the tasks run (SLURM job arrays through
submitit, Ray tasks); every executor gives the same table.

A config with ``[data] kind = "llm"`` (``llm-quick``, ``llm-pythia70m``,
``llm-llama3.1-8b``) runs the LLM grid instead (:mod:`aensae.experiments.llm.driver`):
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
from aensae.cli._options import add_command
from aensae.experiments.config import named_configs
from aensae.experiments.executors import CLUSTER_EXTRA, DEFAULT_SLURM_TIME, OPTIONS, resolve_spec

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
                   help="tasks run at once: local worker processes (0: the cores available), "
                        "submitit's job array parallelism, Ray tasks in flight (0: as many "
                        "as the cluster's CPUs hold) (default: [experiment] workers of the "
                        "config)")
    x = p.add_argument_group(
        "executor", "where the tasks run; each option may also be set in the config's "
        "[executor] table (kind = \"ray\", gpus = 0.25, ...), which these override. "
        f"submitit and ray need the cluster extra: {CLUSTER_EXTRA}")
    x.add_argument("--executor", default=None, metavar="{local,submitit,ray}",
                   help="local: worker processes here; submitit: one SLURM job per task "
                        "(requeued from its checkpoints when preempted or timed out); ray: "
                        "Ray tasks (default: [executor] kind of the config, else local)")
    x.add_argument("--slurm-partition", default=None, metavar="NAME",
                   help="submitit: SLURM partition (default: the cluster's)")
    x.add_argument("--slurm-account", default=None, metavar="NAME",
                   help="submitit: SLURM account to charge (default: yours)")
    x.add_argument("--slurm-time", type=int, default=None, metavar="MINUTES",
                   help="submitit: time limit per job; a job that runs out is requeued and "
                        f"resumes (default: {DEFAULT_SLURM_TIME})")
    x.add_argument("--submitit-cluster", default=None, metavar="{slurm,local}",
                   help="submitit: slurm, or local (submitit's LocalExecutor: real jobs on "
                        "this machine) (default: slurm)")
    x.add_argument("--gpus", type=float, default=None, metavar="G",
                   help="submitit: GPUs per job (an integer); ray: GPUs per task, fractions "
                        "share a device (0.25: four groups per GPU) (default: 0)")
    x.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="ray: the cluster to join (host:port, auto, ray://host:port) "
                        "(default: RAY_ADDRESS, else a local Ray started on demand)")
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
    from aensae.experiments.config import config_kind, read_config
    from aensae.experiments.spiked.config import load_config
    from aensae.experiments.spiked.driver import reproduce

    text = read_config(args.config)  # the one parse of the file
    if config_kind(text) == "llm":
        return _reproduce_llm(args, text)
    grid = load_config(text)
    spec = resolve_spec(grid.executor, kind=args.executor,
                        **{name: getattr(args, name) for name in OPTIONS})
    if args.device is not None:
        check_device("--device", args.device, here=spec.here)
        grid.experiment["device"] = args.device
    out = args.out if args.out is not None else Path("results") / grid.name
    table = reproduce(grid, out, progress=args.progress, draw=not args.no_figures,
                      overwrite=args.overwrite, workers=args.workers, executor=spec)
    print(f"results: {table}")
    if not args.no_figures:
        print(f"figures: {table.parent / 'figures'}\nreport:  {table.parent / 'report.md'}")
    return 0


def _reproduce_llm(args: argparse.Namespace, text: Any) -> int:
    """``[data] kind = "llm"``: :func:`aensae.experiments.llm.driver.reproduce_llm` of the
    config ``text`` already read (:func:`aensae.experiments.config.read_config`)."""
    from aensae.experiments.llm.config import check_hub_model, load_llm_config

    data = text.raw.get("data")
    if isinstance(data, dict):  # a hub model out of reach: one line, before torch loads
        check_hub_model(data.get("model"), data.get("revision"))
    cfg = load_llm_config(text)
    if args.workers is not None:
        raise InputError(f"--workers {args.workers}: an LLM config runs in one process (its "
                         "SAEs train together on the same batches); leave --workers out")
    given = [(flag, getattr(args, name)) for name, (flag, _, _) in OPTIONS.items()
             if getattr(args, name) is not None]
    if args.executor is not None:
        given.insert(0, ("--executor", args.executor))
    if given:
        flag, value = given[0]
        raise InputError(f"{flag} {value}: an LLM config runs in this process, on no "
                         "executor; leave the executor options out")
    if args.device is not None:
        check_device("--device", args.device)
        cfg.experiment["device"] = args.device
    from aensae.experiments.llm.driver import reproduce_llm

    out = args.out if args.out is not None else Path("results") / cfg.name
    table = reproduce_llm(cfg, out, progress=args.progress, draw=not args.no_figures,
                          overwrite=args.overwrite)
    print(f"results: {table}")
    if not args.no_figures:
        print(f"figures: {table.parent / 'figures'}\nreport:  {table.parent / 'report.md'}")
    return 0


def _figures_main(args: argparse.Namespace) -> int:
    from aensae.experiments.llm.driver import (
        is_llm_results,
        manifest_problem,
        write_llm_figures,
    )
    from aensae.experiments.spiked.driver import write_figures

    folder = args.results_dir
    if folder == "" or not Path(folder).is_dir():
        raise InputError(f"RESULTS_DIR {folder!r}: no such folder")
    check_output_dir("RESULTS_DIR", folder)
    # the manifest names the grid; without a readable one, the table's columns do
    llm = is_llm_results(folder)
    draw = write_llm_figures if llm else write_figures
    try:
        paths = draw(folder)
    except InputError as err:
        problem = manifest_problem(folder)
        if llm or problem is None or problem == "missing":
            raise
        raise InputError(f"RESULTS_DIR {folder!r}: config.json is damaged ({problem}), so "
                         f"the grid was told from results.csv alone, which is no LLM table; "
                         f"read as a synthetic grid's table it fails: {err}") from None
    for path in paths:
        print(path)
    return 0
