r"""Validation of exact sparse-coding problems and their closed-form quantities.

Problem, per row ``x`` of ``X`` (B, n), dictionary ``D`` (n, m), weights ``w`` (m,) or (B, m)::

    min_h  1/2 ||x - D h||^2 + lam1 * sum_i w_i |h_i| + lam2/2 * ||h||^2     [h >= 0 optional]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aensae._validation import check_array, check_real

__all__ = ["lam_max", "validate_problem", "ValidProblem"]


@dataclass(frozen=True)
class ValidProblem:
    """Validated, float64, C-contiguous problem data (weights always 2-D: (1 or B, m))."""

    D: np.ndarray
    X: np.ndarray
    lam1: float
    lam2: float
    weights: np.ndarray
    nonneg: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, n, m)."""
        return self.X.shape[0], self.D.shape[0], self.D.shape[1]


def validate_dictionary(D: Any) -> np.ndarray:
    """Validate a dictionary ``D`` (n, m), atoms as columns; return float64."""
    return check_array("D", D, ndim=2)


def validate_weights(weights: Any, B: int | None, m: int) -> np.ndarray:
    """Validate l1 weights: ``None`` (ones), (m,) or (B, m), finite and > 0. Returns (1|B, m)."""
    if weights is None:
        return np.ones((1, m))
    w = check_array("weights", weights, ndim=(1, 2))
    if w.ndim == 1:
        if w.shape[0] != m:
            raise ValueError(f"weights must have shape ({m},) or (B, {m}) to match D with {m} "
                             f"atoms, got {w.shape}")
        w = w[None, :]
    elif w.shape[1] != m or (B is not None and w.shape[0] not in (1, B)):
        raise ValueError(f"weights must have shape ({m},) or ({B}, {m}), got {w.shape}")
    if np.any(w <= 0):
        bad = float(w[w <= 0].ravel()[0])
        raise ValueError(f"weights must be > 0 (a zero weight leaves a coordinate "
                         f"unpenalised); found {bad!r}")
    return np.ascontiguousarray(w)


def validate_problem(
    D: Any,
    X: Any,
    lam1: Any,
    lam2: Any = 0.0,
    weights: Any = None,
    nonneg: Any = False,
) -> ValidProblem:
    """Check every input of an exact problem; errors name the parameter and the value."""
    D = validate_dictionary(D)
    n, m = D.shape
    X = check_array("X", X, ndim=2)
    if X.shape[1] != n:
        raise ValueError(f"X must have shape (B, {n}) to match D of shape {D.shape}, "
                         f"got {X.shape}")
    lam1 = check_real("lam1", lam1, low=0.0)
    lam2 = check_real("lam2", lam2, low=0.0)
    if not isinstance(nonneg, (bool, np.bool_)):
        raise TypeError(f"nonneg must be a bool, got {nonneg!r}")
    w = validate_weights(weights, X.shape[0], m)
    return ValidProblem(D=D, X=X, lam1=lam1, lam2=lam2, weights=w, nonneg=bool(nonneg))


def lam_max(D: Any, X: Any, weights: Any = None, nonneg: bool = False) -> np.ndarray:
    r"""Smallest ``lam1`` for which ``h = 0`` solves the problem, per signal.

    ``lam_max(x) = max_i |D_i^T x| / w_i`` (for ``h >= 0``: ``max_i (D_i^T x)_+ / w_i``).
    It does not depend on ``lam2``: at ``h = 0`` the ridge term has zero gradient.

    Returns
    -------
    ndarray (B,)
    """
    P = validate_problem(D, X, 0.0, 0.0, weights, nonneg)
    Z = P.X @ P.D
    if P.nonneg:
        Z = np.maximum(Z, 0.0)
    else:
        Z = np.abs(Z)
    return np.max(Z / P.weights, axis=1)
