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

The search itself (the same for the LLM grid) is :mod:`aensae.experiments.calibration`;
the penalty for a target is read off the points by its ``penalty_for_target``:
with ``(log p_j, log L0_j)`` sorted by ``p`` and made non-increasing in L0 (running
minimum; L0 floored at ``1e-3`` for models that went silent), linear interpolation of
``log p`` against ``log L0``. Inside the bracket this never extrapolates.

L0 drifts with run length (a pass shorter than the runs misses it), so every run records
its target, the L0 it reached and their ratio, and comparisons at matched L0 use only
runs within ``calibrate.tolerance`` (a ratio) of their target.

**Bracket search** (``calibrate.bracket``, full-length passes only): the search brackets
each verdict target ``t`` within the ratio ``bracket`` (two measured points with
``L0_lo <= t <= L0_hi <= bracket * L0_lo``), aiming its refinements at the run targets,
and every model it trains is a run of the calibration seed (``GridConfig.runs`` with the
measured penalties: target L0 none, the model taken from the cache). The verdicts
interpolate each seed to ``t`` along its runs, so landing a run target buys nothing for
that seed; the record gives each target's ``brackets`` ratio, and the run targets'
penalties, read off the points, serve the other seeds.

If every target of a family at some rho is unreachable, the config cannot be run as
written: :func:`calibrate` raises :class:`~aensae._validation.InputError` naming the
family and rho (after writing what it measured). Results are written per rho and
variant to ``calibration/rho<R>-<family>-<variant>.json`` (atomically) and reused; each
is an independent task of the grid (:mod:`aensae.experiments.spiked.tasks`).

When a pass is as long as the main runs (``calibrate.steps == train.steps``), its models
are main runs of the first seed: they are kept in the model cache and the grid takes
them from there, a measured penalty within the tolerance is preferred to an
interpolated one, and only targets not yet reached within the tolerance are refined.
Such points are also reused across run targets: a chosen variant's calibration over every
target starts from the points its selection calibration measured around the primary
target (:attr:`GridConfig.scope`) instead of a new ladder (``seeded_from`` in its record
names the file), so only the targets they do not reach cost new runs. Nothing else is
reused across calibrations: a resumed run gives what a fresh one gives.

A killed unit loses at most part of one pass: its search is deterministic, so a new
attempt asks for the same penalties, and the passes it finished are read back from the
model cache; the pass in flight resumes from its last checkpoint (:func:`_measure`).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aensae._dtypes import torch_dtype
from aensae._io import atomic_write_json, read_json_record, remove_partial_files
from aensae._validation import InputError
from aensae.experiments.calibration import (
    SPAN,
    WIDEN,
    add_points,
    finish,
    initial_ladder,
    new_state,
    next_penalties,
)
from aensae.experiments.config import canonical_hash
from aensae.experiments.spiked.config import GridConfig
from aensae.experiments.spiked.data import (
    cache_load,
    cache_save,
    data_point,
    model_key,
    train_resumable,
)

__all__ = ["calibrate", "calibrate_rho", "check_reachable", "load_rho", "missing_units"]

def _measure(grid: GridConfig, jobs: list[tuple[str, dict[str, Any]]], point: Any,
             progress: bool, out_dir: Path | None = None,
             passes: list[Path] | None = None) -> list[float]:
    """Train ``(arch, hyper)`` models together; the held-out L0 of each.

    When the pass is as long as the main runs (``calibrate.steps == train.steps``, no
    stacking) and ``out_dir`` is given, each model is kept in the model cache
    (:func:`~aensae.experiments.spiked.data.cache_save`): a run of the grid with the same
    penalty and seed is that model and is not trained again, and a pass that a killed
    unit already finished is read back from there instead of trained (models trained
    together equal models trained apart, so the L0s are the same). With ``out_dir`` the
    pass also checkpoints every ``train.checkpoint_every`` steps into
    ``OUT/groups/cal-...`` (keyed by its models and length) and resumes from there. The
    folder goes once the models are in the cache; a shorter pass keeps its final
    checkpoint (a killed unit resumes the pass there, at no cost) and appends the folder
    to ``passes``, for the caller to remove once its records are written.
    """
    import torch

    from aensae import metrics
    from aensae.saes import create

    dtype = torch_dtype(grid.experiment["dtype"])
    keep = out_dir is not None and full_length(grid)
    # every job's model under its cache key: read back from the cache, or trained here
    keys = [model_key(grid, arch, hyper, point.rho, point.seed) for arch, hyper in jobs]
    found = {key: hit[0] for key in keys
             if keep and (hit := cache_load(out_dir, key)) is not None}
    models = {key: create(arch, grid.data["n"], grid.d_sae, seed=point.seed, dtype=dtype,
                          **hyper)
              for (arch, hyper), key in zip(jobs, keys, strict=True) if key not in found}
    if models:
        gdir = None
        if out_dir is not None:
            gdir = Path(out_dir) / "groups" / (
                f"cal-rho{point.rho:g}-s{point.seed}-"
                f"{canonical_hash({'models': sorted(models), 'steps': grid.calibrate['steps']})}")
        results, seconds = train_resumable(grid, models, point, grid.calibrate["steps"],
                                           gdir, "calibration pass", progress=progress)
        if keep:
            for key, model in models.items():
                res = results[key].to_dict()
                res.update({"group_seconds": seconds, "group_models": len(models),
                            "trained_in": "calibration"})
                cache_save(out_dir, key, model, res)
        if gdir is not None and keep:  # the models are in the cache
            shutil.rmtree(gdir, ignore_errors=True)
        elif gdir is not None and passes is not None:
            passes.append(gdir)
    out = []
    X = torch.as_tensor(point.X_eval)
    for key in keys:
        model = models.get(key, found.get(key))
        model.eval()
        with torch.no_grad():
            p = model.W_dec
            h = model.encode(X.to(p.device, p.dtype))
        out.append(metrics.l0(h.to("cpu", torch.float64).numpy()))
    return out


