"""Tests of aensae.solvers: the fast certified solver against independent oracles.

Oracles never reuse the code under test:

- scikit-learn's ``ElasticNet`` / ``Lasso`` called here with our own parameter mapping
  (weighted problems by column rescaling of the augmented lasso ``[D; sqrt(lam2) I]``);
- cvxpy problems written here (Clarabel, tight tolerances), next to ``solve_cvxpy``;
- closed forms: soft-thresholding for orthogonal dictionaries, the single-atom solution
  just below ``lam_max``, equal splitting over duplicated atoms when ``lam2 > 0``;
- KKT conditions and the objective written out from first principles.
"""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from cvx_support import cvx_codes, weight_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet, Lasso

from aensae.objective import exact_objective
from aensae.solvers import (
    FastSolver,
    UncertifiedWarning,
    duality_gap,
    kkt_violation,
    lam_max,
    population_weights_from_codes,
    solve,
    solve_adaptive,
    solve_batches,
    solve_cvxpy,
    solve_sklearn,
)
from aensae.solvers._kernels import _top_k_row, fill_upper
from aensae.solvers.fast import gram, release_workspace
from aensae.solvers.reference import sklearn_parameters
from aensae.synthetic import (
    block_dictionary,
    multi_spike_dictionary,
    sample_codes,
    sample_signals,
    spiked_dictionary,
)

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


# ============================================================================ oracles
def objective(D, X, H, lam1, lam2=0.0, w=None):
    """F(h) = 1/2||x - D h||^2 + lam1 sum_i w_i |h_i| + lam2/2 ||h||^2, per row, by hand."""
    H = H.toarray() if sp.issparse(H) else np.asarray(H)
    w = np.ones(D.shape[1]) if w is None else np.asarray(w)
    out = np.empty(X.shape[0])
    for b in range(X.shape[0]):
        wb = w if w.ndim == 1 else w[b]
        r = X[b] - D @ H[b]
        out[b] = 0.5 * r @ r + lam1 * np.sum(wb * np.abs(H[b])) + 0.5 * lam2 * H[b] @ H[b]
    return out



def sk_codes(D, X, lam1, lam2=0.0, w=None, nonneg=False, tol=1e-13):
    """scikit-learn coordinate descent with this test's own parameter mapping.

    sklearn ElasticNet minimises 1/(2N)||y - A c||^2 + a r ||c||_1 + a (1-r)/2 ||c||^2 on N
    rows. Unweighted: A = D, N = n, so lam1 = n a r, lam2 = n a (1-r). Weighted: the
    augmented lasso A = [D; sqrt(lam2) I] diag(1/w), y = [x; 0], N = n + m, c = w h, so
    lam1 = (n + m) a. A signal on which coordinate descent stalls short of ``tol`` (near-
    collinear atoms at rho = 0.99 can leave its gap at 1e-11) is solved by the cvxpy oracle
    instead, so the reference is always converged.
    """
    n, m = D.shape
    W = weight_rows(w, X.shape[0], m)
    H = np.zeros((X.shape[0], m))
    for b in range(X.shape[0]):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", ConvergenceWarning)
                H[b] = _sk_one(D, X[b], lam1, lam2, W[b] if w is not None else None, nonneg,
                               tol)
        except ConvergenceWarning:
            H[b] = cvx_codes(D, X[b : b + 1], lam1, lam2, None if w is None else W[b],
                             nonneg)[0]
    return H


def _sk_one(D, x, lam1, lam2, w_row, nonneg, tol):
    n, m = D.shape
    if w_row is None:
        if lam2 == 0:
            est = Lasso(alpha=lam1 / n, fit_intercept=False, tol=tol, max_iter=1_000_000,
                        positive=nonneg)
        else:
            est = ElasticNet(alpha=(lam1 + lam2) / n, l1_ratio=lam1 / (lam1 + lam2),
                             fit_intercept=False, tol=tol, max_iter=1_000_000,
                             positive=nonneg)
        est.fit(D, x)
        return est.coef_
    A = np.vstack([D, math.sqrt(lam2) * np.eye(m)]) / w_row
    y = np.concatenate([x, np.zeros(m)])
    est = Lasso(alpha=lam1 / (n + m), fit_intercept=False, tol=tol, max_iter=1_000_000,
                positive=nonneg)
    est.fit(A, y)
    return est.coef_ / w_row



def assert_kkt(D, X, H, lam1, lam2=0.0, w=None, nonneg=False, rtol=1e-7):
    """First-principles KKT check with g = D^T(D h - x) + lam2 h.

    h_i != 0: g_i = -lam1 w_i sign(h_i);  h_i = 0: |g_i| <= lam1 w_i (nonneg: g_i >= -lam1 w_i);
    nonneg: h >= 0. Tolerance relative to max(lam1 w, |D^T x|).
    """
    H = H.toarray() if sp.issparse(H) else np.asarray(H)
    W = weight_rows(w, X.shape[0], D.shape[1])
    for b in range(X.shape[0]):
        h, lw = H[b], lam1 * W[b]
        g = D.T @ (D @ h - X[b]) + lam2 * h
        scale = max(float(np.max(lw)), float(np.max(np.abs(D.T @ X[b]))), 1e-300)
        atol = rtol * scale
        on = h != 0
        if nonneg:
            assert np.all(h >= 0), f"signal {b}: negative code {h.min()}"
        np.testing.assert_allclose(g[on], -lw[on] * np.sign(h[on]), rtol=0, atol=atol,
                                   err_msg=f"signal {b}: stationarity on the support")
        off = ~on
        if nonneg:
            assert np.all(g[off] >= -lw[off] - atol), f"signal {b}: {g[off] + lw[off]}"
        else:
            excess = np.abs(g[off]) - lw[off]
            assert np.all(excess <= atol), f"signal {b}: {excess}"


def assert_objectives_agree(F_test, F_ref, X, rtol=1e-8):
    """|F_test - F_ref| <= rtol * max(F_ref, 1e-3 ||x||^2) per signal."""
    sq = np.einsum("bn,bn->b", X, X)
    scale = np.maximum(np.abs(F_ref), 1e-3 * sq) + 1e-300
    np.testing.assert_array_less(np.abs(F_test - F_ref), rtol * scale + 1e-14)


def problem(n, m, B, rho, *, k=3, nonneg_codes=False, noise=0.05, seed=0):
    """Spiked dictionary and signals D h + noise with k-sparse ground truth."""
    sd = spiked_dictionary(n, m, rho, seed=seed)
    X, _ = sample_signals(sd, B, min(k, m), nonneg=nonneg_codes, noise_std=noise, seed=seed + 1)
    return np.array(sd.D), np.array(X)


def make_weights(kind, B, m, seed):
    rng = np.random.default_rng(seed)
    if kind is None:
        return None
    if kind == "m":
        return rng.uniform(0.5, 2.0, m)
    return rng.uniform(0.5, 2.0, (B, m))


def shared_lam1(D, X, w, nonneg, frac):
    """frac times the median per-signal lam_max, computed by hand."""
    W = weight_rows(w, X.shape[0], D.shape[1])
    C = X @ D
    C = np.maximum(C, 0) if nonneg else np.abs(C)
    return frac * float(np.median(np.max(C / W, axis=1)))


