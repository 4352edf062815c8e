r"""Matched-sparsity calibration: the penalty that gives each target L0, per family and rho.

The l1 (or JumpReLU L0) coefficient that yields a given L0 differs by orders of magnitude
between architectures, inits and rho, so fixed penalty grids compare unlike with unlike.
For every calibrated family variant and every rho, passes of ``calibrate.steps`` steps
(the first seed's data) train penalties together on one stream and measure each
model's L0 on the held-out set. The search, per variant:

1. **ladder**: ``calibrate.ladder`` penalties log-spaced over ``calibrate_range``;
2. **bracket**: while some target is not bracketed (no measured penalty with L0 >= the
   target beside one with L0 <= it), widen geometrically in the direction it lies --
   each round adds one penalty ``WIDEN`` times beyond the current end -- until the
   penalty reaches :data:`SPAN` = ``(1e-6, 1e3)`` times the range's
   ends; a target still outside the L0 range seen is **unreachable**: recorded with that
   range, never trained, never drawn as a matched point;
3. **refine**: ``calibrate.rounds`` passes train, for each bracketed target, the penalty
   read off inside its bracket -- log-log interpolation between the two bracketing
   points in the first pass, the geometric midpoint of the bracket in later ones (L0 can
   fall off a cliff, where interpolation keeps landing on one side) -- and add the
   result to the points.

The penalty for a target is then read off the points by :func:`penalty_for_target`:
with ``(log p_j, log L0_j)`` sorted by ``p`` and made non-increasing in L0 (running
minimum; L0 floored at ``1e-3`` for models that went silent), linear interpolation of
``log p`` against ``log L0``. Inside the bracket this never extrapolates.

L0 drifts with run length (a pass shorter than the runs misses it), so every run records
its target, the L0 it reached and their ratio, and comparisons at matched L0 use only
runs within ``calibrate.tolerance`` (a ratio) of their target.

If every target of a family at some rho is unreachable, the config cannot be run as
written: :func:`calibrate` raises :class:`~aensae._validation.InputError` naming the
family and rho (after writing what it measured). Results are written per rho and
variant to ``calibration/rho<R>-<family>-<variant>.json`` (atomically) and reused; each
is an independent task of the runner.

When a pass is as long as the main runs (``calibrate.steps == train.steps``), its models
are main runs of the first seed: they are kept in the model cache and the grid takes
them from there, a measured penalty within the tolerance is preferred to an
interpolated one, and only targets not yet reached within the tolerance are refined.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aensae._io import atomic_write_json, remove_partial_files
from aensae._validation import InputError
from aensae.benchmarks._data import cache_save, data_point, model_key, train_models
from aensae.benchmarks.grid import GridConfig, canonical_hash

__all__ = ["SPAN", "WIDEN", "bracket_search", "calibrate", "calibrate_rho", "load_rho",
           "missing_units", "penalty_for_target"]

_L0_FLOOR = 1e-3
#: Widest search, as factors of ``calibrate_range``'s low and high ends.
SPAN = (1e-6, 1e3)
#: Geometric widening step (each widening round adds one penalty ``WIDEN`` times beyond).
WIDEN = 10.0


def penalty_for_target(
    penalties: np.ndarray, l0s: np.ndarray, target: float, bounds: tuple[float, float]
) -> tuple[float, bool]:
    r"""Penalty whose L0 is ``target`` by log-log interpolation (see the module docstring).

    Outside the measured L0 range the end segment's slope is extended (clamped to
    ``[bounds[0] / 10, bounds[1] * 10]``) and the result is flagged extrapolated; the
    bracketing search (:func:`bracket_search`) only asks for bracketed targets.

    Returns
    -------
    (penalty, extrapolated)
    """
    lp, ll = _envelope(penalties, l0s)
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


def _envelope(penalties: Any, l0s: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(log p, log L0)`` sorted by ``p``, L0 made non-increasing and floored."""
    order = np.argsort(np.asarray(penalties, dtype=float), kind="stable")
    lp = np.log(np.asarray(penalties, dtype=float)[order])
    ll = np.log(np.maximum(np.minimum.accumulate(np.asarray(l0s, dtype=float)[order]),
                           _L0_FLOOR))
    return lp, ll


def _bracketed(points: list[list[float]], target: float) -> bool:
    """Whether the monotone envelope of ``points`` has L0 on both sides of ``target``."""
    _, ll = _envelope([p for p, _ in points], [v for _, v in points])
    t = math.log(target)
    return bool(ll.max() >= t >= ll.min())


