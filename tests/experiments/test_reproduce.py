"""``aensae reproduce`` on the tiny grid: schema, resume, interruption, configs, calibration."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from aensae.experiments.calibration import penalty_for_target
from aensae.experiments.config import CONFIG_DIR
from aensae.experiments.plotting import FORMATS
from aensae.experiments.results import REQUIRED_COLUMNS, read_table, write_table
from aensae.experiments.spiked import driver as runner
from aensae.experiments.spiked import tasks
from aensae.experiments.spiked.config import load_config
from aensae.experiments.spiked.figures import FIGURES

TIMING_COLUMNS = {"train_seconds", "eval_seconds"}


def _tiny():
    return load_config("tiny")


def _planned_ids(grid, out: Path) -> set[str]:
    from aensae.experiments.spiked.calibrate import calibrate

    calib = calibrate(grid, out)
    specs = grid.runs({k: r["penalties"] for k, r in calib.items()})
    return {s.run_id(grid) for s in specs}


def _metrics_bytes(out: Path) -> dict[str, bytes]:
    """metrics.json of every finished SAE run (exact reference folders excluded)."""
    return {p.parent.name: p.read_bytes() for p in sorted((out / "runs").glob("*/metrics.json"))
            if not p.parent.name.startswith("exact-")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    grid = _tiny()
    runner.reproduce(grid, out, progress=False)
    return grid, out


# ----------------------------------------------------------------------------- end to end
def test_table_schema_one_row_per_run(tiny_run) -> None:
    grid, out = tiny_run
    cols, rows = read_table(out / "results.csv")
    assert set(REQUIRED_COLUMNS) <= set(cols)
    ids = [r["run_id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate rows"
    sae = [r for r in rows if r["kind"] == "sae"]
    assert {r["run_id"] for r in sae} == _planned_ids(grid, out)
    # 2 rho x 1 seed x (3 relu_l1 x 2 inits + 3 aen + 2 topk + 1 jumprelu) SAE runs: the
    # calibrated families run at the 3 run targets around L0 2 and 3 (frontier 1.3:
    # 1.54, sqrt(2.31 x 2.6) = 2.45 merged, 3.9), topk at k = 2 and 3
    assert len(sae) == 2 * 12
    assert {(r["family"], r["init"]) for r in sae} == {
        ("relu_l1", "tied"), ("relu_l1", "independent"), ("aen", "tied"), ("topk", "tied"),
        ("jumprelu", "tied")}
    exact = [r for r in rows if r["kind"] == "exact"]
    assert len(exact) == 2 * 2 * grid.reference["ladder"]
    for r in rows:
        assert r["aensae_version"] and r["config_hash"] == grid.config_hash()
        assert r["seed"] == 0.0 and r["config_name"] == "tiny"
    for r in sae:
        if r["family"] != "jumprelu":  # jumprelu runs at a fixed penalty in this grid
            assert r["calibrated_value"] is not None and r["target_l0"] is not None
            assert r[f"hp_{r['calibrated_param']}"] == r["calibrated_value"]
            assert r["calibration_extrapolated"] is False
            # the ratio recorded is the achieved L0 over the target; matched by the tolerance
            assert r["l0_ratio"] == pytest.approx(r["l0"] / r["target_l0"], rel=1e-12)
            assert r["l0_matched"] == (1 / 1.5 <= r["l0_ratio"] <= 1.5)
        assert 0.0 <= r["dead_median_last"] <= 1.0
        if r["arch"] == "topk":  # TopK's L0 is at most k_top (oracle: the definition)
            assert r["l0"] <= r["hp_k_top"] + 1e-12
            assert r["amort_rel_median"] is None and r["jump_size_median"] is not None
        if r["arch"] in ("relu_l1", "aen"):
            assert r["exact_certified"] == 1.0
            # F(h_enc) >= F(h_exact) - gap: the gap is non-negative up to the certificate
            assert r["amort_gap_q05"] >= -1e-8
            assert r["lip_encoder_median"] is not None
    saved = json.loads((out / "config.json").read_text())
    assert saved["config_hash"] == grid.config_hash() and saved["seeds"] == [0]


def test_every_figure_and_report_written(tiny_run) -> None:
    _, out = tiny_run
    for name in FIGURES:
        for ext in FORMATS:
            path = out / "figures" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    report = (out / "report.md").read_text()
    assert report.count("**verdict") >= 4
    assert "What this scale can and cannot show" in report


def test_run_folders_hold_config_model_and_metrics(tiny_run) -> None:
    grid, out = tiny_run
    for rid in _planned_ids(grid, out):
        folder = out / "runs" / rid
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "cfg.json", "sae.safetensors", "trained.json",
                "metrics.json"} <= names
        rec = json.loads((folder / "metrics.json").read_text())
        assert rec["run_id"] == rid and rec["seed"] == 0 and "aensae_version" in rec
    assert not any((out / "groups").glob("*/checkpoint.pt"))
    assert not list(out.rglob("*.tmp"))


def test_resume_skips_finished_runs(tiny_run, monkeypatch) -> None:
    grid, out = tiny_run
    before = _metrics_bytes(out)
    table = (out / "results.csv").read_bytes()

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(tasks, "train_group", fail)
    monkeypatch.setattr(tasks, "evaluate_run", fail)
    runner.reproduce(grid, out, progress=False, draw=False)
    assert _metrics_bytes(out) == before
    assert (out / "results.csv").read_bytes() == table


def test_interrupted_run_completes_without_loss_or_duplicates(tmp_path, capsys) -> None:
    grid = _tiny()

    class Stop(Exception):
        pass

    def stop(i: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        runner.reproduce(grid, tmp_path, progress=False, draw=False, on_group=stop)
    err = capsys.readouterr().err
    assert "ETA: " in err and "calibration: 6 (rho, variant) unit(s)" in err
    first = _metrics_bytes(tmp_path)
    assert 0 < len(first) < 18
    _, partial = read_table(tmp_path / "results.csv")
    assert len([r for r in partial if r["kind"] == "sae"]) == len(first)
    runner.reproduce(grid, tmp_path, progress=False, draw=False)
    import re

    found = re.search(r"; (\d+) finished", capsys.readouterr().err)
    assert found and int(found.group(1)) >= len(first)
    after = _metrics_bytes(tmp_path)
    assert {k: after[k] for k in first} == first, "a finished run was redone"
    _, rows = read_table(tmp_path / "results.csv")
    ids = [r["run_id"] for r in rows if r["kind"] == "sae"]
    assert len(ids) == len(set(ids)) == 24
    assert set(ids) == _planned_ids(grid, tmp_path)


def test_killed_process_is_redone_on_rerun(tmp_path, tiny_run) -> None:
    """SIGKILL mid-way; the rerun finishes every run once, equal to an uninterrupted run."""
    grid, ref_out = tiny_run
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "aensae", "reproduce", "--config", "tiny", "--out",
           str(tmp_path), "--no-figures", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            started = [p for p in (tmp_path / "runs").glob("*/config.json")
                       if not p.parent.name.startswith("exact")] if (tmp_path / "runs").is_dir() \
                else []
            if started:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (tmp_path / "results.csv").is_file() or len(_metrics_bytes(tmp_path)) < 18
    # what a kill in the middle of writes leaves, as atomic_write names it: in the top
    # folder and in every run still to finish (the SAE runs are planned once calibrated)
    stage = tmp_path / ".aensae-stage-k1ll3d00"
    stage.mkdir()
    files = [tmp_path / ".results.csv.k1ll3d00.tmp"]
    unfinished = [tmp_path / "runs" / rid for rid in _planned_ids(grid, tmp_path)
                  if not (tmp_path / "runs" / rid / "metrics.json").is_file()]
    assert unfinished
    for folder in unfinished:
        folder.mkdir(parents=True, exist_ok=True)
        files += [folder / ".metrics.json.k1ll3d00.tmp", folder / ".sae.safetensors.k1ll3d00.tmp"]
    for path in files:
        path.write_text("half")
    debris = [stage, *files]
    runner.reproduce(grid, tmp_path, progress=False, draw=False)
    assert not [p for p in debris if p.exists()]
    assert not list(tmp_path.rglob("*.tmp"))
    _, rows = read_table(tmp_path / "results.csv")
    _, ref_rows = read_table(ref_out / "results.csv")
    assert len(rows) == len(ref_rows)
    key = {r["run_id"]: r for r in rows}
    assert len(key) == len(rows)
    for ref in ref_rows:  # deterministic by seed: same numbers as the uninterrupted run
        got = key[ref["run_id"]]
        for col, v in ref.items():
            if col in TIMING_COLUMNS or col.endswith("_seconds"):
                continue
            w = got.get(col)
            if isinstance(v, float) and isinstance(w, float) and math.isnan(v):
                assert math.isnan(w), col
            else:
                assert w == v, (ref["run_id"], col, v, w)


def _same_rows(rows: list[dict], ref_rows: list[dict]) -> None:
    """Row for row equality, timing columns aside (NaN equals NaN)."""
    assert len(rows) == len(ref_rows)
    key = {r["run_id"]: r for r in rows}
    assert len(key) == len(rows)
    for ref in ref_rows:
        got = key[ref["run_id"]]
        for col, v in ref.items():
            if col in TIMING_COLUMNS or col.endswith("_seconds"):
                continue
            w = got.get(col)
            if isinstance(v, float) and isinstance(w, float) and math.isnan(v):
                assert math.isnan(w), col
            else:
                assert w == v, (ref["run_id"], col, v, w)


def test_parallel_workers_equal_the_serial_run(tmp_path, tiny_run, capsys) -> None:
    """Two spawned worker processes give the serial table row for row."""
    grid, ref_out = tiny_run
    runner.reproduce(grid, tmp_path, progress=False, draw=False, workers=2)
    assert "workers: 2 process(es) of 1 thread(s)" in capsys.readouterr().err
    cols, rows = read_table(tmp_path / "results.csv")
    ref_cols, ref_rows = read_table(ref_out / "results.csv")
    assert cols == ref_cols
    _same_rows(rows, ref_rows)
    for p in sorted((ref_out / "calibration").glob("*.json")):
        assert (tmp_path / "calibration" / p.name).read_bytes() == p.read_bytes()


def test_runs_taken_from_the_calibration_equal_a_fresh_training(tiny_run) -> None:
    """tiny calibrates at full length: its matched runs reuse calibration models. Oracle:
    each such run trained again on its own (every rho: the same penalty recurs across
    rho values, and the model of one rho must never stand in for another's)."""
    import torch

    from aensae.experiments.spiked.data import data_point, train_models
    from aensae.saes import create, load

    grid, out = tiny_run
    _, rows = read_table(out / "results.csv")
    reused = [r for r in rows if r.get("trained_in") == "calibration"]
    assert {r["rho"] for r in reused} == {0.0, 0.9}, "tiny's passes are as long as its runs"
    for r in reused:
        folder = out / "runs" / r["run_id"]
        spec = json.loads((folder / "config.json").read_text())
        model = create(spec["arch"], grid.data["n"], grid.d_sae, seed=spec["seed"],
                       **spec["hyper"])
        point = data_point(grid, spec["rho"], spec["seed"])
        res = train_models(grid, {"m": model}, point, grid.train["steps"], None,
                           progress=False)
        saved = load(folder)
        for (name, a), (_, b) in zip(model.state_dict().items(),
                                     saved.state_dict().items(), strict=True):
            assert torch.equal(a, b), (r["run_id"], name)
        trained = json.loads((folder / "trained.json").read_text())
        assert trained["dead"] == res["m"].to_dict()["dead"]


def test_model_cache_save_clears_what_a_killed_writer_left(tmp_path) -> None:
    """A writer killed mid-``save`` (a cancelled Ray task) leaves ``.cfg.json.*.tmp`` in
    the key's folder; saving that key again removes it and leaves the complete model."""
    import torch

    from aensae.experiments.spiked.data import CACHE_DIR, cache_load, cache_save
    from aensae.saes import create

    folder = tmp_path / CACHE_DIR / "k"
    folder.mkdir(parents=True)
    (folder / ".cfg.json.abc123.tmp").write_text("{")
    (folder / "keep.txt").write_text("not a partial file")
    model = create("relu_l1", 4, 6, seed=1)
    cache_save(tmp_path, "k", model, {"train_loss_last": 0.5})
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "keep.txt",
                                                       "result.json", "sae.safetensors"]
    loaded, res = cache_load(tmp_path, "k")
    assert res == {"train_loss_last": 0.5}
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_other_config_in_out_dir_is_an_error(tiny_run) -> None:
    grid, out = tiny_run
    other = _tiny()
    other.train["steps"] = 41
    with pytest.raises(ValueError, match="holds results of another config"):
        runner.reproduce(other, out, progress=False, draw=False)