# ============================================================================ the objective
def test_exact_objective_matches_hand_formula():
    rng = np.random.default_rng(0)
    D, X, H = rng.normal(size=(6, 9)), rng.normal(size=(4, 6)), rng.normal(size=(4, 9))
    w = rng.uniform(0.5, 2, 9)
    np.testing.assert_allclose(exact_objective(D, X, H, 0.7, 0.3, w),
                               objective(D, X, H, 0.7, 0.3, w), rtol=1e-13)
    W = rng.uniform(0.5, 2, (4, 9))
    np.testing.assert_allclose(exact_objective(D, X, H, 0.7, 0.0, W),
                               objective(D, X, H, 0.7, 0.0, W), rtol=1e-13)


# ============================================================================ scikit-learn
@pytest.mark.parametrize("rho", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("lam2", [0.0, 0.1])
@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("wkind", [None, "m", "Bm"])
def test_solve_agrees_with_sklearn(rho, lam2, nonneg, wkind):
    n, m, B = 16, 40, 4  # m > ws_init = 16: the working set may have to grow
    D, X = problem(n, m, B, rho, k=3, nonneg_codes=nonneg, seed=11)
    w = make_weights(wkind, B, m, seed=3)
    lam1 = shared_lam1(D, X, w, nonneg, 0.2)
    res = solve(D, X, lam1, lam2, weights=w, nonneg=nonneg)
    assert res.all_certified, res.status
    assert res.codes.shape == (B, m) and res.codes.dtype == np.float64
    H_sk = sk_codes(D, X, lam1, lam2, w, nonneg)
    F_fast = objective(D, X, res.codes, lam1, lam2, weight_rows(w, B, m))
    F_sk = objective(D, X, H_sk, lam1, lam2, weight_rows(w, B, m))
    assert_objectives_agree(F_fast, F_sk, X)
    np.testing.assert_allclose(exact_objective(D, X, res.codes, lam1, lam2, w), F_fast,
                               rtol=1e-12)
    # the certificate is an upper bound of the suboptimality against the oracle
    assert np.all(F_fast - F_sk <= res.gap + 1e-13 * np.abs(F_sk))
    assert np.all(res.gap <= 1e-10 * np.einsum("bn,bn->b", X, X))
    assert_kkt(D, X, res.codes, lam1, lam2, w, nonneg)
    if lam2 > 0 or rho < 0.99:  # unique (strongly convex, or generic D) and well conditioned
        scale = np.abs(H_sk).max()
        np.testing.assert_allclose(res.codes, H_sk, rtol=0, atol=1e-5 * scale)
        if lam2 > 0:  # supports agree too (no coefficient is borderline in these problems)
            np.testing.assert_array_equal(res.codes != 0, np.abs(H_sk) > 1e-9 * scale)
    if nonneg:
        assert np.all(res.codes >= 0)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("wkind", [None, "m", "Bm"])
def test_solve_sklearn_wrapper_matches_own_mapping(nonneg, wkind):
    D, X = problem(12, 30, 3, 0.5, nonneg_codes=nonneg, seed=5)
    w = make_weights(wkind, 3, 30, seed=4)
    lam1, lam2 = shared_lam1(D, X, w, nonneg, 0.25), 0.05
    ref = solve_sklearn(D, X, lam1, lam2, weights=w, nonneg=nonneg, tol=1e-12)
    H_sk = sk_codes(D, X, lam1, lam2, w, nonneg)
    F_ref = objective(D, X, ref.codes, lam1, lam2, weight_rows(w, 3, 30))
    assert_objectives_agree(F_ref, objective(D, X, H_sk, lam1, lam2, weight_rows(w, 3, 30)), X)
    np.testing.assert_allclose(ref.codes, H_sk, rtol=0, atol=1e-6 * np.abs(H_sk).max())
    assert ref.all_certified, ref.status
    fast = solve(D, X, lam1, lam2, weights=w, nonneg=nonneg)
    assert_objectives_agree(objective(D, X, fast.codes, lam1, lam2, weight_rows(w, 3, 30)),
                            F_ref, X)


def test_sklearn_parameters_by_hand():
    alpha, l1_ratio = sklearn_parameters(3.0, 1.0, 8)
    # n * alpha * l1_ratio = lam1, n * alpha * (1 - l1_ratio) = lam2
    assert alpha == pytest.approx(0.5) and l1_ratio == pytest.approx(0.75)
    assert sklearn_parameters(2.0, 0.0, 4) == pytest.approx((0.5, 1.0))
    with pytest.raises(ValueError, match="lam1"):
        sklearn_parameters(0.0, 0.0, 4)


# ============================================================================ cvxpy
@pytest.mark.parametrize(
    ("rho", "lam2", "nonneg", "wkind"),
    [(0.0, 0.0, False, None), (0.9, 0.2, True, "m"), (0.99, 0.05, False, "Bm"),
     (0.99, 0.0, True, None)],
)
def test_solve_agrees_with_solve_cvxpy(rho, lam2, nonneg, wkind):
    n, m, B = 10, 24, 3
    D, X = problem(n, m, B, rho, nonneg_codes=nonneg, seed=21)
    w = make_weights(wkind, B, m, seed=8)
    lam1 = shared_lam1(D, X, w, nonneg, 0.3)
    res = solve(D, X, lam1, lam2, weights=w, nonneg=nonneg)
    ref = solve_cvxpy(D, X, lam1, lam2, weights=w, nonneg=nonneg)
    assert res.all_certified and ref.all_certified, (res.status, ref.status)
    Wr = weight_rows(w, B, m)
    assert_objectives_agree(objective(D, X, res.codes, lam1, lam2, Wr),
                            objective(D, X, ref.codes, lam1, lam2, Wr), X)
    if lam2 > 0 or rho == 0.0:
        np.testing.assert_allclose(res.codes, ref.codes, rtol=0,
                                   atol=1e-6 * np.abs(ref.codes).max())
        np.testing.assert_array_equal(res.codes != 0, ref.codes != 0)


@pytest.mark.parametrize(("nonneg", "wkind"), [(False, "Bm"), (True, "m")])
def test_solve_agrees_with_cvxpy_written_here(nonneg, wkind):
    n, m, B = 12, 20, 3
    D, X = problem(n, m, B, 0.9, nonneg_codes=nonneg, seed=31)
    w = make_weights(wkind, B, m, seed=9)
    lam1, lam2 = shared_lam1(D, X, w, nonneg, 0.2), 0.1
    res = solve(D, X, lam1, lam2, weights=w, nonneg=nonneg)
    H_cvx = cvx_codes(D, X, lam1, lam2, w, nonneg)
    Wr = weight_rows(w, B, m)
    F_fast, F_cvx = objective(D, X, res.codes, lam1, lam2, Wr), objective(D, X, H_cvx, lam1,
                                                                          lam2, Wr)
    assert_objectives_agree(F_fast, F_cvx, X)
    assert np.all(F_fast <= F_cvx + 1e-10 * np.einsum("bn,bn->b", X, X))
    # strong convexity: ||h - h*||^2 <= 2 (F(h) - F*) / lam2, and interior-point codes are
    # only approximately sparse, so compare values, not supports
    np.testing.assert_allclose(res.codes, H_cvx, rtol=0, atol=1e-5 * np.abs(H_cvx).max())


def test_solve_cvxpy_all_zero_solution_is_exactly_zero_and_certified():
    sd = spiked_dictionary(20, 40, 0.99, seed=1)
    X, _ = sample_signals(sd, 5, 3, nonneg=False, seed=2)
    lam1 = 0.5  # above lam_max of signals 0..2 (0.086, 0.26, 0.47), below that of 3 and 4
    lm = lam_max(sd.D, X)
    assert np.all(lm[:3] < lam1) and np.all(lm[3:] > lam1)
    ref = solve_cvxpy(sd.D, X, lam1, 0.0)
    fast = solve(sd.D, X, lam1, 0.0)
    np.testing.assert_array_equal(fast.codes[:3], 0.0)
    assert fast.all_certified
    assert ref.all_certified, (ref.rel_gap, ref.status)
    np.testing.assert_array_equal(ref.codes[:3], 0.0)


# ============================================================================ special problems
@pytest.mark.parametrize("lam2", [0.0, 0.2])
@pytest.mark.parametrize("nonneg", [False, True])
def test_duplicate_atoms(lam2, nonneg):
    rng = np.random.default_rng(2)
    n, m0, B = 10, 14, 4
    D0 = rng.normal(size=(n, m0))
    D0 /= np.linalg.norm(D0, axis=0)
    D = np.hstack([D0, D0[:, :5]])  # atoms 14..18 duplicate atoms 0..4
    H0 = np.zeros((B, m0 + 5))
    H0[:, :3] = rng.uniform(1, 2, (B, 3)) * (1 if nonneg else rng.choice([-1, 1], (B, 3)))
    X = H0 @ D.T + 0.05 * rng.normal(size=(B, n))
    lam1 = shared_lam1(D, X, None, nonneg, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncertifiedWarning)
        res = solve(D, X, lam1, lam2, nonneg=nonneg)
    assert res.all_certified, res.status
    assert np.all(res.gap <= 1e-10 * np.einsum("bn,bn->b", X, X))
    # the reduced dictionary has the same optimal value when lam2 = 0 (merge duplicates)
    H_sk = sk_codes(D, X, lam1, lam2, None, nonneg)
    assert_objectives_agree(objective(D, X, res.codes, lam1, lam2),
                            objective(D, X, H_sk, lam1, lam2), X)
    assert_kkt(D, X, res.codes, lam1, lam2, None, nonneg)
    if lam2 == 0:
        H_red = sk_codes(D0, X, lam1, 0.0, None, nonneg)
        assert_objectives_agree(objective(D, X, res.codes, lam1), objective(D0, X, H_red, lam1), X)
    else:
        # strictly convex and symmetric in a duplicated pair: the solution splits equally
        np.testing.assert_allclose(res.codes[:, :5], res.codes[:, m0:], rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.codes, H_sk, rtol=0, atol=1e-6 * np.abs(H_sk).max())


@pytest.mark.parametrize("nonneg", [False, True])
def test_zero_signals(nonneg):
    D, X = problem(12, 40, 5, 0.5, nonneg_codes=nonneg, seed=3)
    X[[0, 3]] = 0.0
    w = make_weights("Bm", 5, 40, seed=1)
    res = solve(D, X, shared_lam1(D, X, w, nonneg, 0.3), 0.1, weights=w, nonneg=nonneg)
    assert res.all_certified
    np.testing.assert_array_equal(res.codes[[0, 3]], 0.0)
    np.testing.assert_array_equal(res.gap[[0, 3]], 0.0)
    assert np.all(res.support_size[[1, 2, 4]] > 0)
    only_zero = solve(D, np.zeros((3, 12)), 0.5)
    np.testing.assert_array_equal(only_zero.codes, 0.0)
    np.testing.assert_array_equal(only_zero.gap, 0.0)
    assert only_zero.all_certified
    np.testing.assert_array_equal(duality_gap(D, np.zeros((2, 12)), np.zeros((2, 40)), 1.0),
                                  0.0)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("wkind", [None, "m", "Bm"])
def test_lam_max_by_hand_and_its_two_sides(nonneg, wkind):
    D, X = problem(15, 30, 4, 0.3, nonneg_codes=nonneg, seed=17)
    w = make_weights(wkind, 4, 30, seed=2)
    W = weight_rows(w, 4, 30)
    hand = np.array([max((max(D[:, i] @ X[b], 0.0) if nonneg else abs(D[:, i] @ X[b]))
                         / W[b, i] for i in range(30)) for b in range(4)])
    np.testing.assert_allclose(lam_max(D, X, weights=w, nonneg=nonneg), hand, rtol=1e-13)
    lam2 = 0.1
    # lam1 >= lam_max for every signal: all codes zero, certified, zero gap
    res = solve(D, X, float(hand.max()), lam2, weights=w, nonneg=nonneg)
    np.testing.assert_array_equal(res.codes, 0.0)
    assert res.all_certified
    np.testing.assert_allclose(res.gap, 0.0, atol=1e-12 * np.einsum("bn,bn->b", X, X).max())
    for b in range(4):
        x = X[b : b + 1]
        wb = None if w is None else W[b]
        at = solve(D, x, hand[b], lam2, weights=wb, nonneg=nonneg)
        np.testing.assert_array_equal(at.codes, 0.0)
        assert at.all_certified
        below = solve(D, x, 0.99 * hand[b], lam2, weights=wb, nonneg=nonneg)
        assert below.all_certified
        # exactly one non-zero: the argmax atom, with its closed-form single-atom value
        c = D.T @ x[0]
        j = int(np.argmax((np.maximum(c, 0) if nonneg else np.abs(c)) / W[b]))
        expect = np.zeros(30)
        expect[j] = np.sign(c[j]) * (abs(c[j]) - 0.99 * hand[b] * W[b, j]) / (D[:, j] @ D[:, j]
                                                                              + lam2)
        np.testing.assert_allclose(below.codes[0], expect, rtol=1e-10, atol=1e-14)
        assert below.support_size[0] == 1


# ============================================================================ closed forms
def orthogonal_problem(n, m, B, seed):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, m)))
    return Q, rng.normal(size=(B, n))


