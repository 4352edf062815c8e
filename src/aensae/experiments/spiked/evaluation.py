r"""Evaluation of one trained SAE, and of exact codes on the true dictionary, as flat rows.

SAE rows (held-out set ``X`` with true codes ``H`` of the run's data point):

- reconstruction and sparsity (:func:`aensae.saes.evaluate.evaluate`): ``l0``, ``mse``,
  ``explained_variance`` (``1 - sum ||x - x_hat||^2 / sum ||x - x_bar||^2``), its centred
  variant, ``shrinkage`` (``mean ||x_hat|| / ||x||``), ``dead_eval``;
- dead latents from training: the final window's fraction, the median of the last
  windows, the window in samples (``dead_*``);
- support recovery against the true codes after Hungarian alignment (``supp_*``), code
  bias (``code_bias``) and dictionary recovery (``dict_*``, with deflated and chance
  variants);
- the same restricted to the recovered atoms, true atoms whose matched latent has
  ``|cos| >= 0.9`` (:func:`aensae.metrics.recovered_atom_recovery`): their fraction
  ``rec_atoms_frac``; ``rec_code_bias``, the mean of ``h / r`` over true-positive
  entries (``r != 0`` and ``h != 0``) of recovered atoms, and their number ``rec_n_tp``;
  support precision, recall and F1 on the recovered atoms (``rec_supp_*``). A latent
  that never learned its atom then counts neither as shrinkage nor as missed support;
- for architectures with an l1 objective (``exact_problem()``): certified exact codes on
  the SAE's own decoder (``x - b_dec``, its penalties and weights); the amortization gap
  ``F(h_enc) - F(h_exact)`` (``amort_gap_*``) and its relative form
  ``(F(h_enc) - F(h_exact)) / F(h_exact)`` (``amort_rel_*``); support F1 of the encoder
  against the exact support; local Lipschitz constants of the exact elastic-net map
  ``max_i s_i / (s_i^2 + lam2)`` and of the lasso map ``1 / s_min(D_S)`` on the exact
  supports (lasso codes solved with ``lam2 = 0``); local Hoffman constants
  ``||M_A^{-1}||_2`` of the KKT system; the exact codes against the true codes, with the
  encoder's Hungarian matching (same decoder): ``exact_code_bias``,
  ``exact_supp_{f1,precision,recall}`` and ``exact_rec_{code_bias,n_tp,supp_f1,
  supp_precision,supp_recall}`` (absent for architectures without an exact problem);
- the encoder: local Lipschitz constants (Jacobian spectral norms), the global bound
  ``||W_enc||_2`` and a pair lower bound; for TopK, BatchTopK and JumpReLU (discontinuous)
  the jumps along segments between held-out signals instead.

Distributions are summarised by quantiles ``q05, q25, median, q75, q95`` and ``max``
(``inverted_cdf`` order statistics; an infinite lasso constant is counted in ``*_ninf``
and the quantiles are taken over all values, so they may be ``inf``).

Exact rows (``kind = "exact"``): the certified exact lasso (``lam2 = 0``) and elastic net
(``lam2 = reference.l2`` in the SAE scaling) on the true dictionary at a ladder of
``lam1 = f * lam_max`` (``lam_max = max_b max_i x_b^T d_i``), with the same metrics against
the truth: the reference lines of the figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aensae.theory.summaries import QUANTILES, exact_map_geometry, quantiles

__all__ = ["JUMP_ARCHS", "QUANTILES", "evaluate_sae", "exact_reference_rows", "quantiles"]

#: Architectures whose encoders are discontinuous (jumps reported, not constants).
JUMP_ARCHS = ("topk", "batchtopk", "jumprelu")


def _geometry(D: np.ndarray, Xc: np.ndarray, codes: np.ndarray, lam1: float, lam2: float,
              weights: Any, nonneg: bool, n_hoff: int, tol: float) -> dict[str, float]:
    """Exact-map Lipschitz (enet and lasso) and local Hoffman summaries on ``codes``
    (:func:`aensae.theory.summaries.exact_map_geometry`, shared with ``aensae llm eval``)."""
    return exact_map_geometry(D, Xc, codes, lam1, lam2, weights, nonneg, n_hoff, tol)


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def evaluate_sae(model: Any, point: Any, *, encoder_samples: int, hoffman_samples: int,
                 tol: float) -> dict[str, Any]:
    """Flat metrics of a trained SAE on the held-out set of ``point`` (module docstring)."""
    import torch

    from aensae.saes.evaluate import evaluate
    from aensae.theory import (
        amortization_gap,
        encoder_global_bound,
        encoder_jumps,
        encoder_local_lipschitz,
        pair_ratio_lower_bound,
    )

    model.eval()
    dic = point.dictionary
    dtype = model.W_enc.dtype
    X = point.X_eval
    Xt = torch.as_tensor(X, dtype=torch.float64)
    with torch.no_grad():
        codes = model.encode(torch.as_tensor(X, dtype=dtype)).to(torch.float64).numpy()
    prob = model.exact_problem()
    exact = rep = None
    if prob is not None:
        rep, exact = amortization_gap(prob, X, codes, tol=tol)
    base = evaluate(model, Xt, point.H_eval, D_true=dic.D, shared=dic.shared,
                    other_codes=None if exact is None else {"exact": exact})
    row: dict[str, Any] = {k: base[k] for k in ("n_eval", "l0", "mse", "explained_variance",
                                                "explained_variance_centred", "shrinkage",
                                                "dead_eval")}
    row["code_bias"] = float(base["code_bias"])
    row.update(_flat("supp_", base["support"]))
    row.update(_flat("dict_", base["dictionary"]))
    row.update(_flat("rec_", base["recovered"]))
    row["has_exact_problem"] = prob is not None
    if prob is not None:
        ex = base["other_codes"]["exact"]
        row["exact_code_bias"] = float(ex["code_bias"])
        row.update({f"exact_supp_{k}": float(ex["support"][k])
                    for k in ("f1", "precision", "recall")})
        row.update({f"exact_rec_{k}": float(ex["recovered"][k])
                    for k in ("code_bias", "n_tp", "supp_f1", "supp_precision",
                              "supp_recall")})
        Xc = prob.centred(X)
        F_ex = _objective(prob, Xc, exact)
        rel = rep.objective_gap / np.maximum(F_ex, np.finfo(float).tiny)
        row.update({"lam1": prob.lam1, "lam2": prob.lam2,
                    "exact_certified": float(np.mean(rep.certified)),
                    "exact_l0": float(np.mean(np.count_nonzero(exact, axis=1))),
                    "amort_support_f1": float(np.mean(rep.support["f1"])),
                    "amort_support_precision": float(np.mean(rep.support["precision"])),
                    "amort_support_recall": float(np.mean(rep.support["recall"])),
                    "amort_code_error_rel": _finite_mean(rep.rel_code_error),
                    "encoder_feasible": float(np.mean(rep.feasible))})
        row.update(quantiles("amort_gap", rep.objective_gap))
        row.update(quantiles("amort_rel", rel))
        row.update(_geometry(np.asarray(prob.D), Xc, exact, prob.lam1, prob.lam2,
                             prob.weights, bool(prob.nonneg), hoffman_samples, tol))
        if prob.weights is not None:
            row.update(quantiles("l1_weight", prob.weights))
    ne = min(encoder_samples, X.shape[0])
    Xe = torch.as_tensor(X[:ne], dtype=dtype)
    Xp = torch.roll(Xe, 1, 0)
    if model.arch in JUMP_ARCHS:
        jumps = encoder_jumps(model, Xe, Xp)
        row["jump_count_mean"] = float(np.mean(jumps.n_jumps))
        row.update(quantiles("jump_size", jumps.max_jump))
    else:
        row.update(quantiles("lip_encoder", encoder_local_lipschitz(model, Xe)))
        row["lip_encoder_global_bound"] = encoder_global_bound(model.W_enc)
        row["lip_encoder_pair_lower"] = float(pair_ratio_lower_bound(model, Xe, Xp).max())
    return row


def _finite_mean(values: Any) -> float:
    """Mean of the finite entries (NaN when there are none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _objective(prob: Any, Xc: np.ndarray, codes: np.ndarray) -> np.ndarray:
    from aensae.objective import exact_objective

    return exact_objective(np.asarray(prob.D), Xc, codes, prob.lam1, prob.lam2, prob.weights)


def exact_reference_rows(grid: Any, point: Any) -> list[dict[str, Any]]:
    """Exact lasso and elastic-net rows on the true dictionary of ``point`` (see above)."""
    from aensae import metrics
    from aensae.objective import sae_to_exact
    from aensae.solvers import solve

    r, ev = grid.reference, grid.eval
    D, X, H = point.dictionary.D, point.X_eval, point.H_eval
    nonneg = bool(grid.data["nonneg"])
    corr = X @ D
    lam_max = float(np.max(corr if nonneg else np.abs(corr)))
    _, lam2_enet = sae_to_exact(0.0, r["l2"], grid.data["n"])
    rows = []
    for arch, lam2 in (("exact_lasso", 0.0), ("exact_enet", lam2_enet)):
        for frac in np.geomspace(r["fraction_max"], r["fraction_min"], r["ladder"]):
            lam1 = float(frac * lam_max)
            res = solve(D, X, lam1, lam2, None, nonneg, ev["tol"])
            codes = res.codes
            X_hat = codes @ D.T
            row: dict[str, Any] = {
                "arch": arch, "family": arch, "lam1": lam1, "lam2": lam2,
                "lam1_fraction": float(frac), "n_eval": int(X.shape[0]),
                "l0": metrics.l0(codes), "mse": metrics.mse(X, X_hat),
                "explained_variance": metrics.explained_variance(X, X_hat),
                "explained_variance_centred": metrics.explained_variance_centred(X, X_hat),
                "shrinkage": metrics.shrinkage(X, X_hat),
                "code_bias": metrics.code_bias(codes, H),
                "exact_certified": float(np.mean(res.certified)),
                "exact_l0": metrics.l0(codes), "has_exact_problem": True,
                "dict_hungarian_mean_cos": 1.0, "dict_hungarian_mean_cos_deflated": 1.0,
            }
            row.update(_flat("supp_", metrics.support_recovery(codes, H)))
            row.update(_geometry(D, X, codes, lam1, lam2, None, nonneg,
                                 ev["hoffman_samples"], ev["tol"]))
            rows.append(row)
    return rows
