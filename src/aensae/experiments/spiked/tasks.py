r"""The tasks of the spiked grid, each a function of its arguments that writes its own run
folders atomically (so any executor may run them, in any order, on any node that sees
``OUT``): the exact reference of one ``(rho, seed)``, the calibration of some
``(family, variant)`` at one rho, and one group of models (same rho, seed and family)
trained together and evaluated run by run.

A run folder ``OUT/runs/<run_id>/`` holds ``config.json`` (first), the model, then
``trained.json``, then ``metrics.json`` (last: the "finished" marker).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from aensae import __version__
from aensae._dtypes import torch_dtype
from aensae._io import atomic_write_json, read_json_record, remove_partial_files
from aensae.experiments.config import canonical_hash
from aensae.experiments.spiked.config import GridConfig, RunSpec
from aensae.experiments.spiked.data import DataPoint, data_point, train_resumable

__all__ = ["REGIME_COLUMNS", "calibrate_task", "evaluate_run", "exact_dir", "exact_task",
           "group_task", "regime_columns", "run_exact", "run_folder", "train_group"]


def exact_dir(grid: GridConfig, rho: float, seed: int) -> tuple[Path, dict[str, Any]]:
    rec = {"kind": "exact", "rho": rho, "seed": seed, "data": grid.data_record(),
           "reference": grid.reference, "eval": grid.eval}
    return Path("runs") / f"exact-rho{rho:g}-s{seed}-{canonical_hash(rec)}", rec


def run_exact(grid: GridConfig, out: Path, point: DataPoint) -> None:
    from aensae.experiments.spiked.evaluation import exact_reference_rows

    rel, rec = exact_dir(grid, point.rho, point.seed)
    folder = out / rel
    if (folder / "metrics.json").is_file():
        return
    remove_partial_files(folder)  # what a killed attempt at this reference left
    atomic_write_json(folder / "config.json", rec)
    t0 = time.perf_counter()
    rows = exact_reference_rows(grid, point)
    from aensae.experiments.spiked.theorem import theorem_rows

    rows += [{**r, "arch": r.get("arch") or r["family"]} for r in theorem_rows(grid, point)]
    atomic_write_json(folder / "metrics.json", {"config": rec, "rows": rows,
                                                "seed": point.seed,
                                                "aensae_version": __version__,
                                                "seconds": time.perf_counter() - t0})


def run_folder(out: Path, grid: GridConfig, spec: RunSpec) -> Path:
    return out / "runs" / spec.run_id(grid)


def train_group(grid: GridConfig, out: Path, point: DataPoint, specs: list[RunSpec],
                 progress: bool) -> float:
    """Train the ``specs`` of one data point together, save each model and trained.json.

    A run whose model the calibration already trained to full length (the model cache,
    :func:`~aensae.experiments.spiked.data.model_key`) is taken from there: the same
    computation, so the same model bit for bit.
    """
    import torch

    from aensae.experiments.spiked.data import cache_load, run_cache_key
    from aensae.saes import create, save

    dtype = torch_dtype(grid.experiment["dtype"])
    ids = [s.run_id(grid) for s in specs]
    for spec, rid in zip(specs, ids, strict=True):
        folder = out / "runs" / rid
        if not (folder / "config.json").is_file():
            atomic_write_json(folder / "config.json", {"run_id": rid, **spec.record(grid)})
    models, records = {}, {}
    for s, rid in zip(specs, ids, strict=True):
        key = run_cache_key(grid, s)
        hit = None if key is None else cache_load(out, key)
        if hit is None:
            models[rid] = create(s.arch, grid.data["n"], grid.d_sae, seed=s.seed, dtype=dtype,
                                 **s.hyper)
        else:
            records[rid] = hit
    seconds = 0.0
    if models:
        gdir = out / "groups" / (f"rho{point.rho:g}-s{point.seed}-"
                                 f"{canonical_hash(sorted(models))}")
        results, seconds = train_resumable(grid, models, point, grid.train["steps"], gdir,
                                           "group", progress=progress)
        for rid, model in models.items():
            res = results[rid].to_dict()
            res.update({"group_seconds": seconds, "group_models": len(models),
                        "trained_in": "grid"})
            records[rid] = (model, res)
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
    if models:  # every model saved: the group's checkpoint is no longer needed
        shutil.rmtree(gdir, ignore_errors=True)
    return seconds


def evaluate_run(grid: GridConfig, out: Path, point: DataPoint, spec: RunSpec,
                  calib: dict[str, Any] | None) -> None:
    from aensae.experiments.spiked.evaluation import evaluate_sae
    from aensae.saes import load

    folder = run_folder(out, grid, spec)
    trained = read_json_record(folder / "trained.json", ("dead", "group_seconds",
                                                         "group_models", "train_loss_last"),
                               remedy="delete that run folder to redo the run")
    model = load(folder)
    t0 = time.perf_counter()
    metrics = evaluate_sae(model, point, encoder_samples=grid.eval["encoder_samples"],
                           hoffman_samples=grid.eval["hoffman_samples"], tol=grid.eval["tol"])
    dead = trained["dead"]
    row = {"kind": "sae", "family": spec.family, "arch": spec.arch,
           "init": model.hyper["init"], "rho": spec.rho,
           "seed": spec.seed, "target_l0": spec.target_l0, "calibrated": spec.calibrated,
           "variant": spec.variant,
           # every hyperparameter the model ran with, its architecture's defaults included
           **{f"hp_{k}": v for k, v in {**model.hyper, **spec.hyper}.items()},
           "hold_steps": int(model.hold) if hasattr(model, "hold") else None,
           "dead_final": dead["final"], "dead_median_last": dead["median_last"],
           "dead_windows": dead["windows"], "dead_last": dead["last"],
           "dead_trend": dead.get("trend"), **regime_columns(dead),
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
                    # a bracket search's point (no target) is a measured penalty
                    "calibration_extrapolated": calib["extrapolated"].get(spec.target_l0,
                                                                          False),
                    "calibration_steps": calib["steps"]})
    elif spec.target_l0 is not None:
        row.update({"calibrated_param": "k_top", "calibrated_value": spec.hyper["k_top"],
                    "calibration_extrapolated": False})
    atomic_write_json(folder / "metrics.json", {
        "row": row, "config": spec.record(grid), "run_id": spec.run_id(grid),
        "seed": spec.seed, "aensae_version": __version__, "dead": dead,
        "train": trained})


#: Regime fields (:meth:`aensae.saes.adaptive_lasso.AdaptiveLassoSAE.regime`) copied into
#: the results table: at the last window (``*_final``) and, for the pinned fraction, its
#: change over the last ``dead_last`` windows (``w_max_frac_trend``).
REGIME_COLUMNS = ("alpha", "w_max_frac", "w_min_frac", "w_q05", "w_q50", "w_q95", "ema_q05",
                  "ema_q50", "ema_q95")


def regime_columns(dead: dict[str, Any]) -> dict[str, Any]:
    """The final regime of an adaptive run as flat columns (empty for other runs)."""
    reg = dead.get("regime") or []
    if not reg or "w_max_frac" not in reg[-1]:
        return {}
    last = reg[-1]
    tail = reg[-int(dead.get("last") or 1):]
    return {**{f"{k}_final": last[k] for k in REGIME_COLUMNS},
            "w_max_frac_trend": tail[-1]["w_max_frac"] - tail[0]["w_max_frac"],
            "pinned": bool(last["w_max_frac"] > 0.5)}


def exact_task(grid: GridConfig, out: Path, rho: float, seed: int) -> str:
    """Exact reference rows of one ``(rho, seed)``."""
    run_exact(grid, out, data_point(grid, rho, seed))
    return "exact"


def calibrate_task(grid: GridConfig, out: Path, rho: float,
                    only: list[tuple[str, str]]) -> str:
    """Calibration of the ``(family, variant)`` in ``only`` at ``rho`` (written to
    ``out/calibration``)."""
    from aensae.experiments.spiked.calibrate import calibrate_rho

    calibrate_rho(grid, out, rho, only=only)
    return "calibration"


def group_task(grid: GridConfig, out: Path, pending: list[RunSpec],
                calib: dict[str, dict[str, Any] | None], progress: bool) -> str:
    """Train the not-yet-trained ``pending`` runs of one group together; evaluate all."""
    for s in pending:  # this task owns these folders now; a killed attempt may have left
        remove_partial_files(run_folder(out, grid, s))  # temporary files in them
    point = data_point(grid, pending[0].rho, pending[0].seed)
    train_now = [s for s in pending
                 if not (run_folder(out, grid, s) / "trained.json").is_file()]
    if train_now:
        train_group(grid, out, point, train_now, progress)
    for s in pending:
        evaluate_run(grid, out, point, s, calib[s.run_id(grid)])
    return "group"
