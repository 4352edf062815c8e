"""Tests of aensae.experiments.spiked.theorem: the solver-level check of claims 2a and 2b.

Oracles, never the module's own output:

- metrics on hand-built codes (half the truth: ``tp_bias = 0.5``; one flipped sign);
- the estimators at one ``lam1`` against cvxpy (Clarabel) with the initial estimate and
  both weight formulas written out here;
- the matched-L0 bisection against a step function whose answer is known, and on a tiny
  lasso problem against solves made here at two penalties;
- the verdict rule on hand-built rows, cell counts chosen to land on each verdict;
- the package defaults read from the SAE's ``ADAPTIVE_HYPER`` and ``solve_adaptive``.
"""

from __future__ import annotations

import inspect
import json
import math
import re

import numpy as np
import pytest
from cvx_support import cvx_codes, tiny_problem

from aensae.experiments.spiked import theorem as T
from aensae.solvers import solve

# ============================================================================ defaults


def test_weighting_defaults_are_the_package_defaults():
    from aensae.saes.adaptive_lasso import ADAPTIVE_HYPER
    from aensae.solvers import solve_adaptive

    for key, value in T.POPULATION.items():
        assert ADAPTIVE_HYPER[key].default == value, key
    sig = inspect.signature(solve_adaptive).parameters
    assert T.ZOU == {"gamma": sig["gamma"].default, "eps": sig["eps"].default}


def test_theorem_module_imports_no_sae_package():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(T.__file__).read_text(encoding="utf-8"))
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in names if m.startswith(("aensae.saes", "torch"))], names


# ============================================================================ metrics
def test_tp_bias_is_one_half_for_half_the_truth():
    H = np.array([[2.0, 0.0, -1.0, 0.0], [0.0, 3.0, 0.0, 0.5], [1.0, 0.0, 0.0, 0.0]])
    out = T.truth_metrics(0.5 * H, H)
    assert out["tp_bias"] == pytest.approx(0.5, abs=1e-15)
    assert out["sign_recovery"] == 1.0 and out["supp_exact"] == 1.0 and out["supp_f1"] == 1.0
    assert out["l0"] == pytest.approx(5 / 3)


def test_truth_metrics_by_hand_with_a_miss_a_spurious_entry_and_a_flip():
    H = np.array([[2.0, 0.0, -1.0, 0.0], [0.0, 3.0, 0.0, 0.5], [1.0, 0.0, 0.0, 0.0]])
    C = np.array([[1.0, 0.0, -1.0, 0.2],   # spurious atom 3; ratios 0.5, 1
                  [0.0, 3.0, 0.0, -0.5],   # flipped sign on atom 3; ratios 1, -1
                  [0.0, 0.0, 0.0, 0.0]])   # missed
    out = T.truth_metrics(C, H)
    assert out["tp_bias"] == pytest.approx((0.5 + 1.0 + 1.0 - 1.0) / 4)
    assert out["sign_recovery"] == 0.0  # no signal has every sign right
    assert out["supp_exact"] == pytest.approx(1 / 3)  # signal 1: same support, one flip
    # support_recovery's aggregation: per-signal F1 averaged
    f1 = [2 * 2 / (3 + 2), 1.0, 0.0]
    assert out["supp_f1"] == pytest.approx(np.mean(f1))
    C2 = C.copy()
    C2[1, 3] = 0.5
    C2[0, 3] = 0.0
    assert T.truth_metrics(C2, H)["sign_recovery"] == pytest.approx(2 / 3)
    assert math.isnan(T.truth_metrics(np.zeros_like(H), H)["tp_bias"])


# ============================================================================ estimators

def cvx(D, X, lam1, lam2, W, nonneg):
    H = cvx_codes(D, X, lam1, lam2, W, nonneg)
    H[np.abs(H) < 1e-8] = 0.0  # interior-point dust
    return H



