r"""``aensae reproduce``: the grid, resumable, into one tidy table, figures and report.

Layout of the output folder ``OUT``::

    OUT/config.json            normalised config, its hash, seeds, aensae version
    OUT/calibration/rho<R>.json matched-sparsity calibration (per rho)
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
anything else, so it never deletes a file aensae did not write.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aensae import __version__
from aensae._io import (
    atomic_write_json,
    check_output_dir,
    is_partial,
    remove_partial_files,
    replace_together,
)
from aensae._validation import InputError, check_device
from aensae.benchmarks._data import CACHE_DIR, DataPoint, data_point, train_models
from aensae.benchmarks.grid import GridConfig, RunSpec, canonical_hash
from aensae.benchmarks.results import write_table

if TYPE_CHECKING:
    from aensae.benchmarks.executors import ExecutorSpec

__all__ = ["OUTPUT_ENTRIES", "RESULTS_FILE", "SPEED_FILE", "build_rows", "reproduce",
           "write_figures"]

RESULTS_FILE = "results.csv"
SPEED_FILE = "speed.csv"
SPEED_FIRST = ("solver", "rho")
MANIFEST_FILE = "config.json"
#: Everything ``reproduce`` writes into its output folder (plus ``.aensae-stage-*``
#: staging folders a killed swap leaves): what ``overwrite=True`` may remove.
OUTPUT_ENTRIES = (MANIFEST_FILE, "calibration", "runs", "groups", CACHE_DIR, RESULTS_FILE,
                  SPEED_FILE, "figures", "report.md", "jobs")
#: submitit's job files (pickles, logs), one folder per job.
JOBS_DIR = "jobs"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _manifest(grid: GridConfig) -> dict[str, Any]:
    return {"config": grid.to_dict(), "config_hash": grid.config_hash(),
            "config_name": grid.name, "source": grid.source, "seeds": grid.seeds,
            "aensae_version": __version__}


def _ours(entry: Path, entries: tuple[str, ...] = OUTPUT_ENTRIES) -> bool:
    """An entry of ``entries``, or what a killed writer of one left (a temporary file or
    a staging folder)."""
    return entry.name in entries or is_partial(entry, entries)


def _clear_outputs(out: Path, entries: tuple[str, ...] = OUTPUT_ENTRIES) -> None:
    """Remove what ``reproduce`` wrote into ``out``; refuse if anything else is there."""
    foreign = sorted(p.name for p in out.iterdir() if not _ours(p, entries))
    if foreign:
        raise InputError(f"--overwrite: --out {str(out)!r} also holds files aensae did not "
                         f"write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
                         "); remove them or choose another --out")
    for entry in sorted(out.iterdir(), key=lambda p: p.name == MANIFEST_FILE):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()  # the manifest last: a killed removal still reads as ours


def _check_manifest(grid: GridConfig, out: Path, overwrite: bool,
                    entries: tuple[str, ...] = OUTPUT_ENTRIES,
                    record: dict[str, Any] | None = None) -> None:
    """Refuse (or, with ``overwrite``, clear) a folder holding another config's results.

    ``entries`` are the names the pipeline writes (the LLM grid has its own) and
    ``record`` its manifest (default: the synthetic grid's, :func:`_manifest`).
    """
    path = out / MANIFEST_FILE
    record = _manifest(grid) if record is None else record
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as err:
        if not overwrite:
            raise InputError(f"--out {str(out)!r}: {MANIFEST_FILE} is damaged ({err}); pass "
                             "--overwrite to start afresh there, or choose another --out"
                             ) from None
        saved = {}
    if overwrite:
        _clear_outputs(out, entries)
        return
    if saved.get("config_hash") == record["config_hash"]:
        return
    other = f"config {saved.get('config_name')!r}, hash {saved.get('config_hash')}"
    results = [p.name for p in out.iterdir() if p.name != MANIFEST_FILE and _ours(p, entries)]
    if not results:
        raise InputError(f"--out {str(out)!r} holds only the manifest of another config "
                         f"({other}; a run that stopped before any result); this config "
                         f"({grid.name!r}) has hash {record['config_hash']}: pass --overwrite "
                         "to start afresh there, or choose another --out")
    raise InputError(f"--out {str(out)!r} holds results of another config ({other}); this "
                     f"config ({grid.name!r}) has hash {record['config_hash']}: pass "
                     "--overwrite to replace them, or choose another --out")


def check_reproduce(grid: GridConfig, out: str | Path, *, here: bool = True) -> Path:
    """Checks before any work: the device, the output folder, the speed rows' file.

    ``here=False`` (tasks run on a submitit or Ray node): the device is the node's, so
    only its name is checked.
    """
    check_device("config experiment.device", grid.experiment["device"], here=here)
    out = check_output_dir("--out", out)
    src = _speed_source(grid)
    if src is not None and not src.is_file():
        raise InputError(f"config speed.json: {str(src)!r} not found")
    return out


def _provenance(grid: GridConfig) -> dict[str, Any]:
    d, t = grid.data, grid.train
    return {"config_name": grid.name, "config_hash": grid.config_hash(),
            "aensae_version": __version__, "n": d["n"], "m": d["m"], "d_sae": grid.d_sae,
            "k": d["k"], "lo": d["lo"], "hi": d["hi"], "noise_std": d["noise_std"],
            "steps": t["steps"], "batch_size": t["batch_size"], "lr": t["lr"],
            "dead_window_samples": t["dead_window"], "dtype": grid.experiment["dtype"]}


# ----------------------------------------------------------------------------- exact reference
def _exact_dir(grid: GridConfig, rho: float, seed: int) -> tuple[Path, dict[str, Any]]:
    rec = {"kind": "exact", "rho": rho, "seed": seed, "data": grid.data_record(),
           "reference": grid.reference, "eval": grid.eval}
    return Path("runs") / f"exact-rho{rho:g}-s{seed}-{canonical_hash(rec)}", rec


def _run_exact(grid: GridConfig, out: Path, point: DataPoint) -> None:
    from aensae.benchmarks.evaluation import exact_reference_rows

    rel, rec = _exact_dir(grid, point.rho, point.seed)
    folder = out / rel
    if (folder / "metrics.json").is_file():
        return
    remove_partial_files(folder)  # what a killed attempt at this reference left
    atomic_write_json(folder / "config.json", rec)
    t0 = time.perf_counter()
    rows = exact_reference_rows(grid, point)
    atomic_write_json(folder / "metrics.json", {"config": rec, "rows": rows,
                                                "seed": point.seed,
                                                "aensae_version": __version__,
                                                "seconds": time.perf_counter() - t0})


# ----------------------------------------------------------------------------- SAE runs
def _run_files(out: Path, grid: GridConfig, spec: RunSpec) -> Path:
    return out / "runs" / spec.run_id(grid)


def _train_group(grid: GridConfig, out: Path, point: DataPoint, specs: list[RunSpec],
                 progress: bool) -> float:
    """Train the ``specs`` of one data point together, save each model and trained.json.

    A run whose model the calibration already trained to full length (the model cache,
    :func:`~aensae.benchmarks._data.model_key`) is taken from there: the same
    computation, so the same model bit for bit.
    """
    import torch

    from aensae.benchmarks._data import cache_load, model_key
    from aensae.saes import create, save

    dtype = {"float32": torch.float32, "float64": torch.float64}[grid.experiment["dtype"]]
    ids = [s.run_id(grid) for s in specs]
    for spec, rid in zip(specs, ids, strict=True):
        folder = out / "runs" / rid
        if not (folder / "config.json").is_file():
            atomic_write_json(folder / "config.json", {"run_id": rid, **spec.record(grid)})
    models, records = {}, {}
    for s, rid in zip(specs, ids, strict=True):
        hit = None if grid.train["stack"] else cache_load(
            out, model_key(grid, s.arch, s.hyper, s.rho, s.seed))
        if hit is None:
            models[rid] = create(s.arch, grid.data["n"], grid.d_sae, seed=s.seed, dtype=dtype,
                                 **s.hyper)
        else:
            records[rid] = hit
    seconds = 0.0
    if models:
        gdir = out / "groups" / (f"rho{point.rho:g}-s{point.seed}-"
                                 f"{canonical_hash(sorted(models))}")
        from aensae.saes.trainer import CHECKPOINT_FILE

        remove_partial_files(gdir)  # a checkpoint write that a kill cut short
        if (gdir / CHECKPOINT_FILE).is_file():
            _log(f"group {gdir.name}: resuming from its checkpoint")
        t0 = time.perf_counter()
        results = train_models(grid, models, point, grid.train["steps"], gdir,
                               progress=progress)
        seconds = time.perf_counter() - t0
        for rid, model in models.items():
            res = results[rid].to_dict()
            res.update({"group_seconds": seconds, "group_models": len(models),
                        "trained_in": "grid"})
            records[rid] = (model, res)
        shutil.rmtree(gdir, ignore_errors=True)
    for rid in ids:
        model, res = records[rid]
        res = dict(res)
        folder = out / "runs" / rid
        save(model, folder)
        losses = res.pop("train_loss")
        res.update({"train_loss_first": losses[0] if losses else None,
                    "train_loss_last": losses[-1] if losses else None,
                    "torch_version": torch.__version__})
        atomic_write_json(folder / "trained.json", res)
    return seconds


def _evaluate_run(grid: GridConfig, out: Path, point: DataPoint, spec: RunSpec,
                  calib: dict[str, Any] | None) -> None:
    from aensae.benchmarks.evaluation import evaluate_sae
    from aensae.saes import load

    folder = _run_files(out, grid, spec)
    trained = json.loads((folder / "trained.json").read_text())
    model = load(folder)
    t0 = time.perf_counter()
    metrics = evaluate_sae(model, point, encoder_samples=grid.eval["encoder_samples"],
                           hoffman_samples=grid.eval["hoffman_samples"], tol=grid.eval["tol"])
    dead = trained["dead"]
    row = {"kind": "sae", "family": spec.family, "arch": spec.arch,
           "init": model.hyper["init"], "rho": spec.rho,
           "seed": spec.seed, "target_l0": spec.target_l0, "calibrated": spec.calibrated,
           "variant": spec.variant, **{f"hp_{k}": v for k, v in spec.hyper.items()},
           "dead_final": dead["final"], "dead_median_last": dead["median_last"],
           "dead_windows": dead["windows"], "dead_last": dead["last"],
           "train_loss_last": trained["train_loss_last"],
           "train_seconds": trained["group_seconds"] / trained["group_models"],
           "group_models": trained["group_models"],
           "trained_in": trained.get("trained_in", "grid"), **metrics,
           "eval_seconds": time.perf_counter() - t0}
    if spec.target_l0 is not None:
        tol = grid.calibrate["tolerance"]
        ratio = metrics["l0"] / spec.target_l0
        row.update({"l0_ratio": ratio, "l0_tolerance": tol,
                    "l0_matched": bool(1.0 / tol <= ratio <= tol)})
    if calib is not None:
        row.update({"calibrated_param": calib["param"],
                    "calibrated_value": spec.hyper[calib["param"]],
                    "calibration_extrapolated": calib["extrapolated"][spec.target_l0],
                    "calibration_steps": calib["steps"]})
    elif spec.target_l0 is not None:
        row.update({"calibrated_param": "k_top", "calibrated_value": spec.hyper["k_top"],
                    "calibration_extrapolated": False})
    atomic_write_json(folder / "metrics.json", {
        "row": row, "config": spec.record(grid), "run_id": spec.run_id(grid),
        "seed": spec.seed, "aensae_version": __version__, "dead": dead,
        "train": trained})


def build_rows(grid: GridConfig, out: Path, specs: list[RunSpec]) -> list[dict[str, Any]]:
    """One row per finished planned run (SAE runs and exact reference rows)."""
    prov = _provenance(grid)
    rows: list[dict[str, Any]] = []
    for rho in grid.rhos:
        for seed in grid.seeds:
            rel, _ = _exact_dir(grid, rho, seed)
            path = out / rel / "metrics.json"
            if path.is_file():
                for i, r in enumerate(json.loads(path.read_text())["rows"]):
                    rows.append({**prov, **r, "run_id": f"{rel.name}#{r['arch']}-{i}",
                                 "kind": "exact", "rho": rho, "seed": seed,
                                 "steps": None, "batch_size": None, "lr": None,
                                 "dead_window_samples": None})
    for spec in specs:
        path = _run_files(out, grid, spec) / "metrics.json"
        if path.is_file():
            rows.append({**prov, **json.loads(path.read_text())["row"],
                         "run_id": spec.run_id(grid)})
    rows += unreachable_rows(grid, out, prov)
    return rows


def unreachable_rows(grid: GridConfig, out: Path, prov: dict[str, Any]
                     ) -> list[dict[str, Any]]:
    """One ``kind = "unreachable"`` row per calibration target no penalty reached.

    The row holds the family, its init, rho, the target, the L0 range the calibration saw
    (``l0_seen_min``, ``l0_seen_max``) and the penalty range it searched; no run exists
    for it, so no figure or verdict treats it as a matched point.
    """
    from aensae.benchmarks.calibrate import load_rho

    rows: list[dict[str, Any]] = []
    for rho in grid.rhos:
        for rec in load_rho(grid, out, rho) or []:
            for target, (lo, hi) in sorted(rec["unreachable"].items()):
                rows.append({**prov, "kind": "unreachable", "family": rec["family"],
                             "arch": rec["arch"], "init": rec["hyper"].get("init", "tied"),
                             "rho": rho, "seed": rec["seed"], "target_l0": target,
                             "variant": rec["variant"], "calibrated": True,
                             "calibrated_param": rec["param"], "l0_seen_min": lo,
                             "l0_seen_max": hi, "penalty_searched_min": rec["limits"][0],
                             "penalty_searched_max": rec["limits"][1],
                             "calibration_steps": rec["steps"],
                             "run_id": f"unreachable-{rec['family']}-{rec['variant']}-"
                                       f"rho{rho:g}-t{target:g}"})
    return rows


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
        from aensae.benchmarks.solver_bench import run_solver_bench

        _log(f"speed: aensae bench solvers (quick={s['quick']}, signals={s['signals']})")
        rows = run_solver_bench(rhos=s["rho"], quick=s["quick"], signals=s["signals"])
    if rows is not None:
        flat = [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in rows]
        write_table(path, flat, first=SPEED_FIRST, required=())


# ----------------------------------------------------------------------------- main
def _probe_rate(grid: GridConfig, point: DataPoint, specs: list[RunSpec]) -> float:
    """Seconds per model-step, timed on a few steps of throw-away copies of ``specs``."""
    import torch

    from aensae.saes import create

    dtype = {"float32": torch.float32, "float64": torch.float64}[grid.experiment["dtype"]]
    models = {f"p{i}": create(s.arch, grid.data["n"], grid.d_sae, seed=s.seed, dtype=dtype,
                              **s.hyper) for i, s in enumerate(specs)}
    steps = 5
    train_models(grid, models, point, 2, None, progress=False)  # warm-up
    t0 = time.perf_counter()
    train_models(grid, models, point, steps, None, progress=False)
    return (time.perf_counter() - t0) / (steps * len(models))


def _estimate(grid: GridConfig, out: Path, cal_steps: int, workers: int) -> None:
    """Print the ETA of the remaining calibration and training before any of it runs.

    The rate comes from :func:`_probe_rate` on one data point's runs (penalties of
    uncalibrated families set to the middle of their range: the cost does not depend on
    them); runs already trained are not counted when the calibration is known.
    """
    import torch

    from aensae.saes.trainer import resolve_device

    jobs = grid.calibration_jobs()
    mid = {(f.name, v, rho): {t: math.sqrt(f.calibrate_range[0] * f.calibrate_range[1])
                              for t in f.target_l0}
           for f, _, v in jobs for rho in grid.rhos}
    from aensae.benchmarks.calibrate import full_length

    specs = grid.runs(mid)
    todo = len(specs)
    reuse = full_length(grid)
    if cal_steps == 0:
        todo = sum(not (_run_files(out, grid, s) / "trained.json").is_file()
                   for s in runs_after_calibration(grid, out))
    elif reuse:
        # full-length calibration: first-seed runs of calibrated families come from it;
        # count one refinement run per target on top of the ladders
        todo = sum(not (s.calibrated and s.seed == grid.seeds[0]) for s in specs)
        cal_steps += sum(len(f.target_l0) for f, _, _ in jobs) * len(grid.rhos) \
            * grid.calibrate["steps"]
    main = todo * grid.train["steps"]
    if main + cal_steps == 0:
        return
    first = [s for s in specs if (s.rho, s.seed) == (specs[0].rho, specs[0].seed)]
    rate = _probe_rate(grid, data_point(grid, specs[0].rho, specs[0].seed), first)
    _log(f"ETA: {_hms(rate * (cal_steps + main) / workers)} on {workers} worker(s) for "
         f"{cal_steps:,} calibration (ladders and one refinement per target; widening adds "
         "more) and "
         f"{main:,} training model-steps ({todo} runs to train; probe: {1e3 * rate:.2f} ms "
         f"per model-step on {resolve_device(grid.experiment['device'])}, "
         f"{torch.get_num_threads()} "
         "threads), plus evaluation")


def runs_after_calibration(grid: GridConfig, out: Path) -> list[RunSpec]:
    """The grid's runs with the penalties of a finished calibration in ``out``."""
    from aensae.benchmarks.calibrate import calibrate

    calib = calibrate(grid, out)
    return grid.runs({key: rec["penalties"] for key, rec in calib.items()})


