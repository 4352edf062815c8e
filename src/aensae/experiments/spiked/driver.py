r"""``aensae reproduce``: the grid, resumable, into one tidy table, figures and report.

Layout of the output folder ``OUT``::

    OUT/config.json            normalised config, its hash, seeds, aensae version
    OUT/calibration/rho<R>-<family>-<variant>.json  matched-sparsity calibration
    OUT/runs/<run_id>/         config.json (first), sae.safetensors + cfg.json,
                               trained.json, metrics.json (last: the "finished" marker)
    OUT/runs/exact-.../        exact reference on the true dictionary: config.json, metrics.json
    OUT/groups/<key>/          trainer checkpoint of a group being trained (removed after)
    OUT/results.csv            the tidy table (rewritten atomically after every group)
    OUT/speed.csv              exact-solver speed rows (``aensae bench solvers``)
    OUT/jobs/<job id>/         submitit's pickles and logs (``--executor submitit``)
    OUT/figures/*.png, *.svg   drawn from the tables alone
    OUT/report.md              the claims, the numbers bearing on them, verdicts

Resume: a run whose ``metrics.json`` exists is finished and skipped; one with
``trained.json`` (model saved) is only evaluated; any other is trained again, from the
group checkpoint when one exists. Every file is written atomically, ``metrics.json``
last, so a killed run never looks finished and the table never holds a run twice (it is
rebuilt from the run folders, one row per planned run id). A process killed outright
leaves temporary files; the task that takes a run folder over removes them first, and
the driver those at the top of ``OUT``. ``figures/`` and
``report.md`` are one set: drawn into a staging folder and swapped in together
(:func:`write_figures`).

Before any work: the config's device, the output folder and the manifest. A folder
whose ``config.json`` records another config is refused, with how to proceed;
``overwrite=True`` (``aensae reproduce --overwrite``) first removes what an earlier
``reproduce`` wrote there (:data:`OUTPUT_ENTRIES`), and refuses a folder that holds
anything else, so it never deletes a file aensae did not write
(:func:`aensae.experiments.layout.open_output`). The tasks are in
:mod:`aensae.experiments.spiked.tasks`, the table's rows in
:mod:`aensae.experiments.spiked.rows`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aensae import __version__
from aensae._dtypes import torch_dtype
from aensae._io import check_output_dir, folder_lock
from aensae._validation import InputError, check_device, check_memory
from aensae.experiments.console import hms, log
from aensae.experiments.layout import (
    ANY,
    FIGURES_DIR,
    MANIFEST_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    open_output,
    staged_report,
)
from aensae.experiments.plotting import FORMATS
from aensae.experiments.results import write_table
from aensae.experiments.spiked.config import GridConfig, RunSpec
from aensae.experiments.spiked.data import (
    CACHE_DIR,
    DataPoint,
    data_point,
    memory_terms,
    train_models,
)
from aensae.experiments.spiked.figures import FIGURES
from aensae.experiments.spiked.rows import WINDOWS_FILE, build_rows, window_rows
from aensae.experiments.spiked.selection import SELECTION_FILE
from aensae.experiments.spiked.tasks import (
    calibrate_task,
    exact_dir,
    exact_task,
    group_task,
    run_folder,
)
from aensae.saes.training.trainer import CHECKPOINT_FILE

if TYPE_CHECKING:
    from aensae.experiments.executors import ExecutorSpec

__all__ = ["OUTPUT_ENTRIES", "SPEED_FILE", "check_reproduce", "reproduce", "write_figures"]

SPEED_FILE = "speed.csv"
SPEED_FIRST = ("solver", "rho")
#: submitit's job files (pickles, logs), one folder per job.
JOBS_DIR = "jobs"
#: Everything ``reproduce`` writes into its output folder (plus ``.aensae-stage-*``
#: staging folders a killed swap leaves): what ``overwrite=True`` may remove.
OUTPUT_ENTRIES = (MANIFEST_FILE, "calibration", "runs", "groups", CACHE_DIR, RESULTS_FILE,
                  WINDOWS_FILE, SELECTION_FILE,
                  SPEED_FILE, FIGURES_DIR, REPORT_FILE, JOBS_DIR)
#: The files of a run folder (:mod:`aensae.experiments.spiked.tasks`) and of a cached
#: model (:mod:`aensae.experiments.spiked.data`).
_RUN_FILES = {name: None for name in ("config.json", "sae.safetensors", "cfg.json",
                                      "trained.json", "metrics.json")}
_MODEL_FILES = {name: None for name in ("sae.safetensors", "cfg.json", "result.json")}
#: What ``reproduce`` writes, at every depth (:func:`aensae.experiments.layout.
#: foreign_entries`): ``--overwrite`` refuses a folder holding anything else.
OUTPUT_TREE: dict[str, Any] = {
    MANIFEST_FILE: None, RESULTS_FILE: None, SPEED_FILE: None, REPORT_FILE: None,
    WINDOWS_FILE: None, SELECTION_FILE: None,
    "calibration": {"rho*.json": None}, "runs": {"*": _RUN_FILES},
    "groups": {"*": {CHECKPOINT_FILE: None}}, CACHE_DIR: {"*": _MODEL_FILES},
    FIGURES_DIR: {f"{name}.{ext}": None for name in FIGURES for ext in FORMATS},
    JOBS_DIR: ANY,
}


def _manifest(grid: GridConfig) -> dict[str, Any]:
    return {"config": grid.to_dict(), "config_hash": grid.config_hash(),
            "config_name": grid.name, "source": grid.source, "seeds": grid.seeds,
            "aensae_version": __version__}


def _check_memory(grid: GridConfig, tasks: int) -> None:
    """Refuse a grid whose ``tasks`` parallel tasks would need more memory than the limit
    (``experiment.max_memory_gb``, else what is available here), before any allocation."""
    together = max((len(f.variants()) * max(1, len(f.target_l0)) for f in grid.families),
                   default=1)
    terms = memory_terms(n=grid.data["n"], m=grid.data["m"], d_sae=grid.d_sae,
                         batch_size=grid.train["batch_size"],
                         eval_samples=grid.eval["samples"], models=together,
                         dtype_bytes=4 if grid.experiment["dtype"] == "float32" else 8)
    what = "a task" if tasks == 1 else f"{tasks} parallel tasks"
    check_memory(f"config {max(terms, key=terms.__getitem__)}", tasks * sum(terms.values()),
                 f"{what} (true dictionary, held-out set, Gram matrix, models of a group)",
                 limit_gib=grid.experiment["max_memory_gb"],
                 override="config experiment.max_memory_gb")


def check_reproduce(grid: GridConfig, out: str | Path, *, here: bool = True,
                    workers: int = 1) -> Path:
    """Checks before any work: the device, the memory of ``workers`` parallel tasks, the
    output folder, the speed rows' file.

    ``here=False`` (tasks run on a submitit or Ray node): the device is the node's, so
    only its name is checked, and the memory is that of one task.
    """
    check_device("config experiment.device", grid.experiment["device"], here=here)
    _check_memory(grid, workers if here else 1)
    out = check_output_dir("--out", out)
    src = _speed_source(grid)
    if src is not None and not src.is_file():
        raise InputError(f"config speed.json: {str(src)!r} not found")
    return out


# ----------------------------------------------------------------------------- speed
def _speed_source(grid: GridConfig) -> Path | None:
    """``[speed] json`` as a path (relative to the config file), or ``None``."""
    if grid.speed["json"] is None:
        return None
    src = Path(grid.speed["json"])
    if not src.is_absolute() and grid.source not in ("", "<dict>"):
        src = Path(grid.source).parent / src
    return src


def _speed(grid: GridConfig, out: Path) -> None:
    s = grid.speed
    path = out / SPEED_FILE
    if path.is_file():
        return
    rows: list[dict[str, Any]] | None = None
    src = _speed_source(grid)
    if src is not None:
        try:
            rows = json.loads(src.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise InputError(f"config speed.json: {str(src)!r} is not a JSON list of rows "
                             f"({err})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InputError(f"config speed.json: {str(src)!r} is not a JSON list of rows")
    elif s["run"]:
        from aensae.benches.solvers import run_solver_bench

        log(f"speed: aensae bench solvers (quick={s['quick']}, signals={s['signals']})")
        rows = run_solver_bench(rhos=s["rho"], quick=s["quick"], signals=s["signals"])
    if rows is not None:
        flat = [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in rows]
        write_table(path, flat, first=SPEED_FIRST, required=())


# ----------------------------------------------------------------------------- main
def _probe_rate(grid: GridConfig, point: DataPoint, specs: list[RunSpec]) -> float:
    """Seconds per model-step, timed on a few steps of throw-away copies of ``specs``."""

    from aensae.saes import create

    dtype = torch_dtype(grid.experiment["dtype"])
    models = {f"p{i}": create(s.arch, grid.data["n"], grid.d_sae, seed=s.seed, dtype=dtype,
                              **s.hyper) for i, s in enumerate(specs)}
    steps = 5
    train_models(grid, models, point, 2, None, progress=False)  # warm-up
    t0 = time.perf_counter()
    train_models(grid, models, point, steps, None, progress=False)
    return (time.perf_counter() - t0) / (steps * len(models))


def _estimate(grid: GridConfig, out: Path, cal_steps: int, workers: int, *,
              keep: Any = None, seeds: list[int] | None = None) -> None:
    """Print the ETA of the remaining calibration and training before any of it runs.

    The rate comes from :func:`_probe_rate` on one data point's runs (penalties of
    uncalibrated families set to the middle of their range: the cost does not depend on
    them); runs already trained are not counted when the calibration is known.
    """
    import torch

    from aensae.saes.training.trainer import resolve_device

    jobs = [(f, h, v) for f, h, v in grid.calibration_jobs()
            if keep is None or any(keep(f, h, rho) for rho in grid.rhos)]
    mid = {(f.name, v, rho): {t: math.sqrt(f.calibrate_range[0] * f.calibrate_range[1])
                              for t in grid.run_targets(f, h)}
           for f, h, v in grid.calibration_jobs() for rho in grid.rhos}
    from aensae.experiments.spiked.calibrate import full_length

    specs = grid.runs(mid, seeds=seeds, keep=keep)
    if not specs:
        return
    todo = len(specs)
    reuse = full_length(grid)
    if cal_steps == 0:
        todo = sum(not (run_folder(out, grid, s) / "trained.json").is_file()
                   for s in runs_after_calibration(grid, out, keep=keep, seeds=seeds))
    elif reuse:
        # full-length calibration: the calibration seed's runs of calibrated families come
        # from it; count one refinement run per target on top of the ladders
        todo = sum(not (s.calibrated and s.seed == grid.calibration_seed) for s in specs)
        cal_steps += sum(len(grid.run_targets(f, h)) for f, h, _ in jobs) * len(grid.rhos) \
            * grid.calibrate["steps"]
    main = todo * grid.train["steps"]
    if main + cal_steps == 0:
        return
    first = [s for s in specs if (s.rho, s.seed) == (specs[0].rho, specs[0].seed)]
    rate = _probe_rate(grid, data_point(grid, specs[0].rho, specs[0].seed), first)
    log(f"ETA: {hms(rate * (cal_steps + main) / workers)} on {workers} worker(s) for "
         f"{cal_steps:,} calibration (ladders and one refinement per target; widening adds "
         "more) and "
         f"{main:,} training model-steps ({todo} runs to train; probe: {1e3 * rate:.2f} ms "
         f"per model-step on {resolve_device(grid.experiment['device'])}, "
         f"{torch.get_num_threads()} "
         "threads), plus evaluation")


def runs_after_calibration(grid: GridConfig, out: Path, *, keep: Any = None,
                           seeds: list[int] | None = None) -> list[RunSpec]:
    """The grid's runs with the penalties of a finished calibration in ``out``."""
    from aensae.experiments.spiked.calibrate import calibrate

    calib = calibrate(grid, out, keep=keep, strict=grid.scope is None)
    return calibrated_runs(grid, calib, seeds=seeds, keep=keep)


