r"""Lipschitz constants of the exact sparse-coding map and of amortized encoders.

Exact map
---------
For a signal :math:`x` whose (unique) solution of

    min_h 1/2 ||x - D h||^2 + lam1 sum_i w_i |h_i| + lam2/2 ||h||^2      [h >= 0 optional]

has support :math:`S` and signs :math:`s_S`, the KKT conditions restricted to ``S`` read
:math:`(D_S^T D_S + \lambda_2 I) h_S = D_S^T x - \lambda_1 w_S \odot s_S`. While ``x``
moves inside the region where ``S`` and ``s_S`` stay fixed, the map is affine with Jacobian

    J_S = (D_S^T D_S + lam2 I)^{-1} D_S^T ,

whose singular values are :math:`\sigma_i / (\sigma_i^2 + \lambda_2)` for the singular
values :math:`\sigma_i` of :math:`D_S` (SVD :math:`D_S = U \Sigma V^T` gives
:math:`J_S = V (\Sigma^2 + \lambda_2)^{-1} \Sigma U^T`). Hence the local constant

    L_enet(x) = max_i sigma_i / (sigma_i^2 + lam2)  <=  1 / (2 sqrt(lam2)),

since :math:`t / (t^2 + \lambda_2)` peaks at :math:`t = \sqrt{\lambda_2}`. The bound does
not depend on ``D``, ``S``, ``lam1`` or the weights: it is also the global constant of the
whole (piecewise-affine, continuous) map. For the lasso (``lam2 = 0``)
:math:`L_{lasso}(x) = 1 / \sigma_{\min}(D_S)`, infinite when :math:`D_S` loses column rank.
The weights and the sign constraint change which support is active, not the formula.

At a point on the boundary of two regions the map is still Lipschitz; its local constant
is the larger of the adjacent pieces'. The functions here evaluate the piece of the support
they are given (the support of a certified solution, ``|h_i| > tol``).

Encoders
--------
:func:`encoder_local_lipschitz`, :func:`encoder_global_bound`,
:func:`pair_ratio_lower_bound`, :func:`ascent_lower_bound` and :func:`encoder_jumps` live in
:mod:`aensae.theory.encoders` and are re-exported here.
"""

from __future__ import annotations

import math

import numpy as np
from threadpoolctl import threadpool_limits

from aensae._validation import check_array, check_real
from aensae.theory._support_sets import active_mask, groups_by_size
from aensae.theory.encoders import (
    ascent_lower_bound,
    encoder_global_bound,
    encoder_jacobian,
    encoder_jumps,
    encoder_local_lipschitz,
    pair_ratio_lower_bound,
)

__all__ = [
    "ascent_lower_bound",
    "encoder_global_bound",
    "encoder_jacobian",
    "encoder_jumps",
    "encoder_local_lipschitz",
    "enet_global_bound",
    "lipschitz_enet",
    "lipschitz_lasso",
    "pair_ratio_lower_bound",
    "support_singular_values",
]


def _check_D_codes(D: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    D = check_array("D", D, ndim=2)
    codes = check_array("codes", codes, ndim=2, shape=(None, D.shape[1]))
    return D, codes


def support_singular_values(
    D: np.ndarray, codes: np.ndarray, tol: float = 0.0
) -> list[np.ndarray]:
    r"""Singular values of :math:`D_S` for the support ``S = {i : |h_i| > tol}`` of each code.

    Parameters
    ----------
    D : array (n, m)
        Dictionary, atoms as columns.
    codes : array (B, m)
        Codes whose supports select the columns.
    tol : float >= 0
        Support threshold.

    Returns
    -------
    list of B arrays
        Entry ``b`` holds the ``min(n, |S_b|)`` singular values of :math:`D_{S_b}`,
        descending (empty for an empty support). Computed by one batched SVD per support
        size.
    """
    D, codes = _check_D_codes(D, codes)
    mask = active_mask(codes, tol)
    out: list[np.ndarray] = [np.empty(0)] * codes.shape[0]
    with threadpool_limits(1):  # many small LAPACK calls: BLAS threads only contend
        for rows, idx in groups_by_size(mask):
            if idx.shape[1] == 0:
                continue
            DS = np.moveaxis(D[:, idx], 1, 0)  # (g, n, k)
            sv = np.linalg.svd(DS, compute_uv=False)
            for r, s in zip(rows, sv, strict=True):
                out[r] = s
    return out


def lipschitz_enet(D: np.ndarray, codes: np.ndarray, lam2: float, tol: float = 0.0) -> np.ndarray:
    r"""Local Lipschitz constant of the elastic-net map on the support of each code.

    ``L_enet = max_i sigma_i / (sigma_i^2 + lam2)`` over the singular values of
    :math:`D_S` (0 for an empty support). With ``lam2 = 0`` this is the lasso constant
    :func:`lipschitz_lasso`.

    Parameters
    ----------
    D : array (n, m)
    codes : array (B, m)
        Certified solutions (or any codes: their support defines the region).
    lam2 : float >= 0
    tol : float >= 0
        Support threshold ``|h_i| > tol``.

    Returns
    -------
    array (B,)
    """
    lam2 = check_real("lam2", lam2, low=0.0)
    if lam2 == 0.0:
        return lipschitz_lasso(D, codes, tol)
    svals = support_singular_values(D, codes, tol)
    return np.array([float(np.max(s / (s * s + lam2))) if s.size else 0.0 for s in svals])


def lipschitz_lasso(D: np.ndarray, codes: np.ndarray, tol: float = 0.0) -> np.ndarray:
    r"""Local Lipschitz constant of the lasso map, ``1 / sigma_min(D_S)``.

    Infinite when :math:`D_S` is rank deficient: more atoms than dimensions
    (``|S| > n``) or ``sigma_min <= max(n, |S|) * eps * sigma_max`` (numerical rank, as in
    ``numpy.linalg.matrix_rank``). An empty support gives 0.

    Returns
    -------
    array (B,)
    """
    D, codes = _check_D_codes(D, codes)
    n = D.shape[0]
    mask = active_mask(codes, tol)
    out = np.zeros(codes.shape[0])
    for b, s in enumerate(support_singular_values(D, codes, tol)):
        k = int(mask[b].sum())
        if k == 0:
            continue
        if k > n or s[-1] <= max(n, k) * np.finfo(float).eps * s[0]:
            out[b] = math.inf
        else:
            out[b] = 1.0 / s[-1]
    return out


def enet_global_bound(lam2: float) -> float:
    r"""Global Lipschitz constant bound of the elastic-net map, ``1 / (2 sqrt(lam2))``.

    Infinite for ``lam2 = 0`` (the lasso map has no dictionary-free bound).
    """
    lam2 = check_real("lam2", lam2, low=0.0)
    return math.inf if lam2 == 0.0 else 1.0 / (2.0 * math.sqrt(lam2))