def reproduce(grid: GridConfig, out: str | Path, *, progress: bool = True,
              draw: bool = True, on_group: Callable[[int], None] | None = None,
              overwrite: bool = False, workers: int | None = None,
              executor: ExecutorSpec | None = None) -> Path:
    """Run ``grid`` into ``out`` (resumable), write the table, figures and report.

    ``on_group(i)`` is called after the ``i``-th group finished (tests use it to
    interrupt a run part-way). Returns the path of the results table.

    ``executor`` (default: the config's ``[executor]`` table, else ``local``; see
    :mod:`aensae.benchmarks.executors`) runs the independent tasks, ``workers`` at once
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
    from aensae.benchmarks.executors import (
        available_cores,
        check_engine,
        make_executor,
        resolve_spec,
    )

    spec = executor if executor is not None else resolve_spec(grid.executor)
    if workers is None:
        workers = grid.experiment["workers"]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"--workers must be an integer >= 0 (0 = the cores available), got "
                         f"{workers!r}")
    check_engine(spec)
    threads = grid.experiment["threads"]
    if spec.here:  # else the threads are a node's: its scheduler holds them to its cores
        check_threads("config experiment.threads", threads)
    if spec.remote:
        threads = threads or 1
    else:
        workers = workers or available_cores()
        threads = threads or max(1, available_cores() // workers)
    out = check_reproduce(grid, out, here=spec.here)
    if spec.remote:  # a job or Ray task may start in another working directory
        out = out.absolute()
    t_start = time.perf_counter()
    pool = make_executor(workers, threads, spec, folder=out / JOBS_DIR, name=grid.name)
    try:
        if out.is_dir():
            _check_manifest(grid, out, overwrite)
            remove_partial_files(out, OUTPUT_ENTRIES)  # the driver's files a kill cut short
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / MANIFEST_FILE, _manifest(grid))
        where = {"local": "process(es)", "submitit": f"submitit job(s) "
                 f"({spec.submitit_cluster or 'slurm'})", "ray": "Ray task(s)"}[spec.kind]
        _log(f"workers: {pool.workers} {where} of {threads} thread(s)")
        specs = _run_grid_limited(grid, out, progress=progress, on_group=on_group,
                                  executor=pool, threads=threads,
                                  probe=_device_here(grid.experiment["device"]))
    finally:
        pool.close()
    # outside the thread limits: the solver benchmark measures its anchors' own threading
    _speed(grid, out)
    rows = build_rows(grid, out, specs)
    table = out / RESULTS_FILE
    write_table(table, rows)
    _log(f"results: {table} ({len(rows)} rows) in {_hms(time.perf_counter() - t_start)}")
    if draw:
        files = write_figures(out)
        _log(f"figures: {len(files) - 1} files in {out / 'figures'}; report: "
             f"{out / 'report.md'}")
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
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=threads):
            return _run_grid(grid, out, **kwargs)
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)


def write_figures(results_dir: str | Path) -> list[Path]:
    """Validate ``results.csv``, draw every figure and the report, swap them in together.

    The table is checked first (:func:`~aensae.benchmarks.results.check_results_table`);
    figures and ``report.md`` are written into a staging folder and replace the old
    ``figures/`` and ``report.md`` only when all of them are written
    (:func:`aensae._io.replace_together`). On any failure the previous ones are left
    byte-identical. Returns the paths of the new figures, then the report.
    """
    from aensae.benchmarks.figures import draw_all
    from aensae.benchmarks.report import write_report
    from aensae.benchmarks.results import check_results_table

    results_dir = Path(results_dir)
    check_results_table(results_dir / RESULTS_FILE)
    speed = results_dir / SPEED_FILE
    if speed.is_file():
        from aensae.benchmarks.results import read_table

        read_table(speed)
    with replace_together(results_dir, ("figures", "report.md")) as stage:
        files = draw_all(results_dir, stage / "figures")
        write_report(results_dir, stage / "report.md")
    return [results_dir / "figures" / p.name for p in files] + [results_dir / "report.md"]


def _run_grid(grid: GridConfig, out: Path, *, progress: bool,
              on_group: Callable[[int], None] | None, executor: Any,
              probe: bool = True) -> list[RunSpec]:
    """Exact reference, calibration and every SAE run; returns the planned runs."""
    from tqdm.auto import tqdm

    from aensae.benchmarks.calibrate import calibrate, missing_units

    table = out / RESULTS_FILE
    steps = grid.train["steps"]
    _log(f"aensae reproduce: config {grid.name!r} ({grid.source}) -> {out}")
    units = missing_units(grid, out)
    n_cal = len(units) * grid.calibrate["ladder"]
    cal_steps = n_cal * grid.calibrate["steps"]
    if probe:
        _estimate(grid, out, cal_steps, executor.workers)
    else:
        _log(f"ETA: not estimated (device {grid.experiment['device']!r} is not on this "
             "machine, only on the executor's nodes)")
    # phase 1, in parallel: calibration per (rho, variant), the groups of families that
    # need no calibration, exact references per (rho, seed); the longest first
    direct = _plan_groups(grid, out, [s for s in grid.runs(_no_penalties(grid))
                                      if not s.calibrated], None, progress, executor)
    first = [(_calibrate_task, (grid, out, rho, [(fam, var)])) for rho, fam, var in units]
    first += direct[0]
    first += [(_exact_task, (grid, out, rho, seed)) for rho in grid.rhos
              for seed in grid.seeds if not (out / _exact_dir(grid, rho, seed)[0]
                                            / "metrics.json").is_file()]
    bar = tqdm(total=max(len(first), 1), unit="task", desc="calibrate + direct",
               disable=not progress, dynamic_ncols=True, position=0)
    if units:
        _log(f"calibration: {len(units)} (rho, variant) unit(s), ladders of "
             f"{grid.calibrate['ladder']} x {grid.calibrate['steps']} steps, widened until "
             "each target is bracketed, then refined")
    done_groups = 0
    for _, res in executor.run(_call, first):
        bar.update(1)
        if res == "group":
            write_table(table, build_rows(grid, out, grid.runs(_no_penalties(grid))))
            if on_group is not None:
                on_group(done_groups)
            done_groups += 1
    calib = calibrate(grid, out)  # every unit is on disk now; raises if all unreachable
    penalties = {key: rec["penalties"] for key, rec in calib.items()}
    specs = grid.runs(penalties)
    ids = [s.run_id(grid) for s in specs]
    if len(set(ids)) != len(ids):
        raise InputError("config [[family]]: the grid expands to duplicate runs (two "
                         "families with identical settings); make them differ")
    finished = [s for s in specs if (_run_files(out, grid, s) / "metrics.json").is_file()]
    to_train = [s for s in specs if not (_run_files(out, grid, s) / "trained.json").is_file()]
    total = len(to_train) * steps
    n_groups = len({(s.rho, s.seed, s.family) for s in specs})
    _log(f"plan: {len(specs)} SAE runs in {n_groups} groups; {len(finished)} finished, "
         f"{len(to_train)} to train ({total:,} model-steps; runs the calibration trained "
         "are taken from it)")
    bar.set_description("train")
    bar.reset(total=max(total, 1))
    tasks, costs = _plan_groups(grid, out, specs, calib, progress, executor)
    for i, _ in executor.run(_call, tasks):
        bar.update(costs[i])
        write_table(table, build_rows(grid, out, specs))
        if on_group is not None:
            on_group(done_groups)
        done_groups += 1
    bar.close()
    shutil.rmtree(out / "groups", ignore_errors=True)
    return specs


def _no_penalties(grid: GridConfig) -> dict[tuple[str, str, float], dict[float, float]]:
    """Empty penalties for every calibrated variant: ``grid.runs`` then plans only the
    runs that need no calibration."""
    return {(f.name, v, rho): {} for f, _, v in grid.calibration_jobs() for rho in grid.rhos}


def _plan_groups(grid: GridConfig, out: Path, specs: list[RunSpec],
                 calib: dict[tuple[str, str, float], dict[str, Any]] | None, progress: bool,
                 executor: Any) -> tuple[list[tuple[Any, tuple[Any, ...]]], list[int]]:
    """One task per (rho, seed, family) group with unfinished runs, and its model-steps."""
    groups: dict[tuple[float, int, str], list[RunSpec]] = defaultdict(list)
    for s in specs:
        groups[(s.rho, s.seed, s.family)].append(s)
    tasks, costs = [], []
    for members in groups.values():
        pending = [s for s in members
                   if not (_run_files(out, grid, s) / "metrics.json").is_file()]
        if not pending:
            continue
        cal = {s.run_id(grid): (calib or {}).get((s.family, s.variant, s.rho))
               if s.calibrated else None for s in pending}
        tasks.append((_group_task, (grid, out, pending, cal,
                                    progress and grid.train["progress"]
                                    and executor.inline)))
        costs.append(sum(not (_run_files(out, grid, s) / "trained.json").is_file()
                         for s in pending) * grid.train["steps"])
    return tasks, costs


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``fn(*args)``: the one function executors run (a task names its own function)."""
    return fn(*args)