@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("lam2", [0.0, 0.08])
@pytest.mark.parametrize("weighting", ["zou", "population"])
def test_fit_estimator_against_cvxpy(nonneg, lam2, weighting):
    D, X, _ = tiny_problem(nonneg, seed=5 + int(nonneg))
    C = X @ D
    lam1 = 0.12 * float(np.max(np.maximum(C, 0) if nonneg else np.abs(C)))
    fit = T.fit_estimator(D, X, lam1, lam2, weighting, nonneg=nonneg, tol=1e-10)
    assert fit.certified.all() and fit.certified_init.all()
    H_init = cvx(D, X, lam1, lam2, None, nonneg)  # h_init: the unit-weight counterpart
    np.testing.assert_allclose(fit.init.toarray(), H_init, atol=1e-6)
    if weighting == "zou":
        W = 1.0 / (np.abs(H_init) + 1e-3)
    else:
        ema = np.abs(H_init).mean(axis=0)
        ref = np.sort(ema)[-1]  # top 1% of 10 atoms: one atom
        W = np.array([10.0 if e == 0 else min(max(ref / e, 0.1), 10.0) for e in ema])
    np.testing.assert_allclose(fit.weights, W, rtol=1e-4)
    H_ref = cvx(D, X, lam1, lam2, W, nonneg)
    np.testing.assert_allclose(fit.codes.toarray(), H_ref, rtol=0, atol=1e-5)
    assert fit.l0 == pytest.approx(np.count_nonzero(H_ref, axis=1).mean())
    plain = T.fit_estimator(D, X, lam1, lam2, None, nonneg=nonneg, tol=1e-10)
    assert plain.weights is None and plain.init is None
    np.testing.assert_allclose(plain.codes.toarray(), H_init, atol=1e-6)


def test_fit_estimator_rejects_an_unknown_weighting():
    D, X, _ = tiny_problem(True, seed=1)
    with pytest.raises(ValueError, match="weighting"):
        T.fit_estimator(D, X, 0.1, 0.0, "ridge", nonneg=True, tol=1e-10)


# ============================================================================ matched L0
def test_match_l0_on_a_known_step_function():
    # l0(f) = number of thresholds 10^(-j/2) (j = 1..8) above f: non-increasing steps,
    # l0 = 3 exactly on [10^-2, 10^-1.5), l0 = 5 on [10^-3, 10^-2.5)
    calls = []

    def l0_at(f):
        calls.append(f)
        return float(sum(f < 10.0 ** (-j / 2) for j in range(1, 9)))

    cache = {}
    f, l0, evals = T.match_l0(l0_at, 3.0, cache=cache, max_evals=12)
    assert l0 == 3.0 and 1e-2 <= f < 10**-1.5 and evals == len(calls) <= 12
    # a second target reuses the bracket: fewer new evaluations than from scratch
    f5, l05, evals5 = T.match_l0(l0_at, 5.0, cache=cache, max_evals=12)
    assert l05 == 5.0 and 1e-3 <= f5 < 10**-2.5
    f_fresh, _, evals_fresh = T.match_l0(l0_at, 5.0, cache={}, max_evals=12)
    assert evals5 <= evals_fresh
    # an unreachable target keeps the closest point and spends at most max_evals
    _, l0_far, evals_far = T.match_l0(l0_at, 20.0, cache={}, max_evals=5)
    assert evals_far == 5 and l0_far == max(l0_at(c) for c in calls[-5:])
    # non-increasing: the returned penalties order as the targets do
    assert f5 < f < T.match_l0(l0_at, 1.0, cache=cache)[0]


def test_match_l0_on_a_tiny_lasso_within_one_atom_and_monotone():
    rng = np.random.default_rng(0)
    n, m, B = 10, 20, 30
    D = rng.standard_normal((n, m))
    D /= np.linalg.norm(D, axis=0)
    H = np.zeros((B, m))
    for b in range(B):
        H[b, rng.choice(m, 3, replace=False)] = rng.uniform(1.0, 2.0, 3)
    X = H @ D.T + 0.05 * rng.standard_normal((B, n))
    lam_max = float(np.max(X @ D))

    def l0_at(f):
        return float(np.count_nonzero(solve(D, X, f * lam_max, 0.0, None, True).codes,
                                      axis=1).mean())

    cache = {}
    found = {}
    for target in (1.0, 2.0, 3.0, 5.0):
        f, l0, evals = T.match_l0(l0_at, target, cache=cache, max_evals=12)
        assert abs(l0 - target) <= 1.0 and evals <= 12
        found[target] = f
    # larger target, smaller penalty
    assert found[1.0] > found[2.0] > found[3.0] > found[5.0]
    # hand comparison: a larger lam1 gives no more non-zeros here
    small = solve(D, X, 0.05 * lam_max, 0.0, None, True).codes
    large = solve(D, X, 0.5 * lam_max, 0.0, None, True).codes
    assert np.count_nonzero(large) < np.count_nonzero(small)


