r"""Exact global Hoffman constant of a small system ``{x : A x <= b}`` (Euclidean norms).

Hoffman's bound: for every ``b`` with :math:`P(b) = \{x : Ax \le b\} \ne \emptyset` and every
``u``, :math:`\mathrm{dist}(u, P(b)) \le H(A) \, \|(Au - b)_+\|`. Pena, Vera & Zuluaga
(2021, "New characterizations of Hoffman constants for systems of linear constraints",
Math. Program.) characterise the sharpest constant as

    H(A) = max_{J in S(A)}  1 / min { ||A_J^T y|| : y in R^J_+, ||y|| = 1 },
    S(A) = { J subset of rows : A_J x < 0 has a solution },

with the dual norms of those measuring distance and residual (here both Euclidean, which
is self-dual). By Gordan's alternative ``J`` is in ``S(A)`` exactly when no non-zero
``y >= 0`` has ``A_J^T y = 0``, so each inner minimum is positive. The inner value grows
with ``J`` and ``S(A)`` is closed under subsets, so only maximal members matter.

Inner problem, exactly. With ``Q = A_J A_J^T`` the inner minimum is
:math:`\sqrt{\min\{y^T Q y : y \ge 0, \|y\| = 1\}}`. At a minimiser with support ``I`` the
restriction is a stationary point of the Rayleigh quotient of ``Q_II`` on the open positive
orthant, i.e. ``Q_II y_I = lambda y_I`` with ``y_I > 0`` and value ``lambda``; conversely
every eigenpair of a principal submatrix with a strictly positive eigenvector is feasible.
Hence the minimum is the least eigenvalue, over ``I subset of J``, of ``Q_II`` whose
eigenspace holds a strictly positive vector (a linear feasibility problem when the
eigenvalue is repeated). The enumeration visits at most ``3^p`` principal submatrices for
``p`` rows, so it is meant for small systems, as a validation reference.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from aensae._validation import check_array, check_int

__all__ = ["hoffman_constant", "hoffman_subsets"]


def _strictly_interior(A_J: np.ndarray) -> bool:
    """Whether ``A_J x < 0`` is feasible (LP: ``A_J x <= -1``, scale-invariant)."""
    from scipy.optimize import linprog

    p, n = A_J.shape
    res = linprog(np.zeros(n), A_ub=A_J, b_ub=-np.ones(p), bounds=[(None, None)] * n,
                  method="highs")
    return res.status == 0


def _positive_in_span(V: np.ndarray) -> bool:
    """Whether the column span of ``V`` holds a strictly positive vector."""
    if V.shape[1] == 1:
        v = V[:, 0]
        scale = np.abs(v).max()
        thr = 1e-12 * scale
        return bool(np.all(v > thr) or np.all(v < -thr))
    from scipy.optimize import linprog

    r = V.shape[1]
    res = linprog(np.zeros(r), A_ub=-V, b_ub=-np.ones(V.shape[0]),
                  bounds=[(None, None)] * r, method="highs")
    return res.status == 0


def _min_on_positive_sphere(Q: np.ndarray, rtol: float = 1e-10) -> float:
    r"""``min { y^T Q y : y >= 0, ||y|| = 1 }`` for symmetric PSD ``Q`` (see module doc)."""
    p = Q.shape[0]
    best = math.inf
    scale = max(float(np.abs(Q).max()), 1.0)
    for size in range(1, p + 1):
        for I in itertools.combinations(range(p), size):
            lam, V = np.linalg.eigh(Q[np.ix_(I, I)])
            start = 0
            while start < size:
                stop = start + 1
                while stop < size and lam[stop] - lam[start] <= rtol * scale:
                    stop += 1
                if lam[start] < best and _positive_in_span(V[:, start:stop]):
                    best = float(lam[start])
                    break  # larger eigenvalues of this submatrix cannot improve
                start = stop
    return max(best, 0.0)


def hoffman_subsets(A: np.ndarray) -> list[tuple[tuple[int, ...], float]]:
    """Maximal members ``J`` of ``S(A)`` with their constants ``H_J(A)``.

    Returns
    -------
    list of (J, H_J)
        ``J`` a tuple of row indices, ``H_J = 1 / min_{y in R^J_+, ||y||=1} ||A_J^T y||``.
    """
    A = check_array("A", A, ndim=2)
    p = check_int("number of rows of A", A.shape[0], low=1, high=12)
    found: list[tuple[tuple[int, ...], float]] = []
    for size in range(p, 0, -1):
        for J in itertools.combinations(range(p), size):
            if any(set(J) <= set(F) for F, _ in found):
                continue
            A_J = A[list(J)]
            if not _strictly_interior(A_J):
                continue
            val = _min_on_positive_sphere(A_J @ A_J.T)
            found.append((J, math.inf if val <= 0.0 else 1.0 / math.sqrt(val)))
    return found


def hoffman_constant(A: np.ndarray) -> float:
    r"""Global Hoffman constant ``H(A)`` of ``{x : A x <= b}`` in Euclidean norms.

    ``dist(u, P(b)) <= H(A) ||(A u - b)_+||`` for all feasible ``b`` and all ``u``, and no
    smaller constant works (Pena, Vera & Zuluaga 2021; see the module docstring).
    ``A`` may have at most 12 rows (the computation enumerates row subsets). Returns 0
    when no non-empty row subset is strictly feasible (e.g. ``A = 0``).

    Parameters
    ----------
    A : array (p, n)

    Returns
    -------
    float
    """
    subsets = hoffman_subsets(A)
    return max((h for _, h in subsets), default=0.0)
