r"""Activation normalisation: one function normalises, one undoes it.

Two kinds, each under its own name (``"none"`` leaves activations as they are):

- ``"scalar"`` (the default, as SAELens does it): every activation is multiplied by one
  constant

  .. math:: c = \sqrt{d_{in} / \mathbb{E}\,\lVert x \rVert_2^2},

  so that normalised activations have mean squared norm ``d_in``. The expectation is
  taken over the whole activation cache when it is written (the harvest adds up
  ``||x||^2`` per shard in float64) and stored in the cache's ``manifest.json``.
- ``"per_token"`` (the reference implementation's): each activation is rescaled on its
  own, :math:`x \mapsto x \sqrt{d_{in}} / \lVert x \rVert_2`.

:func:`normalise` returns the normalised activations *and the scale it used* (a 0-d
tensor for ``"scalar"``, one value per token, shape ``(..., 1)``, for ``"per_token"``).
:func:`unnormalise` divides by that scale, so a reconstruction made in the normalised
space goes back into the model in the model's own scale: ``unnormalise(sae(xn), scale)``.
A token of norm 0 keeps norm 0 under ``"per_token"`` (its norm is floored at the
smallest normal number of its dtype, so its scale is finite).

Outlier tokens (:func:`outlier_threshold`, :func:`token_norms`): a token whose activation
norm exceeds ``factor`` times the median norm of a cache (default 10, dictionary_learning's
convention) is an outlier; :class:`~aensae.llm.store.ActivationStore` can leave such
tokens out of training batches, and the scalar constant is then estimated on the tokens
kept (:func:`scalar_constant` of their norms).

A scalar constant read back from a file (a cache manifest, an SAE's ``cfg.json``) must
lie in :data:`CONSTANT_RANGE` (:func:`check_constant`). Since :math:`c = \sqrt{d_{in}} /
\mathrm{RMS}\lVert x\rVert`, :math:`1/c` is the root-mean-square size of one
coordinate of the activations. Residual streams of trained models keep that between
about 1e-2 and 1e3 (SmolLM2's outlier tokens, norm ~24,000 over 576 coordinates, are
~1e3); the range [1e-8, 1e8] leaves five orders of magnitude or more on either side.
Beyond it the constant is a damaged file, not a model: 1e300 does not even fit float32
(largest ~3.4e38), so every normalised activation would be inf and every metric NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from aensae._validation import InputError

__all__ = ["CONSTANT_RANGE", "NORMALISATIONS", "OUTLIER_FACTOR", "check_constant",
           "check_outlier_factor", "normalise", "outlier_threshold", "scalar_constant",
           "token_norms", "unnormalise"]

#: The normalisation kinds, default first.
NORMALISATIONS: tuple[str, ...] = ("scalar", "per_token", "none")
#: Accepted scalar constants read from files (see the module docstring for why).
CONSTANT_RANGE: tuple[float, float] = (1e-8, 1e8)
#: Default outlier multiple of the median token norm (dictionary_learning's convention).
OUTLIER_FACTOR = 10.0


def check_constant(where: str, value: Any) -> float:
    """A scalar normalisation constant read from a file: a finite real number in
    :data:`CONSTANT_RANGE`, else an :class:`InputError` naming ``where`` (the file and
    key). Returns it as a float."""
    lo, hi = CONSTANT_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: the scalar normalisation constant must be a number, got "
                         f"{value!r}")
    c = float(value)
    if not math.isfinite(c) or not lo <= c <= hi:
        raise InputError(f"{where}: the scalar normalisation constant {c!r} is "
                         f"{'not finite' if not math.isfinite(c) else 'absurd'}; it must lie "
                         f"in [{lo:g}, {hi:g}] (c = sqrt(d_in) / RMS token norm: outside that "
                         "range no model's activations, and beyond ~1e38 not even float32, "
                         "so the file is damaged)")
    return c


def scalar_constant(sum_sq_norm: float, n_tokens: int, d_in: int) -> float:
    r"""``c = sqrt(d_in / (sum_sq_norm / n_tokens))``: the scalar normalisation constant.

    ``sum_sq_norm`` is :math:`\sum_t \lVert x_t \rVert^2` over ``n_tokens`` activations.
    """
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    mean_sq = sum_sq_norm / n_tokens
    if not (mean_sq > 0 and math.isfinite(mean_sq)):
        raise ValueError(f"the mean squared norm of the activations must be positive and "
                         f"finite, got {mean_sq!r}")
    return math.sqrt(d_in / mean_sq)


def _check_kind(kind: str) -> None:
    if kind not in NORMALISATIONS:
        raise InputError(f"normalisation must be one of {', '.join(NORMALISATIONS)}; "
                         f"got {kind!r}")


def normalise(x: torch.Tensor, kind: str = "scalar", constant: float | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise activations ``x`` (..., d_in); return ``(x_normalised, scale)``.

    Parameters
    ----------
    x : tensor (..., d_in)
    kind : "scalar", "per_token" or "none"
    constant : float
        The scalar constant ``c`` (needed for ``"scalar"``, e.g.
        ``manifest["normalisation"]["scalar_constant"]``; ignored otherwise).

    Returns
    -------
    x_normalised : tensor, same shape and dtype as ``x``
        ``x * scale``.
    scale : tensor
        0-d (``"scalar"``: ``c``; ``"none"``: 1) or (..., 1) (``"per_token"``:
        ``sqrt(d_in) / ||x||``), in ``x``'s dtype and on its device. Pass it to
        :func:`unnormalise`.
    """
    _check_kind(kind)
    if kind == "none":
        return x, torch.ones((), dtype=x.dtype, device=x.device)
    if kind == "scalar":
        if constant is None:
            raise InputError("normalisation 'scalar' needs its constant (the cache "
                             "manifest's normalisation.scalar_constant)")
        if not (math.isfinite(constant) and constant > 0):
            raise InputError(f"the scalar normalisation constant must be positive and "
                             f"finite, got {constant!r}")
        scale = torch.tensor(constant, dtype=x.dtype, device=x.device)
        return x * scale, scale
    d_in = x.shape[-1]
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    floor = torch.finfo(x.dtype).tiny
    scale = math.sqrt(d_in) / norms.clamp_min(floor)
    return x * scale, scale


