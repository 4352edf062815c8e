"""Rows of the spiked grid's results table, read back from the run folders alone (every
executor gives the same table): SAE runs, exact reference rows, unreachable targets. The
columns are :data:`aensae.experiments.results.REQUIRED_COLUMNS` and more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aensae import __version__
from aensae._io import read_json_record
from aensae.experiments.spiked.config import GridConfig, RunSpec
from aensae.experiments.spiked.tasks import exact_dir, run_folder

__all__ = ["WINDOWS_FILE", "build_rows", "provenance", "unreachable_rows", "window_rows"]

#: Per-window table: one row per (SAE run, dead-latent window).
WINDOWS_FILE = "windows.csv"


def provenance(grid: GridConfig) -> dict[str, Any]:
    d, t = grid.data, grid.train
    return {"config_name": grid.name, "config_hash": grid.config_hash(),
            "aensae_version": __version__, "n": d["n"], "m": d["m"], "d_sae": grid.d_sae,
            "k": d["k"], "lo": d["lo"], "hi": d["hi"], "noise_std": d["noise_std"],
            "steps": t["steps"], "batch_size": t["batch_size"], "lr": t["lr"],
            "dead_window_samples": t["dead_window"], "dtype": grid.experiment["dtype"]}


def build_rows(grid: GridConfig, out: Path, specs: list[RunSpec]) -> list[dict[str, Any]]:
    """One row per finished planned run (SAE runs and exact reference rows)."""
    prov = provenance(grid)
    rows: list[dict[str, Any]] = []
    for rho in grid.rhos:
        for seed in grid.seeds:
            rel, _ = exact_dir(grid, rho, seed)
            path = out / rel / "metrics.json"
            if path.is_file():
                rec = read_json_record(path, ("rows",), remedy=f"delete {rel} to redo it")
                for i, r in enumerate(rec["rows"]):
                    rows.append({**prov, **r, "run_id": f"{rel.name}#{r['arch']}-{i}",
                                 "kind": r.get("kind", "exact"), "rho": rho, "seed": seed,
                                 "steps": None, "batch_size": None, "lr": None,
                                 "dead_window_samples": None})
    fams = {f.name: f for f in grid.families}
    sel = grid.selection
    for spec in specs:
        path = run_folder(out, grid, spec) / "metrics.json"
        if path.is_file():
            rec = read_json_record(path, ("row",), remedy="delete that run folder to redo the "
                                   "run")
            fam = fams[spec.family]
            rows.append({**prov, **rec["row"],
                         # the targets verdicts are made at (runs may sit around them)
                         "family_targets": " ".join(f"{t:g}" for t in
                                                    grid.targets(fam, spec.hyper)),
                         "role": ("selection" if sel is not None and spec.seed == sel["seed"]
                                  else "test"),
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
    from aensae.experiments.spiked.calibrate import load_rho

    rows: list[dict[str, Any]] = []
    for rho in grid.rhos:
        for rec in load_rho(grid, out, rho):
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


def window_rows(grid: GridConfig, out: Path, specs: list[RunSpec]) -> list[dict[str, Any]]:
    """One row per dead-latent window of every finished run: its family, init, rho, seed,
    target, the samples and steps seen at the window's end, the dead fraction and, for
    adaptive runs, the regime (:meth:`aensae.saes.base.SAE.regime`)."""
    rows: list[dict[str, Any]] = []
    batch = grid.train["batch_size"]
    for spec in specs:
        path = run_folder(out, grid, spec) / "metrics.json"
        if not path.is_file():
            continue
        rec = read_json_record(path, ("row", "dead"), remedy="delete that run folder to redo "
                               "the run")
        row = rec["row"]
        for i, w in enumerate(rec["dead"].get("regime") or []):
            rows.append({"run_id": spec.run_id(grid), "family": spec.family,
                         "init": row.get("init"), "rho": spec.rho, "seed": spec.seed,
                         "target_l0": spec.target_l0, "window": i,
                         "step": w.get("step", w["samples_seen"] // batch),
                         **{k: v for k, v in w.items() if k != "step"}})
    return rows
