r"""The one objective of aensae, its two scalings, and the adaptive weight schemes.

Exact sparse-coding problem, per signal :math:`x \in \mathbb{R}^n`, dictionary
:math:`D \in \mathbb{R}^{n \times m}` (atoms are columns), weights :math:`w > 0`::

    F(h) = 1/2 ||x - D h||_2^2 + lam1 * sum_i w_i |h_i| + lam2/2 * ||h||_2^2     [h >= 0 optional]

SAE training loss as the reference implementation writes it (B samples, n dims)::

    L = mean_{b,d} (x - x_hat)^2 + l1 * mean_b sum_i w_i |h_bi| + l2 * mean_b sum_i h_bi^2

Per sample, ``L * n / 2`` equals ``F`` with ``lam1 = n * l1 / 2`` and ``lam2 = n * l2``.
:func:`sae_to_exact` and :func:`exact_to_sae` are the only place this conversion lives;
every comparison of an SAE with an exact solver goes through them.

Adaptive weights:

- classical adaptive lasso / adaptive elastic net (Zou 2006; Zou & Zhang 2009):
  ``w = (|h_init| + eps)^(-gamma)`` from an initial estimate -- :func:`adaptive_weights`;
- population weights of the AEN-SAE: per-latent EMA of mean ``|h|`` (:func:`update_ema`),
  reference ``ref`` = mean of the top-``p`` fraction of the EMA, and
  ``w = clip((ref / ema)^gamma, w_min, w_max)`` -- :func:`population_weights`; during the
  cold start ``w`` is held at 1 and then ramped linearly (:func:`ramp_factor`,
  :func:`blend_weights`).

Every function works on numpy arrays and torch tensors alike and returns the same kind.
This module imports nothing else from aensae.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from aensae._validation import check_int, check_real, is_torch

Array = TypeVar("Array")  # numpy.ndarray or torch.Tensor

__all__ = [
    "ExactProblem",
    "adaptive_weights",
    "blend_weights",
    "exact_objective",
    "exact_to_sae",
    "hold_steps",
    "penalty",
    "population_weights",
    "ramp_factor",
    "ref_count",
    "sae_loss",
    "sae_to_exact",
    "torch_population_weights",
    "update_ema",
]


# ----------------------------------------------------------------------------- scalings
def sae_to_exact(l1: float, l2: float, n: int) -> tuple[float, float]:
    r"""Map SAE loss coefficients to the exact objective's penalties.

    ``lam1 = n * l1 / 2`` and ``lam2 = n * l2``, so that per sample
    ``L * n / 2 = F`` (see the module docstring).

    Parameters
    ----------
    l1, l2 : float
        Non-negative SAE coefficients of ``mean_b sum_i w_i |h_bi|`` and ``mean_b sum_i h_bi^2``.
    n : int
        Input dimension (the mean-squared error averages over ``n`` elements).

    Returns
    -------
    (lam1, lam2) : tuple of float
    """
    l1 = check_real("l1", l1, low=0.0)
    l2 = check_real("l2", l2, low=0.0)
    n = check_int("n", n, low=1)
    return n * l1 / 2.0, n * l2


def exact_to_sae(lam1: float, lam2: float, n: int) -> tuple[float, float]:
    """Inverse of :func:`sae_to_exact`: ``l1 = 2 * lam1 / n``, ``l2 = lam2 / n``."""
    lam1 = check_real("lam1", lam1, low=0.0)
    lam2 = check_real("lam2", lam2, low=0.0)
    n = check_int("n", n, low=1)
    return 2.0 * lam1 / n, lam2 / n


# ----------------------------------------------------------------------------- problem
@dataclass(frozen=True)
class ExactProblem:
    r"""An exact sparse-coding problem ``min_h F(h)`` for signals ``x - offset``.

    This is how an SAE (or the true generator) describes the exact problem its codes
    should be compared with: dictionary ``D`` (n, m) with atoms as columns (an SAE's
    ``W_dec.T``), penalties ``lam1``, ``lam2`` in the exact scaling (use
    :func:`sae_to_exact`), l1 weights ``weights`` ((m,) or ``None`` for ones), the sign
    constraint ``nonneg`` (ReLU encoders), and ``offset`` (the decoder bias ``b_dec``;
    exact codes are computed for ``x - offset``).
    """

    D: Any
    lam1: float
    lam2: float = 0.0
    weights: Any = None
    nonneg: bool = False
    offset: Any = None

    def centred(self, X: Array) -> Array:
        """Return ``X - offset`` (``X`` itself when there is no offset)."""
        return X if self.offset is None else X - self.offset


# ----------------------------------------------------------------------------- values
def penalty(codes: Array, lam1: float, lam2: float = 0.0, weights: Array | None = None) -> Array:
    r"""Per-sample penalty ``lam1 * sum_i w_i |h_i| + lam2/2 * ||h||^2``.

    Parameters
    ----------
    codes : array (B, m) or (m,)
    lam1, lam2 : float
    weights : array (m,) or (B, m), optional
        Positive l1 weights ``w``; ``None`` means all ones.

    Returns
    -------
    array (B,) (or scalar for 1-D ``codes``), same kind as ``codes``.
    """
    a = codes.abs() if is_torch(codes) else np.abs(codes)
    if weights is not None:
        a = a * weights
    return lam1 * a.sum(-1) + 0.5 * lam2 * (codes * codes).sum(-1)


def exact_objective(
    D: Array,
    X: Array,
    codes: Array,
    lam1: float,
    lam2: float = 0.0,
    weights: Array | None = None,
) -> Array:
    r"""Per-sample exact objective ``F(h) = 1/2||x - D h||^2 + penalty(h)``.

    Shapes: ``D`` (n, m), ``X`` (B, n), ``codes`` (B, m); returns (B,).
    Non-negativity is a constraint, not part of the value: callers check ``h >= 0``.
    """
    resid = X - codes @ D.T
    return 0.5 * (resid * resid).sum(-1) + penalty(codes, lam1, lam2, weights)


def sae_loss(
    x: Array,
    x_hat: Array,
    codes: Array,
    l1: float,
    l2: float = 0.0,
    weights: Array | None = None,
) -> Array:
    r"""The SAE training loss in the reference scaling (a scalar).

    ``L = mean_{b,d} (x - x_hat)^2 + l1 * mean_b sum_i w_i |h_bi| + l2 * mean_b sum_i h_bi^2``

    ``weights`` carry no gradient by contract: pass them detached.
    """
    diff = x - x_hat
    mse = (diff * diff).mean()
    a = codes.abs() if is_torch(codes) else np.abs(codes)
    if weights is not None:
        a = a * weights
    return mse + l1 * a.sum(-1).mean() + l2 * (codes * codes).sum(-1).mean()


# ----------------------------------------------------------------------------- adaptive weights
def adaptive_weights(h_init: Array, gamma: float = 1.0, eps: float = 1e-3) -> Array:
    r"""Classical adaptive-lasso weights ``w_i = (|h_init,i| + eps)^(-gamma)``.

    Zou (2006), adaptive lasso; Zou & Zhang (2009), adaptive elastic net: ``h_init`` is a
    consistent initial estimate (e.g. an elastic-net or ridge solution). ``eps > 0`` keeps
    weights finite so every coordinate stays in the problem.
    """
    gamma = check_real("gamma", gamma, low=0.0)
    eps = check_real("eps", eps, low=0.0, low_inclusive=False)
    a = h_init.abs() if is_torch(h_init) else np.abs(h_init)
    return (a + eps) ** (-gamma)


def update_ema(ema: Array, batch_mean_abs: Array, beta: float) -> Array:
    r"""One EMA step of the per-latent mean activation magnitude.

    ``ema <- beta * ema + (1 - beta) * mean_b |h_bi|`` (``batch_mean_abs`` is the latter).
    The AEN-SAE initialises ``ema`` to 1.
    """
    beta = check_real("beta", beta, low=0.0, high=1.0)
    return beta * ema + (1.0 - beta) * batch_mean_abs


def population_weights(
    ema: Array,
    gamma: float = 1.0,
    top_p: float = 0.01,
    w_min: float = 0.1,
    w_max: float = 10.0,
    count: str = "floor",
) -> Array:
    r"""AEN-SAE population weights from the per-latent EMA of mean ``|h|``.

    The defaults (top 1 % as the reference, weights in ``[0.1, 10]``) are those of the
    paper's reference implementation, as issue 11 quotes them; the SAEs' hyperparameters
    (:data:`aensae.saes.adaptive_lasso.ADAPTIVE_HYPER`) carry the same values.

    ``ref = mean of the largest K entries of ema`` and
    ``w_i = clip((ref / ema_i)^gamma, w_min, w_max)``, with ``K = ref_count(top_p, m, count)``:
    ``max(1, int(top_p * m))`` (``count="floor"``, the reference implementation's count:
    2 latents at m = 256, top 1 %) or ``max(1, ceil(top_p * m))`` (``"ceil"``, aensae's
    count before issue 24: 3 latents there).

    A latent with ``ema_i = 0`` (never active) gets ``w_max`` -- the limit of the formula.
    If every EMA entry is zero, ``ref = 0`` and all weights are ``w_min`` by the same
    convention ``0/0 -> 0``; this state does not arise after a single active step.

    Parameters
    ----------
    ema : array (m,) or (..., m)
        Non-negative EMA of mean activation magnitude per latent (last axis = latents).
    gamma : float >= 0
    top_p : float in (0, 1]
    w_min, w_max : float, 0 < w_min <= w_max
    """
    gamma = check_real("gamma", gamma, low=0.0)
    top_p = check_real("top_p", top_p, low=0.0, high=1.0, low_inclusive=False)
    w_min = check_real("w_min", w_min, low=0.0, low_inclusive=False)
    w_max = check_real("w_max", w_max, low=w_min)
    m = ema.shape[-1]
    k = ref_count(top_p, m, count)
    if is_torch(ema):
        return torch_population_weights(ema, gamma, k, w_min, w_max)
    ema = np.asarray(ema)
    ref = np.mean(np.partition(ema, m - k, axis=-1)[..., m - k:], axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ema > 0, ref / np.where(ema > 0, ema, 1.0),
                         np.where(ref > 0, np.inf, 0.0))
    return np.clip(ratio ** gamma, w_min, w_max)


def torch_population_weights(ema: Any, gamma: float, k: int, w_min: float,
                             w_max: float) -> Any:
    r""":func:`population_weights` of a torch ``ema`` with its arguments already checked
    and ``K = k`` counted: the training step's path (no checks, fewer ops).

    ``ref = mean of the k largest entries``, ``ratio_i = ref / ema_i`` where
    ``ema_i > 0`` (``ref / tiny`` guards the division), else ``inf`` (``ref > 0``) or 0;
    ``w = clip(ratio^gamma, w_min, w_max)``. When every entry is at least the dtype's
    smallest normal number (the state of any EMA after a few active steps), the guard
    and both branches are identities and ``ratio = ref / ema`` is the same value; a
    ``gamma`` of 1 skips the power (``x^1 = x`` exactly). So the result is bit for bit
    the full formula's.
    """
    import torch

    ref = torch.topk(ema, k, dim=-1).values.mean(-1, keepdim=True)
    tiny = torch.finfo(ema.dtype).tiny
    if float(ema.amin()) >= tiny:  # also False for a NaN entry: the full formula then
        ratio = ref / ema
    else:
        ratio = torch.where(ema > 0, ref / ema.clamp_min(tiny),
                            torch.where(ref > 0, torch.full_like(ema, math.inf),
                                        torch.zeros_like(ema)))
    if gamma != 1.0:
        ratio = ratio ** gamma
    return ratio.clamp_(w_min, w_max)


#: How the reference size ``K`` is rounded (:func:`ref_count`).
REF_COUNTS = ("floor", "ceil")


def ref_count(top_p: float, m: int, count: str = "floor") -> int:
    r"""Number ``K`` of largest EMA entries averaged into the reference of the weights.

    ``K = max(1, int(top_p * m))`` for ``count="floor"`` (the reference implementation's
    ``int(top_frac * d_dict)``, a truncation; the default) and ``max(1, ceil(top_p * m))``
    for ``"ceil"``. At ``m = 256``: top 1 % gives 2 (floor) or 3 (ceil), top 5 % 12 or 13.
    """
    if count not in REF_COUNTS:
        raise ValueError(f"count must be one of {', '.join(REF_COUNTS)}, got {count!r}")
    x = top_p * m
    return max(1, int(x) if count == "floor" else math.ceil(x))


def hold_steps(warmup_steps: int, warmup_frac: float, run_steps: int) -> int:
    r"""Steps of the cold-start hold (weights exactly 1): ``warmup_steps + floor(warmup_frac * T)``.

    ``T`` = ``run_steps``, the length of the training run. The reference implementation's
    spiked sweep holds the weights for 10,000 of 50,000 steps (``warmup_frac = 0.2``,
    ``warmup_steps = 0``); aensae's earlier fixed hold is ``warmup_frac = 0``,
    ``warmup_steps = 1000``.
    """
    warmup_steps = check_int("warmup_steps", warmup_steps, low=0)
    warmup_frac = check_real("warmup_frac", warmup_frac, low=0.0, high=1.0,
                             high_inclusive=False)
    run_steps = check_int("run_steps", run_steps, low=0)
    return warmup_steps + int(math.floor(warmup_frac * run_steps))


def ramp_factor(step: int, warmup_steps: int, ramp_steps: int) -> float:
    r"""Cold-start schedule ``alpha(step)`` in [0, 1] for adaptive weights.

    ``alpha = 0`` for ``step < warmup_steps`` (weights held at 1), then rises linearly,
    ``alpha = (step - warmup_steps) / ramp_steps``, reaching 1 at
    ``warmup_steps + ramp_steps``. ``ramp_steps = 0`` switches on at once.
    """
    step = check_int("step", step, low=0)
    warmup_steps = check_int("warmup_steps", warmup_steps, low=0)
    ramp_steps = check_int("ramp_steps", ramp_steps, low=0)
    if step < warmup_steps:
        return 0.0
    if ramp_steps == 0:
        return 1.0
    return min(1.0, (step - warmup_steps) / ramp_steps)


def blend_weights(w_adaptive: Array, alpha: float) -> Array:
    r"""Weights during the ramp: ``w = 1 + alpha * (w_adaptive - 1)``, ``alpha`` in [0, 1]."""
    alpha = check_real("alpha", alpha, low=0.0, high=1.0)
    return 1.0 + alpha * (w_adaptive - 1.0)