def bracket_search(
    measure: Callable[[list[float]], list[float]], bounds: tuple[float, float],
    targets: list[float], ladder: int, rounds: int,
) -> dict[str, Any]:
    """The search of the module docstring for one variant, on a map ``measure``.

    ``measure(penalties) -> L0s`` trains (or evaluates) one model per penalty. Returns
    ``{"points": [[p, L0], ...], "penalties": {t: p}, "extrapolated": {t: False},
    "unreachable": {t: [L0 min, L0 max]}}`` (unreachable targets have no penalty).
    :func:`calibrate` runs the same steps for all variants of a rho at once.
    """
    state = new_state(bounds, targets)
    todo = initial_ladder(bounds, ladder)
    while todo:
        add_points(state, measure(todo), todo)
        todo = next_penalties(state, rounds)
    return finish(state)


def new_state(bounds: tuple[float, float], targets: list[float]) -> dict[str, Any]:
    """Search state of one variant: its points, range limits and refinement count."""
    lo, hi = bounds
    return {"bounds": [lo, hi], "limits": [lo * SPAN[0], hi * SPAN[1]],
            "targets": [float(t) for t in targets], "points": [], "refined": 0}


def initial_ladder(bounds: tuple[float, float], n: int) -> list[float]:
    """``n`` penalties log-spaced over ``bounds``."""
    return [float(v) for v in np.geomspace(bounds[0], bounds[1], n)]


def add_points(state: dict[str, Any], l0s: list[float], penalties: list[float]) -> None:
    for p, v in zip(penalties, l0s, strict=True):
        state["points"].append([float(p), float(v)])


def _closest(points: list[list[float]], target: float, tol: float | None
             ) -> float | None:
    """The measured penalty whose L0 is nearest ``target`` in ratio, if within ``tol``."""
    if tol is None:
        return None
    best = None
    for p, v in points:
        if v > 0 and 1.0 / tol <= v / target <= tol:
            err = abs(math.log(v / target))
            if best is None or err < best[0]:
                best = (err, p)
    return None if best is None else best[1]


def next_penalties(state: dict[str, Any], rounds: int, tol: float | None = None
                   ) -> list[float]:
    """Penalties to measure next: widening while a reachable target is unbracketed, then
    up to ``rounds`` refinement passes; empty when the search is over. With ``tol``
    (passes as long as the main runs) a target that a measured penalty already reaches
    within the factor ``tol`` is neither widened for nor refined further."""
    pts = state["points"]
    ps = [p for p, _ in pts]
    lo_lim, hi_lim = state["limits"]
    _, ll = _envelope(ps, [v for _, v in pts])
    l0_max, l0_min = math.exp(ll.max()), math.exp(ll.min())
    out: set[float] = set()
    for t in state["targets"]:
        if _bracketed(pts, t) or _closest(pts, t, tol) is not None:
            continue
        if t < l0_min and max(ps) < hi_lim:  # more penalty, lower L0
            out.add(min(max(ps) * WIDEN, hi_lim))
        elif t > l0_max and min(ps) > lo_lim:
            out.add(max(min(ps) / WIDEN, lo_lim))
    if out:
        return sorted(out)
    if state["refined"] >= rounds:
        return []
    state["refined"] += 1
    refine: set[float] = set()
    for t in state["targets"]:
        if _bracketed(pts, t) and _closest(pts, t, tol) is None:
            if state["refined"] == 1:  # log-log interpolation first
                refine.add(penalty_for_target(np.array(ps), np.array([v for _, v in pts]),
                                              t, (lo_lim, hi_lim))[0])
            else:  # then bisection in log p: L0(p) can fall off a cliff
                refine.add(_bisect(pts, t))
    return sorted(refine - set(ps))


def _bisect(points: list[list[float]], target: float) -> float:
    """Geometric midpoint of the tightest bracket of ``target`` on the monotone envelope."""
    lp, ll = _envelope([p for p, _ in points], [v for _, v in points])
    t = math.log(target)
    above = [x for x, y in zip(lp, ll, strict=True) if y >= t]  # smaller penalties
    below = [x for x, y in zip(lp, ll, strict=True) if y <= t]
    return float(math.exp(0.5 * (max(above) + min(x for x in below if x >= max(above)))))


def finish(state: dict[str, Any], tol: float | None = None) -> dict[str, Any]:
    """Penalties of the bracketed targets; L0 range of the unreachable ones.

    With ``tol`` the measured penalty nearest the target (within the factor ``tol``) is
    chosen over the interpolated one: its L0 at the main length is already known (such a
    target counts as reached even where the points do not bracket it, e.g. an L0 floor
    of 2.01 for a target of 2).
    """
    pts = np.asarray(state["points"], dtype=float)
    _, ll = _envelope(pts[:, 0], pts[:, 1])
    seen = [float(math.exp(ll.min())), float(math.exp(ll.max()))]
    out: dict[str, Any] = {"points": state["points"], "penalties": {}, "extrapolated": {},
                           "unreachable": {}}
    for t in state["targets"]:
        near = _closest(state["points"], t, tol)
        if near is not None:  # a measured full-length run within the tolerance
            out["penalties"][t] = near
            out["extrapolated"][t] = False
        elif _bracketed(state["points"], t):
            p, ex = penalty_for_target(pts[:, 0], pts[:, 1], t, tuple(state["limits"]))
            out["penalties"][t] = p
            out["extrapolated"][t] = ex
        else:
            out["unreachable"][t] = seen
    return out