def soft_threshold_solution(D, X, lam1, lam2, W, nonneg):
    """h* = S(D^T x, lam1 w) / (1 + lam2) (nonneg: positive part) for D^T D = I."""
    C = X @ D
    if nonneg:
        return np.maximum(C - lam1 * W, 0.0) / (1 + lam2)
    return np.sign(C) * np.maximum(np.abs(C) - lam1 * W, 0.0) / (1 + lam2)


def check_gap_bounds_suboptimality(D, X, lam1, lam2, W, nonneg, rng):
    Hs = soft_threshold_solution(D, X, lam1, lam2, W, nonneg)
    Fs = objective(D, X, Hs, lam1, lam2, W)
    sq = np.einsum("bn,bn->b", X, X)
    assert np.all(duality_gap(D, X, Hs, lam1, lam2, W, nonneg) <= 1e-12 * (sq + 1))
    B, m = Hs.shape
    perturbed = [Hs + s * rng.normal(size=Hs.shape) for s in (1e-9, 1e-5, 1e-2, 1.0)]
    perturbed += [Hs * 0.9, Hs * 1.1, np.zeros_like(Hs), Hs + (Hs == 0) * 1e-3]
    on = Hs != 0
    perturbed += [Hs + on * rng.normal(scale=1e-3, size=Hs.shape)]  # same support
    for H in perturbed:
        if nonneg:
            H = np.abs(H)
        gap = duality_gap(D, X, H, lam1, lam2, W, nonneg)
        sub = objective(D, X, H, lam1, lam2, W) - Fs
        assert np.all(sub >= -1e-12 * (np.abs(Fs) + 1)), sub
        assert np.all(gap >= sub - 1e-12 * (np.abs(Fs) + 1)), (gap, sub)
    if nonneg and np.any(Hs > 0):
        H = Hs.copy()
        H[Hs > 0] *= -1
        assert np.all(np.isinf(duality_gap(D, X, H, lam1, lam2, W, nonneg)[np.any(Hs > 0, 1)]))
    return Hs


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("lam2", [0.0, 0.5])
@pytest.mark.parametrize(("n", "m"), [(12, 8), (10, 10)])
def test_gap_bounds_suboptimality_orthogonal(nonneg, lam2, n, m):
    B = 5
    D, X = orthogonal_problem(n, m, B, seed=n + m)
    W = np.random.default_rng(1).uniform(0.5, 2.0, (B, m))
    lam1 = 0.5
    Hs = check_gap_bounds_suboptimality(D, X, lam1, lam2, W, nonneg, np.random.default_rng(2))
    assert np.any(Hs != 0) and np.any(Hs == 0)
    res = solve(D, X, lam1, lam2, weights=W, nonneg=nonneg)
    assert res.all_certified
    np.testing.assert_allclose(res.codes, Hs, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(res.codes != 0, Hs != 0)
    np.testing.assert_allclose(kkt_violation(D, X, res.codes, lam1, lam2, W, nonneg), 0.0,
                               atol=1e-12)


@PROPERTY
@given(
    n=st.integers(1, 20),
    dm=st.integers(0, 10),
    B=st.integers(1, 5),
    frac=st.floats(0.01, 1.5),
    lam2=st.sampled_from([0.0, 1e-3, 0.3, 2.0]),
    nonneg=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_gap_bounds_suboptimality(n, dm, B, frac, lam2, nonneg, seed):
    m = max(1, n - dm)
    D, X = orthogonal_problem(n, m, B, seed)
    rng = np.random.default_rng(seed + 1)
    W = rng.uniform(0.3, 3.0, (B, m))
    lam1 = frac * float(np.median(np.max(np.abs(X @ D) / W, axis=1)))
    check_gap_bounds_suboptimality(D, X, lam1, lam2, W, nonneg, rng)


# ============================================================================ KKT
@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("lam2", [0.0, 0.05])
def test_kkt_at_returned_codes_large_working_set_growth(nonneg, lam2):
    D, X = problem(40, 200, 12, 0.9, k=8, nonneg_codes=nonneg, seed=41)
    lam1 = shared_lam1(D, X, None, nonneg, 0.1)
    res = solve(D, X, lam1, lam2, nonneg=nonneg, ws_init=4, ws_grow=3)
    assert res.all_certified, res.status
    # started from 4 atoms: every larger support had to be reached by growing the working set
    big = res.support_size > 4
    assert big.sum() >= 6 and np.all(res.n_rounds[big] > 1)
    assert_kkt(D, X, res.codes, lam1, lam2, None, nonneg, rtol=1e-6)
    assert np.all(kkt_violation(D, X, res.codes, lam1, lam2, None, nonneg) <= 1e-6 * lam1)
    default = solve(D, X, lam1, lam2, nonneg=nonneg)
    np.testing.assert_allclose(res.codes, default.codes, rtol=0,
                               atol=1e-6 * np.abs(default.codes).max())


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("lam2", [0.0, 0.05])
def test_supports_beyond_linear_working_set_growth_are_certified(nonneg, lam2):
    # Signals far above the penalty (like the residual-stream outlier tokens of an LLM,
    # 50x the median norm) need supports of hundreds of atoms. A working set that grew
    # by ws_grow atoms per round could reach at most ws_init + max_rounds * ws_grow of
    # them; it must at most double per round instead, so any support is reachable.
    ws_init, ws_grow, max_rounds = 4, 2, 20
    D, X = problem(64, 256, 6, 0.0, k=120, nonneg_codes=nonneg, noise=0.01, seed=83)
    lam1 = shared_lam1(D, X, None, nonneg, 0.002)
    ref = sk_codes(D, X, lam1, lam2, nonneg=nonneg)
    reach = ws_init + max_rounds * ws_grow
    assert np.all(np.count_nonzero(ref, axis=1) > reach)  # linear growth cannot get there
    res = solve(D, X, lam1, lam2, nonneg=nonneg, ws_init=ws_init, ws_grow=ws_grow,
                max_rounds=max_rounds)
    assert res.all_certified, res.status
    assert np.all(res.support_size > reach)
    assert_objectives_agree(objective(D, X, res.codes, lam1, lam2),
                            objective(D, X, ref, lam1, lam2), X)
    assert_kkt(D, X, res.codes, lam1, lam2, None, nonneg, rtol=1e-6)


def test_blas_threading_does_not_change_the_codes():
    # the default screens with one BLAS call per numba thread; blas_threads=None leaves the
    # product to BLAS's own threads. Both bound their rounding the same way.
    D, X = problem(40, 200, 64, 0.5, k=6, nonneg_codes=True, seed=43)
    lam1 = shared_lam1(D, X, None, True, 0.2)
    one = solve(D, X, lam1, 0.05, nonneg=True, batch_size=24)
    own = solve(D, X, lam1, 0.05, nonneg=True, blas_threads=None)
    assert one.all_certified and own.all_certified
    np.testing.assert_allclose(one.codes, own.codes, rtol=0, atol=1e-9)
    np.testing.assert_allclose(one.codes, sk_codes(D, X, lam1, 0.05, nonneg=True), rtol=0,
                               atol=1e-6)


def test_kkt_violation_detects_a_wrong_code():
    D, X = problem(10, 20, 2, 0.0, seed=4)
    lam1 = shared_lam1(D, X, None, False, 0.3)
    res = solve(D, X, lam1, 0.1)
    assert np.all(kkt_violation(D, X, res.codes, lam1, 0.1) <= 1e-9 * lam1)
    H = res.codes.copy()
    H[:, np.argmin(res.support_size)] += 0.1
    H[0, np.flatnonzero(H[0] == 0)[0]] = 0.5
    assert kkt_violation(D, X, H, lam1, 0.1)[0] > 1e-3 * lam1


# ============================================================================ property
@PROPERTY
@given(
    n=st.integers(2, 24),
    m=st.integers(1, 24),
    B=st.integers(1, 5),
    rho=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
    frac=st.floats(0.05, 1.3),
    lam2=st.sampled_from([0.0, 0.01, 0.5]),
    wkind=st.sampled_from([None, "m", "Bm"]),
    nonneg=st.booleans(),
    ws_init=st.integers(1, 32),
    seed=st.integers(0, 10_000),
)
def test_property_solve_certified_matches_sklearn_and_kkt(n, m, B, rho, frac, lam2, wkind,
                                                           nonneg, ws_init, seed):
    m = m if lam2 > 0 or m <= n else n + (m % 3) * (m - n) // 2  # lasso: m > n too
    D, X = problem(n, m, B, rho, k=min(3, m), nonneg_codes=nonneg, seed=seed)
    w = make_weights(wkind, B, m, seed)
    lam1 = shared_lam1(D, X, w, nonneg, frac)
    res = solve(D, X, lam1, lam2, weights=w, nonneg=nonneg, ws_init=ws_init, ws_grow=2)
    assert res.certified.all(), res.status
    assert np.all(res.gap <= 1e-10 * res.sq_norm)
    Wr = weight_rows(w, B, m)
    H_sk = sk_codes(D, X, lam1, lam2, w, nonneg)
    assert_objectives_agree(objective(D, X, res.codes, lam1, lam2, Wr),
                            objective(D, X, H_sk, lam1, lam2, Wr), X)
    assert_kkt(D, X, res.codes, lam1, lam2, w, nonneg)


@pytest.mark.parametrize(("n", "m", "frac", "nonneg"), [(2, 9, 0.25, True), (3, 12, 0.1, False)])
def test_lasso_full_rank_support_pivot(n, m, frac, nonneg):
    D, X = problem(n, m, 1, 0.0, k=3, nonneg_codes=nonneg, seed=0)
    lam1 = shared_lam1(D, X, None, nonneg, frac)
    H_sk = sk_codes(D, X, lam1, 0.0, None, nonneg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncertifiedWarning)
        res = solve(D, X, lam1, 0.0, nonneg=nonneg)  # default ws_init covers all m atoms
    assert_objectives_agree(objective(D, X, res.codes, lam1), objective(D, X, H_sk, lam1), X)
    assert res.all_certified, (res.rel_gap, res.status)


# ============================================================================ streaming / CSR
def test_csr_output_equals_dense():
    D, X = problem(16, 50, 9, 0.5, seed=51)
    lam1 = shared_lam1(D, X, None, False, 0.2)
    dense = solve(D, X, lam1, 0.1)
    csr = solve(D, X, lam1, 0.1, output="csr")
    assert sp.isspmatrix_csr(csr.codes) or isinstance(csr.codes, sp.csr_array)
    assert csr.codes.shape == (9, 50)
    np.testing.assert_array_equal(csr.codes.toarray(), dense.codes)
    np.testing.assert_array_equal(csr.gap, dense.gap)
    np.testing.assert_array_equal(csr.support_size, dense.support_size)
    assert csr.codes.nnz == np.count_nonzero(dense.codes)
    np.testing.assert_allclose(duality_gap(D, X, csr.codes, lam1, 0.1),
                               duality_gap(D, X, dense.codes, lam1, 0.1), rtol=0, atol=1e-14)


def test_solve_batches_and_batch_size_match_one_solve():
    D, X = problem(16, 50, 11, 0.9, nonneg_codes=True, seed=52)
    w = make_weights("m", 11, 50, seed=5)
    lam1 = shared_lam1(D, X, w, True, 0.2)
    one = solve(D, X, lam1, 0.05, weights=w, nonneg=True)
    tol = dict(rtol=0, atol=1e-12 * np.abs(one.codes).max())
    chunks = [X[:4], X[4:5], X[5:11]]
    seen = []

    def stream():
        for c in chunks:
            seen.append(len(c))
            yield c

    results = solve_batches(D, stream(), lam1, 0.05, weights=w, nonneg=True)
    assert seen == []  # lazy: nothing solved before iteration
    parts = list(results)
    assert [p.codes.shape[0] for p in parts] == [4, 1, 6]
    assert all(sp.issparse(p.codes) for p in parts)  # csr by default
    np.testing.assert_allclose(sp.vstack([p.codes for p in parts]).toarray(), one.codes, **tol)
    np.testing.assert_allclose(np.concatenate([p.gap for p in parts]), one.gap, rtol=0,
                               atol=1e-12 * one.sq_norm.max())
    for bs in (1, 3):
        small = solve(D, X, lam1, 0.05, weights=w, nonneg=True, batch_size=bs)
        np.testing.assert_allclose(small.codes, one.codes, **tol)
        np.testing.assert_array_equal(small.codes != 0, one.codes != 0)
        assert small.all_certified
    # per-signal weights with chunked solving
    Wb = make_weights("Bm", 11, 50, seed=6)
    full = solve(D, X, lam1, 0.05, weights=Wb, batch_size=4)
    ref = solve(D, X, lam1, 0.05, weights=Wb)
    np.testing.assert_allclose(full.codes, ref.codes, rtol=0, atol=1e-12 * np.abs(ref.codes).max())
    solver = FastSolver(D, lam1, 0.05)
    with pytest.raises(ValueError, match="weights"):
        list(solver.solve_batches([X], weights=Wb))


# ============================================================================ certificate honesty
def test_uncertified_codes_are_reported_and_gap_still_bounds():
    D, X = problem(30, 120, 4, 0.9, k=8, seed=61)
    lam1 = shared_lam1(D, X, None, False, 0.05)
    with pytest.warns(UncertifiedWarning, match="not certified"):
        res = solve(D, X, lam1, 0.0, ws_init=1, ws_grow=1, max_rounds=2)
    assert not res.all_certified
    assert all(res.status[b] for b in np.flatnonzero(~res.certified))
    assert all(res.status[b] == "" for b in np.flatnonzero(res.certified))
    with pytest.raises(RuntimeError, match="not certified"):
        res.raise_if_uncertified()
    F_star = objective(D, X, sk_codes(D, X, lam1, 0.0), lam1)
    sub = objective(D, X, res.codes, lam1) - F_star
    assert np.all(res.gap >= sub - 1e-10 * res.sq_norm)
    np.testing.assert_allclose(res.gap, duality_gap(D, X, res.codes, lam1), rtol=1e-6)


def test_small_lam1_at_rho_099_certifies_optimal_codes_issue_26():
    # issue 26, finding 6: here lam1 = 1e-4 is below the error bound of the float32
    # screening correlations (2 (n + 2) 2^-24 ||x||: 0.9e-4 to 1.6e-4). The support's ones
    # entered the dual scale with that error bound instead of their exact float64 value,
    # and 197 of 200 optimal codes were reported uncertified (gap up to 7.8e-4, against
    # tol ||x||^2 <= 4.2e-8) while the public duality gap was below 1e-11.
    sd = spiked_dictionary(64, 256, 0.99, seed=0)
    D = np.array(sd.D)
    X, _ = sample_signals(sd, 200, 8, nonneg=True, seed=0)
    lam1, tol = 1e-4, 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncertifiedWarning)
        res = solve(D, X, lam1, nonneg=True, tol=tol)
    sq = np.einsum("bn,bn->b", X, X)
    assert res.all_certified, res.status
    gap = duality_gap(D, X, res.codes, lam1, nonneg=True)
    assert np.all(gap <= tol * sq)
    # the internal gap is the public one, to float64 rounding of the gap itself
    margin = 1e-14 * (np.sqrt(sq) + np.abs(res.codes).sum(axis=1)) ** 2
    np.testing.assert_array_less(np.abs(res.gap - gap), margin)
    # scikit-learn on every 8th signal (coordinate descent takes ~0.1 s per signal here)
    sub = slice(None, None, 8)
    H_sk = solve_sklearn(D, X[sub], lam1, nonneg=True, tol=1e-12).codes
    assert_objectives_agree(objective(D, X[sub], res.codes[sub], lam1),
                            objective(D, X[sub], H_sk, lam1), X[sub])
    assert_kkt(D, X, res.codes, lam1, nonneg=True)


@pytest.mark.parametrize("nonneg", [False, True])
def test_lam1_zero_is_rejected_with_a_reason(nonneg):
    """lam1 = 0 is ridge regression: no sparsity, and the augmented-lasso certificate is
    vacuous (the dual feasible set shrinks to theta with D_aug^T theta = 0), so the fast
    solver refuses it with an error naming lam1."""
    rng = np.random.default_rng(0)
    D, X = rng.normal(size=(10, 20)), rng.normal(size=(3, 10))
    with pytest.raises(ValueError, match="lam1"):
        solve(D, X, 0.0, 0.1, nonneg=nonneg)


# ============================================================================ adaptive
@pytest.mark.parametrize("nonneg", [False, True])
def test_solve_adaptive_weights_and_certificate(nonneg):
    D, X = problem(14, 30, 4, 0.5, nonneg_codes=nonneg, seed=71)
    lam1, lam2, gamma, eps = shared_lam1(D, X, None, nonneg, 0.2), 0.05, 1.5, 1e-2
    init = sample_codes(30, 4, 4, nonneg=nonneg, rng=3) * 0.5
    res, w = solve_adaptive(D, X, lam1, lam2, gamma=gamma, eps=eps, init=init, nonneg=nonneg)
    np.testing.assert_allclose(w, (np.abs(init) + eps) ** (-gamma), rtol=1e-14)
    sq = np.einsum("bn,bn->b", X, X)
    assert res.all_certified
    assert np.all(duality_gap(D, X, res.codes, lam1, lam2, w, nonneg) <= 1e-10 * sq)
    H_sk = sk_codes(D, X, lam1, lam2, w, nonneg)
    assert_objectives_agree(objective(D, X, res.codes, lam1, lam2, w),
                            objective(D, X, H_sk, lam1, lam2, w), X)
    np.testing.assert_allclose(res.codes, H_sk, rtol=0, atol=1e-6 * np.abs(H_sk).max())
    assert_kkt(D, X, res.codes, lam1, lam2, w, nonneg)
    # default init: the elastic-net codes (here from scikit-learn) define the weights
    res0, w0 = solve_adaptive(D, X, lam1, lam2, gamma=1.0, eps=1e-3, nonneg=nonneg)
    h_init = sk_codes(D, X, lam1, lam2, None, nonneg)
    np.testing.assert_allclose(w0, 1.0 / (np.abs(h_init) + 1e-3), rtol=1e-5)
    assert res0.all_certified
    H0 = sk_codes(D, X, lam1, lam2, w0, nonneg)
    assert_objectives_agree(objective(D, X, res0.codes, lam1, lam2, w0),
                            objective(D, X, H0, lam1, lam2, w0), X)
    # two stages: the second weights come from the first stage's codes
    res2, w2 = solve_adaptive(D, X, lam1, lam2, gamma=1.0, eps=1e-3, n_reweight=2,
                              nonneg=nonneg)
    np.testing.assert_allclose(w2, 1.0 / (np.abs(res0.codes) + 1e-3), rtol=1e-6)
    assert res2.all_certified
    with pytest.raises(ValueError, match="init"):
        solve_adaptive(D, X, lam1, init=np.zeros((4, 29)))


def test_population_weights_from_codes_by_hand():
    rng = np.random.default_rng(0)
    H = rng.normal(size=(7, 40)) * (rng.random((7, 40)) < 0.3)
    H[:, 5] = 0.0  # a dead latent
    gamma, top_p, w_min, w_max = 0.7, 0.1, 0.05, 8.0
    ema = np.abs(H).mean(axis=0)
    k = math.ceil(top_p * 40)
    ref = np.sort(ema)[::-1][:k].mean()
    expect = np.empty(40)
    for i in range(40):
        expect[i] = w_max if ema[i] == 0 else min(max((ref / ema[i]) ** gamma, w_min), w_max)
    got = population_weights_from_codes(H, gamma, top_p, w_min, w_max)
    np.testing.assert_allclose(got, expect, rtol=1e-13)
    assert got[5] == w_max
    np.testing.assert_allclose(population_weights_from_codes(sp.csr_matrix(H), gamma, top_p,
                                                             w_min, w_max), expect, rtol=1e-13)
    # defaults: gamma 1, top 1% (at least one latent), clip to [0.1, 10]
    k = math.ceil(0.01 * 40)
    ref = np.sort(ema)[::-1][:k].mean()
    with np.errstate(divide="ignore"):
        expect = np.clip(np.where(ema > 0, ref / ema, np.inf), 0.1, 10.0)
    np.testing.assert_allclose(population_weights_from_codes(H), expect, rtol=1e-13)


# ============================================================================ bad input
def _ok(n=4, m=6, B=3):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, m)), rng.normal(size=(B, n))


