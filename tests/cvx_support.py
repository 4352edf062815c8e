"""The exact problem written in cvxpy (the independent oracle of the solver tests) and
the small random problems those tests solve."""

from __future__ import annotations

import cvxpy as cp
import numpy as np


def weight_rows(w, B, m):
    """Weights as an explicit (B, m) array (``None``: ones; (m,): the same every row)."""
    if w is None:
        return np.ones((B, m))
    w = np.asarray(w, dtype=float)
    return np.broadcast_to(w, (B, m)) if w.ndim == 1 else w


def cvx_codes(D, X, lam1, lam2=0.0, w=None, nonneg=False, values=False):
    """min 1/2||x - D h||^2 + lam1 sum w|h| + lam2/2 ||h||^2 per row, solved by Clarabel
    at tight tolerances; the codes (and, with ``values``, the optimal values)."""
    m = D.shape[1]
    W = weight_rows(w, X.shape[0], m)
    H = np.zeros((X.shape[0], m))
    F = np.zeros(X.shape[0])
    for b in range(X.shape[0]):
        h = cp.Variable(m, nonneg=nonneg)
        obj = (0.5 * cp.sum_squares(X[b] - D @ h) + lam1 * cp.sum(cp.multiply(W[b], cp.abs(h)))
               + 0.5 * lam2 * cp.sum_squares(h))
        prob = cp.Problem(cp.Minimize(obj))
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12,
                   max_iter=500)
        assert h.value is not None, prob.status
        H[b], F[b] = h.value, prob.value
    return (H, F) if values else H


def tiny_problem(nonneg, seed, n=6, m=10, B=4):
    """``(D, X, H)``: unit-norm Gaussian atoms, 2-sparse codes in [1, 2] (signed unless
    ``nonneg``), a little noise."""
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n, m))
    D /= np.linalg.norm(D, axis=0)
    H = np.zeros((B, m))
    for b in range(B):
        idx = rng.choice(m, 2, replace=False)
        mag = rng.uniform(1.0, 2.0, 2)
        H[b, idx] = mag if nonneg else mag * rng.choice([-1.0, 1.0], 2)
    return D, H @ D.T + 0.02 * rng.standard_normal((B, n)), H
