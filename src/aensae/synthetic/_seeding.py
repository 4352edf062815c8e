"""Independent random streams per purpose, derived from one user seed.

``numpy.random.default_rng([seed, i])`` ignores trailing zeros (``[0, 0]`` is the same
stream as ``0``), so a stream's batch 0 would replay the dictionary's random numbers.
Every generator here instead uses ``SeedSequence(seed, spawn_key=(tag, *index))`` with
a distinct non-zero ``tag`` per purpose: the dictionary, the signal stream and the
diagnostics' support samples of one seed are independent streams.
"""

from __future__ import annotations

import numpy as np

_TAGS = {"dictionary": 1, "stream": 2, "supports": 3}


def rng_for(purpose: str, seed: int, *index: int) -> np.random.Generator:
    """Generator for ``purpose`` (``dictionary``, ``stream``, ``supports``), seed and index."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_TAGS[purpose], *index)))