def full_length(grid: GridConfig) -> bool:
    """Whether calibration passes are main runs (same length, no stacking)."""
    return grid.calibrate["steps"] == grid.train["steps"] and not grid.train["stack"]


def _seed_scope(grid: GridConfig, fam: Any, hyper: dict[str, Any]) -> float | None:
    """The selection's primary target, whose scoped unit seeds the calibration of
    ``fam``'s variant ``hyper`` over every target (full-length passes, a variant the
    selection ran, :meth:`GridConfig.primary_init`, an unscoped grid); else None."""
    sel = grid.selection
    if (sel is None or grid.scope is not None or not full_length(grid)
            or not grid.primary_init(fam, hyper)):
        return None
    return float(sel["target_l0"])


def _identity(grid: GridConfig, rho: float, fam: Any, hyper: dict[str, Any]) -> str:
    """Hash of everything one variant's calibration at ``rho`` depends on (with
    ``seeded_from_scope`` when it starts from the selection's points, so that a unit
    computed without them is not taken for one)."""
    job = {
        "data": grid.data_record(), "train": grid.train_record(),
        "calibrate": grid.calibrate, "eval_samples": grid.eval["samples"],
        "span": list(SPAN), "widen": WIDEN, "search": 4, "seed": grid.calibration_seed,
        "d_sae": grid.d_sae,
        "dtype": grid.experiment["dtype"], "rho": rho,
        "job": [fam.name, fam.arch, hyper, list(grid.run_targets(fam, hyper)),
                list(fam.calibrate_range or ())]}
    scope = _seed_scope(grid, fam, hyper)
    if scope is not None:
        job["seeded_from_scope"] = scope
    return canonical_hash(job)


def calibration_path(out_dir: Path, rho: float, family: str, variant: str,
                     scope: float | None = None) -> Path:
    """``out_dir/calibration/rho<R>-<family>-<variant>.json`` (``...-t<scope>.json`` for a
    calibration scoped to the runs around one target, :attr:`GridConfig.scope`)."""
    tail = "" if scope is None else f"-t{scope:g}"
    return Path(out_dir) / "calibration" / f"rho{rho:g}-{family}-{variant}{tail}.json"


def _load_unit(grid: GridConfig, out_dir: Path, rho: float, fam: Any, hyper: dict[str, Any],
               variant: str) -> dict[str, Any] | None:
    path = calibration_path(out_dir, rho, fam.name, variant, grid.scope)
    if not path.is_file():
        return None
    saved = read_json_record(path, ("hash", "record"),
                             remedy="delete it to calibrate that family again")
    if saved.get("hash") != _identity(grid, rho, fam, hyper):
        return None
    return _restore(saved["record"])


def load_rho(grid: GridConfig, out_dir: Path, rho: float) -> list[dict[str, Any]]:
    """The saved records of the variants at ``rho`` that have one (under a selection,
    the variants not chosen for some init are never calibrated)."""
    out = []
    for fam, hyper, variant in grid.calibration_jobs():
        rec = _load_unit(grid, out_dir, rho, fam, hyper, variant)
        if rec is not None:
            out.append(rec)
    return out


