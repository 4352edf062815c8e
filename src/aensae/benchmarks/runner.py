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
    OUT/figures/*.png, *.svg   drawn from the tables alone
    OUT/report.md              the claims, the numbers bearing on them, verdicts

Resume: a run whose ``metrics.json`` exists is finished and skipped; one with
``trained.json`` (model saved) is only evaluated; any other is trained again, from the
group checkpoint when one exists. Every file is written atomically, ``metrics.json``
last, so a killed run never looks finished and the table never holds a run twice (it is
rebuilt from the run folders, one row per planned run id). ``figures/`` and
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
from typing import Any

from aensae import __version__
from aensae._io import STAGE_PREFIX, atomic_write_json, check_output_dir, replace_together
from aensae._validation import InputError, check_device
from aensae.benchmarks._data import DataPoint, data_point, train_models
from aensae.benchmarks.grid import GridConfig, RunSpec, canonical_hash
from aensae.benchmarks.results import write_table

__all__ = ["OUTPUT_ENTRIES", "RESULTS_FILE", "SPEED_FILE", "build_rows", "reproduce",
           "write_figures"]

RESULTS_FILE = "results.csv"
SPEED_FILE = "speed.csv"
SPEED_FIRST = ("solver", "rho")
MANIFEST_FILE = "config.json"
#: Everything ``reproduce`` writes into its output folder (plus ``.aensae-stage-*``
#: staging folders a killed swap leaves): what ``overwrite=True`` may remove.
OUTPUT_ENTRIES = (MANIFEST_FILE, "calibration", "runs", "groups", RESULTS_FILE, SPEED_FILE,
                  "figures", "report.md")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _manifest(grid: GridConfig) -> dict[str, Any]:
    return {"config": grid.to_dict(), "config_hash": grid.config_hash(),
            "config_name": grid.name, "source": grid.source, "seeds": grid.seeds,
            "aensae_version": __version__}


def _ours(entry: Path) -> bool:
    return entry.name in OUTPUT_ENTRIES or entry.name.startswith(STAGE_PREFIX)


def _clear_outputs(out: Path) -> None:
    """Remove what ``reproduce`` wrote into ``out``; refuse if anything else is there."""
    foreign = sorted(p.name for p in out.iterdir() if not _ours(p))
    if foreign:
        raise InputError(f"--overwrite: --out {str(out)!r} also holds files aensae did not "
                         f"write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
                         "); remove them or choose another --out")
    for entry in sorted(out.iterdir(), key=lambda p: p.name == MANIFEST_FILE):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()  # the manifest last: a killed removal still reads as ours


def _check_manifest(grid: GridConfig, out: Path, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) a folder holding another config's results."""
    path = out / MANIFEST_FILE
    record = _manifest(grid)
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
        _clear_outputs(out)
        return
    if saved.get("config_hash") == record["config_hash"]:
        return
    other = f"config {saved.get('config_name')!r}, hash {saved.get('config_hash')}"
    results = [p.name for p in out.iterdir() if p.name != MANIFEST_FILE and _ours(p)]
    if not results:
        raise InputError(f"--out {str(out)!r} holds only the manifest of another config "
                         f"({other}; a run that stopped before any result); this config "
                         f"({grid.name!r}) has hash {record['config_hash']}: pass --overwrite "
                         "to start afresh there, or choose another --out")
    raise InputError(f"--out {str(out)!r} holds results of another config ({other}); this "
                     f"config ({grid.name!r}) has hash {record['config_hash']}: pass "
                     "--overwrite to replace them, or choose another --out")


def check_reproduce(grid: GridConfig, out: str | Path) -> Path:
    """Checks before any work: the device, the output folder, the speed rows' file."""
    check_device("config experiment.device", grid.experiment["device"])
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
    """Train the ``specs`` of one data point together, save each model and trained.json."""
    import torch

    from aensae.saes import create, save

    dtype = {"float32": torch.float32, "float64": torch.float64}[grid.experiment["dtype"]]
    ids = [s.run_id(grid) for s in specs]
    for spec, rid in zip(specs, ids, strict=True):
        folder = out / "runs" / rid
        if not (folder / "config.json").is_file():
            atomic_write_json(folder / "config.json", {"run_id": rid, **spec.record(grid)})
    models = {rid: create(s.arch, grid.data["n"], grid.d_sae, seed=s.seed, dtype=dtype,
                          **s.hyper) for s, rid in zip(specs, ids, strict=True)}
    gdir = out / "groups" / f"rho{point.rho:g}-s{point.seed}-{canonical_hash(sorted(ids))}"
    t0 = time.perf_counter()
    results = train_models(grid, models, point, grid.train["steps"], gdir, progress=progress)
    seconds = time.perf_counter() - t0
    for rid, model in models.items():
        folder = out / "runs" / rid
        save(model, folder)
        res = results[rid].to_dict()
        losses = res.pop("train_loss")
        res.update({"train_loss_first": losses[0] if losses else None,
                    "train_loss_last": losses[-1] if losses else None,
                    "group_seconds": seconds, "group_models": len(models),
                    "torch_version": torch.__version__})
        atomic_write_json(folder / "trained.json", res)
    shutil.rmtree(gdir, ignore_errors=True)
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
    row = {"kind": "sae", "family": spec.family, "arch": spec.arch, "rho": spec.rho,
           "seed": spec.seed, "target_l0": spec.target_l0, "calibrated": spec.calibrated,
           "variant": spec.variant, **{f"hp_{k}": v for k, v in spec.hyper.items()},
           "dead_final": dead["final"], "dead_median_last": dead["median_last"],
           "dead_windows": dead["windows"], "dead_last": dead["last"],
           "train_loss_last": trained["train_loss_last"],
           "train_seconds": trained["group_seconds"] / trained["group_models"],
           "group_models": trained["group_models"], **metrics,
           "eval_seconds": time.perf_counter() - t0}
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


def _estimate(grid: GridConfig, out: Path, cal_steps: int) -> None:
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
    specs = grid.runs(mid)
    todo = len(specs)
    if cal_steps == 0:
        todo = sum(not (_run_files(out, grid, s) / "trained.json").is_file()
                   for s in runs_after_calibration(grid, out))
    main = todo * grid.train["steps"]
    if main + cal_steps == 0:
        return
    first = [s for s in specs if (s.rho, s.seed) == (specs[0].rho, specs[0].seed)]
    rate = _probe_rate(grid, data_point(grid, specs[0].rho, specs[0].seed), first)
    _log(f"ETA: {_hms(rate * (cal_steps + main))} for {cal_steps:,} calibration and "
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
              overwrite: bool = False) -> Path:
    """Run ``grid`` into ``out`` (resumable), write the table, figures and report.

    ``on_group(i)`` is called after the ``i``-th group finished (tests use it to
    interrupt a run part-way). Returns the path of the results table. With
    ``experiment.threads > 0`` torch and the BLAS libraries use that many threads.
    Before any work the device, ``out`` and its manifest are checked
    (:class:`~aensae._validation.InputError`); ``overwrite`` first removes an earlier
    run's outputs from ``out`` (see the module docstring).
    """
    import torch

    out = check_reproduce(grid, out)
    if out.is_dir():
        _check_manifest(grid, out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST_FILE, _manifest(grid))
    t_start = time.perf_counter()
    threads = grid.experiment["threads"]
    if threads > 0:
        # torch's intra-op pool, every BLAS / OpenMP pool and numba's parallel loops (the
        # exact solver): an idle OpenMP worker left by a wider team spin-waits beside the
        # training loop and takes a core from it
        import numba
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        numba_threads = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            with threadpool_limits(limits=threads):
                specs = _run_grid(grid, out, progress=progress, on_group=on_group)
        finally:
            numba.set_num_threads(numba_threads)
    else:
        specs = _run_grid(grid, out, progress=progress, on_group=on_group)
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
              on_group: Callable[[int], None] | None) -> list[RunSpec]:
    """Exact reference, calibration and every SAE run; returns the planned runs."""
    from tqdm.auto import tqdm

    from aensae.benchmarks.calibrate import calibrate

    table = out / RESULTS_FILE
    steps = grid.train["steps"]
    _log(f"aensae reproduce: config {grid.name!r} ({grid.source}) -> {out}")
    n_cal = len(grid.calibration_jobs()) * len(grid.rhos) * grid.calibrate["ladder"] \
        * grid.calibrate["rounds"]
    cal_done = all((out / "calibration" / f"rho{r:g}.json").is_file() for r in grid.rhos)
    cal_steps = 0 if cal_done else n_cal * grid.calibrate["steps"]
    _estimate(grid, out, cal_steps)
    for rho in grid.rhos:
        for seed in grid.seeds:
            _run_exact(grid, out, data_point(grid, rho, seed))
    bar = tqdm(total=max(cal_steps, 1), unit="model-step", desc="calibrate",
               disable=not progress, dynamic_ncols=True, position=0)
    if cal_steps:
        _log(f"calibration: {n_cal} short runs of {grid.calibrate['steps']} steps")
    calib = calibrate(grid, out, progress=False,
                      on_models=lambda k, s: (bar.update(k * s), bar.refresh()))
    penalties = {key: rec["penalties"] for key, rec in calib.items()}
    specs = grid.runs(penalties)
    ids = [s.run_id(grid) for s in specs]
    if len(set(ids)) != len(ids):
        raise InputError("config [[family]]: the grid expands to duplicate runs (two "
                         "families with identical "
                         "settings); make them differ")
    groups: dict[tuple[float, int], list[RunSpec]] = defaultdict(list)
    for s in specs:
        groups[(s.rho, s.seed)].append(s)
    finished = [s for s in specs if (_run_files(out, grid, s) / "metrics.json").is_file()]
    to_train = [s for s in specs if not (_run_files(out, grid, s) / "trained.json").is_file()]
    total = len(to_train) * steps
    _log(f"plan: {len(specs)} SAE runs in {len(groups)} groups; {len(finished)} finished, "
         f"{len(to_train)} to train ({total:,} model-steps)")
    bar.set_description("train")
    bar.reset(total=max(total, 1))
    for gi, ((rho, seed), members) in enumerate(groups.items()):
        pending = [s for s in members
                   if not (_run_files(out, grid, s) / "metrics.json").is_file()]
        if not pending:
            continue
        bar.set_postfix_str(f"rho={rho:g} seed={seed} ({len(pending)} models)")
        point = data_point(grid, rho, seed)
        train_now = [s for s in pending
                     if not (_run_files(out, grid, s) / "trained.json").is_file()]
        if train_now:
            _train_group(grid, out, point, train_now, progress and grid.train["progress"])
            bar.update(len(train_now) * steps)
        for s in pending:
            c = calib.get((s.family, s.variant, s.rho)) if s.calibrated else None
            _evaluate_run(grid, out, point, s, c)
        write_table(table, build_rows(grid, out, specs))
        if on_group is not None:
            on_group(gi)
    bar.close()
    shutil.rmtree(out / "groups", ignore_errors=True)
    return specs


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{(s % 3600) // 60:02d}m{s % 60:02d}s"
