"""Metric formulas shared by the SAE trainer, the geometry code and the experiment tables.

Each function states its formula in its docstring, accepts numpy arrays or torch tensors
(converted to float64), accumulates in float64 and returns Python floats (or dicts of
them). This package is a leaf: it imports only :mod:`aensae._validation` from aensae.

- :mod:`~aensae.metrics.reconstruction` -- :func:`l0`, :func:`mse`,
  :func:`explained_variance`, :func:`explained_variance_centred`, :func:`shrinkage`,
  :func:`code_bias`.
- :mod:`~aensae.metrics.recovery` -- :func:`support_recovery`,
  :func:`support_recovery_per_sample`, :func:`dictionary_recovery`,
  :func:`hungarian_match`, :func:`true_positive_code_bias`,
  :func:`recovered_atom_recovery` (threshold :data:`RECOVERED_COS`).
"""

from aensae.metrics.reconstruction import (
    code_bias,
    explained_variance,
    explained_variance_centred,
    l0,
    mse,
    shrinkage,
)
from aensae.metrics.recovery import (
    RECOVERED_COS,
    dictionary_recovery,
    hungarian_match,
    recovered_atom_recovery,
    support_recovery,
    support_recovery_per_sample,
    true_positive_code_bias,
)

__all__ = [
    "RECOVERED_COS",
    "code_bias",
    "dictionary_recovery",
    "explained_variance",
    "explained_variance_centred",
    "hungarian_match",
    "l0",
    "mse",
    "recovered_atom_recovery",
    "shrinkage",
    "support_recovery",
    "support_recovery_per_sample",
    "true_positive_code_bias",
]
