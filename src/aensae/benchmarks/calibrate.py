r"""Matched-sparsity calibration: the penalty that gives each target L0, per family and rho.

The l1 (or JumpReLU L0) coefficient that yields a given L0 differs several-fold between
rho = 0 and rho = 0.9, so fixed penalty grids compare unlike with unlike. For every
calibrated family variant and every rho, a short pass (``calibrate.steps`` steps, the
first seed's data) trains a ladder of ``calibrate.ladder`` penalties log-spaced over the
family's ``calibrate_range``, all together on one stream, and measures each model's L0 on
the held-out set. With the points ``(log p_j, log L0_j)`` sorted by ``p`` and made
non-increasing in L0 (running minimum; L0 floored at ``1e-3`` for models that went
silent), the penalty for a target ``L0*`` is read off by linear interpolation of
``log p`` against ``log L0``; outside the measured L0 range the end segment's slope is
extended (clamped to ``[range_low / 10, range_high * 10]``) and the penalty is flagged
``extrapolated``. With ``calibrate.rounds > 1`` the chosen penalties are trained in a
further pass and added to the points before reading off again.

Calibration uses a short pass: L0 drifts with run length, so every run records both the
target and the L0 it reached, and the figures plot the reached L0.

Results are written per rho to ``calibration/rho<R>.json`` (atomically) and reused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from aensae._io import atomic_write_json
from aensae.benchmarks._data import data_point, train_models
from aensae.benchmarks.grid import GridConfig, canonical_hash

__all__ = ["calibrate", "penalty_for_target"]

_L0_FLOOR = 1e-3


def penalty_for_target(
    penalties: np.ndarray, l0s: np.ndarray, target: float, bounds: tuple[float, float]
) -> tuple[float, bool]:
    r"""Penalty whose L0 is ``target`` by log-log interpolation (see the module docstring).

    Returns
    -------
    (penalty, extrapolated)
    """
    order = np.argsort(penalties)
    lp = np.log(np.asarray(penalties, dtype=float)[order])
    ll = np.log(np.maximum(np.minimum.accumulate(np.asarray(l0s, dtype=float)[order]),
                           _L0_FLOOR))
    t = math.log(target)
    lo_b, hi_b = math.log(bounds[0] / 10.0), math.log(bounds[1] * 10.0)
    # ll is non-increasing along lp; np.interp needs increasing x: reverse
    x, y = ll[::-1], lp[::-1]
    x, keep = np.unique(x, return_index=True)
    y = y[keep]
    if x.size == 1:
        return float(math.exp(np.clip(y[0], lo_b, hi_b))), True
    if x[0] <= t <= x[-1]:
        return float(math.exp(np.interp(t, x, y))), False
    i, j = (0, 1) if t < x[0] else (-2, -1)
    slope = (y[j] - y[i]) / (x[j] - x[i])
    val = y[i] + slope * (t - x[i])
    return float(math.exp(np.clip(val, lo_b, hi_b))), True


def _ladder(lo: float, hi: float, n: int) -> list[float]:
    return [float(v) for v in np.geomspace(lo, hi, n)]


def _measure(grid: GridConfig, jobs: list[tuple[str, str, str, dict[str, Any]]],
             point: Any, progress: bool) -> list[float]:
    """Train (name, arch, param, hyper) models together; held-out L0 of each."""
    import torch

    from aensae import metrics
    from aensae.saes import create

    dtype = {"float32": torch.float32, "float64": torch.float64}[grid.experiment["dtype"]]
    models = {f"c{i}": create(arch, grid.data["n"], grid.d_sae, seed=point.seed, dtype=dtype,
                              **hyper)
              for i, (_, arch, _, hyper) in enumerate(jobs)}
    train_models(grid, models, point, grid.calibrate["steps"], None, progress=progress)
    out = []
    X = torch.as_tensor(point.X_eval)
    for model in models.values():
        model.eval()
        with torch.no_grad():
            p = model.W_dec
            h = model.encode(X.to(p.device, p.dtype))
        out.append(metrics.l0(h.to("cpu", torch.float64).numpy()))
    return out


def calibrate(grid: GridConfig, out_dir: Path, *, progress: bool = False,
              on_models: Any = None) -> dict[tuple[str, str, float], dict[str, Any]]:
    """Calibrate every ``(family, variant, rho)``; reuse ``out_dir/calibration`` files.

    ``on_models(n_models, steps)`` is called after each training pass (progress/ETA).

    Returns
    -------
    dict ``(family, variant, rho) -> record`` with ``param``, ``ladder`` (penalties and
    L0s), ``targets``, ``penalties`` (target -> penalty) and ``extrapolated``.
    """
    jobs = grid.calibration_jobs()
    result: dict[tuple[str, str, float], dict[str, Any]] = {}
    if not jobs:
        return result
    seed = grid.seeds[0]
    ident = {"data": grid.data_record(), "train": grid.train_record(),
             "calibrate": grid.calibrate, "eval_samples": grid.eval["samples"],
             "jobs": [[f.name, f.arch, h, list(f.target_l0), list(f.calibrate_range or ())]
                      for f, h, _ in jobs], "seed": seed, "d_sae": grid.d_sae}
    for rho in grid.rhos:
        path = out_dir / "calibration" / f"rho{rho:g}.json"
        key_hash = canonical_hash({**ident, "rho": rho})
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("hash") == key_hash:
                for rec in saved["records"]:
                    result[(rec["family"], rec["variant"], rho)] = _restore(rec)
                continue
        point = data_point(grid, rho, seed)
        recs = {}
        for fam, hyper, variant in jobs:
            lo, hi = fam.calibrate_range  # type: ignore[misc]
            recs[(fam.name, variant)] = {
                "family": fam.name, "arch": fam.arch, "variant": variant, "rho": rho,
                "param": fam.sparsity_param, "hyper": hyper, "seed": seed,
                "steps": grid.calibrate["steps"], "points": [],
                "targets": list(fam.target_l0), "bounds": [lo, hi]}
        ladders = {k: _ladder(*r["bounds"], grid.calibrate["ladder"]) for k, r in recs.items()}
        for _ in range(grid.calibrate["rounds"]):
            todo = [(k, r["arch"], r["param"], {**r["hyper"], r["param"]: p})
                    for k, r in recs.items() for p in ladders[k]]
            l0s = _measure(grid, todo, point, progress)
            if on_models is not None:
                on_models(len(todo), grid.calibrate["steps"])
            for (k, _, param, hyper), l0 in zip(todo, l0s, strict=True):
                recs[k]["points"].append([hyper[param], l0])
            for k, r in recs.items():
                _choose(r)
                ladders[k] = sorted(set(r["penalties"].values()))
        records = list(recs.values())
        atomic_write_json(path, {"hash": key_hash, "rho": rho, "records": records})
        for rec in records:
            result[(rec["family"], rec["variant"], rho)] = _restore(rec)
    return result


def _choose(rec: dict[str, Any]) -> None:
    pts = np.asarray(rec["points"], dtype=float)
    rec["penalties"], rec["extrapolated"] = {}, {}
    for t in rec["targets"]:
        p, ex = penalty_for_target(pts[:, 0], pts[:, 1], t, tuple(rec["bounds"]))
        rec["penalties"][repr(float(t))] = p
        rec["extrapolated"][repr(float(t))] = ex


def _restore(rec: dict[str, Any]) -> dict[str, Any]:
    """JSON record -> in-memory record with float target keys."""
    out = dict(rec)
    out["penalties"] = {float(k): v for k, v in rec["penalties"].items()}
    out["extrapolated"] = {float(k): v for k, v in rec["extrapolated"].items()}
    return out