def calibrated_runs(grid: GridConfig, calib: dict[tuple[str, str, float], dict[str, Any]],
                    *, seeds: list[int] | None = None, keep: Any = None) -> list[RunSpec]:
    """The grid's runs with the penalties (and, for a bracket search, the calibration
    seed's measured points) of the calibration records ``calib``."""
    return grid.runs({key: rec["penalties"] for key, rec in calib.items()}, seeds=seeds,
                     keep=keep,
                     points={key: [p for p, _ in rec["points"]] for key, rec in calib.items()})


def reproduce(grid: GridConfig, out: str | Path, *, progress: bool = True,
              draw: bool = True, on_group: Callable[[int], None] | None = None,
              overwrite: bool = False, workers: int | None = None,
              executor: ExecutorSpec | None = None) -> Path:
    """Run ``grid`` into ``out`` (resumable), write the table, figures and report.

    ``on_group(i)`` is called after the ``i``-th group finished (tests use it to
    interrupt a run part-way). Returns the path of the results table.

    ``executor`` (default: the config's ``[executor]`` table, else ``local``; see
    :mod:`aensae.experiments.executors`) runs the independent tasks, ``workers`` at once
    (default ``experiment.workers``; 0: ``local`` the cores available, ``submitit`` its
    default array parallelism, ``ray`` as many as the cluster's CPUs hold), each with
    ``experiment.threads`` threads (0: ``local`` an equal share of the cores, else 1). A
    task's numbers depend on its thread count, not on which worker, job or node ran it,
    so at a given ``threads`` the table is the same for any executor and any number of
    workers (timing columns aside). Whatever the executor, the table is assembled here,
    from the run folders alone.

    Before any work the executor (its engine installed), the worker and thread counts,
    the device (on nodes other than this machine only its name), ``out``
    and its manifest are checked (:class:`~aensae._validation.InputError`);
    ``overwrite`` first removes an earlier run's outputs from ``out`` (see the module
    docstring).
    """
    from aensae._validation import check_threads
    from aensae.experiments.executors import check_engine, make_executor, resolve_spec
    from aensae.experiments.threads import available_cores

    spec = executor if executor is not None else resolve_spec(grid.executor)
    workers_key = "--workers" if workers is not None else "config experiment.workers"
    if workers is None:
        workers = grid.experiment["workers"]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"--workers must be an integer >= 0 (0 = the cores available), got "
                         f"{workers!r}")
    if spec.kind == "local" and workers > available_cores():
        raise InputError(f"{workers_key} must be at most the {available_cores()} core(s) this "
                         "process may use with the local executor (0: all of them), got "
                         f"{workers}")
    check_engine(spec)
    threads = grid.experiment["threads"]
    if spec.here:  # else the threads are a node's: its scheduler holds them to its cores
        check_threads("config experiment.threads", threads)
    if spec.remote:
        threads = threads or 1
    else:
        workers = workers or available_cores()
        threads = threads or max(1, available_cores() // workers)
    out = check_reproduce(grid, out, here=spec.here, workers=workers)
    if spec.remote:  # a job or Ray task may start in another working directory
        out = out.absolute()
    t_start = time.perf_counter()
    # the executor first: it checks what it asks of its engine before anything is written
    pool = make_executor(workers, threads, spec, folder=out / JOBS_DIR, name=grid.name)
    try:
        with folder_lock("--out", out):  # one writer: after the checks, before any write
            try:
                open_output(out, _manifest(grid), OUTPUT_TREE, overwrite=overwrite)
                where = {"local": "process(es)", "submitit": f"submitit job(s) "
                         f"({spec.submitit_cluster or 'slurm'})",
                         "ray": "Ray task(s)"}[spec.kind]
                log(f"workers: {pool.workers} {where} of {threads} thread(s)")
                specs = _run_grid_limited(
                    grid, out, progress=progress, on_group=on_group, executor=pool,
                    threads=threads, probe=spec.here or _device_here(grid.experiment["device"]))
            finally:
                pool.close()
            # outside the thread limits: the solver bench measures its anchors' threading
            _speed(grid, out)
            rows = build_rows(grid, out, specs)
            table = out / RESULTS_FILE
            write_table(table, rows)
            write_table(out / WINDOWS_FILE, window_rows(grid, out, specs),
                        first=("run_id", "window"), required=())
            log(f"results: {table} ({len(rows)} rows) in {hms(time.perf_counter() - t_start)}")
            if draw:
                files = write_figures(out)
                log(f"figures: {len(files) - 1} files in {out / 'figures'}; report: "
                    f"{out / 'report.md'}")
    finally:
        pool.close()  # closing twice is harmless; here for a lock that was refused
    return table


def _device_here(device: str) -> bool:
    """Whether ``device`` exists on this machine (the ETA probe trains on it)."""
    try:
        check_device("device", device)
    except InputError:
        return False
    return True


def _run_grid_limited(grid: GridConfig, out: Path, *, threads: int, **kwargs: Any
                      ) -> list[RunSpec]:
    """:func:`_run_grid` with this process limited to ``threads`` threads.

    This process runs the tasks itself when ``workers = 1`` (local): the same thread
    limits as a worker's (an idle OpenMP worker left by a wider team spin-waits beside
    the training loop and takes a core from it); it also runs the ETA probe.
    """
    from aensae.experiments.threads import limited_threads

    with limited_threads(threads):
        return _run_grid(grid, out, **kwargs)


def write_figures(results_dir: str | Path) -> list[Path]:
    """Validate ``results.csv``, draw every figure and the report, swap them in together.

    The table is checked first (:func:`~aensae.experiments.results.check_results_table`);
    figures and ``report.md`` are written into a staging folder and replace the old
    ``figures/`` and ``report.md`` only when all of them are written
    (:func:`aensae._io.replace_together`). On any failure the previous ones are left
    byte-identical. Returns the paths of the new figures, then the report.
    """
    from aensae.experiments.results import check_results_table
    from aensae.experiments.spiked.figures import draw_all
    from aensae.experiments.spiked.report import write_report

    results_dir = Path(results_dir)
    check_results_table(results_dir / RESULTS_FILE)
    speed = results_dir / SPEED_FILE
    if speed.is_file():
        from aensae.experiments.results import read_table

        read_table(speed)
    ours = {f"{name}.{ext}" for name in FIGURES for ext in FORMATS}
    with folder_lock("RESULTS_DIR", results_dir), staged_report(results_dir, ours) as stage:
        files = draw_all(results_dir, stage / FIGURES_DIR)
        write_report(results_dir, stage / REPORT_FILE)
    return [results_dir / FIGURES_DIR / p.name for p in files] + [results_dir / REPORT_FILE]


def _run_grid(grid: GridConfig, out: Path, *, progress: bool,
              on_group: Callable[[int], None] | None, executor: Any,
              probe: bool = True) -> list[RunSpec]:
    """Exact reference, calibration and every SAE run; returns the planned runs.

    With a ``[selection]``: first the selection seed's runs of every variant of the
    selection's init (:mod:`aensae.experiments.spiked.selection`), then the choice
    (``OUT/selection.json``), then the chosen variants on every seed and init.
    """
    log(f"aensae reproduce: config {grid.name!r} ({grid.source}) -> {out}")
    counter = [0]
    if grid.selection is None:
        return _run_phase(grid, out, None, grid.seeds, progress=progress, on_group=on_group,
                          executor=executor, probe=probe, counter=counter, label="")
    from aensae.experiments.spiked.selection import strip_init

    sel = grid.selection

    def primary(fam: Any, hyper: dict[str, Any], rho: float) -> bool:
        return grid.primary_init(fam, hyper)

    # the selection seed's variants only around the primary target (scope): its runs at
    # the other targets serve no decision
    scoped = dataclasses.replace(grid, scope=float(sel["target_l0"]))
    first = _run_phase(scoped, out, primary, [sel["seed"]], progress=progress,
                       on_group=on_group, executor=executor, probe=probe, counter=counter,
                       label="selection: ")
    choice = _select(scoped, out, first)
    chosen = {(c["family"], c["rho"]): c["hyper"] for c in choice["choices"]}

    def kept(fam: Any, hyper: dict[str, Any], rho: float) -> bool:
        return strip_init(hyper) == chosen[(fam.name, rho)]

    # the test seeds only: the selection seed's further runs would serve no decision (its
    # calibration passes, on that seed, still train the chosen variants' other targets)
    rest = _run_phase(grid, out, kept, grid.seeds, progress=progress, on_group=on_group,
                      executor=executor, probe=probe, counter=counter, label="test: ")
    ids = {s.run_id(grid) for s in rest}
    return [s for s in first if s.run_id(grid) not in ids] + rest


def _select(grid: GridConfig, out: Path, specs: list[RunSpec]) -> dict[str, Any]:
    """The selection from the selection seed's finished runs, written to
    ``OUT/selection.json`` (read back when it exists and the runs are the same)."""
    from aensae._io import atomic_write_json
    from aensae.experiments.spiked.selection import SELECTION_FILE, choose, read_selection

    rows = build_rows(grid, out, specs)
    choice = choose(grid.families, grid.rhos, grid.selection, rows)
    saved = read_selection(out)
    if saved is not None and saved["choices"] != json.loads(json.dumps(choice["choices"])):
        log("selection: the saved choice differs from the selection seed's runs; "
            "rewriting it")
    atomic_write_json(out / SELECTION_FILE, choice)
    for c in choice["choices"]:
        log(f"selection: {c['family']} rho={c['rho']:g}: {c['hyper']} ({c['reason']})")
    return choice


def _run_phase(grid: GridConfig, out: Path, keep: Any, seeds: list[int], *, progress: bool,
               on_group: Callable[[int], None] | None, executor: Any, probe: bool,
               counter: list[int], label: str) -> list[RunSpec]:
    """Calibration, exact references and the runs of ``seeds`` whose variants ``keep``
    (``None``: all) holds for; returns the planned runs."""
    from tqdm.auto import tqdm

    from aensae.experiments.spiked.calibrate import calibrate, missing_units

    table = out / RESULTS_FILE
    steps = grid.train["steps"]
    units = missing_units(grid, out, keep)
    n_cal = len(units) * grid.calibrate["ladder"]
    cal_steps = n_cal * grid.calibrate["steps"]
    if probe:
        _estimate(grid, out, cal_steps, executor.workers, keep=keep, seeds=seeds)
    else:
        log(f"ETA: not estimated (device {grid.experiment['device']!r} is not on this "
             "machine, only on the executor's nodes)")
    # phase 1, in parallel: calibration per (rho, variant), the groups of families that
    # need no calibration, exact references per (rho, seed); the longest first
    direct = _plan_groups(grid, out, [s for s in grid.runs(_no_penalties(grid), seeds=seeds,
                                                           keep=keep)
                                      if not s.calibrated], None, progress, executor)
    first = [(calibrate_task, (grid, out, rho, [(fam, var)])) for rho, fam, var in units]
    first += direct[0]
    first += [(exact_task, (grid, out, rho, seed)) for rho in grid.rhos
              for seed in grid.seeds if not (out / exact_dir(grid, rho, seed)[0]
                                            / "metrics.json").is_file()]
    bar = tqdm(total=max(len(first), 1), unit="task", desc=f"{label}calibrate + direct",
               disable=not progress, dynamic_ncols=True, position=0)
    if units:
        log(f"{label}calibration: {len(units)} (rho, variant) unit(s), ladders of "
             f"{grid.calibrate['ladder']} x {grid.calibrate['steps']} steps, widened until "
             "each target is bracketed, then refined")
    for _, res in executor.run(_call, first):
        bar.update(1)
        if res == "group":
            write_table(table, build_rows(grid, out, grid.runs(_no_penalties(grid),
                                                               seeds=seeds, keep=keep)))
            if on_group is not None:
                on_group(counter[0])
            counter[0] += 1
    # every unit is on disk now; raises if all of a variant's targets are unreachable
    # (under a selection scope such a variant is just no candidate)
    calib = calibrate(grid, out, keep=keep, strict=grid.scope is None)
    specs = calibrated_runs(grid, calib, seeds=seeds, keep=keep)
    ids = [s.run_id(grid) for s in specs]
    if len(set(ids)) != len(ids):
        raise InputError("config [[family]]: the grid expands to duplicate runs (two "
                         "families with identical settings); make them differ")
    finished = [s for s in specs if (run_folder(out, grid, s) / "metrics.json").is_file()]
    to_train = [s for s in specs if not (run_folder(out, grid, s) / "trained.json").is_file()]
    cached = sum(_in_cache(grid, out, s) for s in to_train)
    n_groups = len({(s.rho, s.seed, s.family) for s in specs})
    log(f"{label}plan: {len(specs)} SAE runs in {n_groups} groups; {len(finished)} finished, "
         f"{len(to_train) - cached} to train ({(len(to_train) - cached) * steps:,} "
         f"model-steps), {cached} taken from the models the calibration trained")
    tasks, costs = _plan_groups(grid, out, specs, calib, progress, executor)
    # model-steps to train when there are any; otherwise the tasks (evaluations alone)
    by_steps = sum(costs) > 0
    bar.set_description(f"{label}train" if by_steps else f"{label}evaluate")
    bar.unit = "model-step" if by_steps else "task"
    bar.reset(total=max(sum(costs) if by_steps else len(tasks), 1))
    for i, _ in executor.run(_call, tasks):
        bar.update(costs[i] if by_steps else 1)
        write_table(table, build_rows(grid, out, specs))
        if on_group is not None:
            on_group(counter[0])
        counter[0] += 1
    bar.close()
    shutil.rmtree(out / "groups", ignore_errors=True)
    return specs


def _in_cache(grid: GridConfig, out: Path, spec: RunSpec) -> bool:
    """Whether ``spec``'s model is in the model cache (a calibration pass trained it), as
    the group task will find it."""
    from aensae.experiments.spiked.data import cache_has, run_cache_key

    key = run_cache_key(grid, spec)
    return key is not None and cache_has(out, key)


def _no_penalties(grid: GridConfig) -> dict[tuple[str, str, float], dict[float, float]]:
    """Empty penalties for every calibrated variant: ``grid.runs`` then plans only the
    runs that need no calibration."""
    return {(f.name, v, rho): {} for f, _, v in grid.calibration_jobs() for rho in grid.rhos}


def _plan_groups(grid: GridConfig, out: Path, specs: list[RunSpec],
                 calib: dict[tuple[str, str, float], dict[str, Any]] | None, progress: bool,
                 executor: Any) -> tuple[list[tuple[Any, tuple[Any, ...]]], list[int]]:
    """One task per (rho, seed, family) group with unfinished runs, and the model-steps it
    trains (a run already trained, or whose model the calibration left in the model
    cache, trains none)."""
    groups: dict[tuple[float, int, str], list[RunSpec]] = defaultdict(list)
    for s in specs:
        groups[(s.rho, s.seed, s.family)].append(s)
    tasks, costs = [], []
    for members in groups.values():
        pending = [s for s in members
                   if not (run_folder(out, grid, s) / "metrics.json").is_file()]
        if not pending:
            continue
        cal = {s.run_id(grid): (calib or {}).get((s.family, s.variant, s.rho))
               if s.calibrated else None for s in pending}
        tasks.append((group_task, (grid, out, pending, cal,
                                    progress and grid.train["progress"]
                                    and executor.inline)))
        costs.append(sum(not (run_folder(out, grid, s) / "trained.json").is_file()
                         and not _in_cache(grid, out, s) for s in pending)
                     * grid.train["steps"])
    return tasks, costs


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``fn(*args)``: the one function executors run (a task names its own function)."""
    return fn(*args)


