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

__all__ = ["build_rows", "provenance", "unreachable_rows"]


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
                                 "kind": "exact", "rho": rho, "seed": seed,
                                 "steps": None, "batch_size": None, "lr": None,
                                 "dead_window_samples": None})
    for spec in specs:
        path = run_folder(out, grid, spec) / "metrics.json"
        if path.is_file():
            rec = read_json_record(path, ("row",), remedy="delete that run folder to redo the "
                                   "run")
            rows.append({**prov, **rec["row"],
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