def test_match_l0_rejects_a_bad_bracket():
    with pytest.raises(ValueError, match="f_min"):
        T.match_l0(lambda f: 1.0, 1.0, f_min=1.0, f_max=0.5)


# ============================================================================ rows
def tiny_grid(noise_std=0.0):
    """The tables theorem_rows reads, with the values of the shipped ``tiny`` config (a
    namespace, so that these tests do not depend on the config loader)."""
    from types import SimpleNamespace

    fam = SimpleNamespace(target_l0=(2.0, 3.0))
    return SimpleNamespace(
        data={"kind": "spiked", "n": 8, "m": 16, "d_sae": None, "k": 2, "lo": 1.0, "hi": 3.0,
              "nonneg": True, "noise_std": noise_std, "rho": [0.0, 0.9]},
        train={"batch_size": 32}, eval={"samples": 128, "tol": 1e-10},
        reference={"ladder": 3, "fraction_min": 0.05, "fraction_max": 0.5, "l2": 1e-3},
        families=[fam, SimpleNamespace(target_l0=())])


@pytest.fixture(scope="module")
def tiny_rows():
    from aensae.experiments.spiked.data import data_point

    grid = tiny_grid()
    point = data_point(grid, 0.9, 0)
    return grid, point, T.theorem_rows(grid, point)


def test_theorem_rows_on_the_tiny_grid(tiny_rows):
    grid, point, rows = tiny_rows
    targets = sorted({t for fam in grid.families for t in fam.target_l0} | {grid.data["k"]})
    assert len(rows) == 6 * len(targets)
    json.loads(json.dumps(rows))  # JSON-ready (NaN allowed, as Python writes it)
    seen = {(r["family"], r["weighting"], r["target_l0"]) for r in rows}
    assert seen == {(f, w, float(t)) for f, w in [("thm_lasso", None), ("thm_enet", None)]
                    + [(f, w) for f in ("thm_adaptive_lasso", "thm_aen")
                       for w in ("zou", "population")] for t in targets}
    n = grid.data["n"]
    for r in rows:
        assert r["kind"] == "theorem" and r["rho"] == 0.9 and r["seed"] == 0
        assert r["certified"] == 1.0
        assert r["lam1"] == pytest.approx(r["lam1_fraction"] * r["lam_max"])
        ridge = r["family"] in ("thm_enet", "thm_aen")
        assert r["lam2"] == pytest.approx(n * grid.reference["l2"] if ridge else 0.0)
        assert r["l0_matched"] == (abs(r["l0"] - r["target_l0"]) <= T.L0_RTOL * r["target_l0"])
        assert r["init"] == ({"thm_adaptive_lasso": "lasso", "thm_aen": "enet"}
                             .get(r["family"]))
        # the noiseless condition of aensae.theory.support is necessary and sufficient
        assert r["cond_applicable"] and r["cond_agree"] == 1.0
        assert r["cond_predicted"] == pytest.approx(r["sign_recovery"])
        assert 0.0 <= r["supp_f1"] <= 1.0 and r["solves"] >= 0
    # the metrics agree with the codes recomputed here at the row's penalty (lasso)
    r = next(r for r in rows if r["family"] == "thm_lasso" and r["l0_matched"])
    codes = solve(point.dictionary.D, point.X_eval, r["lam1"], 0.0, None, True).codes
    H = point.H_eval
    tp = (codes != 0) & (H != 0)
    assert r["tp_bias"] == pytest.approx(np.mean(codes[tp] / H[tp]))
    assert r["l0"] == pytest.approx(np.count_nonzero(codes, axis=1).mean())
    assert r["tp_bias"] < 1.0  # the lasso shrinks


