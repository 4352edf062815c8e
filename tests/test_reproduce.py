"""``aensae reproduce`` on the tiny grid: schema, resume, interruption, configs, calibration."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aensae.benchmarks import runner
from aensae.benchmarks.calibrate import penalty_for_target
from aensae.benchmarks.figures import FIGURES, FORMATS
from aensae.benchmarks.grid import CONFIG_DIR, load_config
from aensae.benchmarks.results import REQUIRED_COLUMNS, read_table, write_table

TIMING_COLUMNS = {"train_seconds", "eval_seconds"}


def _tiny():
    return load_config("tiny")


def _planned_ids(grid, out: Path) -> set[str]:
    from aensae.benchmarks.calibrate import calibrate

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
    # 2 rho x 1 seed x (2 relu_l1 + 2 aen + 2 topk + 1 jumprelu) SAE runs
    assert len(sae) == 2 * 7
    exact = [r for r in rows if r["kind"] == "exact"]
    assert len(exact) == 2 * 2 * grid.reference["ladder"]
    for r in rows:
        assert r["aensae_version"] and r["config_hash"] == grid.config_hash()
        assert r["seed"] == 0.0 and r["config_name"] == "tiny"
    for r in sae:
        assert r["calibrated_value"] is not None and r["target_l0"] is not None
        assert r[f"hp_{r['calibrated_param']}"] == r["calibrated_value"]
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

    monkeypatch.setattr(runner, "_train_group", fail)
    monkeypatch.setattr(runner, "_evaluate_run", fail)
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
    assert "ETA: " in err and "plan: 14 SAE runs in 2 groups; 0 finished" in err
    first = _metrics_bytes(tmp_path)
    assert 0 < len(first) < 14
    _, partial = read_table(tmp_path / "results.csv")
    assert len([r for r in partial if r["kind"] == "sae"]) == len(first)
    runner.reproduce(grid, tmp_path, progress=False, draw=False)
    assert f"{len(first)} finished" in capsys.readouterr().err
    after = _metrics_bytes(tmp_path)
    assert {k: after[k] for k in first} == first, "a finished run was redone"
    _, rows = read_table(tmp_path / "results.csv")
    ids = [r["run_id"] for r in rows if r["kind"] == "sae"]
    assert len(ids) == len(set(ids)) == 14
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
    assert not (tmp_path / "results.csv").is_file() or len(_metrics_bytes(tmp_path)) < 14
    runner.reproduce(grid, tmp_path, progress=False, draw=False)
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


def test_other_config_in_out_dir_is_an_error(tiny_run) -> None:
    grid, out = tiny_run
    other = _tiny()
    other.train["steps"] = 41
    with pytest.raises(ValueError, match="holds results of another config"):
        runner.reproduce(other, out, progress=False, draw=False)


# ----------------------------------------------------------------------------- configs
def test_named_configs_load_and_expand() -> None:
    for name in ("quick", "paper", "tiny"):
        assert (CONFIG_DIR / f"{name}.toml").is_file()
        grid = load_config(name)
        jobs = grid.calibration_jobs()
        fake = {(f.name, v, rho): {t: 1e-3 for t in f.target_l0}
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
    quick = load_config("quick")
    assert quick.rhos == [0.0, 0.5, 0.9] and len(quick.seeds) == 2


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
    from aensae.benchmarks._data import data_point, train_models

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
    (tmp_path / "results.csv").write_bytes((out / "results.csv").read_bytes())
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
