r"""Diagnostics of a dictionary ``D`` (n, m), atoms as columns.

- Coherence: ``mu_ij = |<d_i, d_j>| / (||d_i|| ||d_j||)`` over ``i != j``; mean and max.
- Active Gram block over sampled supports ``S`` (``|S| = k``, uniform):
  eigenvalues of ``G_S = D_S^T D_S + lam2 I``, computed from the singular values
  ``sigma`` of ``D_S`` as ``sigma^2 + lam2`` (plus ``lam2`` itself, ``k - n`` times, when
  ``k > n``); smallest eigenvalue and condition number ``lambda_max / lambda_min``.
- Irrepresentable condition, for support ``S`` and signs ``s_S``::

      IC(S, s) = max_{j not in S} | d_j^T D_S (D_S^T D_S + lam2 I)^{-1} s_S |

  ``lam2 = 0`` is the lasso form (Zhao & Yu 2006); ``lam2 > 0`` the elastic-net form. The
  condition holds when ``IC < 1``. See :func:`irrepresentable` for the version with the
  true coefficients and the one-sided version for non-negative codes.

All summaries are plain Python floats / ints (JSON-serialisable; a singular Gram block
has condition number ``inf``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aensae._validation import check_array, check_int, check_real
from aensae.synthetic._seeding import rng_for
from aensae.synthetic.codes import _floyd_supports
from aensae.synthetic.dictionaries import SyntheticDictionary

__all__ = [
    "active_gram_stats",
    "coherence",
    "dictionary_diagnostics",
    "irrepresentable",
    "irrepresentable_stats",
]

_CHUNK = 1024  # columns / supports per block: bounds memory to O(chunk * max(m, n))
_SINGULAR_RTOL = 1e-12  # lambda_min <= rtol * lambda_max counts as singular


def _as_dict_matrix(D: Any, *, min_atoms: int = 1) -> np.ndarray:
    if isinstance(D, SyntheticDictionary):
        D = D.D
    D = check_array("D", D, ndim=2)
    if D.shape[1] < min_atoms:
        raise ValueError(f"D must have at least {min_atoms} atoms (columns), got shape {D.shape}")
    return D


def _unit_columns(D: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(D, axis=0)
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        raise ValueError(
            f"D must have non-zero columns (atoms); columns {zero[:10].tolist()} are zero"
        )
    return D / norms


def coherence(D: np.ndarray | SyntheticDictionary) -> dict[str, float]:
    r"""Mean and max absolute off-diagonal coherence of the atoms (columns) of ``D``.

    ``mean_abs = 1/(m(m-1)) sum_{i != j} |cos(d_i, d_j)|`` and
    ``max_abs = max_{i != j} |cos(d_i, d_j)|``; columns are normalised first.

    Parameters
    ----------
    D : ndarray (n, m) with m >= 2, or SyntheticDictionary

    Returns
    -------
    dict with float entries ``mean_abs``, ``max_abs``.
    """
    D = _unit_columns(_as_dict_matrix(D, min_atoms=2))
    m = D.shape[1]
    total = 0.0
    largest = 0.0
    for start in range(0, m, _CHUNK):
        stop = min(m, start + _CHUNK)
        block = np.abs(D[:, start:stop].T @ D)  # (chunk, m)
        block[np.arange(stop - start), np.arange(start, stop)] = 0.0  # drop the diagonal
        total += float(block.sum())
        largest = max(largest, float(block.max()))
    return {"mean_abs": total / (m * (m - 1)), "max_abs": largest}


def _check_k(k: int, m: int) -> int:
    k = check_int("k", k, low=1)
    if k > m:
        raise ValueError(f"k must lie in [1, m] = [1, {m}] (support size), got k={k}")
    return k


def _active_eigs(D: np.ndarray, supports: np.ndarray, lam2: float) -> tuple[np.ndarray, ...]:
    """(min eig, max eig) of ``D_S^T D_S + lam2 I`` per row of ``supports``."""
    n = D.shape[0]
    k = supports.shape[1]
    Dt = D.T
    lo = np.empty(len(supports))
    hi = np.empty(len(supports))
    for start in range(0, len(supports), _CHUNK):
        sl = slice(start, start + _CHUNK)
        DS = np.swapaxes(Dt[supports[sl]], 1, 2)  # (N, n, k)
        sv = np.linalg.svd(DS, compute_uv=False)  # (N, min(n, k)), descending
        hi[sl] = sv[:, 0] ** 2 + lam2
        lo[sl] = lam2 if k > n else sv[:, -1] ** 2 + lam2
    return lo, hi


def _summary(prefix: str, values: np.ndarray) -> dict[str, float]:
    return {
        f"{prefix}_median": float(np.median(values)),
        f"{prefix}_min": float(np.min(values)),
        f"{prefix}_max": float(np.max(values)),
    }


def active_gram_stats(
    D: np.ndarray | SyntheticDictionary,
    k: int,
    n_supports: int = 200,
    *,
    lam2: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    r"""Spectrum of the active Gram block ``D_S^T D_S + lam2 I`` over random supports.

    ``n_supports`` supports ``S`` of size ``k`` are drawn uniformly (seeded); for each,
    ``lambda_min`` and ``kappa = lambda_max / lambda_min`` (``inf`` when
    ``lambda_min = 0``). The columns of ``D`` are used as given (not renormalised).

    Returns
    -------
    dict
        ``min_eig_median``, ``min_eig_min``, ``min_eig_max``, ``cond_median``, ``cond_min``,
        ``cond_max``, and the parameters ``k``, ``lam2``, ``n_supports``, ``seed``.
    """
    D = _as_dict_matrix(D)
    k = _check_k(k, D.shape[1])
    n_supports = check_int("n_supports", n_supports, low=1)
    lam2 = check_real("lam2", lam2, low=0.0)
    seed = check_int("seed", seed, low=0)
    supports = _floyd_supports(rng_for("supports", seed), D.shape[1], k, n_supports)
    lo, hi = _active_eigs(D, supports, lam2)
    with np.errstate(divide="ignore"):
        cond = np.where(lo > 0.0, hi / np.where(lo > 0.0, lo, 1.0), np.inf)
    out: dict[str, float] = {}
    out.update(_summary("min_eig", lo))
    out.update(_summary("cond", cond))
    out.update({"k": k, "lam2": lam2, "n_supports": n_supports, "seed": seed})
    return out


def _irrep_batch(
    D: np.ndarray, supports: np.ndarray, vecs: np.ndarray, lam2: float, one_sided: bool
) -> np.ndarray:
    """IC value per row of ``supports`` (N, k) with right-hand sides ``vecs`` (N, k)."""
    m = D.shape[1]
    k = supports.shape[1]
    if k == m:  # no inactive atom: the condition holds vacuously
        return np.zeros(len(supports))
    Dt = D.T
    out = np.empty(len(supports))
    for start in range(0, len(supports), _CHUNK):
        sl = slice(start, start + _CHUNK)
        S = supports[sl]
        DS = np.swapaxes(Dt[S], 1, 2)  # (N, n, k)
        G = np.swapaxes(DS, 1, 2) @ DS + lam2 * np.eye(k)
        w, Q = np.linalg.eigh(G)
        singular = w[:, 0] <= _SINGULAR_RTOL * w[:, -1]
        if np.any(singular):
            bad = int(np.flatnonzero(singular)[0]) + start
            raise ValueError(
                f"D_S^T D_S + lam2 I is singular for support {supports[bad].tolist()} with "
                f"lam2={lam2!r}; the irrepresentable value is undefined (use lam2 > 0 or "
                f"k <= n with linearly independent atoms)"
            )
        coef = np.einsum("nij,nj->ni", Q, np.einsum("nji,nj->ni", Q, vecs[sl]) / w)
        a = np.einsum("nij,nj->ni", DS, coef)  # (N, n): D_S (G_S + lam2 I)^{-1} v
        corr = a @ D  # (N, m): d_j^T a
        if not one_sided:
            corr = np.abs(corr)
        np.put_along_axis(corr, S, -np.inf, axis=1)  # exclude j in S
        out[sl] = corr.max(axis=1)
    return out


def irrepresentable(
    D: np.ndarray | SyntheticDictionary,
    support: Any,
    signs: Any,
    *,
    lam2: float = 0.0,
    coef: Any = None,
    lam1: float | None = None,
    nonneg: bool = False,
) -> float:
    r"""Irrepresentable-condition value of one support and sign pattern.

    ``IC = max_{j not in S} | d_j^T D_S (D_S^T D_S + lam2 I)^{-1} v_S |`` with

    - ``v_S = s_S`` (signs) by default: the lasso form for ``lam2 = 0``, its elastic-net
      analogue for ``lam2 > 0``;
    - ``v_S = s_S + (lam2 / lam1) h*_S`` when the true coefficients ``coef = h*_S`` and
      ``lam1`` are given: the exact elastic-net condition (Jia & Yu 2010) in this package's
      scaling ``F(h) = 1/2||x - D h||^2 + lam1 ||h||_1 + lam2/2 ||h||^2``. For noiseless
      ``x = D_S h*_S`` the restricted solution satisfies ``d_j^T (x - D_S h_S) =
      lam1 d_j^T D_S (D_S^T D_S + lam2 I)^{-1} v_S``, so no inactive atom enters when
      ``IC < 1`` (given sign consistency of ``h_S``).

    With ``nonneg=True`` (codes constrained to ``h >= 0``) the KKT condition of an inactive
    atom is one-sided, so the absolute value is dropped:
    ``IC_+ = max_{j not in S} d_j^T D_S (D_S^T D_S + lam2 I)^{-1} v_S`` (signs must be +1).
    The condition holds when the value is ``< 1``. If ``S`` holds every atom the value is
    0 (vacuous).

    Parameters
    ----------
    D : ndarray (n, m) or SyntheticDictionary
    support : array_like of int, shape (k,)
        Distinct atom indices in ``[0, m)``.
    signs : array_like, shape (k,)
        Entries in ``{-1, +1}`` aligned with ``support``.
    lam2 : float >= 0
    coef : array_like (k,), optional
        True non-zero coefficients on ``support``; their signs must equal ``signs``.
    lam1 : float > 0, optional
        Required exactly when ``coef`` is given.
    nonneg : bool

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If ``D_S^T D_S + lam2 I`` is singular (e.g. ``lam2 = 0`` and ``k > n``).
    """
    D = _as_dict_matrix(D)
    m = D.shape[1]
    lam2 = check_real("lam2", lam2, low=0.0)
    S = np.asarray(support)
    if S.ndim != 1 or S.size == 0 or not np.issubdtype(S.dtype, np.integer):
        raise ValueError(f"support must be a non-empty 1-D integer array, got {support!r}")
    if S.min() < 0 or S.max() >= m or np.unique(S).size != S.size:
        raise ValueError(f"support must hold distinct indices in [0, {m}), got {S.tolist()}")
    s = check_array("signs", signs, shape=(S.size,))
    if not np.all(np.abs(s) == 1.0):
        raise ValueError(f"signs must hold only -1 and +1, got {s.tolist()}")
    if nonneg and np.any(s < 0):
        raise ValueError(f"signs must all be +1 when nonneg=True, got {s.tolist()}")
    v = s
    if coef is not None or lam1 is not None:
        if coef is None or lam1 is None:
            raise ValueError("coef and lam1 must be given together (elastic-net form)")
        c = check_array("coef", coef, shape=(S.size,))
        if not np.array_equal(np.sign(c), s):
            raise ValueError(f"coef must be non-zero with the signs given, got coef={c.tolist()}")
        lam1 = check_real("lam1", lam1, low=0.0, low_inclusive=False)
        v = s + (lam2 / lam1) * c
    S64 = S.astype(np.int64)[None, :]
    return float(_irrep_batch(D, S64, v[None, :], lam2, one_sided=bool(nonneg))[0])


def irrepresentable_stats(
    D: np.ndarray | SyntheticDictionary,
    k: int,
    n_supports: int = 200,
    *,
    lam2: float = 0.0,
    nonneg: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    r"""Sampled summary of the sign-only irrepresentable value :func:`irrepresentable`.

    ``n_supports`` supports of size ``k`` drawn uniformly (the same supports as
    :func:`active_gram_stats` with the same seed), with uniform random signs (all +1 and
    the one-sided form when ``nonneg``).

    Returns
    -------
    dict
        ``irrep_median``, ``irrep_min``, ``irrep_max``, ``irrep_mean``,
        ``irrep_frac_holds`` (share of supports with value < 1), and the parameters.
    """
    D = _as_dict_matrix(D)
    m = D.shape[1]
    k = _check_k(k, m)
    n_supports = check_int("n_supports", n_supports, low=1)
    lam2 = check_real("lam2", lam2, low=0.0)
    seed = check_int("seed", seed, low=0)
    rng = rng_for("supports", seed)
    supports = _floyd_supports(rng, m, k, n_supports)
    if nonneg:
        signs = np.ones((n_supports, k))
    else:
        signs = np.where(rng.random((n_supports, k)) < 0.5, -1.0, 1.0)
    values = _irrep_batch(D, supports, signs, lam2, one_sided=bool(nonneg))
    out = _summary("irrep", values)
    out["irrep_mean"] = float(values.mean())
    out["irrep_frac_holds"] = float(np.mean(values < 1.0))
    out.update(
        {"k": k, "lam2": lam2, "n_supports": n_supports, "nonneg": bool(nonneg), "seed": seed}
    )
    return out


def dictionary_diagnostics(
    D: np.ndarray | SyntheticDictionary,
    k: int,
    *,
    lam2: float = 0.0,
    n_supports: int = 200,
    nonneg: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """All diagnostics of ``D`` in one flat, JSON-serialisable dict.

    Keys: ``coherence_mean_abs``, ``coherence_max_abs`` (:func:`coherence`);
    ``gram_min_eig_*``, ``gram_cond_*`` (:func:`active_gram_stats`); ``irrep_*``
    (:func:`irrepresentable_stats`); and ``n``, ``m``, ``k``, ``lam2``, ``n_supports``,
    ``nonneg``, ``seed``.
    """
    D = _as_dict_matrix(D, min_atoms=2)
    coh = coherence(D)
    gram = active_gram_stats(D, k, n_supports, lam2=lam2, seed=seed)
    irr = irrepresentable_stats(D, k, n_supports, lam2=lam2, nonneg=nonneg, seed=seed)
    out: dict[str, float] = {
        "coherence_mean_abs": coh["mean_abs"],
        "coherence_max_abs": coh["max_abs"],
    }
    for key in (
        "min_eig_median",
        "min_eig_min",
        "min_eig_max",
        "cond_median",
        "cond_min",
        "cond_max",
    ):
        out[f"gram_{key}"] = gram[key]
    for key, value in irr.items():
        if key.startswith("irrep_"):
            out[key] = value
    out.update(
        {
            "n": int(D.shape[0]),
            "m": int(D.shape[1]),
            "k": gram["k"],
            "lam2": gram["lam2"],
            "n_supports": gram["n_supports"],
            "nonneg": bool(nonneg),
            "seed": gram["seed"],
        }
    )
    return out
