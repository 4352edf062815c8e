r"""Adaptive (reweighted) exact sparse coding.

- Classical adaptive lasso / adaptive elastic net (Zou 2006; Zou & Zhang 2009): from an
  initial estimate ``h_init`` (by default the elastic-net solution with the same
  penalties), weights ``w = (|h_init| + eps)^(-gamma)`` per signal
  (:func:`aensae.objective.adaptive_weights`), then the weighted problem is solved
  exactly. ``n_reweight > 1`` repeats the step (multi-stage reweighting).
- Population weights of the AEN-SAE: the SAE keeps an EMA of ``mean_b |h_bi|``; at a
  stationary point that EMA is the batch mean of ``|h|``, and
  :func:`population_weights_from_codes` applies the *same* function the SAE uses
  (:func:`aensae.objective.population_weights`) to it, so exact and amortized codes can
  be compared under identical weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aensae._validation import check_array, check_int
from aensae.objective import adaptive_weights, population_weights
from aensae.solvers.fast import SolveResult, solve

__all__ = ["population_weights_from_codes", "solve_adaptive"]


def solve_adaptive(
    D: Any,
    X: Any,
    lam1: float,
    lam2: float = 0.0,
    *,
    gamma: float = 1.0,
    eps: float = 1e-3,
    n_reweight: int = 1,
    init: Any = None,
    nonneg: bool = False,
    tol: float = 1e-10,
    **options: Any,
) -> tuple[SolveResult, np.ndarray]:
    r"""Adaptive lasso (``lam2 = 0``) or adaptive elastic net by exact reweighting.

    Parameters
    ----------
    init : array (B, m), optional
        Initial estimate ``h_init``; default: the exact elastic-net codes with
        ``lam1, lam2`` (plain lasso when ``lam2 = 0``).
    gamma, eps : float
        ``w = (|h_init| + eps)^(-gamma)``.
    n_reweight : int >= 1
        Number of reweighting stages.

    Returns
    -------
    (result, weights)
        The certified final codes and the per-signal weights (B, m) used for them.
    """
    n_reweight = check_int("n_reweight", n_reweight, low=1)
    if init is None:
        h = solve(D, X, lam1, lam2, nonneg=nonneg, tol=tol, **options).codes
    else:
        h = check_array("init", init, ndim=2)
        if h.shape != (np.shape(X)[0], np.shape(D)[1]):
            raise ValueError(f"init must have shape {(np.shape(X)[0], np.shape(D)[1])}, "
                             f"got {h.shape}")
    res = None
    w = None
    for _ in range(n_reweight):
        w = adaptive_weights(h, gamma=gamma, eps=eps)
        res = solve(D, X, lam1, lam2, weights=w, nonneg=nonneg, tol=tol, **options)
        h = res.codes
    return res, w


def population_weights_from_codes(
    codes: Any,
    gamma: float = 1.0,
    top_p: float = 0.01,
    w_min: float = 0.1,
    w_max: float = 10.0,
) -> np.ndarray:
    r"""AEN-SAE population weights at stationarity: ``population_weights(mean_b |h_b|)``.

    ``ema_i = mean_b |h_bi|``, ``ref`` = mean of the top-``top_p`` fraction of ``ema``,
    ``w_i = clip((ref / ema_i)^gamma, w_min, w_max)``. Returns (m,).
    """
    if hasattr(codes, "toarray"):
        codes = codes.toarray()
    H = check_array("codes", codes, ndim=2)
    return population_weights(np.abs(H).mean(axis=0), gamma, top_p, w_min, w_max)
