"""aensae: adaptive elastic-net sparse autoencoders tested against exact sparse regression.

Subpackages (arrows point one way, see docs/architecture.md):

- :mod:`aensae.objective`  -- the one objective, its two scalings, adaptive weights.
- :mod:`aensae.synthetic`  -- spiked dictionaries and code samplers (ground truth).
- :mod:`aensae.solvers`    -- exact, certified elastic-net / adaptive-lasso solvers.
- :mod:`aensae.saes`       -- amortized sparse autoencoders and their trainer.
- :mod:`aensae.theory`     -- Lipschitz / Hoffman constants, support recovery.
- :mod:`aensae.benchmarks` -- experiment grids, results tables, figures, perf benches.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aensae")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0+src"

__all__ = ["__version__"]
