r"""Recovery of ground truth: per-sample supports and dictionary atoms.

Inputs may be numpy arrays or torch tensors (converted to float64); outputs are Python
floats / numpy arrays of float64 as documented per function.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from aensae._validation import check_int, check_real
from aensae.metrics._convert import as_batch, as_float64, check_same_shape

__all__ = [
    "RECOVERED_COS",
    "dictionary_recovery",
    "hungarian_match",
    "recovered_atom_recovery",
    "support_recovery",
    "support_recovery_per_sample",
    "true_positive_code_bias",
]

#: A true atom counts as recovered when its Hungarian-matched learned atom has
#: ``|cos| >= RECOVERED_COS`` (see :func:`recovered_atom_recovery`).
RECOVERED_COS: float = 0.9

_DEFLATED_ZERO = 1e-8  # a unit atom whose deflated norm is below this lies in the shared span
_ORTHONORMAL_TOL = 1e-8
_CHANCE_TAG = 0xC4A7CE  # keeps the chance dictionary apart from generators seeded alike


# ----------------------------------------------------------------------------- supports
def _ratio(num: np.ndarray, den: np.ndarray, both_empty: np.ndarray) -> np.ndarray:
    """``num / den``; where ``den == 0``: 1 if ``both_empty`` else 0."""
    safe = np.where(den > 0, den, 1)
    return np.where(den > 0, num / safe, np.where(both_empty, 1.0, 0.0))


def support_recovery_per_sample(
    codes: Any, ref_codes: Any, *, threshold: float = 0.0
) -> dict[str, np.ndarray]:
    r"""Per-sample support recovery of ``codes`` against ``ref_codes``.

    ``P_b = {i : |h_bi| > threshold}`` (predicted) and ``R_b = {i : h_ref,bi != 0}``
    (reference: ground truth or exact codes, which are exactly sparse)::

        precision = |P ∩ R| / |P|          recall  = |P ∩ R| / |R|
        F1        = 2 |P ∩ R| / (|P| + |R|)  Jaccard = |P ∩ R| / |P ∪ R|
        sign_agreement = #{i in R : |h_i| > threshold, sign h_i = sign h_ref,i} / |R|
        exact     = 1 if P = R else 0

    Convention for empty sets: a ratio whose denominator is 0 is 1 when both ``P`` and
    ``R`` are empty and 0 otherwise (so ``P`` empty, ``R`` not: precision 0, recall 0;
    ``R`` empty, ``P`` not: precision 0, recall 0); ``sign_agreement`` is 1 when ``R`` is
    empty (vacuous).

    Parameters
    ----------
    codes, ref_codes : array or tensor (B, m) (or (m,))
    threshold : float >= 0
        Magnitude above which an entry of ``codes`` counts as active.

    Returns
    -------
    dict of ndarray (B,), float64
        ``precision``, ``recall``, ``f1``, ``jaccard``, ``sign_agreement``, ``exact``,
        ``n_pred`` (|P|), ``n_ref`` (|R|).
    """
    threshold = check_real("threshold", threshold, low=0.0)
    H = as_batch("codes", codes)
    R = as_batch("ref_codes", ref_codes)
    check_same_shape("codes", H, "ref_codes", R)
    pred = np.abs(H) > threshold
    ref = R != 0.0
    n_pred = pred.sum(axis=1).astype(np.float64)
    n_ref = ref.sum(axis=1).astype(np.float64)
    tp = (pred & ref).sum(axis=1).astype(np.float64)
    union = n_pred + n_ref - tp
    both_empty = (n_pred == 0) & (n_ref == 0)
    agree = (pred & ref & (np.sign(H) == np.sign(R))).sum(axis=1).astype(np.float64)
    return {
        "precision": _ratio(tp, n_pred, both_empty),
        "recall": _ratio(tp, n_ref, both_empty),
        "f1": _ratio(2.0 * tp, n_pred + n_ref, both_empty),
        "jaccard": _ratio(tp, union, both_empty),
        "sign_agreement": _ratio(agree, n_ref, n_ref == 0),
        "exact": np.all(pred == ref, axis=1).astype(np.float64),
        "n_pred": n_pred,
        "n_ref": n_ref,
    }


def support_recovery(codes: Any, ref_codes: Any, *, threshold: float = 0.0) -> dict[str, float]:
    """Sample means of :func:`support_recovery_per_sample`, with the threshold recorded.

    Returns
    -------
    dict of float
        ``precision``, ``recall``, ``f1``, ``jaccard``, ``sign_agreement``, ``exact``
        (share of samples with ``P = R``), ``n_pred`` and ``n_ref`` (mean support sizes),
        ``threshold``.
    """
    per = support_recovery_per_sample(codes, ref_codes, threshold=threshold)
    out = {key: float(np.mean(value)) for key, value in per.items()}
    out["threshold"] = float(threshold)
    return out


# ----------------------------------------------------------------------------- recovered atoms
def true_positive_code_bias(
    codes: Any, ref_codes: Any, *, threshold: float = 0.0
) -> tuple[float, int]:
    r"""Mean ratio ``h / r`` over the true-positive entries, and their number.

    With ``T = {(b, i) : r_bi != 0 and |h_bi| > threshold}`` (``h = codes``,
    ``r = ref_codes``)::

        bias = 1/|T| sum_{(b, i) in T} h_bi / r_bi

    Unlike :func:`aensae.metrics.code_bias` (per-sample ratio of sums over the whole
    reference support, a missed entry counting as 0), a missed entry (``r != 0``,
    ``h = 0``) and a false positive (``r = 0``, ``h != 0``) do not enter: this is the
    shrinkage of the codes that fire where they should. An entry of the wrong sign gives
    a negative ratio.

    Returns
    -------
    (bias, n_tp) : (float, int)
        ``bias`` is NaN when ``T`` is empty.
    """
    threshold = check_real("threshold", threshold, low=0.0)
    H = as_batch("codes", codes)
    R = as_batch("ref_codes", ref_codes)
    check_same_shape("codes", H, "ref_codes", R)
    tp = (R != 0.0) & (np.abs(H) > threshold)
    n_tp = int(np.count_nonzero(tp))
    if n_tp == 0:
        return float("nan"), 0
    return float(np.mean(H[tp] / R[tp])), n_tp


def _atom_matrices(learned: Any, true: Any, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """``learned`` and ``true`` as float64 matrices with atoms as columns and the same
    number of rows (else a ``ValueError``, ``hint`` appended to the parenthesis)."""
    L = as_float64("learned", learned, ndim=2)
    T = as_float64("true", true, ndim=2)
    if L.shape[0] != T.shape[0]:
        raise ValueError(
            f"learned and true must have the same number of rows n (atoms are columns{hint}), "
            f"got shapes {L.shape} and {T.shape}"
        )
    return L, T


def hungarian_match(learned: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    r"""One-to-one matching of true atoms to learned atoms on ``|cos|``.

    ``learned`` (n, m_L) and ``true`` (n, m_T) have atoms as columns;
    ``C_ij = cos(l_i, t_j)`` (columns normalised; a zero column has cosine 0). The
    matching ``pi`` maximises ``sum_j |C_{pi(j) j}|``
    (:func:`scipy.optimize.linear_sum_assignment`).

    Returns
    -------
    match : ndarray (m_T,), int64
        ``pi(j)``, the learned atom matched to true atom ``j``; -1 when ``j`` is left
        unmatched (``m_L < m_T``).
    cos : ndarray (m_T,), float64
        The signed cosine ``C_{pi(j) j}`` of each match; 0 when unmatched.
    """
    L, T = _atom_matrices(learned, true, "")
    tiny = np.finfo(np.float64).tiny
    Ln = L / np.maximum(np.linalg.norm(L, axis=0), tiny)
    Tn = T / np.maximum(np.linalg.norm(T, axis=0), tiny)
    C = Ln.T @ Tn
    rows, cols = linear_sum_assignment(np.abs(C), maximize=True)
    match = np.full(T.shape[1], -1, dtype=np.int64)
    cos = np.zeros(T.shape[1])
    match[cols] = rows
    cos[cols] = C[rows, cols]
    return match, cos


def recovered_atom_recovery(
    codes: Any, ref_codes: Any, match_cos: Any, *, min_cos: float = RECOVERED_COS
) -> dict[str, float]:
    r"""Code bias and support recovery restricted to the recovered true atoms.

    ``codes`` (B, m_T) are a model's codes aligned onto the true atoms (column ``j`` is
    ``sign(c_j) h_{pi(j)}``, the code of the latent matched to true atom ``j`` with its
    sign made to agree, as :func:`aensae.saes.evaluate.align_codes` builds them; no
    rescaling, as in :func:`aensae.metrics.code_bias`: both dictionaries have unit atoms);
    ``ref_codes`` (B, m_T) the true codes ``r``; ``match_cos`` (m_T,) the cosine ``c_j``
    of each true atom's match (0 when unmatched; only ``|c_j|`` is used, see
    :func:`hungarian_match`). With ``J = {j : |c_j| >= min_cos}`` (the recovered atoms)
    and ``T = {(b, j) : j in J, r_bj != 0, h_bj != 0}`` (true positives)::

        atoms_frac = |J| / m_T
        code_bias  = 1/|T| sum_{(b, j) in T} h_bj / r_bj          (NaN if T is empty)
        supp_*     = support_recovery(codes[:, J], ref_codes[:, J])

    i.e. per-sample ``P_b = {j in J : h_bj != 0}``, ``R_b = {j in J : r_bj != 0}``,
    precision ``|P_b ∩ R_b| / |P_b|``, recall ``|P_b ∩ R_b| / |R_b|``, F1
    ``2 |P_b ∩ R_b| / (|P_b| + |R_b|)`` (1 when both are empty, 0 when one is), averaged
    over samples as :func:`support_recovery` does. Latents matched to unrecovered atoms
    and unmatched latents do not enter at all: what they encode cannot be told apart
    from shrinkage of a learned atom. When ``J`` is empty the support scores are NaN.

    Returns
    -------
    dict of float
        ``atoms_frac``, ``n_atoms`` (``|J|``), ``code_bias``, ``n_tp`` (``|T|``),
        ``supp_precision``, ``supp_recall``, ``supp_f1``, ``min_cos``.
    """
    min_cos = check_real("min_cos", min_cos, low=0.0)
    H = as_batch("codes", codes)
    R = as_batch("ref_codes", ref_codes)
    check_same_shape("codes", H, "ref_codes", R)
    c = as_float64("match_cos", match_cos, ndim=1)
    if c.shape[0] != R.shape[1]:
        raise ValueError(
            f"match_cos must have one entry per true atom ({R.shape[1]}), got {c.shape[0]}"
        )
    J = np.flatnonzero(np.abs(c) >= min_cos)
    nan = float("nan")
    out = {"atoms_frac": float(J.size / c.size) if c.size else nan, "n_atoms": float(J.size)}
    if J.size == 0:
        out.update({"code_bias": nan, "n_tp": 0.0, "supp_precision": nan,
                    "supp_recall": nan, "supp_f1": nan})
    else:
        bias, n_tp = true_positive_code_bias(H[:, J], R[:, J])
        supp = support_recovery(H[:, J], R[:, J])
        out.update({"code_bias": bias, "n_tp": float(n_tp),
                    "supp_precision": supp["precision"], "supp_recall": supp["recall"],
                    "supp_f1": supp["f1"]})
    out["min_cos"] = min_cos
    return out


# ----------------------------------------------------------------------------- dictionaries
def _unit_columns(A: np.ndarray, zero_below: float = 0.0) -> np.ndarray:
    """Columns scaled to unit norm; columns of norm <= ``zero_below`` become exactly 0."""
    norms = np.linalg.norm(A, axis=0)
    keep = norms > zero_below
    return np.where(keep, A / np.where(keep, norms, 1.0), 0.0)


def _deflate(A_unit: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """Project ``I - shared shared^T`` out of unit columns, then renormalise."""
    P = A_unit - shared @ (shared.T @ A_unit)
    return _unit_columns(P, _DEFLATED_ZERO)


def _stats(L: np.ndarray, T: np.ndarray) -> dict[str, float]:
    """Recovery statistics of unit (or zero) columns ``L`` (n, mL) against ``T`` (n, mT)."""
    C = np.abs(L.T @ T)  # (mL, mT)
    m_true = T.shape[1]
    best_for_true = C.max(axis=0)
    rows, cols = linear_sum_assignment(C, maximize=True)
    matched = C[rows, cols]
    return {
        "mmcs_true": float(best_for_true.mean()),
        "mmcs_learned": float(C.max(axis=1).mean()),
        "recovered_090": float(np.mean(best_for_true > 0.9)),
        "recovered_099": float(np.mean(best_for_true > 0.99)),
        "hungarian_mean_cos": float(matched.sum() / m_true),
        "hungarian_recovered_090": float(np.count_nonzero(matched > 0.9) / m_true),
        "hungarian_recovered_099": float(np.count_nonzero(matched > 0.99) / m_true),
    }


def dictionary_recovery(
    learned: Any,
    true: Any,
    *,
    shared: Any = None,
    chance: bool = True,
    chance_seed: int = 0,
) -> dict[str, float]:
    r"""How well the atoms of ``learned`` recover the atoms of ``true``.

    Both have atoms as columns: ``learned`` (n, m_L) (an SAE's ``W_dec.T``), ``true``
    (n, m_T). Columns are normalised (a zero column stays zero and has cosine 0 with
    everything); ``C_ij = |cos(l_i, t_j)|``.

    - ``mmcs_true = 1/m_T sum_j max_i C_ij`` and ``mmcs_learned = 1/m_L sum_i max_j C_ij``
      (mean max cosine, both directions);
    - ``recovered_090`` / ``recovered_099``: share of true atoms with ``max_i C_ij``
      above 0.9 / 0.99;
    - one-to-one Hungarian matching ``pi`` maximising ``sum C_{pi(j) j}``
      (:func:`scipy.optimize.linear_sum_assignment`):
      ``hungarian_mean_cos = 1/m_T sum_{matched j} C_{pi(j) j}`` (a true atom left
      unmatched because ``m_L < m_T`` counts as 0) and ``hungarian_recovered_090`` /
      ``_099``, the share of true atoms whose match is above the threshold.

    A shared direction fools max-cosine scores: with spiked atoms at ``rho = 0.9`` a
    dictionary holding only the spike ``v`` has ``mmcs_true ~ sqrt(0.9) ~ 0.95``. Hence,
    when ``shared`` (n, s) orthonormal is given, every statistic is repeated under the
    suffix ``_deflated`` after projecting both dictionaries with ``I - shared shared^T``
    and renormalising (a unit atom whose projection has norm below 1e-8 lies in the
    shared span and becomes a zero column). Hungarian matching exposes a dictionary with
    too few distinct atoms; deflation exposes atoms that are copies of the shared
    direction, however many.

    With ``chance=True`` every statistic is also given under the prefix ``chance_`` for a
    random dictionary of i.i.d. Gaussian unit columns, of ``learned``'s shape, drawn from
    ``SeedSequence(chance_seed, spawn_key=(0xC4A7CE,))`` -- the level a dictionary with no
    information scores.

    Parameters
    ----------
    learned : array or tensor (n, m_L)
    true : array or tensor (n, m_T)
    shared : array or tensor (n, s), optional
        Orthonormal shared directions of the generator, ``s < n``
        (``SyntheticDictionary.shared``).
    chance : bool
    chance_seed : int >= 0

    Returns
    -------
    dict of float
        The statistics above, their ``_deflated`` / ``chance_`` variants, and ``n``,
        ``m_learned``, ``m_true``, ``n_shared`` (0 without ``shared``) and, with
        ``chance``, ``chance_seed``.
    """
    L, T = _atom_matrices(learned, true, "; pass an SAE's W_dec.T")
    n = T.shape[0]
    chance_seed = check_int("chance_seed", chance_seed, low=0)
    S = None
    if shared is not None:
        S = as_float64("shared", shared, ndim=2)
        if S.shape[0] != n or S.shape[1] >= n:
            raise ValueError(f"shared must have shape (n, s) with n={n} and s < n, got {S.shape}")
        err = float(np.max(np.abs(S.T @ S - np.eye(S.shape[1]))))
        if err > _ORTHONORMAL_TOL:
            raise ValueError(
                f"shared must have orthonormal columns; max |shared^T shared - I| = {err:.3g}"
            )
    L = _unit_columns(L)
    T = _unit_columns(T)
    out: dict[str, float] = dict(_stats(L, T))
    T_defl = None
    if S is not None:
        T_defl = _deflate(T, S)
        out.update({f"{k}_deflated": v for k, v in _stats(_deflate(L, S), T_defl).items()})
    if chance:
        rng = np.random.default_rng(np.random.SeedSequence(chance_seed, spawn_key=(_CHANCE_TAG,)))
        Rnd = _unit_columns(rng.standard_normal(L.shape))
        out.update({f"chance_{k}": v for k, v in _stats(Rnd, T).items()})
        if S is not None:
            rnd_stats = _stats(_deflate(Rnd, S), T_defl)
            out.update({f"chance_{k}_deflated": v for k, v in rnd_stats.items()})
    out.update(
        {
            "n": int(n),
            "m_learned": int(L.shape[1]),
            "m_true": int(T.shape[1]),
            "n_shared": 0 if S is None else int(S.shape[1]),
        }
    )
    if chance:
        out["chance_seed"] = chance_seed
    return out
