"""aensae: adaptive elastic-net sparse autoencoders tested against exact sparse regression.

Subpackages (arrows point one way, see docs/architecture.md):

- :mod:`aensae.objective`  -- the one objective, its two scalings, adaptive weights.
- :mod:`aensae.synthetic`  -- spiked dictionaries and code samplers (ground truth).
- :mod:`aensae.solvers`    -- exact, certified elastic-net / adaptive-lasso solvers.
- :mod:`aensae.saes`       -- amortized sparse autoencoders and their trainer.
- :mod:`aensae.theory`     -- Lipschitz / Hoffman constants, support recovery.
- :mod:`aensae.llm`        -- language models, activation caches, spliced evaluation.
- :mod:`aensae.experiments` -- the synthetic and LLM grids: config, tables, figures, reports.
- :mod:`aensae.benches`    -- performance benchmarks (ratios against anchors).
- :mod:`aensae.cli`        -- the ``aensae`` command (parsing only).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aensae")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0+src"

__all__ = ["__version__"]