def missing_units(grid: GridConfig, out_dir: Path, keep: Any = None
                  ) -> list[tuple[float, str, str]]:
    """``(rho, family, variant)`` whose calibration is not on disk yet (those for which
    ``keep(family, hyper, rho)`` holds, when given)."""
    return [(rho, fam.name, variant) for rho in grid.rhos
            for fam, hyper, variant in grid.calibration_jobs()
            if (keep is None or keep(fam, hyper, rho))
            and _load_unit(grid, out_dir, rho, fam, hyper, variant) is None]


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
                             [calibration_path(out_dir, rho, f.name, v, grid.scope).name
                              for f, _, v in jobs])
    seed = grid.calibration_seed
    c = grid.calibrate
    states, todo = {}, {}
    tol = c["tolerance"] if full_length(grid) else None
    seeded: dict[tuple[str, str], list[str]] = {}
    for fam, hyper, variant in jobs:
        bounds = tuple(fam.calibrate_range)  # type: ignore[arg-type]
        if "bracket" in c:  # bracket the verdict targets, aiming at the run targets
            st = new_state(bounds, list(grid.targets(fam, hyper)), bracket=c["bracket"],
                           aims=list(grid.run_targets(fam, hyper)))
        else:
            st = new_state(bounds, list(grid.run_targets(fam, hyper)))
        key = (fam.name, variant)
        states[key] = (fam, hyper, st)
        seeded[key] = _seed_points(grid, out_dir, rho, fam, hyper, variant, st)
        todo[key] = (next_penalties(st, c["rounds"], tol) if st["points"]
                     else initial_ladder(bounds, c["ladder"]))
    todo = {k: v for k, v in todo.items() if v}
    point = data_point(grid, rho, seed) if todo else None
    passes: list[Path] = []  # the checkpoint folders of short passes, removed at the end
    while todo:
        batch = [(key, p) for key, ps in todo.items() for p in ps]
        jobs_now = [(states[key][0].arch, {**states[key][1],
                                           states[key][0].sparsity_param: p})
                    for key, p in batch]
        l0s = _measure(grid, jobs_now, point, progress, out_dir, passes)
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
            "unreachable": {repr(t): v for t, v in res["unreachable"].items()},
            "seeded_from": seeded[(name, variant)]}
        if "brackets" in res:  # None: the points as measured leave one side empty
            rec["brackets"] = {repr(t): (v if math.isfinite(v) else None)
                               for t, v in res["brackets"].items()}
        atomic_write_json(calibration_path(out_dir, rho, name, variant, grid.scope),
                          {"hash": _identity(grid, rho, fam, hyper), "record": rec})
        done[(name, variant)] = _restore(rec)
    for folder in passes:  # every record that used them is written
        shutil.rmtree(folder, ignore_errors=True)
    return [done[k] for k in done]


def _seed_points(grid: GridConfig, out_dir: Path, rho: float, fam: Any,
                 hyper: dict[str, Any], variant: str, state: dict[str, Any]) -> list[str]:
    """Add to ``state`` (a new one, no points yet) the points of this variant's selection
    calibration (scoped to the primary target, :func:`_seed_scope`) and return its file
    name; nothing for a unit the selection did not calibrate.

    Only full-length passes count (``calibrate.steps == train.steps``): their points are
    main runs of the calibration seed, so each is a frontier point as good as a new one.
    A fresh run computes the scoped unit first, so the seeded result is the same whether
    the run was resumed or not; units of other configs are never used (a resumed folder
    would otherwise give other numbers than a fresh one).
    """
    scope = _seed_scope(grid, fam, hyper)
    if scope is None:
        return []
    path = calibration_path(out_dir, rho, fam.name, variant, scope)
    if not path.is_file():
        return []
    saved = read_json_record(path, ("hash", "record"),
                             remedy="delete it to calibrate that family again")
    if saved.get("hash") != _identity(dataclasses.replace(grid, scope=scope), rho, fam,
                                      hyper):
        return []
    pts = saved["record"]["points"]
    add_points(state, [v for _, v in pts], [p for p, _ in pts])
    return [path.name]


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
              on_models: Any = None, keep: Any = None, strict: bool = True
              ) -> dict[tuple[str, str, float], dict[str, Any]]:
    """Calibrate every ``(family, variant, rho)`` in turn (see :func:`calibrate_rho`);
    only those for which ``keep(family, hyper, rho)`` holds, when given. ``strict=False``
    (the selection phase): a variant with no reachable target is recorded, not an error
    (it is no candidate of the selection).

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
        only = (None if keep is None else
                [(f.name, v) for f, h, v in grid.calibration_jobs() if keep(f, h, rho)])
        records = calibrate_rho(grid, out_dir, rho, progress=progress, on_models=on_models,
                                only=only)
        if strict:
            check_reachable(records)
        for rec in records:
            result[(rec["family"], rec["variant"], rho)] = rec
    return result


def _restore(rec: dict[str, Any]) -> dict[str, Any]:
    """JSON record -> in-memory record with float target keys."""
    out = dict(rec)
    for key in ("penalties", "extrapolated", "unreachable"):
        out[key] = {float(k): v for k, v in rec.get(key, {}).items()}
    if "brackets" in rec:  # a bracket search's record
        out["brackets"] = {float(k): v for k, v in rec["brackets"].items()}
    return out
