"""Geometry of sparse coding: Lipschitz and Hoffman constants, support recovery.

- :mod:`~aensae.theory.lipschitz` -- local constants of the exact (elastic-net / lasso)
  map from a support, the global bound ``1/(2 sqrt(lam2))``; encoder constants, bounds
  and jumps (from :mod:`~aensae.theory.encoders`).
- :mod:`~aensae.theory.hoffman` -- local Hoffman constants ``||M_A^{-1}||_2`` of the KKT
  system by its block structure, their bounds and the dense reference; the exact global
  constant of small polyhedral systems (:mod:`~aensae.theory.hoffman_global`).
- :mod:`~aensae.theory.summaries` -- quantile summaries, and the Lipschitz / Hoffman
  summaries of a dictionary's exact map on certified codes (synthetic grid and LLM eval).
- :mod:`~aensae.theory.trajectory` -- ISTA / FISTA from zero, the faces visited and their
  constants.
- :mod:`~aensae.theory.support` -- recovery conditions, the amortization gap, and the
  support / dictionary metrics of :mod:`aensae.metrics`.

Encoders are duck-typed (``encode(x)`` on torch tensors); nothing here imports
:mod:`aensae.saes`.
"""

from aensae.theory.encoders import JumpReport
from aensae.theory.hoffman import (
    LocalHoffman,
    hoffman_constant,
    kkt_matrix,
    local_hoffman,
    local_hoffman_dense,
)
from aensae.theory.hoffman_global import hoffman_subsets
from aensae.theory.lipschitz import (
    ascent_lower_bound,
    encoder_global_bound,
    encoder_jacobian,
    encoder_jumps,
    encoder_local_lipschitz,
    enet_global_bound,
    lipschitz_enet,
    lipschitz_lasso,
    pair_ratio_lower_bound,
    support_singular_values,
)
from aensae.theory.support import (
    CodeReport,
    RecoveryConditions,
    amortization_gap,
    compare_codes,
    dictionary_recovery,
    exact_vs_truth,
    recovery_conditions,
    support_recovery,
    support_recovery_per_sample,
)
from aensae.theory.trajectory import (
    Trajectory,
    TrajectoryConstants,
    proximal_gradient,
    trajectory_constants,
)

__all__ = [
    "CodeReport",
    "JumpReport",
    "LocalHoffman",
    "RecoveryConditions",
    "Trajectory",
    "TrajectoryConstants",
    "amortization_gap",
    "ascent_lower_bound",
    "compare_codes",
    "dictionary_recovery",
    "encoder_global_bound",
    "encoder_jacobian",
    "encoder_jumps",
    "encoder_local_lipschitz",
    "enet_global_bound",
    "exact_vs_truth",
    "hoffman_constant",
    "hoffman_subsets",
    "kkt_matrix",
    "lipschitz_enet",
    "lipschitz_lasso",
    "local_hoffman",
    "local_hoffman_dense",
    "pair_ratio_lower_bound",
    "proximal_gradient",
    "recovery_conditions",
    "support_recovery",
    "support_recovery_per_sample",
    "support_singular_values",
    "trajectory_constants",
]
