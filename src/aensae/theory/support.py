r"""Support recovery conditions, and the amortization gap of an encoder against exact codes.

Metric formulas (per-sample precision / recall / F1 / Jaccard / sign agreement, and
dictionary matching) live in :mod:`aensae.metrics` and are re-exported here unchanged.

Exact signed support recovery, noiseless
----------------------------------------
Let ``x = D h*`` with support ``S`` and signs ``s = sign(h*_S)``, ``K = G_SS + lam2 I``
(``G = D^T D``). The only candidate with support ``S`` and signs ``s`` solves the KKT
equations on ``S``:

    h_S = h*_S - K^{-1} (lam2 h*_S + lam1 w_S * s).

With ``lam2 > 0`` (or ``D_S`` of full column rank) the objective is strictly convex on the
relevant face and the solution is unique, so the solution has signed support ``(S, s)``
**exactly when** both hold:

- sign condition: ``s_i h_{S,i} > 0`` for every ``i`` in ``S`` (``sign_margin > 0``);
- elastic-net irrepresentable condition, for every ``j`` not in ``S``:
  ``|d_j^T (x - D_S h_S)| <= lam1 w_j``, i.e., since ``x - D_S h_S = D_S K^{-1}(...)``,

      IC = max_{j not in S} | G_{jS} K^{-1} (w_S * s + (lam2/lam1) h*_S) | / w_j  <=  1

  (one-sided, without the absolute value, when ``h >= 0`` is imposed).

Sufficiency: the candidate then satisfies the KKT conditions. Necessity: a solution with
signed support ``(S, s)`` satisfies the equations on ``S``, hence is the candidate, and
its KKT conditions off ``S`` are the irrepresentable inequalities. For ``lam2 = 0`` and
``w = 1`` the condition is Zhao & Yu's and does not involve ``lam1``: when ``IC > 1`` the
lasso fails for every ``lam1``, while adaptive weights (small ``w_S``, large ``w_{S^c}``)
can restore it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aensae._validation import check_array, check_real, is_torch
from aensae.metrics import dictionary_recovery, support_recovery, support_recovery_per_sample
from aensae.objective import ExactProblem, exact_objective
from aensae.theory._support_sets import groups_by_size

__all__ = [
    "CodeReport",
    "RecoveryConditions",
    "amortization_gap",
    "compare_codes",
    "dictionary_recovery",
    "exact_vs_truth",
    "recovery_conditions",
    "support_recovery",
    "support_recovery_per_sample",
]


@dataclass(frozen=True)
class RecoveryConditions:
    """Noiseless recovery conditions per sample (arrays (B,), codes (B, m)).

    ``candidate`` is the unique code with the true signed support satisfying the KKT
    equations on it; ``sign_margin = min_i s_i h_{S,i}``; ``irrepresentable`` the value
    ``IC`` of the module docstring; ``predicted = (sign_margin > 0) & (IC <= 1)``.
    """

    candidate: np.ndarray
    sign_margin: np.ndarray
    irrepresentable: np.ndarray
    predicted: np.ndarray


def _weights(weights: Any, B: int, m: int) -> np.ndarray:
    if weights is None:
        return np.ones((B, m))
    w = check_array("weights", weights, ndim=(1, 2))
    if w.shape[-1] != m or (w.ndim == 2 and w.shape[0] != B):
        raise ValueError(f"weights must have shape ({m},) or ({B}, {m}), got {w.shape}")
    if np.any(w <= 0):
        raise ValueError(f"weights must be > 0, got min {w.min()!r}")
    return np.broadcast_to(w, (B, m))


def recovery_conditions(
    D: np.ndarray,
    H_true: np.ndarray,
    lam1: float,
    lam2: float = 0.0,
    weights: np.ndarray | None = None,
    nonneg: bool = False,
) -> RecoveryConditions:
    r"""Sign and irrepresentable conditions for noiseless signals ``x_b = D h*_b``.

    Parameters
    ----------
    D : array (n, m)
    H_true : array (B, m)
        True codes ``h*``; their supports and signs are the targets. Under ``nonneg``
        they must be non-negative.
    lam1 : float > 0
    lam2 : float >= 0
    weights : array (m,) or (B, m), optional
    nonneg : bool

    Returns
    -------
    RecoveryConditions

    Raises
    ------
    ValueError
        If ``K = G_SS + lam2 I`` is singular for some sample (recovery is then not
        unique and the condition is not defined).
    """
    D = check_array("D", D, ndim=2)
    H = check_array("H_true", H_true, ndim=2, shape=(None, D.shape[1]))
    B, m = H.shape
    lam1 = check_real("lam1", lam1, low=0.0, low_inclusive=False)
    lam2 = check_real("lam2", lam2, low=0.0)
    if nonneg and np.any(H < 0):
        raise ValueError("H_true must be non-negative when nonneg=True")
    w = _weights(weights, B, m)
    G = D.T @ D
    cand = np.zeros((B, m))
    margin = np.full(B, np.inf)
    irrep = np.zeros(B)
    for rows, idx in groups_by_size(H != 0):
        k = idx.shape[1]
        if k == 0:
            continue
        hS = np.take_along_axis(H[rows], idx, 1)
        s = np.sign(hS)
        wS = np.take_along_axis(w[rows], idx, 1)
        K = G[idx[:, :, None], idx[:, None, :]] + lam2 * np.eye(k)
        if np.any(np.linalg.matrix_rank(K) < k):
            raise ValueError("G_SS + lam2 I is singular for some sample (lam2 = 0 with "
                             "linearly dependent true atoms); recovery is not unique")
        v = np.linalg.solve(K, (lam2 * hS + lam1 * wS * s)[..., None])[..., 0]
        c = hS - v
        tmp = cand[rows]
        np.put_along_axis(tmp, idx, c, 1)
        cand[rows] = tmp
        margin[rows] = np.min(s * c, axis=1)
        corr = np.einsum("gkm,gk->gm", G[idx], v) / (lam1 * w[rows])  # d_j^T r / (lam1 w_j)
        off = np.ones((rows.size, m), dtype=bool)
        np.put_along_axis(off, idx, False, 1)
        vals = corr if nonneg else np.abs(corr)
        irrep[rows] = np.where(off, vals, -np.inf).max(1) if k < m else 0.0
    return RecoveryConditions(candidate=cand, sign_margin=margin, irrepresentable=irrep,
                              predicted=(margin > 0) & (irrep <= 1.0))


@dataclass(frozen=True)
class CodeReport:
    """Comparison of candidate codes with reference codes under one exact problem.

    Attributes
    ----------
    objective_gap : array (B,)
        ``F(codes) - F(exact)``: the exact objective of the candidate minus that of the
        certified exact codes (the amortization gap for encoder codes).
    code_error : array (B,)
        ``||codes - reference||``.
    rel_code_error : array (B,)
        ``||codes - reference|| / ||reference||`` (NaN where the reference is 0).
    support : dict of arrays (B,)
        :func:`aensae.metrics.support_recovery_per_sample` of the candidate against the
        reference support.
    feasible : array (B,) of bool
        Whether the candidate satisfies the sign constraint (always True without it).
    exact_gap, certified : arrays (B,)
        Duality gaps and certificates of the exact codes.
    threshold : float
        Support threshold used for the candidate.
    """

    objective_gap: np.ndarray
    code_error: np.ndarray
    rel_code_error: np.ndarray
    support: dict
    feasible: np.ndarray
    exact_gap: np.ndarray
    certified: np.ndarray
    threshold: float


def _np(name: str, x: Any) -> np.ndarray:
    if is_torch(x):
        x = x.detach().cpu().double().numpy()
    return check_array(name, x, ndim=2)


def _solve_exact(problem: ExactProblem, Xc: np.ndarray, tol: float):
    from aensae.solvers import solve

    D = _np("problem.D", problem.D)
    w = None if problem.weights is None else _np_any("problem.weights", problem.weights)
    res = solve(D, Xc, problem.lam1, problem.lam2, w, bool(problem.nonneg), tol)
    return D, w, res


def _np_any(name: str, x: Any) -> np.ndarray:
    if is_torch(x):
        x = x.detach().cpu().double().numpy()
    return check_array(name, x)


def _centred(problem: ExactProblem, X: Any) -> np.ndarray:
    X = _np("X", X)
    if problem.offset is None:
        return X
    off = _np_any("problem.offset", problem.offset)
    if off.shape != (X.shape[1],):
        raise ValueError(f"problem.offset must have shape ({X.shape[1]},), got {off.shape}")
    return X - off


def compare_codes(
    problem: ExactProblem,
    X: Any,
    codes: Any,
    reference: Any,
    *,
    exact: Any = None,
    tol: float = 1e-10,
    threshold: float = 0.0,
) -> CodeReport:
    """Compare ``codes`` with ``reference`` (support, error) and with exact codes (objective).

    ``X`` are raw signals; exact codes solve ``problem`` on ``problem.centred(X)`` with its
    penalties, weights and sign constraint, certified to ``tol`` (computed unless
    ``exact`` (B, m) is given, in which case its certificate is recomputed by
    :func:`aensae.solvers.duality_gap`).
    """
    from aensae.solvers import duality_gap

    threshold = check_real("threshold", threshold, low=0.0)
    Xc = _centred(problem, X)
    codes = _np("codes", codes)
    reference = _np("reference", reference)
    if exact is None:
        D, w, res = _solve_exact(problem, Xc, tol)
        H_ex, gap, cert = res.codes, res.gap, res.certified
    else:
        D = _np("problem.D", problem.D)
        w = None if problem.weights is None else _np_any("problem.weights", problem.weights)
        H_ex = _np("exact", exact)
        gap = duality_gap(D, Xc, H_ex, problem.lam1, problem.lam2, w, bool(problem.nonneg))
        cert = gap <= tol * np.einsum("bn,bn->b", Xc, Xc)
    for name, arr in (("codes", codes), ("reference", reference), ("exact", H_ex)):
        if arr.shape != (Xc.shape[0], D.shape[1]):
            raise ValueError(f"{name} must have shape ({Xc.shape[0]}, {D.shape[1]}), "
                             f"got {arr.shape}")
    F = exact_objective(D, Xc, codes, problem.lam1, problem.lam2, w)
    F_ex = exact_objective(D, Xc, H_ex, problem.lam1, problem.lam2, w)
    err = np.linalg.norm(codes - reference, axis=1)
    ref_norm = np.linalg.norm(reference, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ref_norm > 0, err / np.where(ref_norm > 0, ref_norm, 1.0), np.nan)
    feasible = np.all(codes >= 0, axis=1) if problem.nonneg else np.ones(len(codes), bool)
    return CodeReport(objective_gap=F - F_ex, code_error=err, rel_code_error=rel,
                      support=support_recovery_per_sample(codes, reference,
                                                          threshold=threshold),
                      feasible=feasible, exact_gap=np.asarray(gap),
                      certified=np.asarray(cert), threshold=threshold)


def amortization_gap(
    problem: ExactProblem,
    X: Any,
    encoder_codes: Any,
    *,
    tol: float = 1e-10,
    threshold: float = 0.0,
) -> tuple[CodeReport, np.ndarray]:
    r"""Amortization gap of an encoder: its codes against exact certified codes.

    ``objective_gap = F(h_enc) - F(h_exact) >= -gap`` (exact objective of
    :mod:`aensae.objective`, same dictionary, penalties and weights, signals
    ``x - offset``); code error ``||h_enc - h_exact||``; support agreement of ``h_enc``
    (threshold ``threshold``) against ``supp(h_exact)``.

    Returns
    -------
    (report, exact_codes)
    """
    Xc = _centred(problem, X)
    _, _, res = _solve_exact(problem, Xc, tol)
    report = compare_codes(problem, X, encoder_codes, res.codes, exact=res.codes, tol=tol,
                           threshold=threshold)
    report = CodeReport(**{**report.__dict__, "exact_gap": res.gap,
                           "certified": res.certified})
    return report, res.codes


def exact_vs_truth(
    problem: ExactProblem,
    X: Any,
    H_true: Any,
    *,
    tol: float = 1e-10,
    threshold: float = 0.0,
) -> tuple[CodeReport, np.ndarray]:
    """The same report for exact codes on the true dictionary against the true codes.

    The candidate is the exact code (support threshold ``threshold``) and the reference
    the true code: ``code_error = ||h_exact - h*||`` and support metrics of
    ``supp(h_exact)`` against ``supp(h*)``. ``objective_gap = F(h*) - F(h_exact) >= 0``
    measures how far the truth is from optimal under the penalised objective.

    Returns
    -------
    (report, exact_codes)
    """
    Xc = _centred(problem, X)
    H_true = _np("H_true", H_true)
    _, _, res = _solve_exact(problem, Xc, tol)
    base = compare_codes(problem, X, res.codes, H_true, exact=res.codes, tol=tol,
                         threshold=threshold)
    truth = compare_codes(problem, X, H_true, H_true, exact=res.codes, tol=tol)
    report = CodeReport(**{**base.__dict__, "objective_gap": truth.objective_gap,
                           "exact_gap": res.gap, "certified": res.certified})
    return report, res.codes
