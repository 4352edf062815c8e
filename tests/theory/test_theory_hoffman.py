"""Local and global Hoffman constants against dense linear algebra and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import ElasticNet

from aensae.theory import (
    hoffman_constant,
    hoffman_subsets,
    kkt_matrix,
    local_hoffman,
    local_hoffman_dense,
)


def _dict(n, m, seed):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n, m))
    return D / np.linalg.norm(D, axis=0)


def _active(m, sizes, seed):
    rng = np.random.default_rng(seed)
    H = np.zeros((len(sizes), m))
    for b, k in enumerate(sizes):
        H[b, rng.choice(m, k, replace=False)] = 1.0
    return H


@pytest.mark.parametrize(
    ("lam1", "lam2", "weighted"),
    [(0.3, 0.05, True), (0.3, 0.0, False), (50.0, 0.01, True), (0.01, 1.0, True),
     (0.5, 1e-6, False)],
)
def test_block_value_equals_inverse_norm_and_is_sandwiched(lam1, lam2, weighted):
    n, m = 15, 35
    D = _dict(n, m, 0)
    H = _active(m, [0, 1, 4, 6, 6, 9], 1)
    rng = np.random.default_rng(2)
    w = rng.uniform(0.3, 3.0, (H.shape[0], m)) if weighted else None
    r = local_hoffman(D, H, lam1, lam2, w)
    for b in range(H.shape[0]):
        wb = None if w is None else w[b]
        M = kkt_matrix(D, H[b] != 0, lam1, lam2, wb)
        ref = np.linalg.norm(np.linalg.inv(M), 2)
        assert r.value[b] == pytest.approx(ref, rel=1e-9)
    assert np.all(r.lower <= r.value * (1 + 1e-12))
    assert np.all(r.value <= r.upper * (1 + 1e-12))
    np.testing.assert_allclose(r.value, local_hoffman_dense(D, H, lam1, lam2, w), rtol=1e-9)


def test_bound_terms_match_their_definitions():
    n, m, lam1, lam2 = 10, 20, 0.4, 0.1
    D = _dict(n, m, 3)
    H = _active(m, [5], 4)
    w = np.random.default_rng(5).uniform(0.5, 2.0, m)
    r = local_hoffman(D, H, lam1, lam2, w)
    A = np.flatnonzero(H[0])
    Ac = np.setdiff1d(np.arange(m), A)
    G = D.T @ D
    Kinv = np.linalg.inv(G[np.ix_(A, A)] + lam2 * np.eye(A.size))
    Winv = np.diag(1 / (lam1 * w[Ac]))
    assert r.a[0] == pytest.approx(np.linalg.norm(Kinv, 2), rel=1e-12)
    assert r.b[0] == pytest.approx(np.max(np.diag(Winv)), rel=1e-12)
    assert r.c[0] == pytest.approx(np.linalg.norm(Winv @ G[np.ix_(Ac, A)] @ Kinv, 2), rel=1e-9)


def test_kkt_matrix_reproduces_the_optimality_system():
    # At an elastic-net solution (scikit-learn), M_A (h_A, z_{A^c}) equals the right-hand
    # side (D_A^T x - lam1 s_A, D_{A^c}^T x) with z_j = d_j^T (x - D h) / lam1.
    n, m, lam1, lam2 = 20, 30, 0.2, 0.1
    D = _dict(n, m, 6)
    x = np.random.default_rng(7).standard_normal(n)
    alpha = (lam1 + lam2) / n
    h = ElasticNet(alpha=alpha, l1_ratio=lam1 / (lam1 + lam2), fit_intercept=False,
                   tol=1e-14, max_iter=100_000).fit(D, x).coef_
    act = h != 0
    M = kkt_matrix(D, act, lam1, lam2)
    u = np.where(act, h, D.T @ (x - D @ h) / lam1)
    rhs = np.where(act, D.T @ x - lam1 * np.sign(h), D.T @ x)
    np.testing.assert_allclose(M @ u, rhs, atol=1e-7)


def test_singular_curvature_block_gives_infinity():
    D = _dict(4, 12, 8)
    H = _active(12, [6], 9)  # |A| = 6 > n = 4 with lam2 = 0
    r = local_hoffman(D, H, 0.5, 0.0)
    assert r.value[0] == math.inf and r.a[0] == math.inf


def test_full_and_empty_active_sets():
    D = _dict(10, 6, 10)
    H = np.vstack([np.ones(6), np.zeros(6)])
    w = np.array([1.0, 2.0, 0.5, 1.0, 1.0, 4.0])
    r = local_hoffman(D, H, 0.5, 0.2, w)
    K = D.T @ D + 0.2 * np.eye(6)
    assert r.value[0] == pytest.approx(1 / np.linalg.eigvalsh(K)[0], rel=1e-12)
    assert r.value[1] == pytest.approx(1 / (0.5 * 0.5), rel=1e-12)


def test_local_validation_messages():
    D = _dict(3, 5, 0)
    with pytest.raises(ValueError, match="lam1"):
        local_hoffman(D, np.ones((1, 5)), 0.0)
    with pytest.raises(ValueError, match="weights must be > 0"):
        local_hoffman(D, np.ones((1, 5)), 1.0, weights=np.zeros(5))
    with pytest.raises(ValueError, match="weights must have shape"):
        local_hoffman(D, np.ones((2, 5)), 1.0, weights=np.ones((3, 5)))


def test_global_hoffman_closed_forms():
    assert hoffman_constant(np.eye(3)) == pytest.approx(1.0)
    assert hoffman_constant(np.array([[1.0], [1.0]])) == pytest.approx(1.0)
    assert hoffman_constant(np.array([[1.0], [-1.0]])) == pytest.approx(1.0)
    # Two nearly opposite rows: H = 1 / sqrt(lambda_min(A A^T)), the eigenvector (1, 1).
    eps = 1e-2
    A = np.array([[1.0, 0.0], [-1.0, eps]])
    expected = 1.0 / math.sqrt(np.linalg.eigvalsh(A @ A.T)[0])
    assert hoffman_constant(A) == pytest.approx(expected, rel=1e-10)
    assert hoffman_constant(np.zeros((2, 2))) == 0.0


def test_global_hoffman_equality_pair_is_excluded():
    # Rows a and -a: {a x < 0, -a x < 0} is infeasible, so J = {0, 1} is not in S(A).
    A = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    subsets = hoffman_subsets(A)
    assert all(not {0, 1} <= set(J) for J, _ in subsets)
    assert hoffman_constant(A) == pytest.approx(1.0)


def test_global_hoffman_attained_by_a_worst_case_point():
    # With y >= 0 the minimiser of ||A^T y|| on the unit sphere and b = 0, the point
    # u = A^T y lies in the polar cone of P(0) = {x : A x <= 0}, so dist(u, P) = ||u|| =
    # sqrt(lam_min) while ||(A u)_+|| = ||A A^T y|| = lam_min: the ratio is exactly H.
    eps = 0.1
    A = np.array([[1.0, 0.0], [-1.0, eps]])
    H = hoffman_constant(A)
    lam, V = np.linalg.eigh(A @ A.T)
    y = np.abs(V[:, 0])
    u = A.T @ y
    import cvxpy as cp

    x = cp.Variable(2)
    cp.Problem(cp.Minimize(cp.sum_squares(x - u)), [A @ x <= 0]).solve()
    ratio = np.linalg.norm(u - x.value) / np.linalg.norm(np.maximum(A @ u, 0))
    assert ratio == pytest.approx(H, rel=1e-4)


def test_global_hoffman_validation():
    with pytest.raises(ValueError, match="rows of A"):
        hoffman_constant(np.ones((13, 2)))
    with pytest.raises(ValueError, match="A must have 2"):
        hoffman_constant(np.ones(3))