def _with(arr, idx, val):
    arr = arr.copy()
    arr[idx] = val
    return arr


D_OK, X_OK = _ok()
BAD_INPUTS = [
    # (kwargs overriding a valid call, exception, message pattern)
    (dict(D=_with(D_OK, (0, 0), np.nan)), ValueError, "D must be finite"),
    (dict(D=_with(D_OK, (1, 2), np.inf)), ValueError, "D must be finite"),
    (dict(X=_with(X_OK, (0, 0), np.nan)), ValueError, "X must be finite"),
    (dict(X=_with(X_OK, (2, 1), -np.inf)), ValueError, "X must be finite"),
    (dict(X=np.ones((3, 5))), ValueError, r"X must have shape \(B, 4\)"),
    (dict(X=np.ones(4)), ValueError, "X must have 2 dimension"),
    (dict(X=np.ones((0, 4))), ValueError, "X must not be empty"),
    (dict(D=np.ones(4)), ValueError, "D must have 2 dimension"),
    (dict(weights=np.ones(5)), ValueError, "weights must have shape"),
    (dict(weights=np.ones((2, 6))), ValueError, "weights must have shape"),
    (dict(weights=np.ones((3, 6, 1))), ValueError, "weights must have 1 or 2 dimension"),
    (dict(weights=_with(np.ones(6), 2, 0.0)), ValueError, "weights must be > 0"),
    (dict(weights=_with(np.ones(6), 2, -1.0)), ValueError, "weights must be > 0"),
    (dict(weights=_with(np.ones(6), 2, np.nan)), ValueError, "weights must be finite"),
    (dict(lam1=-0.1), ValueError, "lam1 must lie in"),
    (dict(lam1=np.nan), ValueError, "lam1 must be finite"),
    (dict(lam1="1"), TypeError, "lam1 must be a real number"),
    (dict(lam2=-1e-3), ValueError, "lam2 must lie in"),
    (dict(lam2=np.inf), ValueError, "lam2 must be finite"),
    (dict(nonneg=1), TypeError, "nonneg must be a bool"),
    (dict(nonneg="yes"), TypeError, "nonneg must be a bool"),
]


