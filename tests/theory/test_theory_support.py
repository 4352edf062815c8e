"""Recovery conditions and amortization-gap reports against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import aensae.metrics as metrics
from aensae.objective import ExactProblem
from aensae.theory import (
    amortization_gap,
    compare_codes,
    exact_vs_truth,
    recovery_conditions,
    support_recovery_per_sample,
)
from aensae.theory import support as support_mod


def _problem(seed=0, n=20, m=40):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n, m))
    return D / np.linalg.norm(D, axis=0), rng


def _sparse(rng, B, m, k, nonneg=False):
    H = np.zeros((B, m))
    for b in range(B):
        S = rng.choice(m, k, replace=False)
        s = np.ones(k) if nonneg else rng.choice([-1.0, 1.0], k)
        H[b, S] = s * rng.uniform(1.0, 3.0, k)
    return H


def test_metrics_are_reexported_unchanged():
    assert support_mod.support_recovery_per_sample is metrics.support_recovery_per_sample
    assert support_mod.dictionary_recovery is metrics.dictionary_recovery
    assert support_mod.support_recovery is metrics.support_recovery


def test_candidate_solves_the_restricted_kkt_equations():
    D, rng = _problem(1)
    H = _sparse(rng, 5, 40, 4)
    lam1, lam2 = 0.3, 0.2
    w = rng.uniform(0.5, 2.0, 40)
    rc = recovery_conditions(D, H, lam1, lam2, w)
    X = H @ D.T
    for b in range(5):
        S = np.flatnonzero(H[b])
        hS = rc.candidate[b, S]
        lhs = (D[:, S].T @ D[:, S] + lam2 * np.eye(S.size)) @ hS
        rhs = D[:, S].T @ X[b] - lam1 * w[S] * np.sign(H[b, S])
        np.testing.assert_allclose(lhs, rhs, atol=1e-10)
        r = X[b] - D[:, S] @ hS
        off = np.setdiff1d(np.arange(40), S)
        assert rc.irrepresentable[b] == pytest.approx(
            np.max(np.abs(D[:, off].T @ r) / (lam1 * w[off])), rel=1e-10)
        assert rc.sign_margin[b] == pytest.approx(np.min(np.sign(H[b, S]) * hS), rel=1e-10)


def test_recovery_conditions_validation():
    D, _ = _problem(2, n=3, m=6)
    H = np.zeros((1, 6))
    H[0, :4] = 1.0  # four atoms in R^3 with lam2 = 0: singular
    with pytest.raises(ValueError, match="singular"):
        recovery_conditions(D, H, 0.1)
    with pytest.raises(ValueError, match="non-negative"):
        recovery_conditions(D, -H, 0.1, 0.1, nonneg=True)


def test_amortization_gap_of_exact_codes_is_zero_and_of_perturbed_codes_is_the_excess():
    D, rng = _problem(3)
    offset = rng.standard_normal(20) * 0.1
    prob = ExactProblem(D=D, lam1=0.3, lam2=0.1, weights=rng.uniform(0.5, 2, 40),
                        nonneg=True, offset=offset)
    X = _sparse(rng, 6, 40, 3, nonneg=True) @ D.T + offset
    rep, exact = amortization_gap(prob, X, np.zeros((6, 40)))
    assert rep.certified.all()
    Xc = X - offset

    def F(h):
        r = Xc - h @ D.T
        return (0.5 * (r * r).sum(1) + prob.lam1 * (prob.weights * np.abs(h)).sum(1)
                + 0.5 * prob.lam2 * (h * h).sum(1))

    np.testing.assert_allclose(rep.objective_gap, F(np.zeros((6, 40))) - F(exact), rtol=1e-12)
    np.testing.assert_allclose(rep.code_error, np.linalg.norm(exact, axis=1))
    same, _ = amortization_gap(prob, torch.as_tensor(X), torch.as_tensor(exact))
    assert np.all(np.abs(same.objective_gap) <= 1e-9 * (Xc * Xc).sum(1))
    assert np.all(same.support["f1"] == 1.0) and np.all(same.feasible)
    neg, _ = amortization_gap(prob, X, -exact)
    assert not neg.feasible.any()


def test_exact_vs_truth_report():
    D, rng = _problem(4, n=30, m=40)
    H = _sparse(rng, 5, 40, 3)
    prob = ExactProblem(D=D, lam1=0.05, lam2=0.01)
    X = H @ D.T
    rep, exact = exact_vs_truth(prob, X, H)
    np.testing.assert_allclose(rep.code_error, np.linalg.norm(exact - H, axis=1))
    assert np.all(rep.objective_gap >= -1e-9)
    expected = support_recovery_per_sample(exact, H)
    np.testing.assert_array_equal(rep.support["f1"], expected["f1"])


def test_compare_codes_shape_errors():
    D, rng = _problem(5)
    prob = ExactProblem(D=D, lam1=0.3)
    X = rng.standard_normal((2, 20))
    with pytest.raises(ValueError, match="codes must have shape"):
        compare_codes(prob, X, np.zeros((2, 39)), np.zeros((2, 40)))
