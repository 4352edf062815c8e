r"""Batch statistics over a data-parallel step's global batch, for the architectures.

TopK's AuxK normalisation (:func:`global_mean`) and BatchTopK's threshold
(:func:`global_top_values`, :func:`count_before`) must cover the *global* batch when
:mod:`aensae.saes.training.distributed` splits it over ranks. The trainer marks a step's
loss computation with :func:`batch_context`; outside one (evaluation, one process) these
are the plain single-process computations. Here, not in the training engine, so that the
architecture files never import :mod:`aensae.saes.training`.

``world`` is the step's :class:`aensae.saes.training.distributed.World` (anything with
``rank``, ``size`` and ``device``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["batch_context", "batch_world", "count_before", "global_average", "global_mean",
           "global_top_values"]

_ACTIVE: Any = None


def batch_world() -> Any:
    """The world of the training step being computed (``None`` outside one, or alone)."""
    return _ACTIVE


@contextmanager
def batch_context(world: Any) -> Iterator[None]:
    """Mark a training step's loss computation: batch statistics taken inside it
    (:func:`global_mean`, :func:`global_top_values`) cover the global batch."""
    global _ACTIVE
    before, _ACTIVE = _ACTIVE, world
    try:
        yield
    finally:
        _ACTIVE = before


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(0)`` over the rows of the global batch (``x`` (B_r, ...) on each rank).

    Inside :func:`batch_context` of a world the ranks' row means are averaged (equal
    shares, so this is the global mean); otherwise ``x.mean(0)``. No gradient.
    """
    local = x.detach().mean(0)
    world = _ACTIVE
    if world is None:
        return local
    import torch.distributed as dist

    dist.all_reduce(local)
    return local.div_(world.size)


def global_average(v: torch.Tensor) -> torch.Tensor:
    """The average over the ranks of ``v``, a statistic each rank computed on its equal
    share of the global batch (e.g. a row mean); ``v`` itself outside
    :func:`batch_context` of a world. No gradient; ``v`` is not modified."""
    world = _ACTIVE
    if world is None:
        return v
    import torch.distributed as dist

    out = v.detach().clone()
    dist.all_reduce(out)
    return out.div_(world.size)


def global_top_values(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest entries of the union of every rank's ``flat`` (1-D), unsorted.

    ``k`` must not exceed the union's size. Each rank contributes its own ``k`` largest
    (padded with ``-inf`` when it holds fewer), which include its part of the global top
    ``k``. Outside :func:`batch_context` of a world: ``flat.topk(k)``. No gradient.
    """
    flat = flat.detach()
    world = _ACTIVE
    if world is None:
        return flat.topk(k, sorted=False).values
    import torch.distributed as dist

    own = flat.topk(min(k, flat.numel()), sorted=False).values
    if own.numel() < k:
        own = torch.cat([own, own.new_full((k - own.numel(),), -torch.inf)])
    parts = [torch.empty_like(own) for _ in range(world.size)]
    dist.all_gather(parts, own)
    return torch.cat(parts).topk(k, sorted=False).values


def count_before(n: int) -> int:
    """Sum of ``n`` over the ranks below this one (0 outside :func:`batch_context`)."""
    world = _ACTIVE
    if world is None:
        return 0
    import torch.distributed as dist

    mine = torch.tensor([n], dtype=torch.int64, device=world.device)
    parts = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(parts, mine)
    return int(sum(int(c) for c in parts[:world.rank]))


# ----------------------------------------------------------------------------- gradients