def _measure(grid: GridConfig, jobs: list[tuple[str, dict[str, Any]]], point: Any,
             progress: bool, out_dir: Path | None = None) -> list[float]:
    """Train ``(arch, hyper)`` models together; the held-out L0 of each.

    When the pass is as long as the main runs (``calibrate.steps == train.steps``, no
    stacking) and ``out_dir`` is given, each model is kept in the model cache
    (:func:`~aensae.benchmarks._data.cache_save`): a run of the grid with the same
    penalty and seed is that model and is not trained again.
    """
    import time

    import torch

    from aensae import metrics
    from aensae.saes import create

    dtype = {"float32": torch.float32, "float64": torch.float64}[grid.experiment["dtype"]]
    models = {f"c{i}": create(arch, grid.data["n"], grid.d_sae, seed=point.seed, dtype=dtype,
                              **hyper)
              for i, (arch, hyper) in enumerate(jobs)}
    t0 = time.perf_counter()
    results = train_models(grid, models, point, grid.calibrate["steps"], None,
                           progress=progress)
    seconds = time.perf_counter() - t0
    keep = out_dir is not None and full_length(grid)
    out = []
    X = torch.as_tensor(point.X_eval)
    for (name, model), (arch, hyper) in zip(models.items(), jobs, strict=True):
        if keep:
            res = results[name].to_dict()
            res.update({"group_seconds": seconds, "group_models": len(models),
                        "trained_in": "calibration"})
            cache_save(out_dir, model_key(grid, arch, hyper, point.rho, point.seed), model,
                       res)
        model.eval()
        with torch.no_grad():
            p = model.W_dec
            h = model.encode(X.to(p.device, p.dtype))
        out.append(metrics.l0(h.to("cpu", torch.float64).numpy()))
    return out


def full_length(grid: GridConfig) -> bool:
    """Whether calibration passes are main runs (same length, no stacking)."""
    return grid.calibrate["steps"] == grid.train["steps"] and not grid.train["stack"]


def _identity(grid: GridConfig, rho: float, fam: Any, hyper: dict[str, Any]) -> str:
    """Hash of everything one variant's calibration at ``rho`` depends on."""
    return canonical_hash({
        "data": grid.data_record(), "train": grid.train_record(),
        "calibrate": grid.calibrate, "eval_samples": grid.eval["samples"],
        "span": list(SPAN), "widen": WIDEN, "search": 4, "seed": grid.seeds[0],
        "d_sae": grid.d_sae,
        "dtype": grid.experiment["dtype"], "rho": rho,
        "job": [fam.name, fam.arch, hyper, list(fam.target_l0),
                list(fam.calibrate_range or ())]})


def calibration_path(out_dir: Path, rho: float, family: str, variant: str) -> Path:
    """``out_dir/calibration/rho<R>-<family>-<variant>.json``."""
    return Path(out_dir) / "calibration" / f"rho{rho:g}-{family}-{variant}.json"


def _load_unit(grid: GridConfig, out_dir: Path, rho: float, fam: Any, hyper: dict[str, Any],
               variant: str) -> dict[str, Any] | None:
    path = calibration_path(out_dir, rho, fam.name, variant)
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("hash") != _identity(grid, rho, fam, hyper):
        return None
    return _restore(saved["record"])


def load_rho(grid: GridConfig, out_dir: Path, rho: float) -> list[dict[str, Any]] | None:
    """The saved records of every variant at ``rho`` (``None`` if any is missing)."""
    out = []
    for fam, hyper, variant in grid.calibration_jobs():
        rec = _load_unit(grid, out_dir, rho, fam, hyper, variant)
        if rec is None:
            return None
        out.append(rec)
    return out


def missing_units(grid: GridConfig, out_dir: Path) -> list[tuple[float, str, str]]:
    """``(rho, family, variant)`` whose calibration is not on disk yet."""
    return [(rho, fam.name, variant) for rho in grid.rhos
            for fam, hyper, variant in grid.calibration_jobs()
            if _load_unit(grid, out_dir, rho, fam, hyper, variant) is None]


