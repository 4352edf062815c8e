r"""ReLU + elastic-net sparse autoencoder: fixed (unit) l1 weights plus an l2 term.

Loss ``L = mean_{b,d} (x - x_hat)^2 + l1 * mean_b sum_i h_bi + l2 * mean_b sum_i h_bi^2``;
the exact problem has ``lam1 = d_in * l1 / 2`` and ``lam2 = d_in * l2``
(:func:`aensae.objective.sae_to_exact`).
"""

from __future__ import annotations

from typing import ClassVar

from aensae.saes.base import INIT, Hyper
from aensae.saes.relu_l1 import L1, ReluL1SAE

__all__ = ["ElasticNetSAE"]

L2 = Hyper(1e-4, low=0.0, doc="l2 coefficient on the codes (SAE scaling; lam2 = d_in * l2)")


class ElasticNetSAE(ReluL1SAE):
    """ReLU encoder trained with l1 + l2 penalties on the codes."""

    arch: ClassVar[str] = "elastic_net"
    HYPER: ClassVar[dict[str, Hyper]] = {"l1": L1, "l2": L2, "init": INIT}