# ----------------------------------------------------------------------------- configs
def test_named_configs_load_and_expand() -> None:
    for name in ("quick", "paper", "tiny", "claims"):
        assert (CONFIG_DIR / f"{name}.toml").is_file()
        grid = load_config(name)
        jobs = grid.calibration_jobs()
        fake = {(f.name, v, rho): {t: 1e-3 for t in grid.run_targets(f)}
                for f, _, v in jobs for rho in grid.rhos}
        specs = grid.runs(fake)
        assert len({s.run_id(grid) for s in specs}) == len(specs)
    paper = load_config("paper")
    assert paper.rhos == [0.0, 0.3, 0.5, 0.7, 0.9]
    assert (paper.data["n"], paper.data["m"], paper.data["k"]) == (256, 1024, 16)
    assert paper.train["steps"] == 50000 and paper.train["batch_size"] == 256
    archs = {f.arch for f in paper.families}
    assert archs == {"relu_l1", "elastic_net", "adaptive_lasso", "aen", "topk", "batchtopk",
                     "jumprelu"}
    quick = load_config("quick")  # issue 11's main job
    assert quick.rhos == [0.0, 0.9] and quick.seeds == [0]
    assert (quick.data["n"], quick.data["m"], quick.d_sae, quick.data["k"]) == (64, 256, 256, 4)
    assert (quick.train["steps"], quick.train["batch_size"], quick.train["lr"]) == \
        (10000, 256, 1e-3)
    for name, grid_ in (("quick", quick), ("claims", load_config("claims"))):
        inits = defaultdict(set)
        for f in grid_.families:
            assert len(f.target_l0) >= 3 or name == "claims", f.name
            for h in f.variants():
                inits[f.arch].add(h.get("init", "tied"))
        for arch in ("relu_l1", "elastic_net", "aen", "topk"):
            assert inits[arch] == {"tied", "independent"}, (name, arch)
    claims = load_config("claims")  # issue 24's verdict grid
    assert claims.rhos == [0.0, 0.9] and claims.train["steps"] >= 30000
    assert claims.selection["seed"] not in claims.seeds and len(claims.seeds) >= 4
    assert claims.selection["init"] == "independent" and claims.selection["target_l0"] == 4.0
    assert {f.arch for f in claims.families} == {"relu_l1", "elastic_net", "adaptive_lasso",
                                                "aen", "topk", "batchtopk"}
    fams = {f.name: f for f in claims.families}
    for name in ("aen", "adaptive_lasso"):  # the reference's spiked grid, w_min 0.01
        assert {(h["gamma"], h["beta"], h["top_p"]) for h in fams[name].variants()} == {
            (g, b, t) for g in (0.5, 1.0) for b in (0.999, 0.9999) for t in (0.05, 0.01)}
        assert fams[name].hyper["w_min"] == 0.01
    assert {h["l2"] for h in fams["elastic_net"].variants()} == {1e-4, 5e-4, 1e-3}