def calibrate_rho(grid: GridConfig, out_dir: Path, rho: float, *, progress: bool = False,
                  on_models: Callable[[int, int], None] | None = None,
                  only: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Calibrate the variants at ``rho`` (all, or the ``(family, variant)`` in ``only``),
    reusing saved files; return their records.

    The penalties of a round of all these variants are trained together on one stream.
    ``on_models(n_models, steps)`` is called after each training pass.
    """
    jobs = [j for j in grid.calibration_jobs() if only is None or (j[0].name, j[2]) in only]
    done = {(j[0].name, j[2]): _load_unit(grid, out_dir, rho, *j) for j in jobs}
    jobs = [j for j in jobs if done[(j[0].name, j[2])] is None]
    if jobs:  # units to (re)do: what a killed attempt at them left (not other units')
        remove_partial_files(Path(out_dir) / "calibration",
                             [calibration_path(out_dir, rho, f.name, v).name
                              for f, _, v in jobs])
    seed = grid.seeds[0]
    c = grid.calibrate
    states, todo = {}, {}
    tol = c["tolerance"] if full_length(grid) else None
    for fam, hyper, variant in jobs:
        bounds = tuple(fam.calibrate_range)  # type: ignore[arg-type]
        states[(fam.name, variant)] = (fam, hyper, new_state(bounds, list(fam.target_l0)))
        todo[(fam.name, variant)] = initial_ladder(bounds, c["ladder"])
    point = data_point(grid, rho, seed) if todo else None
    while todo:
        batch = [(key, p) for key, ps in todo.items() for p in ps]
        jobs_now = [(states[key][0].arch, {**states[key][1],
                                           states[key][0].sparsity_param: p})
                    for key, p in batch]
        l0s = _measure(grid, jobs_now, point, progress, out_dir)
        if on_models is not None:
            on_models(len(batch), c["steps"])
        for key in todo:
            got = [(p, v) for (k, p), v in zip(batch, l0s, strict=True) if k == key]
            add_points(states[key][2], [v for _, v in got], [p for p, _ in got])
        todo = {}
        for key, (_, _, st) in states.items():
            nxt = next_penalties(st, c["rounds"], tol)
            if nxt:
                todo[key] = nxt
    for (name, variant), (fam, hyper, st) in states.items():
        res = finish(st, tol)
        rec = {
            "family": name, "arch": fam.arch, "variant": variant, "rho": rho,
            "param": fam.sparsity_param, "hyper": hyper, "seed": seed, "steps": c["steps"],
            "bounds": st["bounds"], "limits": st["limits"], "targets": st["targets"],
            "points": res["points"],
            "penalties": {repr(t): v for t, v in res["penalties"].items()},
            "extrapolated": {repr(t): v for t, v in res["extrapolated"].items()},
            "unreachable": {repr(t): v for t, v in res["unreachable"].items()}}
        atomic_write_json(calibration_path(out_dir, rho, name, variant),
                          {"hash": _identity(grid, rho, fam, hyper), "record": rec})
        done[(name, variant)] = _restore(rec)
    return [done[k] for k in done]


def check_reachable(records: list[dict[str, Any]]) -> None:
    """Raise :class:`InputError` for a family variant none of whose targets is reachable."""
    for rec in records:
        if not rec["penalties"]:
            lo, hi = next(iter(rec["unreachable"].values()))
            init = rec["hyper"].get("init", "tied")
            raise InputError(
                f"config family {rec['family']!r} (init {init}) at rho={rec['rho']:g}: no "
                f"target_l0 in {sorted(rec['targets'])} is reachable; L0 seen {lo:.3g} to "
                f"{hi:.3g} over {rec['param']} in [{rec['limits'][0]:.3g}, "
                f"{rec['limits'][1]:.3g}]; choose targets inside that range")


def calibrate(grid: GridConfig, out_dir: Path, *, progress: bool = False,
              on_models: Any = None) -> dict[tuple[str, str, float], dict[str, Any]]:
    """Calibrate every ``(family, variant, rho)`` in turn (see :func:`calibrate_rho`).

    Returns
    -------
    dict ``(family, variant, rho) -> record`` with ``param``, ``points`` (penalties and
    L0s), ``targets``, ``penalties`` (reachable target -> penalty), ``extrapolated``
    and ``unreachable`` (target -> [L0 min, L0 max] seen).

    Raises
    ------
    InputError
        When every target of a family variant at some rho is unreachable.
    """
    result: dict[tuple[str, str, float], dict[str, Any]] = {}
    if not grid.calibration_jobs():
        return result
    for rho in grid.rhos:
        records = calibrate_rho(grid, out_dir, rho, progress=progress, on_models=on_models)
        check_reachable(records)
        for rec in records:
            result[(rec["family"], rec["variant"], rho)] = rec
    return result


def _restore(rec: dict[str, Any]) -> dict[str, Any]:
    """JSON record -> in-memory record with float target keys."""
    out = dict(rec)
    for key in ("penalties", "extrapolated", "unreachable"):
        out[key] = {float(k): v for k, v in rec.get(key, {}).items()}
    return out
