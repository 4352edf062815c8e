"""The registry of architectures: name -> class, and :func:`create`."""

from __future__ import annotations

from typing import Any

import torch

from aensae.saes.adaptive_lasso import AdaptiveLassoSAE
from aensae.saes.aen import AENSAE
from aensae.saes.base import SAE
from aensae.saes.batchtopk import BatchTopKSAE
from aensae.saes.elastic_net import ElasticNetSAE
from aensae.saes.jumprelu import JumpReLUSAE
from aensae.saes.relu_l1 import ReluL1SAE
from aensae.saes.topk import TopKSAE

__all__ = ["ARCHITECTURES", "create", "hyper_defaults"]

#: Architecture name -> class, in the order the CLI lists them.
ARCHITECTURES: dict[str, type[SAE]] = {
    cls.arch: cls
    for cls in (ReluL1SAE, ElasticNetSAE, AdaptiveLassoSAE, AENSAE, TopKSAE, BatchTopKSAE,
                JumpReLUSAE)
}


def _arch_class(arch: str) -> type[SAE]:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid architectures: "
                         f"{', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def hyper_defaults(arch: str) -> dict[str, float | int]:
    """Default hyperparameters of ``arch`` (name -> value)."""
    return {name: spec.default for name, spec in _arch_class(arch).HYPER.items()}


def create(arch: str, d_in: int, d_sae: int, *, seed: int = 0,
           dtype: torch.dtype = torch.float32, **hyper: Any) -> SAE:
    """Create an SAE of architecture ``arch``.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES`.
    d_in, d_sae : int
        Input dimension and number of latents.
    seed : int
        Initialisation seed.
    dtype : torch.dtype
        float32 or float64.
    **hyper
        Architecture hyperparameters (see ``ARCHITECTURES[arch].HYPER``).

    Raises
    ------
    ValueError
        For an unknown architecture or hyperparameter, listing the valid ones.
    """
    return _arch_class(arch)(d_in, d_sae, seed=seed, dtype=dtype, **hyper)