def _minimal() -> dict:
    return {"data": {"n": 8, "m": 16, "k": 2},
            "family": [{"name": "r", "arch": "relu_l1", "hyper": {"l1": 1e-3}}]}


@pytest.mark.parametrize("patch, match", [
    ({"bogus": {}}, r"unknown key\(s\) bogus"),
    ({"data": {"rhoo": [0.0]}}, r"\[data\]: unknown key\(s\) rhoo; allowed keys: .*rho"),
    ({"data": {"rho": [1.0]}}, r"data.rho\[0\]: must be < 1"),
    ({"train": {"steps": 0}}, r"train.steps: must be >= 1, got 0"),
    ({"data": {"n": 1}}, r"data.n: must be >= 2, got 1"),
    ({"train": {"lr": "fast"}}, r"train.lr: must be a number, got 'fast'"),
    ({"family": [{"name": "x", "arch": "nope"}]}, r"unknown architecture 'nope'"),
    ({"family": [{"name": "x", "arch": "topk", "hyper": {"l1": 1.0}}]},
     r"family 'x'.hyper: unknown key\(s\) l1; allowed keys: .*k_top"),
    ({"family": [{"name": "x", "arch": "relu_l1", "target_l0": [2.0]}]},
     r"needs calibrate_range"),
    ({"family": [{"name": "x", "arch": "relu_l1", "target_l0": [2.0], "hyper": {"l1": 1.0},
                  "calibrate_range": [1e-3, 1e-1]}]}, r"do not also set l1"),
    ({"family": [{"name": "x", "arch": "relu_l1", "hyper": {"l1": -1.0}}]},
     r"l1 must lie in \[0, inf\], got -1.0"),
])
def test_config_errors_name_key_value_and_expectation(patch, match) -> None:
    cfg = {**_minimal(), **patch}
    with pytest.raises(ValueError, match=match):
        load_config(cfg)


