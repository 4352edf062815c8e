r"""Exact certified codes on real activations: how far an SAE's encoder is from them.

For an l1-family SAE (``SAE.exact_problem()`` is not ``None``: relu_l1, elastic_net,
adaptive_lasso, aen) and the first ``N`` eval tokens, on the activations the SAE sees
(normalised with its own kind and constant, :math:`x_n = n(x)`), the exact problem

.. math:: h^\star(x_n) = \arg\min_h \tfrac12\lVert x_n - b_{dec} - D h\rVert^2
          + \lambda_1 \textstyle\sum_i w_i |h_i| + \tfrac{\lambda_2}2 \lVert h\rVert^2

(``D = W_dec^T``, :math:`(\lambda_1, \lambda_2)` from the SAE's (l1, l2), :math:`h\ge 0`
for ReLU encoders) is solved by :func:`aensae.solvers.solve` with a duality-gap
certificate, through :func:`aensae.theory.support.amortization_gap`. Reported:

- ``exact_certified``: share of certified codes;
- ``amort_gap_mean`` / ``amort_gap_median``: :math:`F(h_{enc}) - F(h^\star)` per token,
  and ``amort_rel_median``, the same over :math:`F(h^\star)`;
- ``amort_support_f1`` / ``_precision`` / ``_recall``: the encoder's support against the
  exact codes' support, averaged over tokens;
- ``exact_l0`` and ``exact_explained_variance`` beside ``encoder_l0`` and
  ``encoder_explained_variance`` on the same tokens: the reconstructions
  :math:`u(b_{dec} + D h)` in the model's scale, explained variance with the formula of
  :func:`aensae.metrics.explained_variance`.

Geometry of the learned dictionary (:func:`geometry_report`, the summaries of the
synthetic grid, :func:`aensae.theory.summaries.exact_map_geometry`), on the first
``G`` of those tokens (``geometry_tokens``): local Lipschitz constants of the exact
elastic-net map on the exact supports (``lip_exact_enet_*``) and of the lasso map
(``lip_exact_lasso_*``, on certified lasso codes of the same centred activations, same
``lam1``, weights and sign constraint; ``lasso_certified`` their certified share), the
global bound ``lip_exact_enet_bound`` :math:`= 1/(2\sqrt{\lambda_2})`, and local Hoffman
constants of the KKT system with their block bounds (``hoffman_*``, ``hoffman_lower_*``,
``hoffman_upper_*``). Each distribution is summarised by ``q05, q25, median, q75, q95,
max, mean`` (of the finite values) and ``ninf`` (infinite lasso constants: rank-deficient
:math:`D_S`). TopK, BatchTopK and JumpReLU SAEs (and SAELens ``standard`` SAEs, whose
``cfg.json`` holds no l1 coefficient) have no exact problem, hence no exact map: their
keys are NaN and ``geometry_note`` says why (the synthetic grid records no such
constants for them either).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from aensae.metrics import explained_variance
from aensae.solvers.fast import gram
from aensae.theory.summaries import exact_map_geometry, geometry_keys
from aensae.theory.support import amortization_gap

__all__ = ["DEFAULT_GEOMETRY_TOKENS", "exact_code_report", "geometry_report",
           "no_geometry_reason"]

#: Tokens on which the geometry summaries are taken by default (at most the exact tokens).
DEFAULT_GEOMETRY_TOKENS = 256
#: Samples per batched block of the Hoffman constants (memory ``~ 16 |A| m`` floats).
_HOFFMAN_CHUNK = 16


def geometry_report(note: str, tokens: int = 0, values: dict[str, float] | None = None,
                    seconds: float = float("nan")) -> dict[str, Any]:
    """The per-SAE geometry keys: ``values`` (NaN where absent), ``geometry_tokens``,
    ``geometry_seconds`` and ``geometry_note`` (empty when computed, else why not)."""
    values = values or {}
    out: dict[str, Any] = {k: values.get(k, float("nan")) for k in geometry_keys()}
    return {**out, "geometry_tokens": int(tokens), "geometry_seconds": float(seconds),
            "geometry_note": note}


def no_geometry_reason(spliced: Any) -> str:
    """Why an SAE without an exact problem gets NaN geometry keys."""
    arch = getattr(spliced.sae, "arch", "?")
    if arch == "saelens-standard":
        return ("SAELens standard SAE: cfg.json holds no l1 coefficient, so its exact "
                "problem is unknown")
    return (f"{arch}: no l1 objective, hence no exact problem and no exact map whose "
            "Lipschitz or Hoffman constants could be taken")


def exact_code_report(spliced: Any, X: torch.Tensor, *, tol: float = 1e-10,
                      geometry_tokens: int = 0) -> dict[str, Any] | None:
    """Exact codes of ``spliced`` (a :class:`~aensae.llm.splice.SplicedSAE`) on ``X``
    (n, d_in), activations in the model's scale; ``None`` when the SAE has no exact problem.

    Its ``"geometry"`` entry holds the geometry keys of the module docstring
    (:func:`geometry_report`) on the first ``geometry_tokens`` tokens (at most ``n``; 0:
    NaN, not computed); :func:`aensae.llm.splice.evaluate_saes` moves them to the SAE's
    own keys.
    """
    from aensae.objective import exact_objective

    sae = spliced.sae
    prob = sae.exact_problem() if hasattr(sae, "exact_problem") else None
    if prob is None:
        return None
    dtype = sae.W_dec.dtype
    X64 = X.to(torch.float64)
    Xn, scale = spliced.normalised(X64)
    with torch.no_grad():
        h_enc = sae.encode(Xn.to(dtype)).to(torch.float64)
        x_enc = sae.decode(h_enc.to(dtype)).to(torch.float64)
    t0 = time.perf_counter()
    rep, exact = amortization_gap(prob, Xn.numpy(), h_enc.numpy(), tol=tol)
    seconds = time.perf_counter() - t0
    D = np.asarray(prob.D)
    Xn_exact = exact @ D.T + (0.0 if prob.offset is None else prob.offset)
    X_exact = (torch.from_numpy(Xn_exact) / scale).numpy()
    X_enc = (x_enc / scale).numpy()
    F_ex = exact_objective(D, prob.centred(Xn.numpy()), exact, prob.lam1, prob.lam2,
                           prob.weights)
    rel = rep.objective_gap / np.maximum(F_ex, np.finfo(float).tiny)
    Xm = X64.numpy()
    g = int(geometry_tokens)
    if not 0 <= g <= X.shape[0]:
        raise ValueError(f"geometry_tokens must lie in [0, {X.shape[0]}] (the exact tokens), "
                         f"got {g}")
    if g > 0:
        Xc = prob.centred(Xn.numpy())[:g]
        w = None if prob.weights is None else np.asarray(prob.weights, dtype=np.float64)
        t1 = time.perf_counter()
        # the Hoffman constants need rows of D^T D: its lower triangle, mirrored (half the
        # flops of the general product local_hoffman would otherwise form)
        G = gram(np.ascontiguousarray(D))  # one BLAS syrk call
        values = exact_map_geometry(
            D, Xc, exact[:g], prob.lam1, prob.lam2, w, bool(prob.nonneg), g, tol,
            lasso_certified=float(np.mean(rep.certified[:g])) if prob.lam2 == 0 else None,
            G=G, hoffman_chunk=_HOFFMAN_CHUNK)
        del G
        geometry = geometry_report("", g, values, time.perf_counter() - t1)
    else:
        geometry = geometry_report("not computed (geometry tokens 0)")
    return {
        "exact_tokens": int(X.shape[0]), "lam1": float(prob.lam1), "lam2": float(prob.lam2),
        "exact_certified": float(np.mean(rep.certified)),
        "amort_gap_mean": float(np.mean(rep.objective_gap)),
        "amort_gap_median": float(np.median(rep.objective_gap)),
        "amort_rel_median": float(np.median(rel)),
        "amort_support_f1": float(np.mean(rep.support["f1"])),
        "amort_support_precision": float(np.mean(rep.support["precision"])),
        "amort_support_recall": float(np.mean(rep.support["recall"])),
        "exact_l0": float(np.mean(np.count_nonzero(exact, axis=1))),
        "exact_explained_variance": explained_variance(Xm, X_exact),
        "encoder_l0": float(np.mean(np.count_nonzero(h_enc.numpy(), axis=1))),
        "encoder_explained_variance": explained_variance(Xm, X_enc),
        "exact_seconds": seconds,
        "geometry": geometry,
    }
