r"""The training step of a run whose models all sit in stacked groups, with no host reads.

One step ``t`` on the batch ``x_t`` (B, n), for every group (:mod:`aensae.saes.training.stacked`)
and every model ``g`` in it, entirely on the device:

1. ``loss_g``, gradients (:meth:`~aensae.saes.training.stacked.StackedGroup.forward_backward`);
   with ``grad_clip = c`` each model's gradients scaled by
   ``min(1, c / (||grad_g|| + 1e-6))`` (``torch.nn.utils.clip_grad_norm_``'s rule);
2. ``bad <- bad or any_g(not finite(loss_g)) [or not finite(||grad_g||)]``, sticky; at the
   first bad step its index, the batch's count of non-finite entries, the losses (and
   gradient norms) are kept on the device;
3. fused Adam with ``found_inf = bad``: a bad step, and every step after it, leaves
   parameters and moments unchanged (``torch._fused_adam_`` skips the update and takes the
   step count back);
4. decoder rows divided by their norms; a row of zero norm sets ``bad`` (recorded), and
   then no row is divided;
5. the family's ``after_step`` buffers (EMA and step of the adaptive models, TopK's
   ``samples_since_fired``, BatchTopK's threshold) and the dead-latent accumulators
   ``fired_g |= fired_g(x_t)``, all left unchanged where ``bad``;
6. ``loss_g`` into a ring of ``sync_every`` rows, the loss terms kept unless ``bad``.

Nothing in it reads a device value on the host or depends on one in Python, so it can be
captured in a CUDA graph (:mod:`aensae.saes.training.graphs`) and replayed; the learning rate is a
Python number, so a step is captured only where the learning rate no longer changes
(after the warmup), and it runs eagerly before. A host-known switch (whether AuxK can
be on yet) selects one graph each way; a new batch size makes a new static input and
drops the graphs that read the old one. A graph is captured after two eager
steps of its kind (CUDA: on a side stream, as ``torch.cuda.graphs`` asks) and checked
once: the captured step is replayed from the state the eager step started from, and
both results must agree (bit for bit in emulation; to ``1e-5`` relative in float32,
``1e-12`` in float64, on CUDA), else the run stays eager and says why.

The host reads back every ``sync_every`` steps (:meth:`StaticStep.flush`): the ring of
losses (appended to each model's ``train_loss``) and the ``bad`` record. A bad step is
then reported as the trainer reports it eagerly, naming the step and the model
(``FloatingPointError``), up to ``sync_every - 1`` steps later, with every model as it
was before the failing update (or, for a zero-norm decoder row, before the failing
projection). Dead-latent windows close on the host, which knows when ``window`` samples
have passed; the accumulators are read then.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from aensae.saes.dead import DeadTracker
from aensae.saes.training.graphs import Graph, GraphCaptureError, capture
from aensae.saes.training.stacked import (
    PATH_GRAPH,
    PATH_GRAPH_EMULATED,
    PATH_STACKED,
    StackedGroup,
    StackedOut,
    StackedTopK,
)

__all__ = ["GRAPH_CHOICES", "WARMUP_STEPS", "StaticStep", "resolve_graph_mode"]

#: ``TrainConfig.graph``: ``auto`` (CUDA graphs on a CUDA device, eager elsewhere),
#: ``off`` (eager), ``emulate`` (:class:`aensae.saes.training.graphs.EmulatedGraph`, any device).
GRAPH_CHOICES = ("auto", "off", "emulate")
#: Eager steps of a kind before its graph is captured.
WARMUP_STEPS = 2
#: Relative agreement of a CUDA graph's first replay with the eager step, by dtype.
_CHECK_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def resolve_graph_mode(graph: str, device: torch.device) -> str:
    """``eager``, ``cuda`` or ``emulate`` for ``TrainConfig.graph`` on ``device``."""
    if graph not in GRAPH_CHOICES:
        raise ValueError(f"graph must be one of {', '.join(GRAPH_CHOICES)}, got {graph!r}")
    if graph == "emulate":
        return "emulate"
    if graph == "auto" and device.type == "cuda":
        return "cuda"
    return "eager"


class _Staging:
    """Host batches into the static input ``x`` without a host wait on CUDA.

    A pageable host tensor copied to the device makes the host wait for the stream, so
    each batch is first copied into one of ``depth`` pinned buffers, then sent
    asynchronously; a buffer is reused once its last copy has finished.
    """

    def __init__(self, x: torch.Tensor, depth: int = 4) -> None:
        self.x = x
        self.cuda = x.device.type == "cuda"
        self.i = 0
        if self.cuda:
            self.pinned = [torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                           for _ in range(depth)]
            self.events: list[Any] = [None] * depth

    def put(self, X: torch.Tensor) -> None:
        if not self.cuda or X.device.type != "cpu":
            self.x.copy_(X)
            return
        j = self.i % len(self.pinned)
        self.i += 1
        if self.events[j] is not None:
            self.events[j].synchronize()
        self.pinned[j].copy_(X)
        self.x.copy_(self.pinned[j], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[j] = event


class StaticStep:
    """The step above for ``groups`` (every model of the run), eager or captured.

    Parameters
    ----------
    groups : list of (names, StackedGroup)
        Every model of the run, in groups (:func:`~aensae.saes.training.stacked.group_models`).
    adam : callable ``(lr, found_inf) -> None``
        One fused Adam step over every parameter of the groups (skipped where
        ``found_inf`` is 1).
    optimizer_state : callable ``() -> list of tensors``
        The optimizer's state tensors (moments, step counts), for the graph check.
    mode : ``eager``, ``cuda`` or ``emulate``
        :func:`resolve_graph_mode`.
    sync_every : int >= 1
        Steps between host reads (:meth:`flush`).
    grad_clip : float or None
    """

    def __init__(self, groups: Sequence[tuple[list[str], StackedGroup]],
                 adam: Callable[[float, torch.Tensor], None],
                 optimizer_state: Callable[[], list[torch.Tensor]], *, mode: str,
                 sync_every: int, grad_clip: float | None) -> None:
        self.groups = [g for _, g in groups]
        self.names = [n for names, _ in groups for n in names]
        self.models = [m for g in self.groups for m in g.models]
        self.adam = adam
        self.optimizer_state = optimizer_state
        self.mode = mode
        self.sync_every = sync_every
        self.grad_clip = grad_clip
        first = self.groups[0]
        self.device, self.dtype, self.d_in = first.device, first.dtype, first.d_in
        dev, G = self.device, len(self.models)
        self.bad = torch.zeros((), dtype=torch.bool, device=dev)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=dev)
        self.step_t = torch.zeros((), dtype=torch.int64, device=dev)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=dev)
        self.bad_batch = torch.zeros((), dtype=torch.int64, device=dev)
        self.bad_loss = torch.zeros(G, dtype=self.dtype, device=dev)
        self.bad_grad = torch.zeros(G, dtype=torch.bool, device=dev)
        self.bad_zero = torch.zeros(G, dtype=torch.int64, device=dev)
        self.ring = torch.zeros(sync_every, G, dtype=self.dtype, device=dev)
        self.slot = torch.zeros(1, dtype=torch.int64, device=dev)
        self.acc = [torch.zeros(len(g.models), g.d_sae, dtype=torch.bool, device=dev)
                    for g in self.groups]
        self.terms: list[dict[str, torch.Tensor]] = []
        self.aux_on: list[torch.Tensor | None] = []
        self.x: torch.Tensor | None = None
        self.staging: _Staging | None = None
        self.pending = 0
        self.graphs: dict[Any, Graph] = {}
        self.eager_of: Counter[Any] = Counter()
        self.path_steps: Counter[str] = Counter()
        self.note = ""
        self.loss_lists: list[list[float]] = []
        self.trackers: list[DeadTracker] = []
        self.aux_from: list[int | None] = []
        self._lr = 0.0
        self._aux: tuple[bool, ...] = ()
        self._prepared_for: int | None = None

    # ---------------------------------------------------------------- host side
    def prepare(self, step: int, loss_lists: Sequence[list[float]],
                trackers: Sequence[DeadTracker]) -> None:
        """(Re)start at trainer step ``step``: after construction or a loaded checkpoint.

        ``loss_lists`` and ``trackers`` are the models' ``train_loss`` lists and dead
        trackers, in the order of :attr:`names`; the trackers' open windows move into
        the device accumulators. Graphs made before are dropped (the optimizer state
        they point to may have been replaced).
        """
        self.loss_lists = list(loss_lists)
        self.trackers = list(trackers)
        self.graphs.clear()
        self.eager_of.clear()
        self.pending = 0
        with torch.no_grad():
            self.slot.zero_()
            self.bad.zero_()
            self.first_bad.fill_(-1)
            self.step_t.fill_(step)
            i = 0
            for acc in self.acc:
                for row in acc:
                    fired = self.trackers[i].fired
                    if fired is None:
                        row.fill_(False)
                    else:
                        row.copy_(fired)
                    i += 1
        for g in self.groups:
            g.attach_grads()
        self._prepared_for = step
        self.x = None  # the first step (re)makes the input and reads when AuxK can be on

    @property
    def prepared(self) -> bool:
        """Whether :meth:`prepare` ran since construction or :meth:`invalidate`."""
        return self._prepared_for is not None

    def invalidate(self) -> None:
        """Forget the preparation (the trainer loaded a checkpoint): :meth:`prepare` again."""
        self._prepared_for = None

    def run(self, X: torch.Tensor, step: int, lr: float, lr_final: bool) -> str:
        """Train step ``step`` on batch ``X`` with learning rate ``lr``; the path it took.

        ``lr_final``: the learning rate stays ``lr`` from this step on, so the step may be
        replayed from a graph. Flushes first when ``sync_every`` steps are pending.
        """
        if not self.prepared:
            raise RuntimeError("StaticStep.prepare() must run before the first step")
        if self.pending >= self.sync_every:
            self.flush()
        B = X.shape[0]
        if self.x is None or self.x.shape[0] != B:
            self._new_batch_size(B, step)
        assert self.staging is not None
        self.staging.put(X)
        self._lr = lr
        self._aux = tuple(a is not None and step >= a for a in self.aux_from)
        path = self._dispatch((B, self._aux), lr_final)
        self.pending += 1
        self.path_steps[path] += 1
        self._count_samples(B)
        return path

    def _new_batch_size(self, B: int, step: int) -> None:
        """A static input of ``B`` rows; graphs of the old one are dropped (they read it)."""
        self.x = torch.zeros(B, self.d_in, dtype=self.dtype, device=self.device)
        self.staging = _Staging(self.x)
        self.graphs.clear()
        self.eager_of.clear()
        self.aux_from = []
        for g in self.groups:
            after = g.aux_possible_after(B) if isinstance(g, StackedTopK) else None
            self.aux_from.append(None if after is None else step + after)
        if self.terms:
            return
        for g in self.groups:  # the term buffers: one (G,) tensor per loss part
            self.terms.append({k: torch.zeros(len(g.models), dtype=g.dtype, device=g.device)
                               for k in g.TERMS})
            self.aux_on.append(torch.zeros(len(g.models), dtype=torch.bool,
                                           device=self.device)
                               if isinstance(g, StackedTopK) else None)

    def _dispatch(self, key: Any, lr_final: bool) -> str:
        eager_path = PATH_STACKED
        if self.mode == "eager" or not lr_final:
            self._eager()
            return eager_path
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
            return self._graph_path
        if self.eager_of[key] < WARMUP_STEPS:
            self.eager_of[key] += 1
            self._eager(side_stream=self.mode == "cuda")
            return eager_path
        return self._capture_and_check(key)

    @property
    def _graph_path(self) -> str:
        return PATH_GRAPH if self.mode == "cuda" else PATH_GRAPH_EMULATED

    def _eager(self, side_stream: bool = False) -> None:
        if not side_stream:
            self._body()
            return
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self._body()
        main.wait_stream(side)

    def _state(self) -> list[torch.Tensor]:
        own = [self.bad, self.found_inf, self.step_t, self.first_bad, self.bad_batch,
               self.bad_loss, self.bad_grad, self.bad_zero, self.ring, self.slot, *self.acc,
               *(t for d in self.terms for t in d.values()),
               *(t for t in self.aux_on if t is not None)]
        return [t for g in self.groups for t in g.state_tensors()] + \
            list(self.optimizer_state()) + own

    def _capture_and_check(self, key: Any) -> str:
        """Capture the step of kind ``key``, check its first replay against the eager
        step from the same state, and keep it if they agree; the path this step took."""
        pool_of = next(iter(self.graphs.values()), None)
        try:
            graph = capture(self._body, self.mode, self.device, pool_of)
        except GraphCaptureError as err:
            self._give_up(f"graph capture failed ({err}); the step runs eagerly")
            self._eager()
            return PATH_STACKED
        state = self._state()
        with torch.no_grad():
            start = [t.clone() for t in state]
            self._body()
            eager = [t.clone() for t in state]
            for t, s in zip(state, start, strict=True):
                t.copy_(s)
            graph.replay()
            worst = self._disagreement(state, eager)
        if worst is not None:
            with torch.no_grad():
                for t, e in zip(state, eager, strict=True):
                    t.copy_(e)
            self._give_up(f"the captured step differed from the eager step ({worst}); "
                          "the step runs eagerly")
            return PATH_STACKED
        self.graphs[key] = graph
        return self._graph_path

    def _disagreement(self, got: list[torch.Tensor], want: list[torch.Tensor]) -> str | None:
        """``None`` when the replayed state agrees with the eager one, else how not."""
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            if torch.equal(a, b):
                continue
            if self.mode == "emulate" or not a.is_floating_point():
                return f"state tensor {i} {tuple(a.shape)} {a.dtype} not equal"
            rtol = _CHECK_RTOL.get(a.dtype, 1e-5)
            scale = float(b.abs().amax()) if b.numel() else 0.0
            diff = float((a - b).abs().amax())
            if not diff <= rtol * max(scale, 1.0):
                return f"state tensor {i} {tuple(a.shape)}: max |diff| {diff:.3g}"
        return None

    def _give_up(self, why: str) -> None:
        self.note = why
        self.mode = "eager"
        self.graphs.clear()

    def _count_samples(self, B: int) -> None:
        full = [t.add_samples(B) for t in self.trackers]
        if not any(full):
            return
        self.flush()
        counts = torch.cat([acc.sum(1) for acc in self.acc]).tolist()
        i = 0
        with torch.no_grad():
            for acc in self.acc:
                for row in acc:
                    if full[i]:
                        self.trackers[i].close_window(int(counts[i]))
                        row.zero_()
                    i += 1

    def flush(self) -> None:
        """Read the pending steps back: losses into ``train_loss``, and raise
        ``FloatingPointError`` naming the step and model if a step was bad."""
        n, self.pending = self.pending, 0
        header = torch.stack([self.bad.to(torch.int64), self.first_bad]).tolist()
        rows = self.ring[:n].tolist() if n else []
        with torch.no_grad():
            self.slot.zero_()
        if header[0]:
            raise self._error(int(header[1]))
        for row in rows:
            for losses, value in zip(self.loss_lists, row, strict=True):
                losses.append(value)

    def _error(self, step: int) -> FloatingPointError:
        n_bad = int(self.bad_batch)
        if n_bad:
            shape = tuple(self.x.shape) if self.x is not None else ()
            return FloatingPointError(f"batch at step {step} holds {n_bad} NaN/inf entries "
                                      f"(shape {shape})")
        losses = self.bad_loss.tolist()
        for name, m, value in zip(self.names, self.models, losses, strict=True):
            if not math.isfinite(value):
                return FloatingPointError(f"loss of model {name!r} ({m.arch}) is {value} at "
                                          f"step {step}; training stopped before the update")
        for name, m, bad in zip(self.names, self.models, self.bad_grad.tolist(), strict=True):
            if bad:
                return FloatingPointError(f"non-finite gradient of model {name!r} "
                                          f"({m.arch}) at step {step}")
        for m, zero in zip(self.models, self.bad_zero.tolist(), strict=True):
            if zero:
                return FloatingPointError(f"{zero} decoder row(s) of {m.arch} have zero "
                                          "norm; they cannot be projected onto the unit "
                                          "sphere")
        return FloatingPointError(f"step {step} failed (no cause recorded)")

    def last_terms(self) -> dict[str, dict[str, float]]:
        """The loss terms of the last good step, per model (``aux`` where it was on)."""
        out: dict[str, dict[str, float]] = {}
        i = 0
        for g, terms, aux_on in zip(self.groups, self.terms, self.aux_on, strict=True):
            values = {k: v.tolist() for k, v in terms.items()}
            on = aux_on.tolist() if aux_on is not None else None
            for j in range(len(g.models)):
                out[self.names[i]] = {k: float(v[j]) for k, v in values.items()
                                      if k != "aux" or (on is not None and on[j])}
                i += 1
        return out

    def sync_trackers(self) -> None:
        """Put the open windows' fired latents into the trackers (before saving them)."""
        i = 0
        for acc in self.acc:
            for row in acc:
                t = self.trackers[i]
                t.fired = row.detach().clone() if t.samples else None
                i += 1

    # ---------------------------------------------------------------- device side
    def _clip(self, g: StackedGroup) -> torch.Tensor:
        """Scale each model's gradients to norm <= ``grad_clip``; their norms (G,)."""
        grads = list(g.grads.values())
        norms = torch.stack([torch.linalg.vector_norm(t.flatten(1), dim=1) for t in grads], 1)
        total = torch.linalg.vector_norm(norms, dim=1)
        coef = (self.grad_clip / (total + 1e-6)).clamp_max(1.0)
        for t in grads:
            t.mul_(coef.view(-1, *([1] * (t.ndim - 1))))
        return total

    def _body(self) -> None:
        """One step (see the module docstring); device work only."""
        x = self.x
        assert x is not None
        B = x.shape[0]
        outs: list[StackedOut] = [g.forward_backward(x, aux=a) for g, a in
                                  zip(self.groups, self._aux, strict=True)]
        with torch.no_grad():
            loss = torch.cat([o.loss for o in outs])
            now_bad = (~torch.isfinite(loss)).any()
            if self.grad_clip is not None:
                gbad = ~torch.isfinite(torch.cat([self._clip(g) for g in self.groups]))
                now_bad = now_bad | gbad.any()
            new = now_bad & ~self.bad
            self.first_bad.copy_(torch.where(new, self.step_t, self.first_bad))
            self.bad_batch.copy_(torch.where(new, (~torch.isfinite(x)).sum(), self.bad_batch))
            self.bad_loss.copy_(torch.where(new, loss, self.bad_loss))
            if self.grad_clip is not None:
                self.bad_grad.copy_(torch.where(new, gbad, self.bad_grad))
            self.bad.logical_or_(now_bad)
            self.found_inf.copy_(self.bad)
        self.adam(self._lr, self.found_inf)
        with torch.no_grad():
            norms = [g.decoder_norms() for g in self.groups]
            zero = torch.cat([(nm == 0).sum((1, 2)) for nm in norms])
            znew = (zero > 0).any() & ~self.bad
            self.first_bad.copy_(torch.where(znew, self.step_t, self.first_bad))
            self.bad_zero.copy_(torch.where(znew, zero, self.bad_zero))
            self.bad.logical_or_(znew)
            skip = self.bad
            for g, nm, o, acc, terms, aux_on in zip(self.groups, norms, outs, self.acc,
                                                    self.terms, self.aux_on, strict=True):
                g.project_decoders_unless(skip, nm)
                g.update_buffers(o, B, skip)
                acc.logical_or_(o.fired & ~skip)
                for k, t in terms.items():
                    t.copy_(torch.where(skip, t, o.terms[k]))
                if aux_on is not None:
                    aux_on.copy_(torch.where(skip, aux_on, o.stats["aux_on"]))
            self.ring.index_copy_(0, self.slot, loss.unsqueeze(0))
            self.slot.add_(1)
            self.step_t.add_(1)
