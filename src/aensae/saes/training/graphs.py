r"""Captured steps: CUDA graphs, and a CPU stand-in with the same semantics for tests.

A *graph* of a function ``fn`` (no arguments, no return value) records the kernels one
call of ``fn`` launches and replays them later on the same tensors. What that means for
``fn`` (the rules CUDA graphs impose, and this module's :class:`EmulatedGraph` enforces on
any device):

- every tensor ``fn`` reads or writes that exists before the capture (parameters,
  optimizer state, static input and output buffers) is used *by address*: a replay reads
  its current contents and writes into it; results must be written into such buffers,
  since ``fn``'s return value is not replayed;
- every Python value ``fn`` computes at capture (a scalar argument, a branch, a tensor
  made from host data) is frozen into the graph: a replay uses the capture's value;
- ``fn`` must not read a device value on the host (``.item()``, ``float(t)``, ``bool(t)``,
  ``.tolist()``), nor launch kernels whose output shape depends on device values
  (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``);
- capturing does not run the step: state is unchanged until the first replay.

:func:`capture` returns a :class:`Graph` or raises :class:`GraphCaptureError` with the
reason; callers fall back to running ``fn`` eagerly.

:class:`CudaGraph` is ``torch.cuda.CUDAGraph`` (``torch.cuda.graph`` captures on a side
stream; graphs of one owner share a memory pool). :class:`EmulatedGraph` records the ATen
operations of one call through a ``TorchDispatchMode`` and replays them with the same
tensors (pre-existing tensors by identity, intermediates recomputed, Python arguments as
recorded), so frozen values freeze exactly as on a GPU; it refuses the host reads and
data-dependent shapes above, and restores every tensor the recording call wrote (each
storage is saved before the first operation that touches it), so capture leaves the
state unchanged. It exists so that the capture logic of the trainer can be tested on
machines without a GPU: one Python dispatch per operation makes it slower than running
``fn`` eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["MODES", "CudaGraph", "EmulatedGraph", "Graph", "GraphCaptureError", "capture"]

#: The capture backends: ``cuda`` (``torch.cuda.CUDAGraph``) and ``emulate``.
MODES = ("cuda", "emulate")


class GraphCaptureError(RuntimeError):
    """``fn`` cannot be captured (the message says why); run it eagerly instead."""


class Graph:
    """A captured call of a function; :meth:`replay` runs it again."""

    def replay(self) -> None:
        raise NotImplementedError


class CudaGraph(Graph):
    """``torch.cuda.CUDAGraph`` of ``fn`` on ``device`` (memory pool shared with ``pool_of``)."""

    def __init__(self, fn: Callable[[], Any], device: torch.device,
                 pool_of: CudaGraph | None = None) -> None:
        if device.type != "cuda":
            raise GraphCaptureError(f"CUDA graphs need a CUDA device, got {device}")
        self.graph = torch.cuda.CUDAGraph()
        pool = None if pool_of is None else pool_of.graph.pool()
        try:
            with torch.cuda.device(device), torch.cuda.graph(self.graph, pool=pool):
                out = fn()
        except Exception as err:  # capture refused an operation: the step runs eagerly
            torch.cuda.synchronize(device)
            raise GraphCaptureError(f"{type(err).__name__}: {err}".splitlines()[0]) from err
        if out is not None:
            raise GraphCaptureError("a captured function must return None (its results "
                                    "belong in buffers that exist before the capture)")

    def replay(self) -> None:
        self.graph.replay()


# ------------------------------------------------------------------------ emulation
_aten = torch.ops.aten
#: Operations whose output shape depends on device values: refused by CUDA capture.
_DATA_DEPENDENT = {
    _aten.nonzero.default, _aten.masked_select.default, _aten._unique2.default,
    _aten.unique_dim.default, _aten.unique_consecutive.default,
    _aten.repeat_interleave.Tensor, _aten.argwhere.default,
}
#: Tensors made from host data (``torch.tensor(...)`` inside the function).
_FROM_HOST = {_aten.lift_fresh.default, _aten.lift_fresh_copy.default}


def _is_marker(x: Any) -> bool:
    return isinstance(x, _Ref)


class _Ref:
    """An argument of a recorded operation: output ``j`` of operation ``i``, or a tensor
    that existed before the capture (``i = -1``, held in ``tensor``), or a constant."""

    __slots__ = ("i", "j", "tensor", "const")

    def __init__(self, i: int = -1, j: int = -1, tensor: Any = None, const: Any = None
                 ) -> None:
        self.i, self.j, self.tensor, self.const = i, j, tensor, const


class _Recorder(TorchDispatchMode):
    """Records the ATen operations of one call (see :class:`EmulatedGraph`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, Any, Any]] = []
        self.produced: dict[int, tuple[int, int]] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids of recorded outputs unique
        self.saved: dict[tuple[str, int], tuple[Any, Any]] = {}

    def _save_storage(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key not in self.saved and storage.nbytes():
            self.saved[key] = (storage, storage.clone())

    def _encode(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            at = self.produced.get(id(a))
            if at is not None:
                return _Ref(*at)
            self._save_storage(a)
            return _Ref(tensor=a)
        return _Ref(const=a)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func.namespace == "profiler":  # record_function markers: run, never replayed
            return func(*args, **kwargs)
        if func in _DATA_DEPENDENT:
            raise GraphCaptureError(f"{func} has an output shape that depends on device "
                                    "values (not capturable)")
        if func in _FROM_HOST:
            raise GraphCaptureError("a tensor made from host data inside the captured "
                                    "function (torch.tensor(...)); make it before the "
                                    "capture")
        if func is _aten.index.Tensor and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                for i in (args[1] if len(args) > 1 else ())):
            raise GraphCaptureError("boolean-mask indexing has an output shape that "
                                    "depends on device values (not capturable)")
        spec = (tree_map(self._encode, args), tree_map(self._encode, kwargs))
        out = func(*args, **kwargs)
        flat, _ = tree_flatten(out)
        for x in flat:
            if x is not None and not isinstance(x, torch.Tensor):
                raise GraphCaptureError(f"{func} reads a device value on the host "
                                        f"(returns {type(x).__name__}; not capturable)")
        index = len(self.ops)
        for j, x in enumerate(flat):
            if isinstance(x, torch.Tensor):
                self.produced[id(x)] = (index, j)
                self.alive.append(x)
        self.ops.append((func, *spec))
        return out

    def restore(self) -> None:
        """Write back every storage the recording call touched, as it was before."""
        for storage, copy in self.saved.values():
            storage.copy_(copy)


class EmulatedGraph(Graph):
    """The ATen operations of one call of ``fn``, replayable (see the module docstring).

    Raises :class:`GraphCaptureError` for anything a CUDA graph capture would refuse
    that can be seen from the operations: a host read of a device value (an operation
    returning a Python number or bool, as ``.item()`` does), an output shape that
    depends on device values, a tensor made from host data, a return value. Reads
    that bypass the dispatcher (``tolist()`` of a CPU tensor, numpy views) are not seen
    here; their values freeze into the graph as they would on a GPU.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        rec = _Recorder()
        try:
            with rec:
                out = fn()
            if out is not None:
                raise GraphCaptureError("a captured function must return None (its results "
                                        "belong in buffers that exist before the capture)")
        finally:
            rec.restore()  # capture does not run the step, as on a GPU
        self.ops = rec.ops

    def __len__(self) -> int:
        return len(self.ops)

    def replay(self) -> None:
        results: list[list[Any]] = []

        def value(r: Any) -> Any:
            if not isinstance(r, _Ref):
                return r
            if r.i >= 0:
                return results[r.i][r.j]
            return r.tensor if r.tensor is not None else r.const

        with torch.no_grad():
            for func, args, kwargs in self.ops:
                a = tree_map(value, args, is_leaf=_is_marker)
                k = tree_map(value, kwargs, is_leaf=_is_marker)
                results.append(tree_flatten(func(*a, **k))[0])


def capture(fn: Callable[[], Any], mode: str, device: torch.device,
            pool_of: Graph | None = None) -> Graph:
    """A :class:`Graph` of ``fn`` (``mode`` in :data:`MODES`); :class:`GraphCaptureError`
    when it cannot be captured. ``pool_of``: an earlier CUDA graph whose memory pool the
    new one shares."""
    if mode == "cuda":
        return CudaGraph(fn, device, pool_of if isinstance(pool_of, CudaGraph) else None)
    if mode == "emulate":
        return EmulatedGraph(fn)
    raise ValueError(f"graph mode must be one of {', '.join(MODES)}, got {mode!r}")