def test_train_stack_option(monkeypatch) -> None:
    from aensae import saes
    from aensae.experiments.spiked.data import data_point, train_models

    plain = load_config(_minimal())
    off = load_config({**_minimal(), "train": {"stack": False}})
    on = load_config({**_minimal(), "train": {"stack": True}})
    assert plain.config_hash() == off.config_hash() != on.config_hash()  # old hashes kept
    with pytest.raises(ValueError, match="train.stack: must be true or false, got 'yes'"):
        load_config({**_minimal(), "train": {"stack": "yes"}})
    seen = []
    monkeypatch.setattr(saes, "train", lambda models, data, cfg, **kw: seen.append(cfg.stack))
    for grid in (off, on):
        train_models(grid, {}, data_point(grid, 0.0, 0), 1, None, progress=False)
    assert seen == [False, True]


def test_unknown_named_config_lists_the_named_ones() -> None:
    with pytest.raises(ValueError, match="named configs: .*quick"):
        load_config("nosuchconfig")


# ----------------------------------------------------------------------------- calibration
def test_penalty_for_target_inverts_a_power_law() -> None:
    # oracle: L0(p) = c * p^-a  =>  p(L0*) = (c / L0*)^(1/a), exact under log-log interpolation
    c, a = 0.05, 0.7
    p = np.geomspace(1e-4, 1e-1, 5)
    l0 = c * p ** -a
    for target in (l0.min() * 1.5, float(np.median(l0)), l0.max() / 1.1):
        got, extrapolated = penalty_for_target(p, l0, target, (1e-4, 1e-1))
        assert not extrapolated
        assert got == pytest.approx((c / target) ** (1 / a), rel=1e-12)
    got, extrapolated = penalty_for_target(p, l0, l0.min() / 2, (1e-4, 1e-1))
    assert extrapolated and got == pytest.approx((c / (l0.min() / 2)) ** (1 / a), rel=1e-12)
    # clamped to ten times the range
    got, extrapolated = penalty_for_target(p, l0, 1e-9, (1e-4, 1e-1))
    assert extrapolated and got == pytest.approx(1.0)


