r"""AEN-SAE: adaptive elastic-net sparse autoencoder.

Loss ``L = mean_{b,d} (x - x_hat)^2 + l1 * mean_b sum_i w_i h_bi + l2 * mean_b sum_i h_bi^2``
with the population-adaptive weights ``w`` of
:class:`~aensae.saes.adaptive_lasso.AdaptiveLassoSAE` (EMA of mean ``|h|``, top-p
reference, clamps, cold-start hold and linear ramp). The exact problem it approximates is
the adaptive elastic net with ``lam1 = d_in * l1 / 2``, ``lam2 = d_in * l2`` and the
model's current weights (:meth:`~aensae.saes.base.SAE.exact_problem`).
"""

from __future__ import annotations

from typing import ClassVar

from aensae.saes.adaptive_lasso import ADAPTIVE_HYPER, AdaptiveLassoSAE
from aensae.saes.base import INIT, Hyper
from aensae.saes.elastic_net import L2
from aensae.saes.relu_l1 import L1

__all__ = ["AENSAE"]


class AENSAE(AdaptiveLassoSAE):
    """ReLU encoder with adaptive l1 weights plus an l2 penalty on the codes."""

    arch: ClassVar[str] = "aen"
    HYPER: ClassVar[dict[str, Hyper]] = {"l1": L1, "l2": L2, **ADAPTIVE_HYPER, "init": INIT}
