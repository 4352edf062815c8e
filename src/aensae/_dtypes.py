"""Floating-point types by name: the one map from the names users write (``--dtype``,
``experiment.dtype``, ``model_dtype``, ``cfg.json``) to torch dtypes.

SAEs train and store weights in :data:`SAE_DTYPES`; language models may also run in half
precision (:data:`MODEL_DTYPES`). torch is imported only when a name is resolved.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODEL_DTYPES", "SAE_DTYPES", "torch_dtype"]

#: What an SAE's weights (and the activations fed to it) may be.
SAE_DTYPES: tuple[str, ...] = ("float32", "float64")
#: What a language model may run in.
MODEL_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` called ``name`` (one of :data:`SAE_DTYPES` or
    :data:`MODEL_DTYPES`); ``ValueError`` naming the known ones otherwise."""
    import torch

    known = {n: getattr(torch, n) for n in (*SAE_DTYPES, *MODEL_DTYPES)}
    try:
        return known[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(known)}") from None
