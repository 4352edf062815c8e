r"""Duality-gap certificate of the weighted, optionally non-negative elastic net.

The elastic net is the lasso of the augmented problem
``D_aug = [D; sqrt(lam2) I]``, ``x_aug = [x; 0]``::

    P(h) = 1/2 ||x_aug - D_aug h||^2 + lam1 * sum_i w_i |h_i|     [h >= 0]

whose dual is ``max_theta  theta^T x_aug - 1/2 ||theta||^2`` subject to
``|D_aug,i^T theta| <= lam1 w_i`` (for ``h >= 0``: ``D_aug,i^T theta <= lam1 w_i``).
From a code ``h`` we take the residual ``r_aug = x_aug - D_aug h = [x - D h; -sqrt(lam2) h]``,
its dual-infeasibility scale ``mu = max_i |D_aug,i^T r_aug| / w_i``
(``D_aug,i^T r_aug = D_i^T (x - D h) - lam2 h_i``; positive part when ``h >= 0``),
and the dual point ``theta = s r_aug`` with the best feasible step along that ray,
``s = clip(r_aug^T x_aug / ||r_aug||^2, 0, lam1 / mu)``. The gap

    gap(h) = P(h) - (s r^T x - s^2/2 ||r_aug||^2)  >=  P(h) - P(h*)  >= 0

bounds the suboptimality of ``h`` (weak duality), and is zero at the solution. A code is
*certified* when ``gap <= tol * ||x||^2``. This is the form scikit-learn's coordinate
descent uses (with ``s`` fixed at ``min(1, lam1/mu)``); the ray-optimal ``s`` is never worse.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aensae.solvers import _kernels as K
from aensae.solvers.problem import validate_problem

__all__ = ["duality_gap", "gap_from_stats", "kkt_violation"]


def gap_from_stats(
    rx: np.ndarray,
    rr: np.ndarray,
    hh: np.ndarray,
    l1w: np.ndarray,
    mu: np.ndarray,
    lam1: float,
    lam2: float,
) -> np.ndarray:
    r"""Duality gap from per-signal scalars (arrays broadcast against each other).

    Parameters are ``r^T x``, ``||r||^2``, ``||h||^2``, ``sum_i w_i |h_i|`` and an upper
    bound ``mu`` of the dual-infeasibility scale (any upper bound keeps the certificate
    valid; the exact value makes it tightest). With ``q = ||r||^2 + lam2 ||h||^2`` the
    dual point is ``s r`` with ``s = clip(r^T x / q, 0, lam1 / mu)`` and

        gap = (q / 2 + lam1 sum_i w_i |h_i|) - (s r^T x - s^2 q / 2).

    The formula is written once, in :func:`aensae.solvers._kernels.duality_gap_from_stats`,
    which the fast solver's kernel also calls per signal.
    """
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64)
                                   for a in (rx, rr, hh, l1w, mu)))
    out = np.empty(arrays[0].shape)
    K.gap_rows(*(np.ascontiguousarray(a).reshape(-1) for a in arrays), float(lam1),
               float(lam2), out.reshape(-1))
    return out


def duality_gap(
    D: Any,
    X: Any,
    codes: Any,
    lam1: float,
    lam2: float = 0.0,
    weights: Any = None,
    nonneg: bool = False,
) -> np.ndarray:
    r"""Absolute duality gap of ``codes`` for each signal (float64, dense computation).

    Parameters
    ----------
    D : array (n, m)
        Dictionary, atoms as columns.
    X : array (B, n)
        Signals.
    codes : array (B, m) or scipy sparse matrix
        Candidate codes ``h``.
    lam1, lam2 : float
        Penalties of the exact objective (``lam1, lam2 >= 0``).
    weights : array (m,) or (B, m), optional
        Positive l1 weights ``w``.
    nonneg : bool
        Whether the problem constrains ``h >= 0``; a code with a negative entry is
        infeasible and gets ``gap = inf``.

    Returns
    -------
    ndarray (B,)
        ``gap(h) >= F(h) - F(h*)``; see the module docstring for the construction.
    """
    P = validate_problem(D, X, lam1, lam2, weights, nonneg)
    H = _dense_codes(codes, P.X.shape[0], P.D.shape[1])
    R = P.X - H @ P.D.T
    Z = R @ P.D - P.lam2 * H
    Z = np.maximum(Z, 0.0) if P.nonneg else np.abs(Z)
    mu = np.max(Z / P.weights, axis=1)
    gap = gap_from_stats(
        rx=np.einsum("bn,bn->b", R, P.X),
        rr=np.einsum("bn,bn->b", R, R),
        hh=np.einsum("bm,bm->b", H, H),
        l1w=np.sum(np.abs(H) * P.weights, axis=1),
        mu=mu,
        lam1=P.lam1,
        lam2=P.lam2,
    )
    if P.nonneg:
        gap = np.where(np.any(H < 0, axis=1), np.inf, gap)
    return gap


def kkt_violation(
    D: Any,
    X: Any,
    codes: Any,
    lam1: float,
    lam2: float = 0.0,
    weights: Any = None,
    nonneg: bool = False,
) -> np.ndarray:
    r"""Largest violation of the KKT conditions per signal, in units of ``lam1 w``.

    With ``g = D^T (D h - x) + lam2 h`` the optimality conditions are
    ``g_i = -lam1 w_i sign(h_i)`` where ``h_i != 0`` and ``|g_i| <= lam1 w_i`` where
    ``h_i = 0`` (for ``h >= 0``: ``g_i >= -lam1 w_i`` where ``h_i = 0``). Returns
    ``max_i`` of the absolute violation (0 at an exact solution); negative codes under
    ``nonneg`` count as violations of their magnitude.
    """
    P = validate_problem(D, X, lam1, lam2, weights, nonneg)
    H = _dense_codes(codes, P.X.shape[0], P.D.shape[1])
    g = (H @ P.D.T - P.X) @ P.D + P.lam2 * H
    lw = P.lam1 * P.weights
    on = H != 0
    v_on = np.abs(g + lw * np.sign(H))
    if P.nonneg:
        v_off = np.maximum(-g - lw, 0.0)
        v_neg = np.maximum(-H, 0.0)
    else:
        v_off = np.maximum(np.abs(g) - lw, 0.0)
        v_neg = np.zeros_like(H)
    v = np.where(on, v_on, v_off) + v_neg
    return v.max(axis=1)


def _dense_codes(codes: Any, B: int, m: int) -> np.ndarray:
    if hasattr(codes, "toarray"):
        codes = codes.toarray()
    H = np.asarray(codes, dtype=np.float64)
    if H.shape != (B, m):
        raise ValueError(f"codes must have shape ({B}, {m}), got {H.shape}")
    if not np.all(np.isfinite(H)):
        raise ValueError("codes must be finite")
    return H
