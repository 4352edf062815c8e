r"""Data-parallel training of SAEs across processes (``torchrun``), equal to one process.

``W`` processes (ranks ``r = 0 .. W-1``) train the same models. Every global batch of
``B`` rows is split into ``W`` equal, disjoint row blocks; rank ``r`` reads only rows
``[r B / W, (r + 1) B / W)`` (:meth:`World.rows`), so one step's data over all ranks is
the 1-process batch. What makes the ranks train exactly the 1-process model (up to
floating-point rounding):

- **gradients**: each rank computes its local mean gradient ``g_r = (1 / B_r) sum_{b in r}
  grad l_b`` (the architectures' own ``compute_grads``, hand-derived or autograd); a
  :class:`~torch.nn.parallel.DistributedDataParallel` wrapper averages them,
  ``(1 / W) sum_r g_r = (1 / B) sum_b grad l_b`` because every ``B_r = B / W``: the
  gradient of the global batch's mean loss. The hand-computed gradients enter DDP's
  bucketed all-reduce through a one-node autograd graph (:class:`_InjectGrads`) whose
  backward hands them to the parameters, so DDP does the communication (buckets,
  gloo on CPU, NCCL on CUDA) while the gradients stay those of the fast paths;
- **losses and their terms**, all means over samples: averaged over ranks;
- **the batch statistics the models' ``after_step`` and the dead-latent tracker read**
  (one all-reduce for every model of the step, :meth:`GradSync.reduce`): which latents
  fired (``fired_i = OR_r fired_ri``), the per-latent mean ``|h|`` of the AEN / adaptive
  lasso EMA (``mean_b |h_bi|`` = the mean of the ranks' means) and the batch's sample
  count ``B``;
- **statistics inside a forward pass** (:mod:`aensae.saes.collectives`): BatchTopK keeps
  the ``k B`` largest activations of the *global* batch (``global_top_values``: every
  rank contributes its own ``k B`` largest, the union's ``k B`` largest give the
  threshold; ``count_before`` shares out the entries tied with it) and TopK's AuxK
  loss normalises by the global batch's residual variance (``global_mean``).
  Outside the trainer's step (evaluation) these are the plain single-process
  computations.

Buffers (AEN's EMA and step, TopK's counters, BatchTopK's threshold) are then updated
from identical numbers on every rank and stay equal without being broadcast. One process
(``WORLD_SIZE`` unset or 1) never touches ``torch.distributed``: :func:`from_env` yields
``None`` and the trainer runs as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from aensae._validation import InputError
from aensae.saes.base import SAE, LossOutput
from aensae.saes.dead import fired_latents

__all__ = ["GradSync", "World", "from_env"]


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run.

    Attributes
    ----------
    rank, size : int
        Rank ``r`` and number ``W`` of processes (``torch.distributed``'s default group).
    local_rank : int
        Rank on this machine (torchrun's ``LOCAL_RANK``): the CUDA device index.
    device : torch.device
        Where this rank trains: ``cpu`` (gloo) or ``cuda:local_rank`` (NCCL).
    """

    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that writes files."""
        return self.rank == 0

    def rows(self, batch_size: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of a global batch of ``batch_size`` rows read by this rank.

        ``batch_size`` must be a multiple of :attr:`size` (each rank's share is equal, so
        averaging the ranks' mean gradients gives the global mean gradient).
        """
        if batch_size % self.size:
            raise InputError(f"--batch-size {batch_size} must be a multiple of the number of "
                             f"ranks {self.size} (torchrun --nproc-per-node): every rank "
                             "trains on an equal share of each batch")
        share = batch_size // self.size
        return self.rank * share, (self.rank + 1) * share

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        import torch.distributed as dist

        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise InputError(f"environment variable {name} is not set; launch data-parallel "
                             "training with torchrun, which sets RANK, LOCAL_RANK and "
                             "WORLD_SIZE")
        return default
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"environment variable {name} must be an integer, got {text!r}"
                         ) from None
    if value < 0:
        raise InputError(f"environment variable {name} must be >= 0, got {value}")
    return value


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset: a single process)."""
    size = _env_int("WORLD_SIZE", 1)
    if size < 1:
        raise InputError(f"environment variable WORLD_SIZE must be >= 1, got {size}")
    return size


def _rank_device(where: str, device: str, local_rank: int) -> torch.device:
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto"
                       else device)
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise InputError(f"{where} {device}: data-parallel training runs on cpu (gloo) or "
                         "cuda (NCCL)")
    if dev.index is not None and dev.index != local_rank:
        raise InputError(f"{where} {device}: under torchrun rank {local_rank} of this "
                         f"machine trains on cuda:{local_rank}; pass --device cuda or auto")
    if local_rank >= torch.cuda.device_count():
        raise InputError(f"{where} {device}: LOCAL_RANK {local_rank} has no CUDA device "
                         f"({torch.cuda.device_count()} here); start at most that many "
                         "processes per node")
    return torch.device("cuda", local_rank)


@contextmanager
def from_env(device: str, *, where: str = "--device",
             timeout_s: float = 1800.0) -> Iterator[World | None]:
    """The :class:`World` of a process started by ``torchrun``, or ``None`` for one process.

    ``WORLD_SIZE`` unset or 1: yields ``None`` and touches nothing. Otherwise the default
    process group is initialised from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``; ``LOCAL_RANK`` picks the GPU), with backend gloo on
    the CPU and NCCL on CUDA (``device`` as ``--device`` gives it: ``auto``, ``cpu``,
    ``cuda``), and destroyed on exit. A group that the caller initialised already is used
    as it is and left alone.
    """
    import torch.distributed as dist

    size = env_world_size()
    if size == 1 and not (dist.is_available() and dist.is_initialized()):
        yield None
        return
    if not dist.is_available():
        raise InputError(f"WORLD_SIZE={size}: this torch ({torch.__version__}) has no "
                         "torch.distributed")
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = _rank_device(where, device, local_rank)
    created = not dist.is_initialized()
    if created:
        rank = _env_int("RANK")
        if rank >= size:
            raise InputError(f"environment variable RANK={rank} must be < WORLD_SIZE={size}")
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise InputError(f"environment variable {name} is not set; launch "
                                 "data-parallel training with torchrun")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank,
                                world_size=size, timeout=timedelta(seconds=timeout_s))
    world = World(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    try:
        yield None if world.size == 1 else world
    finally:
        if created:
            dist.destroy_process_group()


class _InjectGrads(torch.autograd.Function):
    """A scalar whose backward gives each parameter a gradient computed beforehand."""

    @staticmethod
    def forward(ctx: Any, grads: list[torch.Tensor], *params: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grads, ctx.grads = ctx.grads, None
        return (None, *grads)


class _Replicas(nn.Module):
    """The models of a run as one module for DDP; forward = :class:`_InjectGrads`."""

    def __init__(self, models: list[SAE]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.pending: list[torch.Tensor] = []

    def forward(self) -> torch.Tensor:
        params = list(self.parameters())
        grads, self.pending = self.pending, []
        return _InjectGrads.apply(grads, *params)


class GradSync:
    """Averages the gradients and reduces the step statistics of a run's models.

    Parameters
    ----------
    models : mapping name -> SAE
        On ``world.device`` already; every rank passes the same names in the same order.
    world : World
    """

    def __init__(self, models: Mapping[str, SAE], world: World) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.world = world
        self.models = dict(models)
        self._replicas = _Replicas(list(self.models.values()))
        self.params = list(self._replicas.parameters())
        cuda = world.device.type == "cuda"
        # Buffers are updated from reduced statistics, identical on every rank, so they
        # need no broadcast before each forward; DDP still checks the parameters' shapes
        # and broadcasts rank 0's parameters and buffers once, here. (torch >= 2.13 names
        # the option forward_sync_buffers and deprecates broadcast_buffers.)
        import inspect

        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                   inspect.signature(DistributedDataParallel.__init__).parameters
                   else {"broadcast_buffers": False})
        self.ddp = DistributedDataParallel(
            self._replicas, device_ids=[world.device.index] if cuda else None, **no_sync)

    def close(self) -> None:
        """Release the DDP wrapper (its reducer holds the process group); idempotent."""
        self.ddp = None
        self.params = []
        self._replicas = None

    def reduce(self, outs: Mapping[str, LossOutput], batch_rows: int) -> None:
        """Make ``outs`` and the gradients those of the global batch, in place.

        ``outs[name]`` is model ``name``'s :class:`LossOutput` of this rank's ``batch_rows``
        rows, its gradients in ``.grad``. Afterwards every rank holds: ``.grad`` the mean
        over ranks (DDP), ``loss`` and ``terms`` the means over ranks, ``stats["fired"]``
        the latents that fired on any rank, ``stats["mean_abs_h"]`` (models that have it,
        and every adaptive-weight model) the mean over ranks, and ``stats["samples"]`` the
        global batch size. Raises ``ValueError`` on every rank when the ranks' batch
        sizes differ.
        """
        import torch.distributed as dist

        from aensae.saes.adaptive_lasso import AdaptiveLassoSAE

        W = self.world.size
        dev = self.world.device
        parts = [torch.tensor([float(batch_rows), float(batch_rows) ** 2], dtype=torch.float64,
                              device=dev)]
        layout = []
        for name, model in self.models.items():
            out = outs[name]
            keys = list(out.terms)
            scalars = torch.stack([out.loss.detach(), *(out.terms[k].detach() for k in keys)])
            fired = out.stats.get("fired")
            if fired is None:
                fired = fired_latents(out.h)
            mean_abs = out.stats.get("mean_abs_h")
            if mean_abs is None and isinstance(model, AdaptiveLassoSAE):
                mean_abs = out.h.detach().abs().mean(0)
            parts += [scalars.to(dev, torch.float64), fired.to(dev, torch.float64)]
            if mean_abs is not None:
                parts.append(mean_abs.to(dev, torch.float64))
            layout.append((name, keys, mean_abs is not None))
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        n_rows, n_sq = float(flat[0]), float(flat[1])
        if W * n_sq != n_rows * n_rows:
            raise ValueError(f"the {W} ranks hold batches of different sizes (this rank: "
                             f"{batch_rows} rows); each must read an equal share of every "
                             "batch")
        pos = 2
        for name, keys, has_mean_abs in layout:
            out, d_sae = outs[name], self.models[name].d_sae
            scalars = flat[pos:pos + 1 + len(keys)] / W
            pos += 1 + len(keys)
            dtype = out.loss.dtype
            out.loss = scalars[0].to(dtype)
            out.terms = {k: scalars[1 + i].to(out.terms[k].dtype) for i, k in enumerate(keys)}
            out.stats["fired"] = flat[pos:pos + d_sae] > 0
            pos += d_sae
            if has_mean_abs:
                out.stats["mean_abs_h"] = (flat[pos:pos + d_sae] / W).to(out.h.dtype)
                pos += d_sae
            out.stats["samples"] = round(n_rows)
        # gradients: hand this rank's to DDP, which averages them over the ranks
        grads = []
        for p in self.params:
            g = p.grad
            grads.append(torch.zeros_like(p) if g is None else g)
            p.grad = None
        self._replicas.pending = grads
        self.ddp().backward()
