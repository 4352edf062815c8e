"""Grouping samples by active-set size, so per-sample small problems can be batched.

Samples whose supports have the same size ``k`` are stacked and handled by one batched
LAPACK call on ``(g, ., k)`` arrays; no ``m x m`` matrix is ever formed per sample.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from aensae._validation import check_array, check_real

__all__ = ["active_mask", "groups_by_size"]


def active_mask(codes: np.ndarray, tol: float = 0.0, name: str = "codes") -> np.ndarray:
    """Boolean support mask ``|h_bi| > tol`` of a batch of codes ``(B, m)``.

    ``tol`` is recorded by callers next to every support-based quantity; exact solvers
    return exact zeros, so the default ``0`` is the support in the strict sense.
    """
    codes = check_array(name, codes, ndim=2)
    tol = check_real("tol", tol, low=0.0)
    return np.abs(codes) > tol


def groups_by_size(mask: np.ndarray, chunk: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(rows, idx)`` for samples with equal support size ``k``.

    ``rows`` (g,) are the sample indices and ``idx`` (g, k) the sorted active indices of
    each; groups larger than ``chunk`` are split so memory stays bounded.
    """
    sizes = mask.sum(1)
    for k in np.unique(sizes):
        rows_all = np.flatnonzero(sizes == k)
        for start in range(0, rows_all.size, chunk):
            rows = rows_all[start:start + chunk]
            idx = np.nonzero(mask[rows])[1].reshape(rows.size, int(k))
            yield rows, idx
