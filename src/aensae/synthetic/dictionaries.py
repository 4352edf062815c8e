r"""Ground-truth dictionaries with a controlled correlation structure.

Every generator returns a :class:`SyntheticDictionary` whose ``D`` (n, m) has unit-norm
columns (atoms are columns) and whose ``shared`` (n, s) holds the orthonormal shared
direction(s) the atoms were built from, so that recovery can later be measured after the
shared component is projected out.

Spiked model (one shared direction ``v``)::

    d_i = normalize( sqrt(1 - rho) u_i + sqrt(rho) v ),   u_i = g_i / ||g_i||,  g_i ~ N(0, I_n)

For ``i != j`` the cosine is ``rho + O(1/sqrt(n))``, so the mean absolute off-diagonal
coherence is about ``rho`` (about ``sqrt(2 / (pi n))``, i.e. 0.05 for ``n = 256``, at
``rho = 0``).

Multi-spike model: ``s`` orthonormal spikes ``v_1..v_s``; atom ``i`` belongs to group
``g(i)`` (balanced, randomly assigned) and uses ``v_{g(i)}`` in place of ``v``. Atoms of
one group have coherence about ``rho``, atoms of different groups about 0.

Block model: contiguous blocks of atoms, a block spike ``b_g`` per block and one global
spike ``v`` (all orthonormal)::

    d_i = normalize( sqrt(1 - rho) u_i + sqrt(rho - rho_between) b_{g(i)} + sqrt(rho_between) v )

so within-block coherence is about ``rho`` and between-block coherence about
``rho_between`` (``0 <= rho_between <= rho``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aensae._validation import check_int, check_real, check_rho
from aensae.synthetic._seeding import rng_for

__all__ = [
    "SyntheticDictionary",
    "block_dictionary",
    "multi_spike_dictionary",
    "spiked_dictionary",
]


@dataclass(frozen=True, eq=False)
class SyntheticDictionary:
    """A generated dictionary and the structure it was generated from.

    Attributes
    ----------
    D : ndarray (n, m), float64
        Unit-norm atoms as columns.
    shared : ndarray (n, s), float64
        Orthonormal columns spanning the generator's shared direction(s) (``s = 1`` for the
        spiked model). ``I - shared @ shared.T`` projects the shared component out.
    rho : float
        Correlation level in [0, 1).
    kind : str
        ``"spiked"``, ``"multi_spike"`` or ``"block"``.
    seed : int
        Seed the dictionary was generated from.
    groups : ndarray (m,), int64
        Spike / block index of each atom (all zeros for the spiked model).
    """

    D: np.ndarray
    shared: np.ndarray
    rho: float
    kind: str
    seed: int
    groups: np.ndarray

    @property
    def n(self) -> int:
        """Signal dimension."""
        return int(self.D.shape[0])

    @property
    def m(self) -> int:
        """Number of atoms."""
        return int(self.D.shape[1])


def _unit_gaussian_columns(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """``m`` i.i.d. Gaussian columns in R^n, each scaled to unit norm."""
    U = rng.standard_normal((n, m))
    return U / np.linalg.norm(U, axis=0, keepdims=True)


def _orthonormal(rng: np.random.Generator, n: int, s: int) -> np.ndarray:
    """``s`` orthonormal columns in R^n, uniformly random (QR of a Gaussian, sign-fixed)."""
    Q, R = np.linalg.qr(rng.standard_normal((n, s)))
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)


def _normalize_columns(A: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(A, axis=0, keepdims=True)
    if np.any(norms == 0.0):  # probability zero for continuous draws in n >= 2; never / 0
        raise FloatingPointError("a generated atom has zero norm; use another seed")
    return A / norms


def _freeze(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


def _check_sizes(n: int, m: int, seed: int) -> tuple[int, int, int]:
    return (check_int("n", n, low=1), check_int("m", m, low=1), check_int("seed", seed, low=0))


def _check_spiked_n(n: int, kind: str) -> None:
    """A spike needs room: in R^1 every unit atom is +-v (and zero at rho = 0.5 when u = -v)."""
    if n < 2:
        raise ValueError(f"n must be >= 2 for a {kind} dictionary: in R^1 every unit atom is "
                         f"+-v, with no component of its own (half of them zero at rho = 0.5), "
                         f"got n={n}")


def spiked_dictionary(n: int, m: int, rho: float, *, seed: int = 0) -> SyntheticDictionary:
    r"""Spiked dictionary ``d_i = normalize(sqrt(1 - rho) u_i + sqrt(rho) v)``.

    Parameters
    ----------
    n : int >= 2
        Signal dimension (in R^1 an atom could not differ from ``+-v``).
    m : int >= 1
        Number of atoms.
    rho : float in [0, 1)
        Weight of the shared direction ``v``; the mean absolute off-diagonal coherence is
        about ``rho`` (about ``sqrt(2 / (pi n))`` at ``rho = 0``).
    seed : int >= 0
        The dictionary depends on ``(n, m, rho, seed)`` only (random numbers from
        ``SeedSequence(seed, spawn_key=(1,))``).

    Returns
    -------
    SyntheticDictionary
        ``kind="spiked"``, ``shared = v`` of shape (n, 1), ``groups`` all zeros.
    """
    n, m, seed = _check_sizes(n, m, seed)
    _check_spiked_n(n, "spiked")
    rho = check_rho(rho)
    rng = rng_for("dictionary", seed)
    v = _unit_gaussian_columns(rng, n, 1)
    U = _unit_gaussian_columns(rng, n, m)
    D = _normalize_columns(np.sqrt(1.0 - rho) * U + np.sqrt(rho) * v)
    groups = np.zeros(m, dtype=np.int64)
    _freeze(D, v, groups)
    return SyntheticDictionary(D=D, shared=v, rho=rho, kind="spiked", seed=seed, groups=groups)


def multi_spike_dictionary(
    n: int, m: int, rho: float, n_spikes: int, *, seed: int = 0
) -> SyntheticDictionary:
    r"""Dictionary with several orthonormal spikes, one per group of atoms.

    ``d_i = normalize(sqrt(1 - rho) u_i + sqrt(rho) v_{g(i)})`` with ``v_1..v_s``
    orthonormal and groups ``g`` balanced (sizes differ by at most one) and randomly
    assigned. Within a group the coherence is about ``rho``; across groups about 0.

    Parameters
    ----------
    n : int >= 2
    m : int >= 1
    rho : float in [0, 1)
    n_spikes : int, 1 <= n_spikes <= min(n, m)
        Number of shared directions ``s``.
    seed : int >= 0

    Returns
    -------
    SyntheticDictionary
        ``kind="multi_spike"``, ``shared`` (n, s), ``groups[i] = g(i)`` in ``0..s-1``.
    """
    n, m, seed = _check_sizes(n, m, seed)
    _check_spiked_n(n, "multi-spike")
    rho = check_rho(rho)
    n_spikes = check_int("n_spikes", n_spikes, low=1, high=min(n, m))
    rng = rng_for("dictionary", seed)
    V = _orthonormal(rng, n, n_spikes)
    U = _unit_gaussian_columns(rng, n, m)
    groups = rng.permutation(np.arange(m, dtype=np.int64) % n_spikes)
    D = _normalize_columns(np.sqrt(1.0 - rho) * U + np.sqrt(rho) * V[:, groups])
    _freeze(D, V, groups)
    return SyntheticDictionary(D=D, shared=V, rho=rho, kind="multi_spike", seed=seed, groups=groups)


def block_dictionary(
    n: int,
    m: int,
    rho: float,
    n_blocks: int,
    *,
    rho_between: float = 0.0,
    seed: int = 0,
) -> SyntheticDictionary:
    r"""Block-correlated dictionary: contiguous blocks, a spike per block and a global spike.

    ``d_i = normalize(sqrt(1 - rho) u_i + sqrt(rho - rho_between) b_{g(i)}
    + sqrt(rho_between) v)``, with ``b_1..b_G, v`` orthonormal and ``g(i) = floor(i G / m)``
    (contiguous blocks of near-equal size). Within-block coherence is about ``rho``,
    between-block coherence about ``rho_between``.

    Parameters
    ----------
    n, m : int >= 1
    rho : float in [0, 1)
        Within-block correlation level.
    n_blocks : int, 1 <= n_blocks <= m and n_blocks + 1 <= n
        Number of blocks ``G``.
    rho_between : float in [0, rho]
        Between-block correlation level (weight of the global spike).
    seed : int >= 0

    Returns
    -------
    SyntheticDictionary
        ``kind="block"``, ``shared = [b_1, ..., b_G, v]`` of shape (n, G + 1),
        ``groups[i] = g(i)``.
    """
    n, m, seed = _check_sizes(n, m, seed)
    rho = check_rho(rho)
    n_blocks = check_int("n_blocks", n_blocks, low=1, high=m)
    if n_blocks + 1 > n:
        raise ValueError(
            f"n_blocks must satisfy n_blocks + 1 <= n = {n} (block spikes and the global "
            f"spike are orthonormal), got n_blocks={n_blocks}"
        )
    rho_between = check_real("rho_between", rho_between, low=0.0, high=rho)
    rng = rng_for("dictionary", seed)
    S = _orthonormal(rng, n, n_blocks + 1)
    U = _unit_gaussian_columns(rng, n, m)
    groups = (np.arange(m, dtype=np.int64) * n_blocks) // m
    D = _normalize_columns(
        np.sqrt(1.0 - rho) * U
        + np.sqrt(rho - rho_between) * S[:, groups]
        + np.sqrt(rho_between) * S[:, n_blocks:]
    )
    _freeze(D, S, groups)
    return SyntheticDictionary(D=D, shared=S, rho=rho, kind="block", seed=seed, groups=groups)