@pytest.mark.parametrize(("override", "exc", "pattern"), BAD_INPUTS)
@pytest.mark.parametrize("func", ["solve", "duality_gap", "solve_cvxpy", "solve_sklearn"])
def test_bad_input_names_the_parameter(func, override, exc, pattern):
    args = dict(D=D_OK, X=X_OK, lam1=0.5, lam2=0.1, weights=None, nonneg=False)
    args.update(override)
    call = {
        "solve": lambda a: solve(**a),
        "duality_gap": lambda a: duality_gap(codes=np.zeros((3, 6)), **a),
        "solve_cvxpy": lambda a: solve_cvxpy(**a),
        "solve_sklearn": lambda a: solve_sklearn(**a),
    }[func]
    with pytest.raises(exc, match=pattern):
        call(args)


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        (dict(tol=0.0), ValueError, "tol must lie in"),
        (dict(tol=-1e-10), ValueError, "tol must lie in"),
        (dict(output="coo"), ValueError, "output must be"),
        (dict(batch_size=0), ValueError, "batch_size must lie in"),
        (dict(ws_init=0), ValueError, "ws_init must lie in"),
        (dict(max_rounds=0), ValueError, "max_rounds must lie in"),
        (dict(blas_threads=0), ValueError, "blas_threads must lie in"),
    ],
)
def test_bad_solver_options(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        solve(D_OK, X_OK, 0.5, **kwargs)


def test_bad_input_other_entry_points():
    with pytest.raises(ValueError, match="X must have shape"):
        lam_max(D_OK, np.ones((2, 5)))
    with pytest.raises(ValueError, match="weights must be > 0"):
        lam_max(D_OK, X_OK, weights=np.zeros(6))
    with pytest.raises(ValueError, match="codes must have shape"):
        duality_gap(D_OK, X_OK, np.zeros((3, 5)), 0.5)
    with pytest.raises(ValueError, match="codes must be finite"):
        duality_gap(D_OK, X_OK, _with(np.zeros((3, 6)), (0, 0), np.nan), 0.5)
    with pytest.raises(ValueError, match="X must have shape"):
        FastSolver(D_OK, 0.5).solve(np.ones((2, 3)))
    with pytest.raises(ValueError, match="tol must lie in"):
        solve_cvxpy(D_OK, X_OK, 0.5, tol=0.0)
    with pytest.raises(ValueError, match="codes must not be empty"):
        population_weights_from_codes(np.zeros((0, 6)))


@pytest.mark.parametrize("rho", [-0.1, 1.0, 1.5, np.nan])
@pytest.mark.parametrize("gen", [
    lambda rho: spiked_dictionary(8, 12, rho),
    lambda rho: multi_spike_dictionary(8, 12, rho, 2),
    lambda rho: block_dictionary(8, 12, rho, 2),
])
def test_generators_reject_rho_outside_unit_interval(gen, rho):
    with pytest.raises(ValueError, match="rho must"):
        gen(rho)


def test_generators_reject_k_above_m():
    sd = spiked_dictionary(8, 12, 0.5)
    with pytest.raises(ValueError, match="k must lie in"):
        sample_signals(sd, 4, 13)
    with pytest.raises(ValueError, match="k must lie in"):
        sample_codes(12, 13, 4, rng=0)


def _gap_reference(rx, rr, hh, l1w, mu, lam1, lam2):
    """The gap formula of gap_from_stats written out in numpy, for the tests."""
    q = rr + lam2 * hh
    with np.errstate(divide="ignore", invalid="ignore"):
        s_max = np.where(mu > 0, lam1 / np.where(mu > 0, mu, 1.0), np.inf)
        s_ray = np.where(q > 0, rx / np.where(q > 0, q, 1.0), 0.0)
    s = np.clip(s_ray, 0.0, s_max)
    return 0.5 * q + lam1 * l1w - (s * rx - 0.5 * s * s * q)


def test_gap_formula_against_numpy_and_a_hand_case():
    from aensae.solvers._kernels import duality_gap_from_stats
    from aensae.solvers.certificate import gap_from_stats

    # hand case: x = (3, 0), D = I, lam1 = 1, lam2 = 0, h = (2, 0): r = (1, 0), r.x = 3,
    # ||r||^2 = 1, mu = max|D^T r| = 1, s = min(r.x / ||r||^2, lam1 / mu) = 1,
    # primal = 1/2 + 2 = 2.5, dual = 3 - 1/2 = 2.5: gap 0 (h is optimal)
    assert duality_gap_from_stats(3.0, 1.0, 4.0, 2.0, 1.0, 1.0, 0.0) == 0.0
    assert gap_from_stats(3.0, 1.0, 4.0, 2.0, 1.0, 1.0, 0.0) == 0.0
    rng = np.random.default_rng(3)
    rows = rng.uniform(0.0, 2.0, size=(200, 5))
    rows[::7, 1] = 0.0  # r = 0
    rows[::5, 4] = 0.0  # mu = 0
    for lam2 in (0.0, 0.3):
        ref = _gap_reference(*rows.T, 0.7, lam2)
        np.testing.assert_allclose(gap_from_stats(*rows.T, 0.7, lam2), ref, rtol=1e-14,
                                   atol=1e-15)
        got = [duality_gap_from_stats(*row, 0.7, lam2) for row in rows]
        np.testing.assert_allclose(got, ref, rtol=1e-14, atol=1e-15)
    # arrays broadcast against scalars, shape kept
    grid = rows[:12, 0].reshape(3, 4)
    np.testing.assert_allclose(gap_from_stats(grid, 1.0, 0.5, 0.2, 0.9, 0.7, 0.3),
                               _gap_reference(grid, 1.0, 0.5, 0.2, 0.9, 0.7, 0.3),
                               rtol=1e-14, atol=1e-15)


@numba.njit
def _top_k_rows(C, iw, nonneg, k, out):
    score = np.empty(C.shape[1])
    hv = np.empty(k)
    hi = np.empty(k, np.int64)
    for b in range(C.shape[0]):
        _top_k_row(C, b, iw, nonneg, k, out[b], score, hv, hi)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize(("m", "k"), [(1024, 16), (40, 16), (16, 16), (7, 3), (300, 1)])
def test_top_k_screening_selects_the_largest_weighted_scores(nonneg, m, k):
    rng = np.random.default_rng(m + k)
    C = rng.standard_normal((30, m)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, m)
    out = np.zeros((30, k), np.int64)
    _top_k_rows(C, 1.0 / w, nonneg, k, out)
    score = (C if nonneg else np.abs(C)) / w
    for b in range(30):
        assert sorted(out[b]) == sorted(np.argsort(-score[b], kind="stable")[:k])


# ============================================================================ the float32 Gram
@pytest.mark.parametrize("m", [1, 3, 64, 65, 130])
def test_fill_upper_mirrors_the_lower_triangle(m):
    rng = np.random.default_rng(m)
    A = rng.standard_normal((m, m))
    T = A.copy()
    fill_upper(T)
    lower = np.tril(A)
    np.testing.assert_array_equal(T, lower + np.tril(A, -1).T)
    if m == 3:  # by hand
        T = np.array([[1.0, 9, 9], [2, 3, 9], [4, 5, 6]])
        fill_upper(T)
        np.testing.assert_array_equal(T, [[1, 2, 4], [2, 3, 5], [4, 5, 6]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("blocks", [1, 2, 3, 8])
@pytest.mark.parametrize(("n", "m"), [(1, 1), (7, 5), (40, 130), (300, 17)])
def test_gram_within_its_rounding_bound(n, m, blocks, dtype):
    # oracle: the Gram matrix in extended precision (math.fsum of exact float products);
    # the result must be exactly symmetric and within the dot-product bound gamma_n
    rng = np.random.default_rng(n * m + blocks)
    D = (rng.standard_normal((n, m)) * rng.lognormal(0.0, 1.0, m)).astype(dtype)
    G = gram(D, blocks)
    assert G.dtype == dtype and G.shape == (m, m) and G.flags.c_contiguous
    np.testing.assert_array_equal(G, G.T)
    out = np.full((m, m), np.nan, dtype)  # a recycled buffer: every entry is overwritten
    assert gram(D, blocks, out=out) is out
    np.testing.assert_array_equal(out, G)
    D64 = D.astype(np.float64)
    exact = np.array([[math.fsum(D64[:, a] * D64[:, j]) for j in range(m)] for a in range(m)])
    u = np.finfo(dtype).eps / 2
    err = 2.0 * n * u / (1.0 - n * u)
    norms = np.linalg.norm(D64, axis=0)
    assert np.all(np.abs(G - exact) <= err * np.outer(norms, norms))


def test_gram_buffer_of_a_dead_solver_serves_the_next_one_and_never_a_held_one():
    # a fresh dictionary reuses the Gram memory of a garbage-collected solver of the same
    # size; the reused matrix must be the new dictionary's (numpy's product as the oracle)
    # and a Gram matrix still referenced by the caller must never be overwritten
    rng = np.random.default_rng(11)
    D1, D2, D3 = (rng.standard_normal((12, 40)) for _ in range(3))
    X = rng.standard_normal((6, 12))
    s1 = FastSolver(D1, 0.2)
    buf = s1.G
    del s1  # `buf` still refers to it: not recycled
    s2 = FastSolver(D2, 0.2)
    assert s2.G is not buf
    np.testing.assert_allclose(buf, D1.T @ D1, rtol=0, atol=1e-12)
    address = s2.G.__array_interface__["data"][0]
    del s2
    s3 = FastSolver(D3, 0.2, 0.05)
    assert s3.G.__array_interface__["data"][0] == address  # recycled
    np.testing.assert_allclose(s3.G, D3.T @ D3, rtol=0, atol=1e-12)
    res = s3.solve(X)
    assert res.all_certified
    np.testing.assert_allclose(res.codes, sk_codes(D3, X, 0.2, 0.05, None), rtol=0, atol=1e-6)
    release_workspace()


def _same_result(a, b):
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.gap, b.gap)
    np.testing.assert_array_equal(a.certified, b.certified)
    np.testing.assert_array_equal(a.n_iter, b.n_iter)


def test_reused_solver_gives_the_codes_of_separate_public_calls():
    # the documented way to pay the Gram matrix once: one FastSolver, many batches; each
    # batch's codes and certificates must equal those of a separate public call, and the
    # oracle (a solver built after release_workspace, no kept setup) must agree bit for bit
    d = spiked_dictionary(24, 60, 0.5, seed=3)
    batches = [sample_signals(d, 40, 4, nonneg=True, seed=s)[0] for s in range(3)]
    lam1, lam2 = 0.1, 0.05
    release_workspace()
    fresh = [FastSolver(d.D, lam1, lam2, True).solve(X) for X in batches[:1]]
    solver = FastSolver(d.D, lam1, lam2, True)
    reused = [solver.solve(X) for X in batches]
    streamed = list(solver.solve_batches(batches, output="dense"))
    public = [solve(d.D, X, lam1, lam2, nonneg=True) for X in batches]
    _same_result(reused[0], fresh[0])
    for r, st_, p in zip(reused, streamed, public, strict=True):
        assert r.all_certified
        _same_result(r, p)
        _same_result(r, st_)
    for r, c in zip(reused, solve_batches(d.D, batches, lam1, lam2, nonneg=True),
                    strict=True):
        np.testing.assert_array_equal(r.codes, c.codes.toarray())
    release_workspace()


def test_equal_dictionary_shares_the_setup_and_a_changed_one_never_gets_a_stale_gram():
    # the kept setup is served only to a dictionary equal in shape and every value: an
    # equal copy (another object) shares it; a dictionary modified in place (one entry,
    # by one ulp or more) gets its own Gram matrix, bit for bit the one computed from
    # scratch, and its codes are those of a solver built with nothing kept
    rng = np.random.default_rng(5)
    D = rng.standard_normal((16, 48))
    X = rng.standard_normal((20, 16))
    blocks = 2 * numba.get_num_threads()
    release_workspace()
    s1 = FastSolver(D, 0.3, 0.05)
    s2 = FastSolver(D.copy(), 0.2)  # equal content, other penalties: shared setup
    assert s2.G is s1.G
    G_before = s1.G.copy()
    for change in ("ulp", "entry"):
        if change == "ulp":
            D[3, 7] = np.nextafter(D[3, 7], np.inf)  # same object, new content
        else:
            D[5, 0] += 0.5
        res = solve(D, X, 0.3, 0.05)
        s3 = FastSolver(D, 0.3, 0.05)
        assert s3.G is not s1.G
        np.testing.assert_array_equal(s3.G, gram(D, blocks))
        np.testing.assert_array_equal(s3.D32, D.astype(np.float32))
        np.testing.assert_array_equal(s3.Dt, D.T)
        expected = D.copy()
        release_workspace()
        _same_result(res, FastSolver(expected, 0.3, 0.05).solve(X))
        np.testing.assert_array_equal(s1.G, G_before)  # a live solver's Gram: untouched
    assert not np.array_equal(s3.G, G_before)
    release_workspace()


def test_setup_of_a_dead_solver_is_kept_only_while_its_dictionary_is_the_last():
    # the kept setup holds one dictionary: a new one replaces it, and the replaced Gram
    # buffer serves the new dictionary when no solver holds it
    rng = np.random.default_rng(8)
    D1, D2 = rng.standard_normal((10, 30)), rng.standard_normal((10, 30))
    release_workspace()
    s = FastSolver(D1, 0.2)
    address = s.G.__array_interface__["data"][0]
    del s
    s = FastSolver(D2, 0.2)
    assert s.G.__array_interface__["data"][0] == address  # D1's buffer, overwritten
    np.testing.assert_allclose(s.G, D2.T @ D2, rtol=0, atol=1e-12)
    release_workspace()


@pytest.mark.parametrize("weights", ["ones", "population"])
def test_float32_dictionary_and_heavy_tailed_signals_match_sklearn(weights):
    # an SAE decoder is float32 and LLM activations are heavy-tailed: the certificate
    # (float32 screening, float64 Gram and restricted problems) must still give codes that
    # agree with scikit-learn and pass an independent float64 duality gap
    rng = np.random.default_rng(7)
    n, m, B = 24, 96, 40
    D = rng.standard_normal((n, m))
    D = (D / np.linalg.norm(D, axis=0)).astype(np.float32)
    p = 1.0 / np.arange(1, m + 1)
    H = np.zeros((B, m))
    for b in range(B):
        idx = rng.choice(m, 5, replace=False, p=p / p.sum())
        H[b, idx] = rng.lognormal(0.0, 1.0, 5) * rng.choice((-1.0, 1.0), 5)
    X = (H @ D.T.astype(np.float64) + 0.1 * rng.standard_t(3, (B, n))) * rng.lognormal(
        0.0, 0.5, (B, 1))
    w = None if weights == "ones" else rng.uniform(0.3, 3.0, m)
    lam1 = shared_lam1(D.astype(np.float64), X, w, False, 0.1)
    res = solve(D, X, lam1, 0.01, w)
    assert res.all_certified and 2 <= res.support_size.mean() <= 40
    D64 = D.astype(np.float64)
    assert np.all(duality_gap(D64, X, res.codes, lam1, 0.01, w) <= 1e-10 * np.sum(X**2, 1))
    np.testing.assert_allclose(res.codes, sk_codes(D64, X, lam1, 0.01, w), rtol=0, atol=1e-6)


@pytest.mark.parametrize("nonneg", [False, True])
def test_small_weights_on_large_codes_still_certify(nonneg):
    # large codes on atoms with small weights: the certificate's bounds are divided by the
    # weights; optimal codes must still pass it (and agree with scikit-learn)
    rng = np.random.default_rng(3)
    n, m, B = 20, 40, 6
    D = rng.standard_normal((n, m))
    D /= np.linalg.norm(D, axis=0)
    H = np.zeros((B, m))
    H[:, :5] = 20.0 * rng.uniform(1.0, 2.0, (B, 5))
    X = H @ D.T + 0.01 * rng.standard_normal((B, n))
    w = np.ones(m)
    w[:5] = 0.01
    res = solve(D, X, 0.05, 0.001, w, nonneg=nonneg)
    assert res.all_certified, res.status
    assert np.all(res.support_size >= 5)
    assert np.all(duality_gap(D, X, res.codes, 0.05, 0.001, w, nonneg) <= 1e-10 * np.sum(X**2, 1))
    np.testing.assert_allclose(res.codes, sk_codes(D, X, 0.05, 0.001, w, nonneg), rtol=0,
                               atol=1e-6)
