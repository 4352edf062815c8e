r"""Local Hoffman constants of the elastic-net KKT system, by its block structure.

The KKT system at a solution with active set ``A`` (``|A| = k``), unknowns
:math:`(h_A, z_{A^c})` with :math:`z_j \in [-1, 1]` the subgradient of :math:`|h_j|`:

    (G_AA + lam2 I) h_A                    = D_A^T x - lam1 w_A * s_A
    G_{A^c A} h_A + lam1 diag(w_{A^c}) z   = D_{A^c}^T x ,          G = D^T D,

so its matrix, with ``A`` ordered first, is

    M_A = [[K, 0], [C, W]],   K = G_AA + lam2 I,  C = G_{A^c A},  W = diag(lam1 w_{A^c}),

and the local Hoffman (error-bound) constant is :math:`\|M_A^{-1}\|_2` with

    M_A^{-1} = [[K^{-1}, 0], [-W^{-1} C K^{-1}, W^{-1}]] =: [[P, 0], [Q, W^{-1}]].

Bounds. With ``a = ||K^{-1}||``, ``b = ||W^{-1}|| = max_j 1/(lam1 w_j)`` and
``c = ||W^{-1} C K^{-1}||``, every block is a submatrix, so ``max(a, b, c) <= ||M^{-1}||``;
for a unit vector (u, v), ``||M^{-1}(u, v)||^2 = ||Pu||^2 + ||Qu + W^{-1}v||^2
<= a^2 ||u||^2 + (c||u|| + b||v||)^2 <= a^2 + b^2 + c^2`` (Cauchy-Schwarz), so
``||M^{-1}|| <= sqrt(a^2 + b^2 + c^2)``.

Exact value through k x k problems. Let ``N = M^{-1}``, ``d_j = 1/(lam1 w_j)^2``
(``j`` in ``A^c``), ``d_max = b^2`` and ``mu* = ||N||^2 = lambda_max(N^T N)``, where

    N^T N = [[P^2 + Q^T Q, Q^T W^{-1}], [W^{-1} Q, diag(d)]].

For ``mu > d_max`` the lower-right block minus ``mu I`` is negative definite, so by
Haynsworth inertia additivity ``N^T N - mu I`` has as many positive eigenvalues as the
Schur complement ``P^2 + Q^T Q - mu I - Q^T W^{-1} (diag(d) - mu)^{-1} W^{-1} Q``.
With ``q_j = -sqrt(d_j) K^{-1} c_j`` (``c_j`` the ``j``-th row of ``C``) and
``mu d_j / (mu - d_j) = d_j + d_j^2 / (mu - d_j)``, that Schur complement is the k x k matrix

    F(mu) = K^{-1} [I + R + sum_{j in A^c} d_j^2 c_j c_j^T / (mu - d_j)] K^{-1} - mu I,
    R = sum_{j in A^c} d_j c_j c_j^T ,

so ``mu* = max(d_max, root of f(mu) = lambda_max(F(mu)))``. ``f`` is convex on
``(d_max, inf)`` (``F`` is a congruence of positive multiples of the convex
``1/(mu - d_j)``, minus ``mu I``) and decreasing with slope at most -1, so Newton's method
started left of the root increases monotonically to it, with the derivative
``f'(mu) = -1 - sum_j d_j^2 (c_j^T K^{-1} v)^2 / (mu - d_j)^2`` at the top eigenvector ``v``.
(The congruent ``K F K`` has the same root but rounding errors of size ``eps mu ||K||^2``,
which swamp its slope when ``K`` is ill-conditioned; ``F`` is evaluated in the eigenbasis
of ``K``.) The start is the Rayleigh-Ritz value of ``N^T N`` on the
span of ``(u, 0)`` and ``(0, W^{-1} Q u)`` (``u`` the top eigenvector of
``P^2 + Q^T Q = K^{-1}(I + R)K^{-1}``) or on the span of ``(u, 0)`` and ``(0, e_{j*})``
(``j*`` the largest ``d_j``), whichever is larger; both are lower bounds of ``mu*``.
Each step costs one ``k x k x m`` product per sample; nothing of size ``m x m`` is formed.
``K`` singular (``lam2 = 0`` and ``D_A`` rank deficient) gives an infinite constant.

:func:`local_hoffman_dense` builds ``M_A`` densely in the original coordinate order and
returns ``1 / sigma_min(M_A)`` from a full SVD: the validation reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from aensae._validation import check_array, check_int, check_real
from aensae.solvers.problem import validate_weights
from aensae.theory._support_sets import active_mask, groups_by_size
from aensae.theory.hoffman_global import hoffman_constant

__all__ = [
    "LocalHoffman",
    "hoffman_constant",
    "kkt_matrix",
    "local_hoffman",
    "local_hoffman_dense",
]


_SMALL = 64  # active-set size up to which the batched k x k work runs on one BLAS thread


@dataclass(frozen=True)
class LocalHoffman:
    """Local Hoffman constants ``||M_A^{-1}||_2`` with their block bounds, all shape (B,).

    ``value`` is the constant; ``a``, ``b``, ``c`` are the curvature, regularisation and
    interaction terms; ``lower = max(a, b, c)`` and ``upper = sqrt(a^2 + b^2 + c^2)``;
    ``n_iter`` counts the Newton steps each sample took.
    """

    value: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n_iter: np.ndarray


def _check_inputs(D, codes, lam1, lam2, weights):
    D = check_array("D", D, ndim=2)
    m = D.shape[1]
    codes = check_array("codes", codes, ndim=2, shape=(None, m))
    lam1 = check_real("lam1", lam1, low=0.0, low_inclusive=False)
    lam2 = check_real("lam2", lam2, low=0.0)
    B = codes.shape[0]
    w = validate_weights(weights, B, m)
    return D, codes, lam1, lam2, w


def kkt_matrix(
    D: np.ndarray, active: np.ndarray, lam1: float, lam2: float = 0.0,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    r"""Dense KKT matrix ``M_A`` (m, m) of one sample, in the original index order.

    Row ``i`` in ``A``: ``(G + lam2 I)[i, A]`` in the columns ``A``. Row ``j`` not in ``A``:
    ``G[j, A]`` in the columns ``A`` and ``lam1 w_j`` on the diagonal. A symmetric
    permutation of the block form in the module docstring (same singular values).

    Parameters
    ----------
    active : array (m,) of bool
        The active set ``A``.
    """
    D = check_array("D", D, ndim=2)
    m = D.shape[1]
    active = np.asarray(active)
    if active.dtype != bool or active.shape != (m,):
        raise ValueError(f"active must be a boolean array of shape ({m},), "
                         f"got dtype {active.dtype} shape {active.shape}")
    lam1 = check_real("lam1", lam1, low=0.0, low_inclusive=False)
    lam2 = check_real("lam2", lam2, low=0.0)
    w = np.ones(m) if weights is None else check_array("weights", weights, shape=(m,))
    G = D.T @ D
    M = np.zeros((m, m))
    M[:, active] = G[:, active]
    A = np.flatnonzero(active)
    M[A, A] += lam2
    Ac = np.flatnonzero(~active)
    M[Ac, Ac] = lam1 * w[Ac]
    return M


def local_hoffman_dense(
    D: np.ndarray, codes: np.ndarray, lam1: float, lam2: float = 0.0,
    weights: np.ndarray | None = None, tol: float = 0.0,
) -> np.ndarray:
    """``||M_A^{-1}||_2 = 1 / sigma_min(M_A)`` from a dense SVD per sample, shape (B,).

    The reference for :func:`local_hoffman` (``O(m^3)`` per sample). ``A`` is the support
    ``|h_i| > tol`` of each row of ``codes``. Infinite when ``M_A`` is singular.
    """
    D, codes, lam1, lam2, w = _check_inputs(D, codes, lam1, lam2, weights)
    mask = active_mask(codes, tol)
    out = np.empty(codes.shape[0])
    for r in range(codes.shape[0]):
        M = kkt_matrix(D, mask[r], lam1, lam2, w[r if w.shape[0] > 1 else 0])
        s = np.linalg.svd(M, compute_uv=False)
        out[r] = math.inf if s[-1] == 0.0 else 1.0 / s[-1]
    return out


def _top_eig(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lam, V = np.linalg.eigh(S)
    return lam[:, -1], V[:, :, -1]


def _group(GA, idx, dvec, lam2, rtol, max_iter):
    """Hoffman constants for ``g`` samples sharing ``|A| = k`` (see module docstring)."""
    g, k, _ = GA.shape
    K = np.take_along_axis(GA, idx[:, None, :], axis=2) + lam2 * np.eye(k)
    lamK, VK = np.linalg.eigh(K)
    eps = np.finfo(float).eps
    singular = lamK[:, 0] <= k * eps * np.maximum(lamK[:, -1], 0.0)
    lamK = np.where(singular[:, None], 1.0, lamK)
    a = 1.0 / lamK[:, 0]
    # Work in the eigenbasis of K (rows of GA rotated by V^T), where K = diag(lamK).
    GA = VK.transpose(0, 2, 1) @ GA
    inv = 1.0 / lamK
    d_max = dvec.max(1)
    R = (GA * dvec[:, None, :]) @ GA.transpose(0, 2, 1)
    c = np.sqrt(np.maximum(_top_eig(R * inv[:, :, None] * inv[:, None, :])[0], 0.0))
    L1, u = _top_eig((np.eye(k) + R) * inv[:, :, None] * inv[:, None, :])
    # Ritz value on span{(u, 0), (0, z)}, z = W^{-1} Q u = -d * (C K^{-1} u).
    z = -dvec * np.einsum("gkm,gk->gm", GA, inv * u)
    beta = np.linalg.norm(z, axis=1)
    zh = z / np.where(beta > 0, beta, 1.0)[:, None]
    gamma = np.einsum("gm,gm->g", dvec, zh * zh)
    ritz = 0.5 * (L1 + gamma) + np.sqrt(0.25 * (L1 - gamma) ** 2 + beta ** 2)
    # ... and on span{(u, 0), (0, e_j*)}, j* = argmax d_j: entry beta_* = z_{j*}.
    beta_s = np.take_along_axis(z, dvec.argmax(1)[:, None], axis=1)[:, 0]
    ritz_s = 0.5 * (L1 + d_max) + np.sqrt(0.25 * (L1 - d_max) ** 2 + beta_s ** 2)
    mu = np.maximum(np.maximum(L1, np.maximum(ritz, ritz_s)), d_max * (1.0 + 1e-13))
    n_iter = np.zeros(g, dtype=int)
    todo = np.flatnonzero(~singular & (d_max > 0))
    eye = np.eye(k)
    for _ in range(max_iter):
        if todo.size == 0:
            break
        mt, dt, Gt = mu[todo], dvec[todo], GA[todo]
        den = mt[:, None] - dt
        e = np.where(dt > 0, dt * dt / np.where(den > 0, den, 1.0), 0.0)
        it = inv[todo]
        F = (eye + R[todo] + (Gt * e[:, None, :]) @ Gt.transpose(0, 2, 1)) * (
            it[:, :, None] * it[:, None, :])
        F[:, np.arange(k), np.arange(k)] -= mt[:, None]
        h, v = _top_eig(F)
        cv = np.einsum("gkm,gk->gm", Gt, it * v)
        dh = -1.0 - np.einsum(
            "gm,gm->g", np.where(dt > 0, dt * dt / np.where(den > 0, den, 1.0) ** 2, 0.0), cv * cv)
        step = -h / dh
        n_iter[todo] += 1
        go = step > rtol * mt
        mu[todo[go]] = mt[go] + step[go]
        todo = todo[go]
    if todo.size:
        raise RuntimeError(f"local_hoffman: Newton iteration did not converge in max_iter="
                           f"{max_iter} steps for {todo.size} samples")
    value = np.sqrt(np.maximum(mu, d_max))
    value = np.where(d_max > 0, value, a)
    a = np.where(singular, math.inf, a)
    c = np.where(singular, math.inf, c)
    value = np.where(singular, math.inf, value)
    return value, a, np.sqrt(d_max), c, n_iter


def local_hoffman(
    D: np.ndarray,
    codes: np.ndarray,
    lam1: float,
    lam2: float = 0.0,
    weights: np.ndarray | None = None,
    *,
    tol: float = 0.0,
    rtol: float = 1e-15,
    max_iter: int = 200,
    chunk: int = 256,
    G: np.ndarray | None = None,
) -> LocalHoffman:
    r"""Local Hoffman constants ``||M_A^{-1}||_2`` per sample through the block structure.

    Parameters
    ----------
    D : array (n, m)
        Dictionary, atoms as columns.
    codes : array (B, m)
        Codes whose supports ``A = {i : |h_i| > tol}`` define the active sets.
    lam1 : float > 0
    lam2 : float >= 0
    weights : array (m,) or (B, m), optional
        Positive l1 weights (ones by default).
    tol : float
        Support threshold.
    rtol : float
        Newton stops once its step is below ``rtol * mu`` (``mu`` the squared constant).
    max_iter : int
        Newton steps per sample before a ``RuntimeError``.
    chunk : int
        Samples per batched block (memory ~ ``chunk * |A| * m`` floats).
    G : array (m, m), optional
        Precomputed Gram matrix ``D^T D``.

    Returns
    -------
    LocalHoffman
        Constants and bounds, see the module docstring for the mathematics.
    """
    D, codes, lam1, lam2, w = _check_inputs(D, codes, lam1, lam2, weights)
    rtol = check_real("rtol", rtol, low=0.0)
    max_iter = check_int("max_iter", max_iter, low=1)
    chunk = check_int("chunk", chunk, low=1)
    m = D.shape[1]
    G = D.T @ D if G is None else check_array("G", G, shape=(m, m))
    mask = active_mask(codes, tol)
    B = codes.shape[0]
    out = {key: np.empty(B) for key in ("value", "a", "b", "c")}
    n_iter = np.zeros(B, dtype=int)
    _fill(out, n_iter, G, mask, w, lam1, lam2, rtol, max_iter, chunk)
    a, b, c = out["a"], out["b"], out["c"]
    with np.errstate(invalid="ignore"):
        upper = np.sqrt(a * a + b * b + c * c)
    return LocalHoffman(value=out["value"], a=a, b=b, c=c,
                        lower=np.maximum(np.maximum(a, b), c), upper=upper, n_iter=n_iter)


def _fill(out, n_iter, G, mask, w, lam1, lam2, rtol, max_iter, chunk):
    m = G.shape[0]
    for rows, idx in groups_by_size(mask, chunk):
        wr = w[rows] if w.shape[0] > 1 else np.broadcast_to(w, (rows.size, m))
        dvec = 1.0 / (lam1 * wr) ** 2
        dvec = np.where(mask[rows], 0.0, dvec)
        k = idx.shape[1]
        if k == 0:
            b = np.sqrt(dvec.max(1))
            out["value"][rows], out["b"][rows] = b, b
            out["a"][rows], out["c"][rows] = 0.0, 0.0
            continue
        # Small active sets: many tiny LAPACK calls, where BLAS threads only contend.
        with threadpool_limits(1 if k <= _SMALL else None):
            value, a, b, c, it = _group(G[idx], idx, dvec, lam2, rtol, max_iter)
        out["value"][rows], out["a"][rows], out["b"][rows], out["c"][rows] = value, a, b, c
        n_iter[rows] = it