def test_theorem_rows_with_noise_mark_the_condition_not_applicable(tiny_rows):
    _, point, _ = tiny_rows
    rows = T.theorem_rows(tiny_grid(noise_std=0.01), point, targets=[2.0], max_solves=4)
    assert len(rows) == 6
    assert all(not r["cond_applicable"] and math.isnan(r["cond_agree"]) for r in rows)


# ============================================================================ verdicts
def _row(family, weighting, rho, target, *, tp_bias=0.8, supp_f1=0.8, sign=0.5, seed=0,
         matched=True):
    return {"kind": "theorem", "family": family, "weighting": weighting, "rho": rho,
            "seed": seed, "target_l0": target, "l0": target, "l0_matched": matched,
            "tp_bias": tp_bias, "supp_f1": supp_f1, "sign_recovery": sign,
            "certified": 1.0, "gamma": 1.0, "eps": 1e-3 if weighting == "zou" else None,
            "top_p": 0.01 if weighting == "population" else None,
            "w_min": 0.1 if weighting == "population" else None,
            "w_max": 10.0 if weighting == "population" else None,
            "l2": 1e-3 if family in ("thm_enet", "thm_aen") else 0.0}


CELLS = [(0.0, 2.0), (0.0, 4.0), (0.9, 2.0), (0.9, 4.0)]


def _hand_rows():
    """Baselines tp_bias 0.8, supp_f1 0.8, sign 0.5 everywhere; adaptive rows per setting:

    - adaptive lasso, zou: |1 - bias| 0.2 -> 0.1 in all 4 cells: 2a supported;
      supp_f1 0.9 in 3 cells, 0.802 (tie) in 1: supported; sign 0.4 everywhere:
      contradicted.
    - adaptive lasso, population: bias 0.7 (|1-b| 0.3, worse) in all cells: 2a
      contradicted; supp_f1 0.9 in 2 cells, 0.8 in 2: inconclusive (2 of 4 < 75%);
      sign 0.6 in 3 cells, 0.3 in 1: inconclusive (worse in one).
    - AEN, zou: rows missing everywhere: n/a.
    - AEN, population: only cell (0.9, 4) present, better in every metric: supported
      on 1 computable cell with 3 n/a; bias 1.1 (|1-b| 0.1 < 0.2).
    """
    rows = []
    for rho, t in CELLS:
        rows.append(_row("thm_lasso", None, rho, t))
        rows.append(_row("thm_enet", None, rho, t))
        f1 = 0.802 if (rho, t) == (0.9, 4.0) else 0.9
        rows.append(_row("thm_adaptive_lasso", "zou", rho, t, tp_bias=0.9, supp_f1=f1,
                         sign=0.4))
        f1p = 0.9 if rho == 0.0 else 0.8
        sp = 0.3 if (rho, t) == (0.0, 2.0) else 0.6
        rows.append(_row("thm_adaptive_lasso", "population", rho, t, tp_bias=0.7,
                         supp_f1=f1p, sign=sp))
    rows.append(_row("thm_aen", "population", 0.9, 4.0, tp_bias=1.1, supp_f1=0.95, sign=0.9))
    return rows


def _verdict(comps, metric, weighting, adaptive):
    (c,) = [c for c in comps if c["metric"] == metric and c["weighting"] == weighting
            and c["adaptive"] == adaptive]
    return c


