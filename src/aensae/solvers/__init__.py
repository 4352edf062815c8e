"""Exact sparse coding with certificates.

- :func:`solve` / :class:`FastSolver` / :func:`solve_batches`: the fast batched solver
  (:func:`release_workspace` frees the scratch memory it keeps for the next dictionary).
- :func:`solve_cvxpy`: an independent reference (cvxpy + polish) for small batches.
- :func:`solve_sklearn`: scikit-learn's coordinate descent on the same problem (mapping).
- :func:`duality_gap`, :func:`kkt_violation`: certificates of any code.
- :func:`lam_max`: the smallest ``lam1`` with all-zero codes.
- :func:`solve_adaptive`: adaptive lasso / adaptive elastic net by reweighting.
"""

from aensae.solvers.adaptive import population_weights_from_codes, solve_adaptive
from aensae.solvers.certificate import duality_gap, kkt_violation
from aensae.solvers.fast import (
    FastSolver,
    SolveResult,
    UncertifiedWarning,
    release_workspace,
    solve,
    solve_batches,
)
from aensae.solvers.problem import lam_max
from aensae.solvers.reference import solve_cvxpy, solve_sklearn

__all__ = [
    "FastSolver",
    "SolveResult",
    "UncertifiedWarning",
    "duality_gap",
    "kkt_violation",
    "lam_max",
    "population_weights_from_codes",
    "release_workspace",
    "solve",
    "solve_adaptive",
    "solve_batches",
    "solve_cvxpy",
    "solve_sklearn",
]