def unnormalise(x_normalised: torch.Tensor, scale: torch.Tensor | Any) -> torch.Tensor:
    """Undo :func:`normalise`: ``x_normalised / scale`` with the ``scale`` it returned."""
    if not isinstance(scale, torch.Tensor):
        scale = torch.as_tensor(scale, dtype=x_normalised.dtype, device=x_normalised.device)
    return x_normalised / scale


def check_outlier_factor(where: str, value: Any) -> float:
    """An outlier multiple: a finite number > 1, else an :class:`InputError` naming
    ``where`` and the value (a multiple of 1 or less would call the median token an
    outlier)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: must be a number > 1 (a multiple of the median token "
                         f"norm), got {value!r}")
    f = float(value)
    if not (math.isfinite(f) and f > 1.0):
        raise InputError(f"{where}: must be a finite number > 1 (a multiple of the median "
                         f"token norm), got {value!r}")
    return f


def token_norms(x: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm of each row of ``x`` (n, d), in float64 (the precision in which
    norms are compared with an outlier threshold everywhere)."""
    return torch.linalg.vector_norm(x.to(torch.float64), dim=-1)


def outlier_threshold(norms: torch.Tensor, factor: float) -> tuple[float, float]:
    """``(median, factor * median)`` of token ``norms``: a token of norm above the second
    is an outlier. The median is the usual one (the mean of the two middle values for an
    even count), over every token given, outliers included (the median is robust to
    them)."""
    if norms.numel() == 0:
        raise ValueError("no token norms to take the median of")
    median = float(np.median(norms.detach().cpu().to(torch.float64).numpy()))
    return median, float(factor) * median
