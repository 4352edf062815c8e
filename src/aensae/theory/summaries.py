r"""Distribution summaries, and the geometry of a dictionary's exact map on given codes.

:func:`quantiles` summarises a sample of constants by ``q05, q25, median, q75, q95``
(``inverted_cdf`` order statistics, so every value is one of the sample's), ``max``,
the mean of the finite values and the number of infinite ones (``ninf``).

:func:`exact_map_geometry` is what the synthetic grid and ``aensae llm eval`` record
about a dictionary ``D`` (n, m) and the certified exact codes ``H`` of signals
``X_c`` (already centred) under ``(lam1, lam2, w, nonneg)``:

- ``lip_exact_enet_*``: local Lipschitz constants of the elastic-net map on each code's
  support ``S``, :math:`\max_i \sigma_i / (\sigma_i^2 + \lambda_2)` over the singular
  values of :math:`D_S` (:func:`aensae.theory.lipschitz.lipschitz_enet`);
- ``lip_exact_lasso_*``: those of the lasso map, :math:`1 / \sigma_{\min}(D_S)` (infinite
  when :math:`D_S` loses column rank, counted in ``lip_exact_lasso_ninf``), on the
  supports of the certified lasso codes of the same signals (``lam2 = 0``, same ``lam1``,
  weights and sign constraint; their certified share is ``lasso_certified``, present
  when they are solved here or given). With ``lam2 = 0`` the exact codes are the lasso
  codes;
- ``lip_exact_enet_bound`` :math:`= 1 / (2\sqrt{\lambda_2})`, the global constant of the
  elastic-net map (infinite for the lasso);
- ``hoffman_*``, ``hoffman_lower_*``, ``hoffman_upper_*``: local Hoffman constants
  :math:`\lVert M_A^{-1}\rVert_2` of the KKT system on the first ``hoffman_samples``
  codes, and their block bounds (:func:`aensae.theory.hoffman.local_hoffman`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["QUANTILES", "exact_map_geometry", "geometry_keys", "quantiles", "summary"]

#: Quantile columns of every distribution.
QUANTILES = (("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q95", 0.95))


def quantiles(prefix: str, values: Any) -> dict[str, float]:
    """``{prefix_q05, ..., prefix_q95, prefix_max, prefix_mean, prefix_ninf}`` of ``values``.

    An empty sample gives NaN everywhere (``ninf`` 0); ``mean`` is over the finite values
    (``inf`` when there are none).
    """
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        return {f"{prefix}_{name}": float("nan") for name, _ in QUANTILES} | {
            f"{prefix}_max": float("nan"), f"{prefix}_mean": float("nan"), f"{prefix}_ninf": 0}
    out = {f"{prefix}_{name}": float(np.quantile(v, q, method="inverted_cdf"))
           for name, q in QUANTILES}
    out[f"{prefix}_max"] = float(v.max())
    finite = v[np.isfinite(v)]
    out[f"{prefix}_mean"] = float(finite.mean()) if finite.size else float("inf")
    out[f"{prefix}_ninf"] = int(np.isinf(v).sum())
    return out


def geometry_keys() -> list[str]:
    """Every key :func:`exact_map_geometry` returns, in its order."""
    keys = list(quantiles("lip_exact_enet", [1.0]))
    keys.append("lasso_certified")
    keys += list(quantiles("lip_exact_lasso", [1.0]))
    keys.append("lip_exact_enet_bound")
    for prefix in ("hoffman", "hoffman_lower", "hoffman_upper"):
        keys += list(quantiles(prefix, [1.0]))
    return keys


def exact_map_geometry(
    D: np.ndarray,
    Xc: np.ndarray,
    codes: np.ndarray,
    lam1: float,
    lam2: float,
    weights: Any,
    nonneg: bool,
    hoffman_samples: int,
    tol: float,
    *,
    lasso_codes: np.ndarray | None = None,
    lasso_certified: float | None = None,
    G: np.ndarray | None = None,
    hoffman_chunk: int = 256,
) -> dict[str, float]:
    r"""Exact-map Lipschitz (elastic net and lasso) and local Hoffman summaries.

    Parameters
    ----------
    D : array (n, m)
        Dictionary, atoms as columns.
    Xc : array (B, n)
        Signals, already centred (``x - offset``): the lasso codes are solved on them.
    codes : array (B, m)
        Certified exact codes of ``Xc`` under ``(lam1, lam2, weights, nonneg)``.
    hoffman_samples : int
        Hoffman constants on ``codes[:hoffman_samples]``.
    tol : float
        Certificate tolerance of the lasso codes (``gap <= tol ||x||^2``).
    lasso_codes, lasso_certified : optional
        The lasso codes of ``Xc`` and their certified share when already solved (with
        ``lam2 > 0``: otherwise solved here). With ``lam2 = 0`` the lasso codes are
        ``codes``, and ``lasso_certified`` is recorded only when given.
    G : array (m, m), optional
        ``D^T D``, if at hand (else formed for the Hoffman constants).
    hoffman_chunk : int
        Samples per batched Hoffman block (memory ``~ chunk |A| m`` floats).

    Returns
    -------
    dict
        The keys of the module docstring (:func:`geometry_keys`; ``lasso_certified``
        only when the lasso codes were solved here or their share given).
    """
    from aensae.solvers import solve
    from aensae.theory.hoffman import local_hoffman
    from aensae.theory.lipschitz import lipschitz_enet, lipschitz_lasso

    out: dict[str, float] = {}
    out.update(quantiles("lip_exact_enet", lipschitz_enet(D, codes, lam2)))
    if lam2 > 0 and lasso_codes is None:
        lasso = solve(D, Xc, lam1, 0.0, weights, nonneg, tol)
        lasso_codes = lasso.codes
        lasso_certified = float(np.mean(lasso.certified))
    elif lam2 == 0:
        lasso_codes = codes
    if lasso_certified is not None:
        out["lasso_certified"] = float(lasso_certified)
    out.update(quantiles("lip_exact_lasso", lipschitz_lasso(D, lasso_codes)))
    out["lip_exact_enet_bound"] = (1.0 / (2.0 * math.sqrt(lam2))) if lam2 > 0 else math.inf
    w = weights
    if w is not None and np.ndim(w) == 2:
        w = w[:hoffman_samples]
    hof = local_hoffman(D, codes[:hoffman_samples], lam1, lam2, w, G=G, chunk=hoffman_chunk)
    out.update(quantiles("hoffman", hof.value))
    out.update(quantiles("hoffman_lower", hof.lower))
    out.update(quantiles("hoffman_upper", hof.upper))
    return out


def summary(values: Any) -> dict[str, Any]:
    """Median, 95th percentile and max (sample order statistics) and the infinite count."""
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        return {"median": None, "p95": None, "max": None, "n": 0, "n_infinite": 0}
    if np.isnan(v).any():
        raise ValueError(f"summary: {int(np.isnan(v).sum())} NaN values")

    def f(x: float) -> float | None:
        return float(x) if np.isfinite(x) else None

    return {"median": f(np.quantile(v, 0.5, method="inverted_cdf")),
            "p95": f(np.quantile(v, 0.95, method="inverted_cdf")),
            "max": f(v.max()), "n": int(v.size), "n_infinite": int(np.isinf(v).sum())}
