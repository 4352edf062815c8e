r"""Reconstruction and code-size metrics (float64 accumulation, Python floats out).

Symbols: signals ``x_b`` (rows of ``X``, shape (B, n)), reconstructions ``x_hat_b``,
codes ``h_b`` (rows of ``codes``, shape (B, m)). Inputs may be numpy arrays or torch
tensors; a 1-D input is a single sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aensae.metrics._convert import as_batch, check_same_shape

__all__ = [
    "code_bias",
    "explained_variance",
    "explained_variance_centred",
    "l0",
    "mse",
    "shrinkage",
]


def _pair(X: Any, X_hat: Any, names: tuple[str, str] = ("X", "X_hat")):
    a = as_batch(names[0], X)
    b = as_batch(names[1], X_hat)
    check_same_shape(names[0], a, names[1], b)
    return a, b


def l0(codes: Any) -> float:
    r"""Mean number of non-zero code entries: ``L0 = 1/B sum_b #{i : h_bi != 0}``.

    Parameters
    ----------
    codes : array or tensor (B, m) or (m,)

    Returns
    -------
    float
    """
    H = as_batch("codes", codes)
    return float(np.count_nonzero(H, axis=1).mean())


def mse(X: Any, X_hat: Any) -> float:
    r"""Mean squared error over all elements: ``1/(B n) sum_{b,d} (x_bd - x_hat_bd)^2``."""
    X, X_hat = _pair(X, X_hat)
    return float(np.mean((X - X_hat) ** 2))


def explained_variance(X: Any, X_hat: Any) -> float:
    r"""Explained variance against the mean predictor.

    ``EV = 1 - sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b - x_bar||^2``, with
    ``x_bar = 1/B sum_b x_b`` the per-dimension mean over the evaluation set. A
    reconstruction equal to ``x_bar`` for every sample scores 0, a perfect one 1; worse
    than the mean is negative.

    Raises
    ------
    ValueError
        If every sample of ``X`` is identical (the denominator is 0).
    """
    X, X_hat = _pair(X, X_hat)
    total = float(np.sum((X - X.mean(axis=0)) ** 2))
    if total == 0.0:
        raise ValueError(
            f"X has zero total variance over its {X.shape[0]} sample(s); explained variance "
            "is undefined (evaluate on at least two distinct samples)"
        )
    return 1.0 - float(np.sum((X - X_hat) ** 2)) / total


def explained_variance_centred(X: Any, X_hat: Any) -> float:
    r"""The reference implementation's centred-residual variant of explained variance.

    ``EV_c = 1 - sum_d Var_b(x_bd - x_hat_bd) / sum_d Var_b(x_bd)`` (the variances'
    normalisation cancels). It ignores a constant offset of the residual: a reconstruction
    ``x_hat_b = x_b + c`` scores 1. Reported only for comparison with that code's tables;
    :func:`explained_variance` is the metric of record.

    Raises
    ------
    ValueError
        If every sample of ``X`` is identical.
    """
    X, X_hat = _pair(X, X_hat)
    denom = float(np.var(X, axis=0).sum())
    if denom == 0.0:
        raise ValueError(
            f"X has zero total variance over its {X.shape[0]} sample(s); explained variance "
            "is undefined (evaluate on at least two distinct samples)"
        )
    return 1.0 - float(np.var(X - X_hat, axis=0).sum()) / denom


def shrinkage(X: Any, X_hat: Any) -> float:
    r"""Mean norm ratio ``1/|B'| sum_{b in B'} ||x_hat_b|| / ||x_b||`` over ``B'`` = samples
    with ``x_b != 0``.

    1 means no shrinkage, below 1 reconstructions shrunk toward 0 (the l1 bias).

    Raises
    ------
    ValueError
        If every sample of ``X`` is zero.
    """
    X, X_hat = _pair(X, X_hat)
    norms = np.linalg.norm(X, axis=1)
    keep = norms > 0.0
    if not keep.any():
        raise ValueError("X must hold at least one non-zero sample; shrinkage is undefined")
    return float(np.mean(np.linalg.norm(X_hat[keep], axis=1) / norms[keep]))


def code_bias(codes: Any, ref_codes: Any) -> float:
    r"""Code-level bias against reference codes, on the reference support.

    With reference codes ``r_b`` (``ref_codes``), ``S_b = {i : r_bi != 0}`` and ``B'`` the
    samples with ``S_b`` non-empty::

        bias = 1/|B'| sum_{b in B'} [ sum_{i in S_b} sign(r_bi) h_bi / sum_{i in S_b} |r_bi| ]

    i.e. the mean share of the reference magnitude recovered, counted along the reference
    sign. 1 means unbiased, below 1 shrinkage toward 0 (an entry of the wrong sign counts
    negatively, a missed entry as 0), above 1 inflation. Entries outside ``S_b`` are not
    counted here (see :func:`aensae.metrics.support_recovery`).

    Raises
    ------
    ValueError
        If every reference code is zero.
    """
    H, R = _pair(codes, ref_codes, ("codes", "ref_codes"))
    on = R != 0.0
    keep = on.any(axis=1)
    if not keep.any():
        raise ValueError("ref_codes must hold at least one non-zero code; code bias is undefined")
    num = np.sum(np.where(on, np.sign(R) * H, 0.0), axis=1)
    den = np.sum(np.abs(R), axis=1)
    return float(np.mean(num[keep] / den[keep]))