def test_penalty_for_target_tolerates_non_monotone_and_silent_points() -> None:
    p = np.array([1e-3, 1e-2, 3e-2, 1e-1])
    l0 = np.array([10.0, 4.0, 4.5, 0.0])  # noise and a silent model
    got, ex = penalty_for_target(p, l0, 4.0, (1e-3, 1e-1))
    assert not ex and 1e-3 < got <= 3e-2


# ----------------------------------------------------------------------------- table
def test_table_round_trip_is_exact(tmp_path) -> None:
    rows = [{"run_id": "a", "kind": "sae", "x": 0.1 + 0.2, "flag": True, "hp_l1": 1e-3,
             "none": None, "nan": float("nan")},
            {"run_id": "b", "kind": "exact", "x": -1.5e-300, "flag": False}]
    cols = write_table(tmp_path / "t.csv", rows)
    assert cols[:2] == ["run_id", "kind"] and cols.index("hp_l1") < cols.index("flag")
    cols2, back = read_table(tmp_path / "t.csv")
    assert cols2 == cols
    assert back[0]["x"] == 0.1 + 0.2 and back[0]["flag"] is True and back[0]["none"] is None
    assert math.isnan(back[0]["nan"]) and back[1]["x"] == -1.5e-300 and back[1]["flag"] is False
    assert back[1]["nan"] is None


