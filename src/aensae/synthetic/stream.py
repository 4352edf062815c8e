r"""Deterministic, random-access streams of synthetic signals ``x = D h + noise``.

Batch ``i`` of a stream is drawn from ``SeedSequence(seed, spawn_key=(2, i))`` (see
:mod:`aensae.synthetic._seeding`) and depends on nothing else (not on which batches were
drawn before), so training can start or resume at any step. Data are always generated
in float64 numpy; torch batches are the same numbers converted to the requested device
and dtype.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import njit

from aensae._validation import check_array, check_int, check_real
from aensae.synthetic._seeding import rng_for
from aensae.synthetic.codes import check_code_params, draw_sparse_codes
from aensae.synthetic.dictionaries import SyntheticDictionary

if TYPE_CHECKING:
    import torch

__all__ = ["SyntheticStream", "sample_signals"]


class SyntheticStream:
    r"""Random-access stream of batches ``(X, H)`` with ``X = H D^T + sigma E``.

    Each row ``h`` of ``H`` has exactly ``k`` non-zeros on a uniform random support,
    magnitudes ``U[lo, hi]`` and random signs unless ``nonneg`` (see
    :func:`aensae.synthetic.sample_codes`); ``E`` is standard Gaussian noise and
    ``sigma = noise_std``.

    Parameters
    ----------
    D : ndarray (n, m) or SyntheticDictionary
        Dictionary with atoms as columns.
    k : int in [1, m]
        Non-zeros per code.
    batch_size : int >= 1
    lo, hi : float, 0 < lo <= hi
    nonneg : bool
    noise_std : float >= 0
    seed : int >= 0
        Batch ``i`` is generated from ``SeedSequence(seed, spawn_key=(2, i))`` only, a
        stream independent of the dictionary generated from the same seed.

    Examples
    --------
    >>> from aensae.synthetic import spiked_dictionary, SyntheticStream
    >>> stream = SyntheticStream(spiked_dictionary(8, 16, 0.5), k=2, batch_size=4)
    >>> X, H = stream.batch(3)
    >>> X.shape, H.shape
    ((4, 8), (4, 16))
    """

    def __init__(
        self,
        D: np.ndarray | SyntheticDictionary,
        k: int,
        batch_size: int,
        *,
        lo: float = 1.0,
        hi: float = 3.0,
        nonneg: bool = True,
        noise_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        if isinstance(D, SyntheticDictionary):
            D = D.D
        D = check_array("D", D, ndim=2).copy()
        D.setflags(write=False)
        self._D = D
        self._Dt = np.ascontiguousarray(D.T)  # (m, n): rows are atoms, for gathering
        self._Dt.setflags(write=False)
        m = D.shape[1]
        _, self.k, self.lo, self.hi, self.nonneg = check_code_params(m, k, lo, hi, nonneg)
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.noise_std = check_real("noise_std", noise_std, low=0.0)
        self.seed = check_int("seed", seed, low=0)

    @property
    def D(self) -> np.ndarray:
        """The dictionary (n, m), read-only float64."""
        return self._D

    @property
    def n(self) -> int:
        """Signal dimension."""
        return int(self._D.shape[0])

    @property
    def m(self) -> int:
        """Number of atoms."""
        return int(self._D.shape[1])

    def __repr__(self) -> str:
        return (
            f"SyntheticStream(n={self.n}, m={self.m}, k={self.k}, batch_size={self.batch_size}, "
            f"lo={self.lo}, hi={self.hi}, nonneg={self.nonneg}, noise_std={self.noise_std}, "
            f"seed={self.seed})"
        )

    def batch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``i``: ``X`` (B, n) signals and ``H`` (B, m) true codes, float64.

        ``X = H D^T`` is formed by summing the ``k`` active atoms of each row in slot
        order (:func:`_combine_atoms`; the sum is the same up to floating-point summation
        order), then ``noise_std * E`` is added when ``noise_std > 0``.
        """
        return self._draw(i, dense_codes=True)

    def signals(self, i: int, rows: tuple[int, int] | None = None) -> np.ndarray:
        """The signals ``X`` (B, n) float64 of batch ``i`` alone: ``batch(i)[0]``, same numbers.

        Skips building the dense codes ``H`` (B, m), for training loops that do not use them.
        ``rows = (lo, hi)`` returns rows ``lo:hi`` of the batch alone, the same numbers
        (a data-parallel rank's share): the codes and noise of the whole batch are still
        drawn (the draws are by column), only the chosen rows' atoms are combined.
        """
        return self._draw(i, dense_codes=False, rows=rows)[0]

    def _draw(self, i: int, dense_codes: bool, rows: tuple[int, int] | None = None
              ) -> tuple[np.ndarray, np.ndarray | None]:
        i = check_int("i", i, low=0)
        if rows is not None:
            lo, hi = rows
            check_int("rows[0]", lo, low=0, high=self.batch_size - 1)
            check_int("rows[1]", hi, low=lo + 1, high=self.batch_size)
        return _generate(rng_for("stream", self.seed, i), self._Dt, self.k, self.batch_size,
                         self.lo, self.hi, self.nonneg, self.noise_std,
                         dense_codes=dense_codes, rows=rows)

    @staticmethod
    def _check_dtype(dtype: torch.dtype | None) -> torch.dtype:
        import torch

        if dtype is None:
            return torch.float32
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        return dtype

    def torch_batch(
        self, i: int, device: Any = "cpu", dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` as torch tensors on ``device`` with ``dtype`` (default float32).

        The numbers are those of :meth:`batch` (generated in float64, then converted), so
        numpy and torch streams of the same seed carry the same data.
        """
        import torch

        dtype = self._check_dtype(dtype)
        X, H = self.batch(i)
        return (
            torch.from_numpy(X).to(device=device, dtype=dtype),
            torch.from_numpy(H).to(device=device, dtype=dtype),
        )

    @staticmethod
    def _indices(n_batches: int | None, start: int) -> range | itertools.count:
        """Batch indices to iterate over, validated eagerly."""
        start = check_int("start", start, low=0)
        if n_batches is None:
            return itertools.count(start)
        n_batches = check_int("n_batches", n_batches, low=0)
        return range(start, start + n_batches)

    def numpy_batches(
        self, n_batches: int | None = None, start: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``batch(start), batch(start + 1), ...``; ``n_batches=None`` never stops."""
        indices = self._indices(n_batches, start)
        return (self.batch(i) for i in indices)

    def torch_batches(
        self,
        n_batches: int | None = None,
        start: int = 0,
        device: Any = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Torch counterpart of :meth:`numpy_batches` (see :meth:`torch_batch`)."""
        indices = self._indices(n_batches, start)
        self._check_dtype(dtype)
        return (self.torch_batch(i, device=device, dtype=dtype) for i in indices)

    def torch_signal_batches(
        self,
        n_batches: int | None = None,
        start: int = 0,
        device: Any = "cpu",
        dtype: torch.dtype | None = None,
        *,
        chunk: int = 8,
        rows: tuple[int, int] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Signals ``X`` alone of batches ``start, start + 1, ...`` as torch tensors.

        The numbers of :meth:`signals` (float64, rounded once to ``dtype``, default
        float32), for training loops that need no true codes. Batches are generated
        ``chunk`` at a time, back to back: inside a training loop, whose products flush
        the caches between steps, the generator's data (the dictionary rows) then stay
        cached for all but the first batch of a chunk (about 2x cheaper per batch at the
        paper size). ``n_batches=None`` never stops. ``rows = (lo, hi)``: rows ``lo:hi``
        of every batch (:meth:`signals`).
        """
        import torch

        dtype = self._check_dtype(dtype)
        chunk = check_int("chunk", chunk, low=1)
        indices = iter(self._indices(n_batches, start))  # validated here, not on first use
        if rows is not None:
            self._draw(0, dense_codes=False, rows=rows)  # validate now, not on first use

        def chunks() -> Iterator[torch.Tensor]:
            while block := list(itertools.islice(indices, chunk)):
                yield from [torch.from_numpy(self.signals(i, rows)).to(device=device,
                                                                       dtype=dtype)
                            for i in block]

        return chunks()


def _generate(
    rng: np.random.Generator,
    Dt: np.ndarray,
    k: int,
    batch: int,
    lo: float,
    hi: float,
    nonneg: bool,
    noise_std: float,
    dense_codes: bool = True,
    rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw codes, then (if ``noise_std > 0``) noise, in that order, from ``rng``.

    ``H`` is ``None`` when not ``dense_codes`` (``X`` is the same either way). ``rows =
    (lo, hi)`` keeps rows ``lo:hi`` of ``X`` and ``H`` (every draw is still made).
    """
    m, n = Dt.shape
    idx, vals = draw_sparse_codes(rng, m, k, batch, lo, hi, nonneg)
    sel = slice(None) if rows is None else slice(*rows)
    idx, vals = idx[sel], vals[sel]
    H = None
    if dense_codes:
        H = np.zeros((idx.shape[0], m))
        np.put_along_axis(H, idx, vals, axis=1)
    X = _combine_atoms(idx, vals, Dt)
    if noise_std > 0.0:
        X += noise_std * rng.standard_normal((batch, n))[sel]
    return X, H


@njit(cache=True, nogil=True)
def _combine_atoms(idx: np.ndarray, vals: np.ndarray, Dt: np.ndarray
                   ) -> np.ndarray:  # pragma: no cover - compiled
    """``X[b] = sum_j vals[b, j] * Dt[idx[b, j]]`` (slots in order), float64 (B, n).

    One pass over the ``k`` active atoms of each row, without the (B, k, n) gather.
    """
    batch, k = idx.shape
    n = Dt.shape[1]
    X = np.zeros((batch, n))
    for b in range(batch):
        for j in range(k):
            v = vals[b, j]
            row = Dt[idx[b, j]]
            for d in range(n):
                X[b, d] += v * row[d]
    return X


def sample_signals(
    D: np.ndarray | SyntheticDictionary,
    n_samples: int,
    k: int,
    *,
    lo: float = 1.0,
    hi: float = 3.0,
    nonneg: bool = True,
    noise_std: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_samples`` signals and their true codes in one array each.

    Equal to ``SyntheticStream(D, k, n_samples, ..., seed=seed).batch(0)``.

    Returns
    -------
    X : ndarray (n_samples, n), float64
    H : ndarray (n_samples, m), float64
    """
    n_samples = check_int("n_samples", n_samples, low=1)
    stream = SyntheticStream(
        D, k, n_samples, lo=lo, hi=hi, nonneg=nonneg, noise_std=noise_std, seed=seed
    )
    return stream.batch(0)
