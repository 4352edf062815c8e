"""Exact adaptive elastic net against cvxpy: the two weightings of the theorem check.

tests/solvers/test_solvers.py already checks ``solve_adaptive`` (Zou weights) against
scikit-learn and ``solve`` with generic weights against cvxpy. Missing there, and added
here on tiny problems (n = 6, m = 10), both signed and non-negative:

- Zou / Zou & Zhang per-signal weights ``w_bi = (|h_init,bi| + eps)^-gamma`` with the
  default initial estimate (the exact elastic-net / lasso codes at the same ``lam1``),
  solved by ``solve_adaptive``, against the same problem written in cvxpy with the
  weights computed here from cvxpy's own initial estimate;
- the AEN-SAE's population weights (``clip((ref / mean_b |h_init,b|)^gamma, w_min,
  w_max)``, written out here) with an l2 term, solved by ``solve`` with an (m,) weight
  vector, against cvxpy.

Oracles: cvxpy (Clarabel, tight tolerances) and the weight formulas written here; the
certificate is the solver's own (``certified``) and the duality gap recomputed by
``aensae.solvers.duality_gap``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cvx_support import cvx_codes, tiny_problem

from aensae.solvers import duality_gap, population_weights_from_codes, solve, solve_adaptive

N, M, B = 6, 10, 4
TOL = 1e-10



def lam_max_by_hand(D, X, nonneg):
    C = X @ D
    return float(np.max(np.maximum(C, 0.0) if nonneg else np.abs(C)))



def objective_by_hand(D, X, H, lam1, lam2, W):
    W = np.broadcast_to(np.ones(D.shape[1]) if W is None else W, H.shape)
    R = X - H @ D.T
    return (0.5 * np.sum(R * R, axis=1) + lam1 * np.sum(W * np.abs(H), axis=1)
            + 0.5 * lam2 * np.sum(H * H, axis=1))


def check_against_cvxpy(D, X, res, lam1, lam2, W, nonneg):
    sq = np.einsum("bn,bn->b", X, X)
    assert res.all_certified, res.status
    assert np.all(duality_gap(D, X, res.codes, lam1, lam2, W, nonneg) <= TOL * sq)
    H_ref, F_ref = cvx_codes(D, X, lam1, lam2, W, nonneg, values=True)
    F = objective_by_hand(D, X, res.codes, lam1, lam2, W)
    np.testing.assert_allclose(F, F_ref, rtol=1e-7, atol=1e-10)
    assert np.all(F <= F_ref + 1e-9 * sq)  # the certified code is at least as good
    np.testing.assert_allclose(res.codes, H_ref, rtol=0, atol=1e-5 * max(1.0, np.abs(H_ref).max()))
    if nonneg:
        assert np.all(res.codes >= 0)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("lam2", [0.0, 0.1])
def test_zou_per_signal_weights_against_cvxpy(nonneg, lam2):
    D, X, _ = tiny_problem(nonneg, seed=3 + int(nonneg))
    lam1 = 0.15 * lam_max_by_hand(D, X, nonneg)
    gamma, eps = 1.0, 1e-3
    res, w = solve_adaptive(D, X, lam1, lam2, gamma=gamma, eps=eps, nonneg=nonneg, tol=TOL)
    assert w.shape == (B, M)
    # the weights come from the exact (elastic-net / lasso) codes at the same lam1: cvxpy's
    H_init, _ = cvx_codes(D, X, lam1, lam2, None, nonneg, values=True)
    W_hand = 1.0 / (np.abs(H_init) + eps) ** gamma
    np.testing.assert_allclose(w, W_hand, rtol=1e-4)
    # the weights differ across signals (per-signal, not shared)
    assert not np.allclose(w[0], w[1])
    check_against_cvxpy(D, X, res, lam1, lam2, w, nonneg)
    # with the hand weights themselves the solver gives the cvxpy solution too
    res_hand = solve(D, X, lam1, lam2, weights=W_hand, nonneg=nonneg, tol=TOL)
    check_against_cvxpy(D, X, res_hand, lam1, lam2, W_hand, nonneg)


def population_by_hand(H, gamma, top_p, w_min, w_max):
    ema = np.abs(H).mean(axis=0)
    k = max(1, math.ceil(top_p * H.shape[1]))
    ref = np.sort(ema)[::-1][:k].mean()
    w = np.empty_like(ema)
    for i, e in enumerate(ema):
        w[i] = w_max if e == 0 else min(max((ref / e) ** gamma, w_min), w_max)
    return w


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize(("gamma", "top_p", "w_min", "w_max"),
                         [(1.0, 0.01, 0.1, 10.0), (0.5, 0.2, 0.3, 4.0)])
def test_population_weights_with_l2_against_cvxpy(nonneg, gamma, top_p, w_min, w_max):
    D, X, _ = tiny_problem(nonneg, seed=11 + int(nonneg))
    lam1, lam2 = 0.1 * lam_max_by_hand(D, X, nonneg), 0.05
    init = solve(D, X, lam1, lam2, nonneg=nonneg, tol=TOL)
    assert init.all_certified
    w = population_weights_from_codes(init.codes, gamma, top_p, w_min, w_max)
    H_init, _ = cvx_codes(D, X, lam1, lam2, None, nonneg, values=True)
    # interior-point codes are only approximately sparse: zero their dust before the
    # hand formula (an atom at 1e-10 would get w_max either way, by the clip)
    H_init[np.abs(H_init) < 1e-7] = 0.0
    np.testing.assert_allclose(w, population_by_hand(H_init, gamma, top_p, w_min, w_max),
                               rtol=1e-5)
    assert w.shape == (M,) and np.ptp(w) > 0
    res = solve(D, X, lam1, lam2, weights=w, nonneg=nonneg, tol=TOL)
    check_against_cvxpy(D, X, res, lam1, lam2, w, nonneg)
