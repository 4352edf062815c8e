"""Amortized sparse autoencoders: one module per architecture, a registry, one trainer.

- :mod:`~aensae.saes.base` -- :class:`SAE`, the shared encoder/decoder, loss and exact problem.
- architectures: :mod:`~aensae.saes.relu_l1`, :mod:`~aensae.saes.elastic_net`,
  :mod:`~aensae.saes.adaptive_lasso`, :mod:`~aensae.saes.aen`, :mod:`~aensae.saes.topk`,
  :mod:`~aensae.saes.batchtopk`, :mod:`~aensae.saes.jumprelu`.
- :mod:`~aensae.saes.registry` -- :data:`ARCHITECTURES`, :func:`create`.
- :mod:`~aensae.saes.io` -- :func:`save`, :func:`load` (``sae.safetensors`` + ``cfg.json``).
- :mod:`~aensae.saes.training.trainer` -- :class:`TrainConfig`, :func:`train`.
- :mod:`~aensae.saes.dead` -- :class:`DeadTracker`.
- :mod:`~aensae.saes.evaluate` -- :func:`evaluate` (metrics of :mod:`aensae.metrics`).
"""

from aensae.saes.base import SAE, Hyper, LossOutput
from aensae.saes.dead import DeadTracker
from aensae.saes.io import load, save
from aensae.saes.registry import ARCHITECTURES, create, hyper_defaults
from aensae.saes.training.trainer import ModelResult, TrainConfig, train

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "DeadTracker",
    "Hyper",
    "LossOutput",
    "ModelResult",
    "TrainConfig",
    "create",
    "hyper_defaults",
    "load",
    "save",
    "train",
]
