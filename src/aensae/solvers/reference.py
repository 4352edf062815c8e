r"""Independent reference solvers for cross-checks: cvxpy (with polish) and scikit-learn.

Both return :class:`aensae.solvers.SolveResult` with gaps from
:func:`aensae.solvers.duality_gap`, so every solver is judged by one certificate.
They are slow by design and meant for small batches (tests, benchmark anchors).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from aensae._validation import check_int, check_real
from aensae.solvers.certificate import duality_gap
from aensae.solvers.fast import SolveResult
from aensae.solvers.problem import validate_problem

__all__ = ["solve_cvxpy", "solve_sklearn", "sklearn_parameters"]


def _polish(D, x, h, lam1, lam2, w, nonneg):
    r"""Exact solution on the support and signs read off an interior-point solution.

    For support ``S`` and signs ``sigma`` the stationarity conditions give
    ``(D_S^T D_S + lam2 I) h_S = D_S^T x - lam1 w_S sigma_S``. Several relative
    thresholds are tried; the caller keeps the candidate with the smallest gap.
    """
    scale = max(float(np.max(np.abs(h))), 1e-300)
    out = []
    for rel in np.logspace(-10, -2, 17):
        S = np.flatnonzero(np.abs(h) > rel * scale)
        cand = np.zeros_like(h)
        if S.size:
            sig = np.sign(h[S])
            DS = D[:, S]
            A = DS.T @ DS + lam2 * np.eye(S.size)
            b = DS.T @ x - lam1 * w[S] * sig
            hs = np.linalg.lstsq(A, b, rcond=None)[0]
            if np.all(np.sign(hs) == sig) and (not nonneg or np.all(hs > 0)):
                cand[S] = hs
            else:
                continue
        out.append(cand)
    return out


def solve_cvxpy(
    D: Any,
    X: Any,
    lam1: float,
    lam2: float = 0.0,
    weights: Any = None,
    nonneg: bool = False,
    tol: float = 1e-10,
    *,
    solver: str = "CLARABEL",
    polish: bool = True,
) -> SolveResult:
    r"""Reference solution with cvxpy, one signal at a time, polished to an exact support.

    Solves ``min_h 1/2||x - D h||^2 + lam1 sum_i w_i |h_i| + lam2/2 ||h||^2`` (``h >= 0``
    when ``nonneg``) with an interior-point solver (Clarabel by default). Interior-point
    output is never exactly sparse, so ``polish=True`` re-solves the stationarity system
    on the support and signs read off the solution (:func:`_polish`) and keeps whichever
    code -- raw (entries below 1e-9 of the largest zeroed), polished, or all-zero -- has the
    smallest duality gap. Same signature and result type as :func:`aensae.solvers.solve`.
    """
    import cvxpy as cp

    P = validate_problem(D, X, lam1, lam2, weights, nonneg)
    tol = check_real("tol", tol, low=0.0, low_inclusive=False)
    B, n, m = P.shape
    t0 = time.perf_counter()
    x_par = cp.Parameter(n)
    w_par = cp.Parameter(m, nonneg=True)
    h = cp.Variable(m, nonneg=P.nonneg)
    obj = 0.5 * cp.sum_squares(x_par - P.D @ h) + P.lam1 * (w_par @ cp.abs(h))
    if P.lam2 > 0:
        obj = obj + 0.5 * P.lam2 * cp.sum_squares(h)
    prob = cp.Problem(cp.Minimize(obj))
    codes = np.zeros((B, m))
    status = np.full(B, "", dtype=object)
    for b in range(B):
        wrow = P.weights[0 if P.weights.shape[0] == 1 else b]
        x_par.value = P.X[b]
        w_par.value = wrow
        try:
            prob.solve(solver=solver, **_tight_options(solver))
        except cp.error.SolverError as exc:  # pragma: no cover - solver failure path
            status[b] = f"cvxpy solver error: {exc}"
            continue
        if h.value is None:
            status[b] = f"cvxpy status {prob.status}"
            continue
        raw = np.array(h.value, dtype=np.float64)
        if P.nonneg:
            raw = np.maximum(raw, 0.0)
        raw[np.abs(raw) <= 1e-9 * max(float(np.max(np.abs(raw))), 1e-300)] = 0.0
        cands = [raw, np.zeros(m)]
        if polish:
            cands += _polish(P.D, P.X[b], raw, P.lam1, P.lam2, wrow, P.nonneg)
        gaps = [duality_gap(P.D, P.X[b : b + 1], c[None], P.lam1, P.lam2, wrow, P.nonneg)[0]
                for c in cands]
        codes[b] = cands[int(np.argmin(gaps))]
    return _result(P, codes, tol, status, time.perf_counter() - t0)


def _tight_options(solver: str) -> dict:
    """Tight interior-point tolerances so that the polish reads off a clean support."""
    if solver.upper() == "CLARABEL":
        return {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12,
                "tol_ktratio": 1e-10, "max_iter": 500}
    return {}


def sklearn_parameters(lam1: float, lam2: float, n: int) -> tuple[float, float]:
    r"""scikit-learn ``ElasticNet(alpha, l1_ratio)`` for our penalties on ``n`` equations.

    scikit-learn minimises ``1/(2n)||x - D h||^2 + alpha l1_ratio ||h||_1
    + alpha (1 - l1_ratio)/2 ||h||^2``; times ``n`` this is our objective with
    ``lam1 = n alpha l1_ratio`` and ``lam2 = n alpha (1 - l1_ratio)``, so
    ``alpha = (lam1 + lam2) / n`` and ``l1_ratio = lam1 / (lam1 + lam2)``.
    """
    lam1 = check_real("lam1", lam1, low=0.0)
    lam2 = check_real("lam2", lam2, low=0.0)
    n = check_int("n", n, low=1)
    if lam1 + lam2 == 0:
        raise ValueError("lam1 + lam2 must be > 0 for scikit-learn's parametrisation")
    return (lam1 + lam2) / n, lam1 / (lam1 + lam2)


def solve_sklearn(
    D: Any,
    X: Any,
    lam1: float,
    lam2: float = 0.0,
    weights: Any = None,
    nonneg: bool = False,
    tol: float = 1e-10,
    *,
    max_iter: int = 100_000,
) -> SolveResult:
    r"""scikit-learn's coordinate descent on the same problem (a cross-check and anchor).

    Unweighted problems use ``ElasticNet`` with :func:`sklearn_parameters`, all signals
    as one multi-target fit with a precomputed Gram matrix. Weighted problems use the
    augmented lasso ``[D; sqrt(lam2) I] diag(1/w)`` on ``[x; 0]`` with ``Lasso(alpha =
    lam1 / (n + m))`` and map back ``h = h' / w`` (one fit per distinct weight row).
    scikit-learn stops when its own gap is below ``tol * ||x||^2``; the returned gaps are
    recomputed with :func:`aensae.solvers.duality_gap`.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import ElasticNet, Lasso

    P = validate_problem(D, X, lam1, lam2, weights, nonneg)
    tol = check_real("tol", tol, low=0.0, low_inclusive=False)
    B, n, m = P.shape
    t0 = time.perf_counter()
    status = np.full(B, "", dtype=object)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if P.weights.shape[0] == 1 and np.all(P.weights == 1.0):
            alpha, l1_ratio = sklearn_parameters(P.lam1, P.lam2, n)
            est = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False,
                             precompute=True, tol=tol, max_iter=max_iter, positive=P.nonneg)
            est.fit(P.D, P.X.T)
            codes = np.atleast_2d(est.coef_).reshape(B, m).copy()
        else:
            codes = np.zeros((B, m))
            rows = [np.arange(B)] if P.weights.shape[0] == 1 else [[b] for b in range(B)]
            for r in rows:
                wrow = P.weights[0 if P.weights.shape[0] == 1 else r[0]]
                Daug = np.vstack([P.D, np.sqrt(P.lam2) * np.eye(m)]) / wrow
                Xaug = np.hstack([P.X[r], np.zeros((len(r), m))])
                est = Lasso(alpha=P.lam1 / (n + m), fit_intercept=False, precompute=True,
                            tol=tol, max_iter=max_iter, positive=P.nonneg)
                est.fit(Daug, Xaug.T)
                codes[r] = np.atleast_2d(est.coef_).reshape(len(r), m) / wrow
    if any(issubclass(c.category, ConvergenceWarning) for c in caught):
        status[:] = "scikit-learn reported non-convergence"
    return _result(P, codes, tol, status, time.perf_counter() - t0)


def _result(P, codes, tol, status, seconds) -> SolveResult:
    gap = duality_gap(P.D, P.X, codes, P.lam1, P.lam2, P.weights, P.nonneg)
    sq = np.einsum("bn,bn->b", P.X, P.X)
    certified = gap <= tol * sq
    status = status.copy()
    for b in np.flatnonzero(~certified):
        if not status[b]:
            status[b] = "gap above tolerance"
    status[certified] = ""
    B = codes.shape[0]
    return SolveResult(
        codes=codes, gap=gap, certified=certified, sq_norm=sq,
        n_iter=np.zeros(B, np.int64), n_rounds=np.ones(B, np.int64), status=status,
        lam1=P.lam1, lam2=P.lam2, nonneg=P.nonneg, tol=tol, seconds=seconds,
    )
