r"""Forward and backward of several SAEs of one family at once, with batched products.

For ``G`` models of one family and equal shape, trained on the same batch ``x`` (B, n),
each model's loss and gradients are evaluated for all models together. The parameters
(and the buffers the loss reads) are stacked into ``(G, ...)`` tensors and every model's
own tensors become views of them, so the per-model optimizer state, ``after_step`` and
checkpoints keep working unchanged (the decoder projection runs once per group,
:meth:`StackedGroup.project_decoders`); the matrix products of each model
become batched products (``torch.baddbmm`` / ``torch.bmm``), one kernel call each for the
whole group. Hyperparameters that differ between the models (``l1``, ``l2``, ``k_top``,
``aux_k``, ``l0``, ``bandwidth`` ...) are ``(G,)`` tensors.

Shared by every family, with ``xc = x - b_dec_g`` (G, B, n)::

    pre   = xc @ W_enc_g + b_enc_g                        (G, B, m)
    h     = act_g(pre);  x_hat = h @ W_dec_g + b_dec_g;  r = x_hat - x;  g = 2 r / (B n)
    mse_g = sum_{b,d} r^2 / (B n);   dh = g W_dec_g^T (+ penalty terms)
    dW_dec_g = h^T g;  dpre = dh * act_g'(pre);  dW_enc_g = xc^T dpre;  db_enc_g = sum_b dpre
    db_dec_g = sum_b g - W_enc_g db_enc_g

The families and their activation derivatives (``[.]`` is the indicator):

- ``relu`` (relu_l1, elastic_net, adaptive_lasso, aen -- :mod:`aensae.saes.relu_l1`):
  ``h = relu(pre)``, ``dh += (l1_g / B) w_g + (2 l2_g / B) h``, ``dpre = dh [h > 0]``; the
  adaptive models' l1 weights ``w_g`` come from each model's own EMA state.
- ``topk``: ``h`` keeps the ``k_g`` largest entries of each row of ``pre``, rectified;
  ``dpre = dh [kept and pre > 0]``. Per-model ``k_g``: the ``max_g k_g`` largest are found
  once (sorted) and ranks ``>= k_g`` masked. AuxK (``aux_k_g > 0`` and dead latents): with
  ``e = x - x_hat`` (no gradient), ``h_aux`` the rectified top ``min(aux_k_g, n_dead_g)``
  of ``pre`` among the dead latents, ``e_hat = h_aux W_dec_g``, ``den = mean_b ||e_b -
  mean_b e||^2``, ``aux = mean_b ||e_b - e_hat_b||^2 / den``, and with
  ``ga = -2 c_g (e - e_hat) / (B den)`` (``c_g = aux_coeff_g``)::

      dW_dec_g += h_aux^T ga;   dpre += (ga W_dec_g^T) [aux-kept and pre > 0]

- ``batchtopk``: ``h`` keeps the ``min(k_g B, B m)`` largest entries of ``relu(pre)`` over
  the whole batch; ``dpre = dh [kept and pre > 0]``; the smallest kept positive value
  feeds each model's threshold EMA.
- ``jumprelu``: ``theta = exp(log_threshold_g)``, ``h = pre [pre > theta]``,
  ``K = [|pre - theta| < eps_g / 2]``, ``dpre = dh [pre > theta]`` and the
  straight-through threshold gradient of :mod:`aensae.saes.jumprelu`::

      dtheta = -(theta / eps_g) sum_b dh K - (l0_g / (B eps_g)) sum_b K
      dlog_threshold_g = theta * dtheta

The result equals each model's own ``compute_grads`` (the hand-derived backward of the ReLU
family, autograd for the others) up to floating-point rounding: batched and single
products may sum in a different order. Tests bound the difference for every
architecture, for one step and for whole trainings.

Two ways in. :meth:`StackedGroup.forward_backward` is the batched forward and backward
alone: every output a ``(G, ...)`` tensor, no value read back to the host, no tensor made
from host data, so it can run inside a captured CUDA graph; the buffer updates of
``after_step`` are batched the same way (:meth:`StackedGroup.update_buffers`, masked by a
device flag) and so is the decoder projection (:meth:`StackedGroup.project_decoders_unless`).
:class:`aensae.saes.training.static_step.StaticStep` builds a whole training step from these
pieces. :meth:`StackedGroup.compute_grads` wraps the same forward and backward into one
:class:`~aensae.saes.base.LossOutput` per model, for a run that also trains models
outside any group (then each model's own ``after_step`` runs, and the trainer checks
every loss on the host before the update).

Host-known switches are Python arguments, not device branches: ``aux`` (whether AuxK is
computed at all: before any latent can have been silent for ``dead_samples`` samples it
is provably off, and the trainer knows when that point comes). Everything that depends
on device values (which models' AuxK is on, the adaptive ramp, BatchTopK's first
threshold) is computed with ``torch.where`` on device tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from aensae.objective import ref_count
from aensae.saes.adaptive_lasso import AdaptiveLassoSAE
from aensae.saes.aen import AENSAE
from aensae.saes.base import SAE, LossOutput, check_batch
from aensae.saes.batchtopk import BatchTopKSAE
from aensae.saes.elastic_net import ElasticNetSAE
from aensae.saes.jumprelu import JumpReLUSAE
from aensae.saes.relu_l1 import ReluL1SAE
from aensae.saes.topk import TopKSAE

__all__ = ["PATHS", "PATH_GRAPH", "PATH_GRAPH_EMULATED", "PATH_SEPARATE", "PATH_STACKED",
           "StackedBatchTopK", "StackedGroup", "StackedJumpReLU", "StackedOut", "StackedReLU",
           "StackedTopK", "family_of", "group_models", "stack_models", "stackable",
           "step_path"]

#: ``ModelResult.path`` of a model trained with its own products.
PATH_SEPARATE = "separate"
#: ``ModelResult.path`` of a model whose stacked group ran eagerly (kernel by kernel).
PATH_STACKED = "stacked-eager"
#: ``ModelResult.path`` of a model whose stacked step was replayed from a CUDA graph.
PATH_GRAPH = "stacked-graph"
#: ``ModelResult.path`` of a model whose stacked step was replayed by the CPU stand-in for
#: CUDA graphs (:class:`aensae.saes.training.graphs.EmulatedGraph`), for tests without a GPU.
PATH_GRAPH_EMULATED = "stacked-graph-emulated"
#: Every path a step can take.
PATHS = (PATH_SEPARATE, PATH_STACKED, PATH_GRAPH, PATH_GRAPH_EMULATED)

#: The ReLU family, exact classes: a subclass may change the loss or ``after_step``, which
#: the stacked formulas and :meth:`StackedGroup.update_buffers` would not follow.
_RELU_CLASSES = (ReluL1SAE, ElasticNetSAE, AdaptiveLassoSAE, AENSAE)


def family_of(model: object) -> str | None:
    """The stacked family of ``model`` (``relu``, ``topk``, ``batchtopk``, ``jumprelu``).

    Exact classes only (relu_l1, elastic_net, adaptive_lasso, aen; TopK, BatchTopK,
    JumpReLU): ``None`` for anything else, including subclasses, which may change the loss
    or the buffer updates the stacked formulas assume.
    """
    if type(model) in _RELU_CLASSES:
        return "relu"
    return {TopKSAE: "topk", BatchTopKSAE: "batchtopk",
            JumpReLUSAE: "jumprelu"}.get(type(model))  # type: ignore[call-overload]


def stackable(model: object) -> bool:
    """Whether ``model`` can join a stacked group (:func:`family_of` is not ``None``)."""
    return family_of(model) is not None


def step_path(stacked: bool) -> str:
    """The path a model starts on: :data:`PATH_STACKED` in a group, else separate.

    Whether a stacked group's step is then captured (:data:`PATH_GRAPH`) is decided by
    the trainer (:mod:`aensae.saes.training.static_step`), which records the path each step took.
    """
    return PATH_STACKED if stacked else PATH_SEPARATE


def _fired(h: torch.Tensor) -> torch.Tensor:
    """(G, m): latent fired in the batch, ``(max_b h > 0) | (min_b h < 0)`` (finite ``h``)."""
    return (h.amax(1) > 0) | (h.amin(1) < 0)


@dataclass
class StackedOut:
    """One batched forward and backward of a group: ``(G, ...)`` tensors on the device.

    Attributes
    ----------
    loss : (G,)
    terms : name -> (G,)
        The loss's parts (``mse``, ``l1``, ``l2``, ``aux``, ``l0``); ``aux`` is zero for a
        model whose AuxK is off (``stats["aux_on"]`` says which).
    x_hat : (G, B, n)
    h : (G, B, m)
    fired : (G, m) bool
        Latents with a non-zero code in the batch.
    stats : name -> tensor
        What the buffer updates read: ``mean_abs_h`` (G, m) of the ReLU family,
        ``min_kept`` (G,) of BatchTopK (``inf`` where nothing was kept), ``aux_on`` (G,)
        bool of TopK.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    x_hat: torch.Tensor
    h: torch.Tensor
    fired: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class StackedGroup:
    """Batched loss and gradients of SAEs of one family sharing ``d_in``, ``d_sae``, dtype.

    Construction re-seats every model's parameters (and the family's :attr:`BUFFERS`) as
    views of stacked tensors (values unchanged) and their gradients as views of stacked
    gradient buffers (:meth:`attach_grads`). Subclasses implement
    :meth:`_forward_backward` and, where the family has buffers, :meth:`update_buffers`.
    Every per-model constant a step reads is a device tensor made here, once.
    """

    family: ClassVar[str] = ""
    PARAMS: ClassVar[tuple[str, ...]] = ("W_enc", "W_dec", "b_enc", "b_dec")
    BUFFERS: ClassVar[tuple[str, ...]] = ()
    #: The loss terms of :attr:`StackedOut.terms`.
    TERMS: ClassVar[tuple[str, ...]] = ("mse",)

    def __init__(self, models: Sequence[SAE]) -> None:
        if len(models) == 0:
            raise ValueError(f"{type(self).__name__} needs at least one model")
        for i, m in enumerate(models):
            if family_of(m) != self.family:
                raise TypeError(f"models[{i}] ({type(m).__name__}) does not belong to the "
                                f"stacked family {self.family!r}")
        first = models[0]
        keys = {(m.d_in, m.d_sae, m.W_dec.dtype, m.W_dec.device) for m in models}
        if len(keys) != 1:
            raise ValueError(f"stacked models must share d_in, d_sae, dtype and device, got "
                             f"{sorted(map(str, keys))}")
        self.models = list(models)
        self.d_in, self.d_sae = first.d_in, first.d_sae
        self.dtype, self.device = first.W_dec.dtype, first.W_dec.device
        self.params: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        for name in self.PARAMS + self.BUFFERS:
            self.params[name] = self._stack_attr(self.models, name)
            if name in self.PARAMS:
                self.grads[name] = torch.zeros_like(self.params[name])

    @staticmethod
    def _stack_attr(models: Sequence[SAE], name: str) -> torch.Tensor:
        """Stack attribute ``name`` of ``models`` and make each model's tensor a view of it."""
        stacked = torch.stack([getattr(m, name).detach() for m in models])
        for i, m in enumerate(models):
            getattr(m, name).data = stacked[i]
        return stacked

    def hyper(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(G,) tensor of hyperparameter ``name`` of every model (parameter dtype)."""
        return torch.tensor([float(m.hyper[name]) for m in self.models],
                            dtype=dtype or self.dtype, device=self.device)

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor a training step of the group changes (stacked parameters, their
        gradients, buffers), for saving and restoring a step (graph checks)."""
        return list(self.params.values()) + list(self.grads.values())

    def attach_grads(self) -> None:
        """Make every model's ``.grad`` the view of its row of the stacked gradients."""
        for i, m in enumerate(self.models):
            for name in self.PARAMS:
                getattr(m, name).grad = self.grads[name][i]

    # -- the step's pieces -------------------------------------------------------
    def forward_backward(self, x: torch.Tensor, *, aux: bool = True) -> StackedOut:
        """Losses of ``x`` (B, d_in) for every model, gradients into the stacked buffers.

        No host reads: safe inside a CUDA graph capture. ``aux``: compute TopK's AuxK
        (ignored by the other families); pass ``False`` only when no latent can be dead
        yet, where AuxK is zero for every model.
        """
        with torch.no_grad():
            return self._forward_backward(x, aux)

    def update_buffers(self, out: StackedOut, batch: int, skip: torch.Tensor | None = None
                       ) -> None:
        """Every model's :meth:`~aensae.saes.base.SAE.after_step`, batched; ``skip`` (0-d
        bool, on the device): leave the buffers unchanged where it is true. None here."""

    def decoder_norms(self) -> torch.Tensor:
        """(G, m, 1) norms of every decoder row."""
        return torch.linalg.vector_norm(self.params["W_dec"], dim=2, keepdim=True)

    @torch.no_grad()
    def project_decoders_unless(self, skip: torch.Tensor, norms: torch.Tensor) -> None:
        """Divide every decoder row by its norm (``norms``, from :meth:`decoder_norms`),
        unless ``skip`` (0-d bool on the device): then divide by 1, leaving them exact."""
        self.params["W_dec"].div_(torch.where(skip, 1.0, norms))

    def compute_grads(self, x: torch.Tensor) -> list[LossOutput]:
        """Losses of ``x`` (B, d_in) for every model; gradients left in each ``.grad``.

        The per-model form of :meth:`forward_backward`, with the host reads it needs
        (which models' AuxK is on, whether BatchTopK kept anything). Off the CPU the
        losses come back to the host in one transfer (the trainer reads each as a float),
        instead of one synchronisation per model.
        """
        check_batch("x", x, self.d_in)
        out = self.forward_backward(x, aux=self._aux_needed())
        losses = out.loss.cpu() if self.device.type != "cpu" else out.loss
        outs = [LossOutput(losses[i], out.x_hat[i], out.h[i],
                           {k: v[i] for k, v in out.terms.items()}, {"fired": out.fired[i]})
                for i in range(len(self.models))]
        self._per_model_stats(out, outs)
        self.attach_grads()
        return outs

    def _aux_needed(self) -> bool:
        return False

    def _per_model_stats(self, out: StackedOut, outs: list[LossOutput]) -> None:
        """Fill each model's ``terms`` / ``stats`` from ``out`` as its own loss does."""

    @torch.no_grad()
    def project_decoders(self) -> None:
        """Every model's :meth:`~aensae.saes.base.SAE.project_decoder`, as one batched
        projection of the stacked decoders (one host read for the zero-norm check)."""
        W_dec = self.params["W_dec"]
        norms = self.decoder_norms()
        if float(norms.amin()) == 0.0:
            bad = (norms == 0).sum((1, 2)).tolist()
            i = next(j for j, b in enumerate(bad) if b)
            raise FloatingPointError(f"{bad[i]} decoder row(s) of {self.models[i].arch} have "
                                     "zero norm; they cannot be projected onto the unit "
                                     "sphere")
        W_dec.div_(norms)

    # -- shared pieces ---------------------------------------------------------
    def _pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(xc, pre)``: centred inputs (G, B, n) and pre-activations (G, B, m)."""
        P = self.params
        xc = x.unsqueeze(0) - P["b_dec"].unsqueeze(1)
        return xc, torch.baddbmm(P["b_enc"].unsqueeze(1), xc, P["W_enc"])

    def _decode(self, x: torch.Tensor, h: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_hat, mse (G,), g = 2 (x_hat - x) / (B n))``; ``dW_dec`` gets ``h^T g``."""
        B, n = x.shape
        P = self.params
        x_hat = torch.baddbmm(P["b_dec"].unsqueeze(1), h, P["W_dec"])
        r = x_hat - x
        mse = (r * r).sum((1, 2)) / (B * n)
        g = r.mul_(2.0 / (B * n))
        torch.bmm(h.transpose(1, 2), g, out=self.grads["W_dec"])
        return x_hat, mse, g

    def _encoder_grads(self, xc: torch.Tensor, g: torch.Tensor, dpre: torch.Tensor) -> None:
        """``dW_enc = xc^T dpre``, ``db_enc = sum_b dpre``, ``db_dec = sum_b g - W_enc db_enc``."""
        Gr = self.grads
        torch.bmm(xc.transpose(1, 2), dpre, out=Gr["W_enc"])
        torch.sum(dpre, 1, out=Gr["b_enc"])
        torch.sub(g.sum(1), torch.bmm(self.params["W_enc"], Gr["b_enc"].unsqueeze(2)
                                      ).squeeze(2), out=Gr["b_dec"])

    def _forward_backward(self, x: torch.Tensor, aux: bool) -> StackedOut:
        raise NotImplementedError


def _uniform(values: Sequence[float]) -> bool:
    return len(set(values)) == 1


class StackedReLU(StackedGroup):
    """The ReLU family: relu_l1, elastic_net, adaptive_lasso, aen (l1 + l2 penalties).

    The adaptive models' buffers (``ema`` (d_sae,), ``step``) are stacked too, over the
    adaptive models alone, and their weights computed for all of them at once::

        ref_g   = mean of the ceil(top_p_g m) largest entries of ema_g
        w_pop_g = clip((ref_g / ema_g)^gamma_g, w_min_g, w_max_g)
        alpha_g = 0 if step_g < warmup_g, else min(1, (step_g - warmup_g) / ramp_g)
        w_g     = 1 + alpha_g (w_pop_g - 1)

    (:func:`aensae.objective.population_weights`, :func:`~aensae.objective.ramp_factor`,
    :func:`~aensae.objective.blend_weights`), then ``ema_g <- beta_g ema_g + (1 - beta_g)
    mean_b h_bg`` and ``step_g += 1`` after the step. A hyperparameter equal for all
    adaptive models stays a Python number, as in each model's own formulas.
    """

    family: ClassVar[str] = "relu"
    TERMS: ClassVar[tuple[str, ...]] = ("mse", "l1", "l2")

    def __init__(self, models: Sequence[ReluL1SAE]) -> None:
        super().__init__(models)
        self.l1 = torch.tensor([m.l1 for m in self.models], dtype=self.dtype,
                               device=self.device)
        self.l2 = torch.tensor([m.l2 for m in self.models], dtype=self.dtype,
                               device=self.device)
        self.any_l2 = bool((self.l2 != 0).any())
        self.ones = torch.ones(len(self.models), self.d_sae, dtype=self.dtype,
                               device=self.device)
        self.adaptive = [isinstance(m, AdaptiveLassoSAE) for m in self.models]
        ad = [m for m, a in zip(self.models, self.adaptive, strict=True) if a]
        self.n_adaptive = len(ad)
        if ad:
            self._init_adaptive(ad)

    def _init_adaptive(self, ad: list[AdaptiveLassoSAE]) -> None:
        dev, dt = self.device, self.dtype
        self.ema = self._stack_attr(ad, "ema")
        self.step = self._stack_attr(ad, "step")
        # a view of every model's hold: a checkpoint loaded into the models updates it
        self.hold = self._stack_attr(ad, "hold")
        self.ad_index = torch.tensor([i for i, a in enumerate(self.adaptive) if a],
                                     device=dev)
        hp = [m.hyper for m in ad]

        def col(name: str, dtype: torch.dtype = dt) -> torch.Tensor:
            return torch.tensor([float(h[name]) for h in hp], dtype=dtype,
                                device=dev).unsqueeze(1)

        def scalar_or_col(name: str) -> float | torch.Tensor:
            vals = [float(h[name]) for h in hp]
            return vals[0] if _uniform(vals) else col(name)

        self.gamma = scalar_or_col("gamma")
        self.w_min = scalar_or_col("w_min")
        self.w_max = scalar_or_col("w_max")
        self.beta = col("beta")
        # 1 - beta in Python's double, then rounded, as update_ema computes it
        self.one_minus_beta = torch.tensor([1.0 - float(h["beta"]) for h in hp], dtype=dt,
                                           device=dev).unsqueeze(1)
        m = self.d_sae
        self.k_ref = [ref_count(float(h["top_p"]), m, str(h["ref_count"])) for h in hp]
        self.k_ref_max = max(self.k_ref)
        self.k_ref_uniform = _uniform(self.k_ref)
        if not self.k_ref_uniform:
            self.ref_mask = (torch.arange(self.k_ref_max, device=dev).unsqueeze(0)
                             < torch.tensor(self.k_ref, device=dev).unsqueeze(1)).to(dt)
            self.ref_count = torch.tensor(self.k_ref, dtype=dt, device=dev).unsqueeze(1)
        # models whose EMA takes the batch before the step's weights (ema_update)
        before = [h["ema_update"] == "before" for h in hp]
        self.ema_before: bool | torch.Tensor = (
            before[0] if _uniform(before) else torch.tensor(before, device=dev).unsqueeze(1))
        ramp = [float(h["ramp_steps"]) for h in hp]
        self.ramp_zero = torch.tensor([r == 0 for r in ramp], device=dev)
        self.ramp_len = torch.tensor([max(r, 1.0) for r in ramp], dtype=torch.float64,
                                     device=dev)

    def state_tensors(self) -> list[torch.Tensor]:
        extra = [self.ema, self.step] if self.n_adaptive else []
        return super().state_tensors() + extra

    def _next_ema(self, mean_abs: torch.Tensor) -> torch.Tensor:
        """(G_adaptive, d_sae) ``beta ema + (1 - beta) mean_b |h_b|`` (all models' rows)."""
        if self.n_adaptive != len(self.models):
            mean_abs = mean_abs.index_select(0, self.ad_index)
        return self.beta * self.ema + self.one_minus_beta * mean_abs

    def _adaptive_weights(self, ema: torch.Tensor) -> torch.Tensor:
        """(G_adaptive, d_sae) l1 weights of the adaptive models from ``ema`` (the EMA the
        step's weights use), from device state only."""
        vals = torch.topk(ema, self.k_ref_max, dim=-1).values
        if self.k_ref_uniform:
            ref = vals.mean(-1, keepdim=True)
        else:
            ref = (vals * self.ref_mask).sum(-1, keepdim=True) / self.ref_count
        ratio = torch.where(ema > 0, ref / ema.clamp_min(torch.finfo(ema.dtype).tiny),
                            torch.where(ref > 0, torch.full_like(ema, torch.inf),
                                        torch.zeros_like(ema)))
        w_pop = (ratio ** self.gamma).clamp(self.w_min, self.w_max)
        s = self.step.to(torch.float64)
        hold = self.hold.to(torch.float64)
        ramped = torch.where(self.ramp_zero, 1.0,
                             ((s - hold) / self.ramp_len).clamp_max(1.0))
        alpha = torch.where(s < hold, 0.0, ramped).to(self.dtype).unsqueeze(1)
        return 1.0 + alpha * (w_pop - 1.0)

    def _weights(self, mean_abs: torch.Tensor) -> torch.Tensor:
        """(G, d_sae) l1 weights of every model (ones where a model has none) for a batch
        with ``mean_b |h_b|`` = ``mean_abs`` (G, d_sae); the EMA the adaptive models'
        weights used is kept for :meth:`update_buffers` (``ema_update``)."""
        if not self.n_adaptive:
            return self.ones
        nxt = self._next_ema(mean_abs)
        if self.ema_before is True:
            ema = nxt
        elif self.ema_before is False:
            ema = self.ema
        else:
            ema = torch.where(self.ema_before, nxt, self.ema)
        self._ema_next = nxt
        w = self._adaptive_weights(ema)
        if self.n_adaptive == len(self.models):
            return w
        return self.ones.index_copy(0, self.ad_index, w)

    def _forward_backward(self, x: torch.Tensor, aux: bool) -> StackedOut:
        B = x.shape[0]
        W_dec = self.params["W_dec"]
        xc, pre = self._pre(x)
        h = pre.relu_()
        x_hat, mse, g = self._decode(x, h)
        h_sum = h.sum(1)
        w = self._weights(h_sum / B)
        l1_term = self.l1 * (h_sum * w).sum(1) / B
        l1_vec = (w * (self.l1 / B).unsqueeze(1)).unsqueeze(1)
        dh = torch.baddbmm(l1_vec, g, W_dec.transpose(1, 2))
        if self.any_l2:
            l2_term = self.l2 * (h * h).sum((1, 2)) / B
            dh.addcmul_(h, (2.0 * self.l2 / B).view(-1, 1, 1))
        else:
            l2_term = torch.zeros_like(mse)
        dpre = torch.ops.aten.threshold_backward.grad_input(dh, h, 0, grad_input=dh)
        self._encoder_grads(xc, g, dpre)
        return StackedOut(mse + l1_term + l2_term, {"mse": mse, "l1": l1_term, "l2": l2_term},
                          x_hat, h, h_sum > 0, {"mean_abs_h": h_sum / B})

    def _per_model_stats(self, out: StackedOut, outs: list[LossOutput]) -> None:
        for i, o in enumerate(outs):
            o.stats["mean_abs_h"] = out.stats["mean_abs_h"][i]

    @torch.no_grad()
    def update_buffers(self, out: StackedOut, batch: int, skip: torch.Tensor | None = None
                       ) -> None:
        """``ema <- beta ema + (1 - beta) mean_b |h_b|`` and ``step += 1`` of the adaptive
        models (:meth:`AdaptiveLassoSAE.after_step`), unless ``skip``."""
        if not self.n_adaptive:
            return
        new = self._ema_next  # the EMA of this step's batch, from _weights
        if skip is None:
            self.ema.copy_(new)
            self.step.add_(1)
        else:
            self.ema.copy_(torch.where(skip, self.ema, new))
            self.step.add_((~skip).to(self.step.dtype))


def _top_entries(values: torch.Tensor, k: list[int], k_t: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(vals, idx, in_rank)``: the ``max(k)`` largest entries of each row of ``values``
    (G, ..., L) and whether each lies within its model's own ``k[g]`` largest.

    With one ``k`` for all models the entries come unsorted (faster) and all are in rank;
    otherwise ``k_t`` is the (G, 1, ..., 1) device tensor of ``k``, rank positions are
    ``arange(max k)``, and the entries come sorted.
    """
    kmax = max(k)
    if min(k) == kmax:
        vals, idx = values.topk(kmax, dim=-1, sorted=False)
        return vals, idx, torch.ones_like(vals, dtype=torch.bool)
    vals, idx = values.topk(kmax, dim=-1, sorted=True)
    assert k_t is not None
    return vals, idx, torch.arange(kmax, device=values.device) < k_t


def _rank_limit(k: list[int], ndim: int, device: torch.device) -> torch.Tensor | None:
    """The device tensor ``k_t`` of :func:`_top_entries` (``None`` when all ``k`` agree)."""
    if min(k) == max(k):
        return None
    return torch.tensor(k, device=device).view(-1, *([1] * (ndim - 1)))


def _scatter(like: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor, keep: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (``vals`` where ``keep`` at ``idx``, zeros elsewhere) and the kept mask."""
    h = torch.zeros_like(like).scatter_(-1, idx, torch.where(keep, vals, 0.0))
    mask = torch.zeros_like(like, dtype=torch.bool).scatter_(-1, idx, keep)
    return h, mask


class StackedTopK(StackedGroup):
    """TopK models (per-model ``k_top``, optional AuxK with per-model ``aux_k``)."""

    family: ClassVar[str] = "topk"
    BUFFERS: ClassVar[tuple[str, ...]] = ("samples_since_fired",)
    TERMS: ClassVar[tuple[str, ...]] = ("mse", "aux")

    def __init__(self, models: Sequence[TopKSAE]) -> None:
        super().__init__(models)
        self.k = [int(m.hyper["k_top"]) for m in self.models]
        self.k_t = _rank_limit(self.k, 3, self.device)
        self.aux_k = torch.tensor([int(m.hyper["aux_k"]) for m in self.models],
                                  device=self.device)
        self.aux_kmax = int(self.aux_k.max())
        self.aux_rank = torch.arange(max(self.aux_kmax, 1), device=self.device)
        self.dead_samples = torch.tensor([int(m.hyper["dead_samples"]) for m in self.models],
                                         device=self.device)
        self.aux_coeff = self.hyper("aux_coeff")

    def aux_possible_after(self, batch: int) -> int | None:
        """Steps from now after which a latent may have been silent for ``dead_samples``
        samples (AuxK can be on), or ``None`` when no model has AuxK. One host read."""
        if self.aux_kmax == 0:
            return None
        since = self.params["samples_since_fired"].amax(1).cpu().tolist()
        return max(0, min(-(-(int(m.hyper["dead_samples"]) - s) // batch)
                          for m, s in zip(self.models, since, strict=True)
                          if int(m.hyper["aux_k"]) > 0))

    def _aux_needed(self) -> bool:
        if self.aux_kmax == 0:
            return False
        dead = self.params["samples_since_fired"] >= self.dead_samples.unsqueeze(1)
        return bool(((self.aux_k > 0) & dead.any(1)).any())

    def _forward_backward(self, x: torch.Tensor, aux: bool) -> StackedOut:
        W_dec = self.params["W_dec"]
        xc, pre = self._pre(x)
        vals, idx, keep = _top_entries(pre, self.k, self.k_t)
        keep = keep & (vals > 0)
        h, mask = _scatter(pre, idx, vals, keep)
        x_hat, mse, g = self._decode(x, h)
        dpre = torch.bmm(g, W_dec.transpose(1, 2)).mul_(mask)
        loss = mse
        aux_value = torch.zeros_like(mse)
        aux_on = torch.zeros(len(self.models), dtype=torch.bool, device=self.device)
        if aux and self.aux_kmax > 0:
            dead = self.params["samples_since_fired"] >= self.dead_samples.unsqueeze(1)
            k_aux = torch.minimum(self.aux_k, dead.sum(1))
            aux_on = k_aux > 0
            aux_value, dpre_aux = self._auxk(x, x_hat, pre, dead, k_aux)
            loss = loss + torch.where(aux_on, self.aux_coeff * aux_value, 0.0)
            dpre.add_(dpre_aux)
        self._encoder_grads(xc, g, dpre)
        return StackedOut(loss, {"mse": mse, "aux": aux_value}, x_hat, h, _fired(h),
                          {"aux_on": aux_on})

    def _per_model_stats(self, out: StackedOut, outs: list[LossOutput]) -> None:
        on = out.stats["aux_on"].tolist()
        for i, o in enumerate(outs):
            if not on[i]:
                del o.terms["aux"]

    def _auxk(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor,
              dead: torch.Tensor, k_aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """AuxK values (G,) and their ``dpre`` (G, B, m); adds its part of ``dW_dec``.

        Models with ``k_aux = 0`` get zero gradients (their value is not used).
        """
        B = x.shape[0]
        W_dec = self.params["W_dec"]
        e = x - x_hat
        masked = torch.where(dead.unsqueeze(1), pre, -torch.inf)
        kmax = self.aux_kmax
        avals, aidx = masked.topk(kmax, dim=-1, sorted=True)
        akeep = (self.aux_rank < k_aux.view(-1, 1, 1)) & (avals > 0)
        h_aux, amask = _scatter(pre, aidx, avals, akeep)
        d = e - torch.bmm(h_aux, W_dec)
        den = ((e - e.mean(1, keepdim=True)) ** 2).sum(-1).mean(1).clamp_min(
            torch.finfo(e.dtype).tiny)
        aux = (d * d).sum(-1).mean(1) / den
        scale = torch.where(k_aux > 0, -2.0 * self.aux_coeff / (B * den), 0.0)
        ga = d.mul_(scale.view(-1, 1, 1))
        self.grads["W_dec"].baddbmm_(h_aux.transpose(1, 2), ga)
        return aux, torch.bmm(ga, W_dec.transpose(1, 2)).mul_(amask)

    @torch.no_grad()
    def update_buffers(self, out: StackedOut, batch: int, skip: torch.Tensor | None = None
                       ) -> None:
        """``samples_since_fired``: 0 for the latents that fired, ``+ batch`` for the others
        (:meth:`TopKSAE.after_step`), unless ``skip``."""
        since = self.params["samples_since_fired"]
        new = (since + batch).masked_fill_(out.fired, 0)
        since.copy_(new if skip is None else torch.where(skip, since, new))


class StackedBatchTopK(StackedGroup):
    """BatchTopK models (per-model ``k_top``), in training mode; thresholds stacked (G,)."""

    family: ClassVar[str] = "batchtopk"
    BUFFERS: ClassVar[tuple[str, ...]] = ("threshold",)

    def __init__(self, models: Sequence[BatchTopKSAE]) -> None:
        super().__init__(models)
        self.k = [int(m.hyper["k_top"]) for m in self.models]
        self._k_flat: dict[int, tuple[list[int], torch.Tensor | None]] = {}
        self.beta = self.hyper("threshold_beta")
        # 1 - beta in Python's double, then rounded, as BatchTopKSAE.after_step computes it
        self.one_minus_beta = torch.tensor(
            [1.0 - float(m.hyper["threshold_beta"]) for m in self.models], dtype=self.dtype,
            device=self.device)

    def _flat_k(self, B: int) -> tuple[list[int], torch.Tensor | None]:
        """Per-model ``min(k B, B m)`` and its device tensor, made once per batch size."""
        if B not in self._k_flat:
            k = [min(kk * B, B * self.d_sae) for kk in self.k]
            self._k_flat[B] = (k, _rank_limit(k, 2, self.device))
        return self._k_flat[B]

    def _forward_backward(self, x: torch.Tensor, aux: bool) -> StackedOut:
        B = x.shape[0]
        G, m = len(self.models), self.d_sae
        W_dec = self.params["W_dec"]
        xc, pre = self._pre(x)
        flat = pre.relu_().view(G, B * m)
        k, k_t = self._flat_k(B)
        vals, idx, keep = _top_entries(flat, k, k_t)
        keep = keep & (vals > 0)
        h_flat, mask = _scatter(flat, idx, vals, keep)
        h = h_flat.view(G, B, m)
        a_min = torch.where(keep, vals, torch.inf).amin(1)
        x_hat, mse, g = self._decode(x, h)
        dpre = torch.bmm(g, W_dec.transpose(1, 2)).mul_(mask.view(G, B, m))
        self._encoder_grads(xc, g, dpre)
        return StackedOut(mse, {"mse": mse}, x_hat, h, _fired(h), {"min_kept": a_min})

    def _per_model_stats(self, out: StackedOut, outs: list[LossOutput]) -> None:
        a_min = out.stats["min_kept"]
        has = torch.isfinite(a_min).tolist()
        for i, o in enumerate(outs):
            o.stats["min_kept"] = a_min[i] if has[i] else None

    @torch.no_grad()
    def update_buffers(self, out: StackedOut, batch: int, skip: torch.Tensor | None = None
                       ) -> None:
        """The threshold EMA of :meth:`BatchTopKSAE.after_step`: ``theta <- a_min`` at the
        first estimate (``theta < 0``), else ``theta beta + (1 - beta) a_min``; unchanged
        where nothing was kept (``a_min = inf``) or ``skip``."""
        theta = self.params["threshold"]
        a_min = out.stats["min_kept"]
        new = torch.where(theta < 0, a_min, theta * self.beta + self.one_minus_beta * a_min)
        keep_old = ~torch.isfinite(a_min)
        if skip is not None:
            keep_old = keep_old | skip
        theta.copy_(torch.where(keep_old, theta, new))


class StackedJumpReLU(StackedGroup):
    """JumpReLU models (per-model ``l0`` and ``bandwidth``; thresholds are parameters)."""

    family: ClassVar[str] = "jumprelu"
    PARAMS: ClassVar[tuple[str, ...]] = ("W_enc", "W_dec", "b_enc", "b_dec", "log_threshold")
    TERMS: ClassVar[tuple[str, ...]] = ("mse", "l0")

    def __init__(self, models: Sequence[JumpReLUSAE]) -> None:
        super().__init__(models)
        self.l0 = self.hyper("l0")
        self.eps = self.hyper("bandwidth")

    def _forward_backward(self, x: torch.Tensor, aux: bool) -> StackedOut:
        B = x.shape[0]
        W_dec = self.params["W_dec"]
        theta = self.params["log_threshold"].exp()
        xc, pre = self._pre(x)
        above = pre > theta.unsqueeze(1)
        h = torch.where(above, pre, 0.0)
        x_hat, mse, g = self._decode(x, h)
        dh = torch.bmm(g, W_dec.transpose(1, 2))
        near = ((pre - theta.unsqueeze(1)).abs() < (0.5 * self.eps).view(-1, 1, 1))
        d_theta = (-(theta / self.eps.unsqueeze(1)) * (dh * near).sum(1)
                   - (self.l0 / (B * self.eps)).unsqueeze(1) * near.sum(1).to(self.dtype))
        torch.mul(d_theta, theta, out=self.grads["log_threshold"])
        dpre = dh.mul_(above)
        self._encoder_grads(xc, g, dpre)
        l0_term = self.l0 * above.sum((1, 2)).to(self.dtype) / B
        return StackedOut(mse + l0_term, {"mse": mse, "l0": l0_term}, x_hat, h, _fired(h))


_FAMILIES: dict[str, type[StackedGroup]] = {
    cls.family: cls for cls in (StackedReLU, StackedTopK, StackedBatchTopK, StackedJumpReLU)}


def stack_models(models: Sequence[SAE]) -> StackedGroup:
    """A stacked group of ``models`` (one family, equal shapes), of the family's class."""
    if len(models) == 0:
        raise ValueError("stack_models needs at least one model")
    family = family_of(models[0])
    if family is None:
        raise TypeError(f"models[0] ({type(models[0]).__name__}) cannot be stacked")
    return _FAMILIES[family](models)


def group_models(models: Mapping[str, SAE]) -> list[tuple[list[str], StackedGroup]]:
    """Stacked groups of ``models``: one per (family, ``d_sae``), in first-seen order.

    Models that cannot be stacked are left out (they train with their own products). A
    group may hold a single model.
    """
    by_key: dict[tuple[str, int], list[str]] = {}
    for name, m in models.items():
        family = family_of(m)
        if family is not None:
            by_key.setdefault((family, m.d_sae), []).append(name)
    return [(names, stack_models([models[k] for k in names])) for names in by_key.values()]
