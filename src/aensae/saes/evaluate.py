r"""Evaluation of a trained SAE on a held-out set, with the formulas of :mod:`aensae.metrics`.

Always: L0, MSE, explained variance (and the reference implementation's centred variant,
under its own name), shrinkage ``||x_hat|| / ||x||``, and the share of latents that never
fire on the set. When the true dictionary is known: dictionary recovery (Hungarian,
MMCS both ways, shares above 0.9 / 0.99, deflated by the generator's shared directions,
chance level). When the true codes are known as well: per-sample support recovery and
code bias against them, after aligning latents with true atoms by the Hungarian matching
of ``|cos|`` (a learned atom matched with a negative cosine has its code negated; latents
left unmatched keep their own columns, so their activity counts as false positives); and
the same restricted to the recovered atoms (matched ``|cos| >= 0.9``,
:func:`aensae.metrics.recovered_atom_recovery`), which separates shrinkage and missed
support of learned atoms from atoms never learned. Codes other than the encoder's on the
same decoder (exact codes) can be scored alongside with the same matching.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from aensae import metrics
from aensae.saes.base import SAE

__all__ = ["align_codes", "evaluate"]


def align_codes(
    codes: np.ndarray,
    learned: np.ndarray,
    true: np.ndarray,
    *,
    matching: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    r"""Codes (B, m_L) re-indexed onto true atoms (B, m_T + unmatched).

    ``learned`` (n, m_L) and ``true`` (n, m_T) have atoms as columns. Matching ``pi``
    maximises ``sum_j |cos(l_pi(j), t_j)|`` (:func:`aensae.metrics.hungarian_match`;
    pass its result as ``matching`` to reuse it); column ``j < m_T`` of the result is
    ``sign(cos) * codes[:, pi(j)]`` (zero when atom ``j`` is unmatched) and the learned
    latents left unmatched are appended after them.
    """
    match, cos = metrics.hungarian_match(learned, true) if matching is None else matching
    m_true = match.shape[0]
    hit = np.flatnonzero(match >= 0)
    unmatched = np.setdiff1d(np.arange(learned.shape[1]), match[hit])
    out = np.zeros((codes.shape[0], m_true + unmatched.size))
    out[:, hit] = codes[:, match[hit]] * np.sign(cos[hit])
    out[:, m_true:] = codes[:, unmatched]
    return out


def _code_scores(codes: np.ndarray, Ht: np.ndarray, learned: np.ndarray, D: np.ndarray,
                 matching: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """``support``, ``code_bias`` and ``recovered`` of ``codes`` (B, m_L) against ``Ht``."""
    aligned = align_codes(codes, learned, D, matching=matching)
    ref = np.zeros_like(aligned)
    ref[:, :Ht.shape[1]] = Ht
    return {
        "support": metrics.support_recovery(aligned, ref),
        "code_bias": metrics.code_bias(aligned, ref),
        "recovered": metrics.recovered_atom_recovery(aligned[:, :Ht.shape[1]], Ht,
                                                     matching[1]),
    }


@torch.no_grad()
def evaluate(
    model: SAE,
    X: torch.Tensor,
    H_true: torch.Tensor | np.ndarray | None = None,
    *,
    D_true: np.ndarray | None = None,
    shared: np.ndarray | None = None,
    chunk: int = 4096,
    other_codes: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on the evaluation set ``X`` (N, d_in), in eval mode.

    Parameters
    ----------
    model : SAE
    X : Tensor (N, d_in)
        Evaluation signals (moved to the model's device and dtype).
    H_true : array (N, m_T), optional
        True codes of ``X``; used only together with ``D_true``.
    D_true : array (d_in, m_T), optional
        True dictionary, atoms as columns.
    shared : array (d_in, s), optional
        The generator's shared directions (deflated dictionary recovery).
    chunk : int
        Samples encoded at once.
    other_codes : mapping name -> array (N, d_sae), optional
        Other codes of ``X`` on the model's own decoder (e.g. the exact codes of its
        exact problem); with ``D_true`` and ``H_true`` each is scored like the encoder's
        codes, with the same Hungarian matching, under ``other_codes[name]``.

    Returns
    -------
    dict
        ``l0``, ``mse``, ``explained_variance``, ``explained_variance_centred``,
        ``shrinkage``, ``dead_eval``; ``dictionary`` (dict) with ``D_true``; ``support``
        (dict), ``code_bias`` and ``recovered`` (dict,
        :func:`aensae.metrics.recovered_atom_recovery`) with ``D_true`` and ``H_true``;
        ``other_codes`` (dict name -> dict with those three keys) with ``other_codes``.
    """
    p = model.W_dec
    was_training = model.training
    model.eval()
    try:
        hs, xh = [], []
        for start in range(0, X.shape[0], chunk):
            xb = X[start:start + chunk].to(p.device, p.dtype)
            x_hat, h = model(xb)
            hs.append(h.to("cpu", torch.float64))
            xh.append(x_hat.to("cpu", torch.float64))
    finally:
        model.train(was_training)
    H = torch.cat(hs).numpy()
    X_hat = torch.cat(xh).numpy()
    Xn = X.detach().to("cpu", torch.float64).numpy()
    out: dict[str, Any] = {
        "n_eval": int(Xn.shape[0]),
        "l0": metrics.l0(H),
        "mse": metrics.mse(Xn, X_hat),
        "explained_variance": metrics.explained_variance(Xn, X_hat),
        "explained_variance_centred": metrics.explained_variance_centred(Xn, X_hat),
        "shrinkage": metrics.shrinkage(Xn, X_hat),
        "dead_eval": float(np.mean(~(H != 0).any(axis=0))),
    }
    if D_true is not None:
        learned = model.W_dec.detach().to("cpu", torch.float64).numpy().T
        out["dictionary"] = metrics.dictionary_recovery(learned, D_true, shared=shared)
        if H_true is not None:
            Ht = (H_true.detach().to("cpu", torch.float64).numpy()
                  if isinstance(H_true, torch.Tensor) else np.asarray(H_true, dtype=np.float64))
            D = np.asarray(D_true, dtype=np.float64)
            matching = metrics.hungarian_match(learned, D)  # solved once, reused below
            out.update(_code_scores(H, Ht, learned, D, matching))
            if other_codes is not None:
                out["other_codes"] = {
                    name: _code_scores(np.asarray(c, dtype=np.float64), Ht, learned, D,
                                       matching)
                    for name, c in other_codes.items()}
    return out
