"""``aensae bench solver-setup`` at tiny sizes: its rows, its certificates, its bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aensae import cli
from aensae.benches.solvers import SETUP_CASES, setup_bench_data
from aensae.solvers import duality_gap, solve

TINY = ["bench", "solver-setup", "--signals", "12", "--atoms", "24", "--d-in", "8",
        "--active", "2", "--l0", "3", "--sklearn-signals", "3", "--repeats", "1"]


def test_rows_for_every_kind_and_case(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert cli.main([*TINY, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["tails"], r["case"]) for r in rows] == [
        (t, c) for t in ("light", "heavy") for c in SETUP_CASES]
    for r in rows:
        assert r["certified_fraction"] == 1.0 and r["max_rel_gap"] <= 1e-10
        assert r["sklearn_certified_fraction"] == 1.0 and r["max_abs_diff_vs_sklearn"] < 1e-5
        assert r["lam2"] == (0.0 if r["case"] == "lasso" else 0.01)
        assert (r["weights"] == "ones") == (r["case"] != "adaptive")
        assert r["t_fresh"] > 0 and r["t_steady"] > 0
        assert r["setup_share"] == pytest.approx((r["t_fresh"] - r["t_steady"]) / r["t_fresh"])
        assert r["init_share"] == pytest.approx(r["t_init"] / r["t_fresh"])
        assert r["cpu_fresh"] > 0 and r["cpu_steady"] > 0 and r["cpu_init"] > 0
        assert r["setup_share_cpu"] == pytest.approx(
            (r["cpu_fresh"] - r["cpu_steady"]) / r["cpu_fresh"])
        assert r["init_share_cpu"] == pytest.approx(r["cpu_init"] / r["cpu_fresh"])
        assert 0.5 <= r["mean_l0"] <= 12
    out = capsys.readouterr().out
    assert "setup%" in out and "cpu:setup%" in out


@pytest.mark.parametrize("tails", ["light", "heavy"])
def test_bench_data_are_sparse_combinations_with_the_stated_noise(tails):
    D, X = setup_bench_data(10, 30, 50, 3, 0.0, tails, seed=4)
    np.testing.assert_allclose(np.linalg.norm(D, axis=0), 1.0, atol=1e-12)
    assert X.shape == (50, 10) and np.all(np.isfinite(X))
    D2, X2 = setup_bench_data(10, 30, 50, 3, 0.0, tails, seed=4)
    np.testing.assert_array_equal(X, X2)
    # the exact codes of a small penalty certify on these signals
    res = solve(D, X, 0.01 * float(np.median(np.abs(X @ D).max(1))), 0.0)
    assert res.all_certified
    assert np.all(duality_gap(D, X, res.codes, res.lam1) <= 1e-10 * np.sum(X**2, 1))


@pytest.mark.parametrize(("extra", "pattern"), [
    (["--l0", "24"], "--l0"),
    (["--active", "0"], "--active"),
    (["--atoms", "1"], "--atoms"),
    (["--rho", "1"], "--rho"),
    (["--lam2", "-1"], "--lam2"),
    (["--tol", "0"], "--tol"),
    (["--repeats", "0"], "--repeats"),
    (["--sklearn-signals", "-1"], "--sklearn-signals"),
    (["--cases", "lasso", "lasso"], "--cases"),
    (["--tails", "heavy", "heavy"], "--tails"),
])
def test_bad_input_names_the_option(extra, pattern, capsys):
    assert cli.main([*TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert pattern in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