# ----------------------------------------------------------------------------- figures
def test_figures_redrawn_from_the_table_alone_are_identical(tiny_run, tmp_path) -> None:
    from aensae import cli

    _, out = tiny_run
    for table in ("results.csv", "windows.csv"):  # the tables the figures are drawn from
        (tmp_path / table).write_bytes((out / table).read_bytes())
    assert cli.main(["figures", str(tmp_path)]) == 0
    for name in FIGURES:
        for ext in FORMATS:
            got = (tmp_path / "figures" / f"{name}.{ext}").read_bytes()
            assert got == (out / "figures" / f"{name}.{ext}").read_bytes(), (name, ext)
    assert (tmp_path / "report.md").read_text() == (out / "report.md").read_text()


def test_cli_reports_a_bad_config_cleanly(capsys) -> None:
    from aensae import cli

    assert cli.main(["reproduce", "--config", "nosuchconfig"]) == 2
    assert "no named config" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bracketing
def _monotone_map(scale: float, floor: float = 0.0, cap: float = math.inf):
    """L0(p) = min(cap, max(floor, scale / p)): monotone, known inverse p = scale / L0."""
    calls: list[float] = []

    def measure(ps: list[float]) -> list[float]:
        calls.extend(ps)
        return [min(cap, max(floor, scale / p)) for p in ps]
    return measure, calls


@pytest.mark.parametrize("scale", [1e-5, 1e2])  # targets far below / above the start range
def test_bracket_search_widens_both_ways_and_refines_inside(scale: float) -> None:
    from aensae.experiments.calibration import bracket_search

    measure, calls = _monotone_map(scale)
    targets = [2.0, 4.0, 8.0]
    res = bracket_search(measure, (1e-2, 1.0), targets, ladder=4, rounds=1)
    assert not res["unreachable"]
    for t in targets:
        assert res["extrapolated"][t] is False
        # oracle: the inverse of the map; log-log interpolation of a power law is exact
        assert res["penalties"][t] == pytest.approx(scale / t, rel=1e-9)
        assert min(p for p, _ in res["points"]) <= scale / t <= max(p for p, _ in res["points"])
    assert min(calls) >= 1e-2 * 1e-6 and max(calls) <= 1.0 * 1e3


def test_bracket_search_reports_unreachable_targets_with_the_range_seen() -> None:
    from aensae.experiments.calibration import bracket_search

    # L0 never exceeds 5 (a cap), never falls below 0.5: 8 and 0.1 cannot be reached
    measure, calls = _monotone_map(0.1, floor=0.5, cap=5.0)
    res = bracket_search(measure, (1e-2, 1.0), [0.1, 2.0, 8.0], ladder=3, rounds=1)
    assert set(res["unreachable"]) == {0.1, 8.0}
    assert res["unreachable"][8.0] == pytest.approx([0.5, 5.0])
    assert res["penalties"][2.0] == pytest.approx(0.05, rel=1e-9)
    assert 8.0 not in res["penalties"] and 0.1 not in res["penalties"]
    assert min(calls) == pytest.approx(1e-8) and max(calls) == pytest.approx(1e3)