def _exact_task(grid: GridConfig, out: Path, rho: float, seed: int) -> str:
    """Exact reference rows of one ``(rho, seed)``."""
    _run_exact(grid, out, data_point(grid, rho, seed))
    return "exact"


def _calibrate_task(grid: GridConfig, out: Path, rho: float,
                    only: list[tuple[str, str]]) -> str:
    """Calibration of the ``(family, variant)`` in ``only`` at ``rho`` (written to
    ``out/calibration``)."""
    from aensae.benchmarks.calibrate import calibrate_rho

    calibrate_rho(grid, out, rho, only=only)
    return "calibration"


def _group_task(grid: GridConfig, out: Path, pending: list[RunSpec],
                calib: dict[str, dict[str, Any] | None], progress: bool) -> str:
    """Train the not-yet-trained ``pending`` runs of one group together; evaluate all."""
    for s in pending:  # this task owns these folders now; a killed attempt may have left
        remove_partial_files(_run_files(out, grid, s))  # temporary files in them
    point = data_point(grid, pending[0].rho, pending[0].seed)
    train_now = [s for s in pending
                 if not (_run_files(out, grid, s) / "trained.json").is_file()]
    if train_now:
        _train_group(grid, out, point, train_now, progress)
    for s in pending:
        _evaluate_run(grid, out, point, s, calib[s.run_id(grid)])
    return "group"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{(s % 3600) // 60:02d}m{s % 60:02d}s"
