"""Activations from real language models (the optional ``[llm]`` extra).

- :mod:`aensae.llm.models`: loading (alias, GGUF, folder, hub), hook points, truncated
  forward passes (``run_below`` / ``run_above``);
- :mod:`aensae.llm.text`: text sources, tokenising, packing into windows, the
  train/eval split by document;
- :mod:`aensae.llm.cache`: the harvest, writing sharded activations and ``manifest.json``;
- :mod:`aensae.llm.store`: :class:`ActivationStore`, shuffled batches for the trainer;
- :mod:`aensae.llm.normalise`: normalise / unnormalise;
- :mod:`aensae.benches.harvest`: ``aensae bench harvest``.

Importing this package without transformers raises an ``ImportError`` that names the
extra. The submodules are imported on first use of a name below.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

#: How to install what this package needs.
EXTRA_HINT = "pip install 'aensae[llm]'"

if importlib.util.find_spec("transformers") is None:
    raise ImportError(f"aensae.llm needs the optional dependencies of the llm extra "
                      f"(transformers is missing): {EXTRA_HINT}")

_EXPORTS = {
    "ActivationStore": "aensae.llm.store",
    "LanguageModel": "aensae.llm.models",
    "load_model": "aensae.llm.models",
    "resolve_model": "aensae.llm.models",
    "HOOKS": "aensae.llm.models",
    "ALIASES": "aensae.llm.models",
    "HarvestConfig": "aensae.llm.cache",
    "harvest": "aensae.llm.cache",
    "open_text": "aensae.llm.text",
    "normalise": "aensae.llm.normalise",
    "unnormalise": "aensae.llm.normalise",
    "NORMALISATIONS": "aensae.llm.normalise",
}

__all__ = ["EXTRA_HINT", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aensae.llm' has no attribute {name!r}")