def test_theorem_comparisons_follow_the_rule():
    comps = T.theorem_comparisons(_hand_rows())
    assert len(comps) == 3 * 2 * 2
    c = _verdict(comps, "tp_bias", "zou", "thm_adaptive_lasso")
    assert (c["verdict"], c["better"], c["worse"], c["ties"], c["na"]) == ("supported", 4, 0,
                                                                             0, 0)
    c = _verdict(comps, "supp_f1", "zou", "thm_adaptive_lasso")
    assert (c["verdict"], c["better"], c["ties"]) == ("supported", 3, 1)
    assert _verdict(comps, "sign_recovery", "zou", "thm_adaptive_lasso")["verdict"] == \
        "contradicted"
    assert _verdict(comps, "tp_bias", "population", "thm_adaptive_lasso")["verdict"] == \
        "contradicted"
    c = _verdict(comps, "supp_f1", "population", "thm_adaptive_lasso")
    assert (c["verdict"], c["better"], c["ties"]) == ("inconclusive", 2, 2)
    c = _verdict(comps, "sign_recovery", "population", "thm_adaptive_lasso")
    assert (c["verdict"], c["better"], c["worse"]) == ("inconclusive", 3, 1)
    for metric in ("tp_bias", "supp_f1", "sign_recovery"):
        c = _verdict(comps, metric, "zou", "thm_aen")
        assert (c["verdict"], c["na"]) == ("n/a", 4)
        c = _verdict(comps, metric, "population", "thm_aen")
        assert (c["verdict"], c["better"], c["na"]) == ("supported", 1, 3)


def test_theorem_verdicts_markdown_names_settings_and_prints_na():
    lines = T.theorem_verdicts(_hand_rows())
    text = "\n".join(lines)
    verdict_lines = [x for x in lines if x.startswith("- **2")]
    assert len(verdict_lines) == 12

    def line(claim, metric, weighting, pair):
        (x,) = [x for x in verdict_lines if x.startswith(f"- **{claim}")
                and f"; {metric}" in x and weighting in x and pair in x]
        return re.search(r": \*\*([a-z/]+)\*\*", x).group(1), x

    v, x = line("2a", "|1 - tp_bias|", "Zou weights", "adaptive lasso vs lasso")
    assert v == "supported" and "gamma 1" in x and "l2 = 0" in x
    assert "targets 2, 4" in x and "rho 0, 0.9" in x
    assert line("2a", "|1 - tp_bias|", "population weights",
                "adaptive lasso vs lasso")[0] == "contradicted"
    assert line("2b", "supp_f1", "population weights", "adaptive lasso vs lasso")[0] == \
        "inconclusive"
    v, x = line("2b", "sign_recovery", "Zou weights", "AEN vs elastic net")
    assert v == "n/a" and "n/a 4" in x
    v, x = line("2a", "|1 - tp_bias|", "population weights", "AEN vs elastic net")
    assert v == "supported" and "l2 = 0.001" in x and "top_p 0.01" in x
    # tables: one per rho, missing cells print n/a
    assert "### rho = 0" in text and "### rho = 0.9" in text
    (aen_zou,) = [x for x in lines if x.startswith("| 2 | AEN | zou |")][:1]
    assert aen_zou.count("n/a") == 5
    assert "one dictionary draw per (rho, seed)" in text


def test_theorem_verdicts_take_the_median_over_seeds_and_drop_unmatched_rows():
    rows = [_row("thm_lasso", None, 0.0, 4.0, tp_bias=0.8, seed=s) for s in (0, 1, 2)]
    rows += [_row("thm_adaptive_lasso", "zou", 0.0, 4.0, tp_bias=b, seed=s)
             for s, b in ((0, 0.5), (1, 0.9), (2, 0.95))]  # median 0.9: better
    comps = T.theorem_comparisons(rows)
    assert _verdict(comps, "tp_bias", "zou", "thm_adaptive_lasso")["verdict"] == "supported"
    rows[3]["l0_matched"] = rows[4]["l0_matched"] = rows[5]["l0_matched"] = False
    c = _verdict(T.theorem_comparisons(rows), "tp_bias", "zou", "thm_adaptive_lasso")
    assert (c["verdict"], c["na"]) == ("n/a", 1)
    assert "closest 4.00" in "\n".join(T.theorem_verdicts(rows))
    # rows read back from a CSV: strings and empty cells, never an exception
    csv_like = [{k: ("" if v is None else str(v)) for k, v in r.items()} for r in rows]
    assert T.theorem_verdicts(csv_like)
    assert T.theorem_verdicts([])[-2].startswith("n/a")
    assert T.theorem_comparisons([{"kind": "sae"}]) and all(
        c["verdict"] == "n/a" for c in T.theorem_comparisons([{"kind": "sae"}]))
