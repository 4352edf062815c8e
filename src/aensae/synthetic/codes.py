r"""Sparse ground-truth codes: exactly ``k`` non-zeros per sample on a uniform support.

A code ``h`` in R^m has support ``S`` drawn uniformly among the ``C(m, k)`` subsets of size
``k``, magnitudes ``|h_i| ~ U[lo, hi]`` i.i.d. on ``S`` and, unless ``nonneg``, signs
``+-1`` with probability 1/2 each. Supports are drawn with Floyd's algorithm: one
``rng.integers`` call per support slot, vectorised over samples, then the picks. Both run
compiled (numba), with the numbers of the same NumPy calls.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from aensae._validation import check_int, check_real

__all__ = ["sample_codes", "sample_supports"]


def _as_generator(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(check_int("rng", int(rng), low=0))
    raise TypeError(
        f"rng must be a numpy.random.Generator or a non-negative int seed, got {type(rng).__name__}"
    )


def check_code_params(
    m: int, k: int, lo: float, hi: float, nonneg: bool
) -> tuple[int, int, float, float, bool]:
    """Validate the code-distribution parameters shared by samplers and streams."""
    m = check_int("m", m, low=1)
    k = check_int("k", k, low=1)
    if k > m:
        raise ValueError(f"k must lie in [1, m] = [1, {m}] (non-zeros per code), got k={k}")
    lo = check_real("lo", lo, low=0.0, low_inclusive=False)
    hi = check_real("hi", hi, low=lo)
    if not isinstance(nonneg, (bool, np.bool_)):
        raise TypeError(f"nonneg must be a bool, got {nonneg!r} of type {type(nonneg).__name__}")
    return m, k, lo, hi, bool(nonneg)


@njit(cache=True, nogil=True)
def _floyd_supports(rng, m, k, batch):  # pragma: no cover - compiled
    """(batch, k) distinct indices, each row a uniform k-subset of range(m) (Floyd).

    Slot ``s`` (``j = m - k + s``) draws ``t ~ U{0..j}`` for every row and keeps ``t``
    unless the row already holds it, in which case it takes ``j``. The draws do not
    depend on earlier picks, so they are made first (``rng.integers(0, j + 1, batch)``,
    one call per slot, in slot order) and the picks resolved afterwards.

    Compiled: numba's ``Generator`` methods share the Python object's bit generator and
    reproduce NumPy's algorithms, so the numbers equal those of the same calls made from
    Python (a test checks it against a NumPy-only reference), without NumPy's per-call
    overhead.
    """
    draws = np.empty((batch, k), dtype=np.int64)
    for s in range(k):
        col = rng.integers(0, m - k + s + 1, size=batch)
        for b in range(batch):
            draws[b, s] = col[b]
    return _floyd_picks(draws, m - k)


@njit(cache=True, nogil=True)
def _floyd_picks(draws: np.ndarray, first: int) -> np.ndarray:  # pragma: no cover - compiled
    """Resolve Floyd's picks: ``idx[b, s] = draws[b, s]`` unless taken, else ``first + s``."""
    batch, k = draws.shape
    idx = np.empty((batch, k), dtype=np.int64)
    for b in range(batch):
        for s in range(k):
            t = draws[b, s]
            for q in range(s):
                if idx[b, q] == t:
                    t = first + s
                    break
            idx[b, s] = t
    return idx


@njit(cache=True, nogil=True)
def _draw_compiled(rng, m, k, batch, lo, hi, nonneg):  # pragma: no cover - compiled
    """Supports, then magnitudes, then (unless ``nonneg``) signs, from ``rng`` in that order."""
    idx = _floyd_supports(rng, m, k, batch)
    vals = rng.uniform(lo, hi, size=(batch, k))
    if not nonneg:
        u = rng.random((batch, k))
        for b in range(batch):
            for s in range(k):
                if u[b, s] < 0.5:
                    vals[b, s] = -vals[b, s]
    return idx, vals


def draw_sparse_codes(
    rng: np.random.Generator,
    m: int,
    k: int,
    batch: int,
    lo: float,
    hi: float,
    nonneg: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Support indices (batch, k) and values (batch, k) of validated code parameters.

    Draw order (part of the determinism contract): supports (``k`` calls
    ``rng.integers(0, m - k + s + 1, size=batch)``), magnitudes
    (``rng.uniform(lo, hi, size=(batch, k))``), signs (``rng.random((batch, k)) < 0.5``
    negates). The calls run compiled; the numbers are those of the same NumPy calls.
    """
    return _draw_compiled(rng, m, k, batch, float(lo), float(hi), bool(nonneg))


def sample_supports(m: int, k: int, batch: int, *, rng: np.random.Generator | int) -> np.ndarray:
    """Uniform random supports: (batch, k) int64, each row ``k`` distinct indices in [0, m).

    Every ``k``-subset of ``range(m)`` is equally likely; the order within a row is not
    random (use the row as a set).
    """
    m = check_int("m", m, low=1)
    k = check_int("k", k, low=1)
    if k > m:
        raise ValueError(f"k must lie in [1, m] = [1, {m}], got k={k}")
    batch = check_int("batch", batch, low=1)
    return _floyd_supports(_as_generator(rng), m, k, batch)


def sample_codes(
    m: int,
    k: int,
    batch: int,
    *,
    lo: float = 1.0,
    hi: float = 3.0,
    nonneg: bool = True,
    rng: np.random.Generator | int,
) -> np.ndarray:
    r"""Sample ``batch`` codes with exactly ``k`` non-zeros each.

    ``h_{b,i} = sigma_{b,i} a_{b,i}`` for ``i in S_b``, 0 elsewhere, with ``S_b`` uniform
    among ``k``-subsets of ``{0..m-1}``, ``a_{b,i} ~ U[lo, hi]`` and ``sigma_{b,i} = 1``
    (``nonneg``) or uniform on ``{-1, +1}``.

    Parameters
    ----------
    m : int >= 1
        Code dimension (number of atoms).
    k : int in [1, m]
        Non-zeros per code.
    batch : int >= 1
        Number of codes.
    lo, hi : float, 0 < lo <= hi
        Magnitude range; ``lo > 0`` guarantees exactly ``k`` non-zeros.
    nonneg : bool
        Non-negative codes (default) or random signs.
    rng : numpy.random.Generator or int
        Source of randomness (an int is used as a seed).

    Returns
    -------
    ndarray (batch, m), float64
    """
    m, k, lo, hi, nonneg = check_code_params(m, k, lo, hi, nonneg)
    batch = check_int("batch", batch, low=1)
    idx, vals = draw_sparse_codes(_as_generator(rng), m, k, batch, lo, hi, nonneg)
    H = np.zeros((batch, m))
    np.put_along_axis(H, idx, vals, axis=1)
    return H