def test_all_targets_unreachable_is_an_input_error_naming_family_and_rho() -> None:
    from aensae._validation import InputError
    from aensae.experiments.spiked.calibrate import check_reachable

    rec = {"family": "aen", "rho": 0.9, "hyper": {"init": "independent"}, "param": "l1",
           "targets": [2.0, 4.0], "penalties": {}, "limits": [1e-8, 1e3],
           "unreachable": {2.0: [5.0, 9.0], 4.0: [5.0, 9.0]}}
    with pytest.raises(InputError, match=r"family 'aen' \(init independent\) at rho=0.9"):
        check_reachable([rec])


def test_bad_worker_count_is_an_input_error(tmp_path) -> None:
    from aensae._validation import InputError

    with pytest.raises(InputError, match="--workers must be an integer >= 0"):
        runner.reproduce(_tiny(), tmp_path / "out", progress=False, draw=False, workers=-1)
    assert not (tmp_path / "out").exists()  # refused before any work
    with pytest.raises(ValueError, match=r"experiment.workers: must be >= 0"):
        load_config({**_minimal(), "experiment": {"workers": -2}})


def test_init_sweep_and_unknown_init_in_a_grid() -> None:
    fam = {"name": "r", "arch": "relu_l1", "hyper": {"l1": 1e-3},
           "sweep": {"init": ["tied", "independent"]}}
    grid = load_config({**_minimal(), "family": [fam]})
    assert sorted(s.hyper["init"] for s in grid.runs()) == ["independent", "tied"]
    bad = {**fam, "sweep": {"init": ["tied", "xavier"]}}
    with pytest.raises(ValueError, match="init must be one of tied, independent, got 'xavier'"):
        load_config({**_minimal(), "family": [bad]})


def test_full_length_search_accepts_a_measured_point_within_the_tolerance() -> None:
    """An L0 floor of 2.01 reaches the target 2 within a tolerance of 1.3: no widening
    beyond it, the measured penalty is the answer; without a tolerance it is unreachable."""
    from aensae.experiments.calibration import (
        add_points,
        finish,
        initial_ladder,
        new_state,
        next_penalties,
    )

    def run(tol):
        measure, calls = _monotone_map(0.1, floor=2.01)
        state = new_state((1e-2, 1.0), [2.0, 4.0])
        todo = initial_ladder((1e-2, 1.0), 2)
        while todo:
            add_points(state, measure(todo), todo)
            todo = next_penalties(state, 2, tol)
        return finish(state, tol), calls

    res, calls = run(1.3)
    assert res["penalties"][2.0] == 1.0 and not res["unreachable"]  # L0(1.0) = 2.01
    assert max(calls) == 1.0  # nothing widened
    assert 4.0 in res["penalties"] and res["extrapolated"][4.0] is False
    res, calls = run(None)
    assert res["unreachable"][2.0] == pytest.approx([2.01, 10.0])


def test_refinement_bisects_a_cliff() -> None:
    """L0 jumps from 9 to 1 at p = 0.5: interpolation keeps missing the target 4; the
    bracket must shrink geometrically around the jump (oracle: the map's definition)."""
    from aensae.experiments.calibration import bracket_search

    def measure(ps: list[float]) -> list[float]:
        return [9.0 if p < 0.5 else 1.0 for p in ps]

    res = bracket_search(measure, (1e-2, 1.0), [4.0], ladder=2, rounds=6)
    below = [p for p, v in res["points"] if v == 9.0]
    above = [p for p, v in res["points"] if v == 1.0]
    assert max(below) < 0.5 <= min(above)
    assert min(above) / max(below) < 1.2  # five bisections after one interpolation
