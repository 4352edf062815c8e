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

No CUDA graph is captured here: the stacked step runs eagerly on every device, and the
trainer records the path each model took (:data:`PATH_SEPARATE`, :data:`PATH_STACKED`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from aensae.saes.adaptive_lasso import AdaptiveLassoSAE
from aensae.saes.base import SAE, LossOutput, check_batch
from aensae.saes.batchtopk import BatchTopKSAE
from aensae.saes.jumprelu import JumpReLUSAE
from aensae.saes.relu_l1 import ReluL1SAE
from aensae.saes.topk import TopKSAE

__all__ = ["PATH_SEPARATE", "PATH_STACKED", "StackedBatchTopK", "StackedGroup",
           "StackedJumpReLU", "StackedReLU", "StackedTopK", "family_of", "group_models",
           "stack_models", "stackable", "step_path"]

#: ``ModelResult.path`` of a model trained with its own products.
PATH_SEPARATE = "separate"
#: ``ModelResult.path`` of a model trained in a stacked group (eager; no CUDA graph).
PATH_STACKED = "stacked-eager"


def family_of(model: object) -> str | None:
    """The stacked family of ``model`` (``relu``, ``topk``, ``batchtopk``, ``jumprelu``).

    ``None`` for anything else, including subclasses of TopK / BatchTopK / JumpReLU (they
    may change the loss the stacked formulas assume).
    """
    if isinstance(model, ReluL1SAE):
        return "relu"
    return {TopKSAE: "topk", BatchTopKSAE: "batchtopk",
            JumpReLUSAE: "jumprelu"}.get(type(model))  # type: ignore[call-overload]


def stackable(model: object) -> bool:
    """Whether ``model`` can join a stacked group (:func:`family_of` is not ``None``)."""
    return family_of(model) is not None


def step_path(stacked: bool) -> str:
    """The training path a model takes: :data:`PATH_STACKED` in a group, else separate.

    The stacked step is eager on every device (CPU and CUDA alike): CUDA graph capture of
    the step is not implemented, so there is no captured path to fall back from.
    """
    return PATH_STACKED if stacked else PATH_SEPARATE


def _fired(h: torch.Tensor) -> torch.Tensor:
    """(G, m): latent fired in the batch, ``(max_b h > 0) | (min_b h < 0)`` (finite ``h``)."""
    return (h.amax(1) > 0) | (h.amin(1) < 0)


class StackedGroup:
    """Batched loss and gradients of SAEs of one family sharing ``d_in``, ``d_sae``, dtype.

    Construction re-seats every model's parameters (and the family's :attr:`BUFFERS`) as
    views of stacked tensors (values unchanged) and, at each :meth:`compute_grads`, their
    gradients as views of stacked gradient buffers. Subclasses implement
    :meth:`_forward_backward`.
    """

    family: ClassVar[str] = ""
    PARAMS: ClassVar[tuple[str, ...]] = ("W_enc", "W_dec", "b_enc", "b_dec")
    BUFFERS: ClassVar[tuple[str, ...]] = ()

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
            stacked = torch.stack([getattr(m, name).detach() for m in self.models])
            for i, m in enumerate(self.models):
                getattr(m, name).data = stacked[i]
            if name in self.PARAMS:
                self.params[name] = stacked
                self.grads[name] = torch.zeros_like(stacked)
            else:
                self.params[name] = stacked

    def hyper(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(G,) tensor of hyperparameter ``name`` of every model (parameter dtype)."""
        return torch.tensor([float(m.hyper[name]) for m in self.models],
                            dtype=dtype or self.dtype, device=self.device)

    def compute_grads(self, x: torch.Tensor) -> list[LossOutput]:
        """Losses of ``x`` (B, d_in) for every model; gradients left in each ``.grad``.

        Off the CPU the losses come back to the host in one transfer (the trainer reads
        each as a float), instead of one synchronisation per model.
        """
        check_batch("x", x, self.d_in)
        with torch.no_grad():
            outs = self._forward_backward(x)
            if self.device.type != "cpu":
                host = torch.stack([o.loss for o in outs]).cpu()
                for o, loss in zip(outs, host, strict=True):
                    o.loss = loss
        for i, m in enumerate(self.models):
            for name in self.PARAMS:
                getattr(m, name).grad = self.grads[name][i]
        return outs

    @torch.no_grad()
    def project_decoders(self) -> None:
        """Every model's :meth:`~aensae.saes.base.SAE.project_decoder`, as one batched
        projection of the stacked decoders (one host read for the zero-norm check)."""
        W_dec = self.params["W_dec"]
        norms = torch.linalg.vector_norm(W_dec, dim=2, keepdim=True)
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

    def _forward_backward(self, x: torch.Tensor) -> list[LossOutput]:
        raise NotImplementedError


class StackedReLU(StackedGroup):
    """The ReLU family: relu_l1, elastic_net, adaptive_lasso, aen (l1 + l2 penalties)."""

    family: ClassVar[str] = "relu"

    def __init__(self, models: Sequence[ReluL1SAE]) -> None:
        super().__init__(models)
        self.l1 = torch.tensor([m.l1 for m in self.models], dtype=self.dtype,
                               device=self.device)
        self.l2 = torch.tensor([m.l2 for m in self.models], dtype=self.dtype,
                               device=self.device)
        self.any_l2 = bool((self.l2 != 0).any())
        self.adaptive = [isinstance(m, AdaptiveLassoSAE) for m in self.models]
        self.ones = torch.ones(len(self.models), self.d_sae, dtype=self.dtype,
                               device=self.device)

    def _weights(self) -> torch.Tensor:
        """(G, d_sae) l1 weights of every model (ones where a model has none).

        The adaptive models' step counters are read in one transfer.
        """
        if not any(self.adaptive):
            return self.ones
        steps = iter(torch.stack([m.step for m, a in zip(self.models, self.adaptive,
                                                         strict=True) if a]).tolist())
        rows = []
        for i, (m, a) in enumerate(zip(self.models, self.adaptive, strict=True)):
            w = m.l1_weights(next(steps)) if a else m.l1_weights()
            rows.append(self.ones[i] if w is None else w)
        return torch.stack(rows)

    def _forward_backward(self, x: torch.Tensor) -> list[LossOutput]:
        B = x.shape[0]
        W_dec = self.params["W_dec"]
        w = self._weights()
        xc, pre = self._pre(x)
        h = pre.relu_()
        x_hat, mse, g = self._decode(x, h)
        h_sum = h.sum(1)
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
        loss = mse + l1_term + l2_term
        return [LossOutput(loss[i], x_hat[i], h[i],
                           {"mse": mse[i], "l1": l1_term[i], "l2": l2_term[i]},
                           {"mean_abs_h": h_sum[i] / B, "fired": h_sum[i] > 0})
                for i in range(len(self.models))]


def _top_entries(values: torch.Tensor, k: list[int]) -> tuple[torch.Tensor, torch.Tensor,
                                                                torch.Tensor]:
    """``(vals, idx, in_rank)``: the ``max(k)`` largest entries of each row of ``values``
    (G, ..., L) and whether each lies within its model's own ``k[g]`` largest.

    With one ``k`` for all models the entries come unsorted (faster) and all are in rank.
    """
    kmax = max(k)
    if min(k) == kmax:
        vals, idx = values.topk(kmax, dim=-1, sorted=False)
        return vals, idx, torch.ones_like(vals, dtype=torch.bool)
    vals, idx = values.topk(kmax, dim=-1, sorted=True)
    kt = torch.tensor(k, device=values.device).view(-1, *([1] * (values.ndim - 1)))
    return vals, idx, torch.arange(kmax, device=values.device) < kt


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

    def __init__(self, models: Sequence[TopKSAE]) -> None:
        super().__init__(models)
        self.k = [int(m.hyper["k_top"]) for m in self.models]
        self.aux_k = torch.tensor([int(m.hyper["aux_k"]) for m in self.models],
                                  device=self.device)
        self.aux_kmax = int(self.aux_k.max())
        self.dead_samples = torch.tensor([int(m.hyper["dead_samples"]) for m in self.models],
                                         device=self.device)
        self.aux_coeff = self.hyper("aux_coeff")

    def _forward_backward(self, x: torch.Tensor) -> list[LossOutput]:
        W_dec = self.params["W_dec"]
        xc, pre = self._pre(x)
        vals, idx, keep = _top_entries(pre, self.k)
        keep = keep & (vals > 0)
        h, mask = _scatter(pre, idx, vals, keep)
        x_hat, mse, g = self._decode(x, h)
        dpre = torch.bmm(g, W_dec.transpose(1, 2)).mul_(mask)
        loss = mse
        aux_on = [False] * len(self.models)
        if self.aux_kmax > 0:
            dead = self.params["samples_since_fired"] >= self.dead_samples.unsqueeze(1)
            k_aux = torch.minimum(self.aux_k, dead.sum(1))
            aux_on = (k_aux > 0).tolist()
            if any(aux_on):
                aux, dpre_aux = self._auxk(x, x_hat, pre, dead, k_aux)
                on = torch.tensor(aux_on, device=self.device)
                loss = loss + torch.where(on, self.aux_coeff * aux, 0.0)
                dpre.add_(dpre_aux)
        self._encoder_grads(xc, g, dpre)
        fired = _fired(h)
        outs = []
        for i in range(len(self.models)):
            terms = {"mse": mse[i]}
            if aux_on[i]:
                terms["aux"] = aux[i]
            outs.append(LossOutput(loss[i], x_hat[i], h[i], terms, {"fired": fired[i]}))
        return outs

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
        akeep = (torch.arange(kmax, device=self.device) < k_aux.view(-1, 1, 1)) & (avals > 0)
        h_aux, amask = _scatter(pre, aidx, avals, akeep)
        d = e - torch.bmm(h_aux, W_dec)
        den = ((e - e.mean(1, keepdim=True)) ** 2).sum(-1).mean(1).clamp_min(
            torch.finfo(e.dtype).tiny)
        aux = (d * d).sum(-1).mean(1) / den
        scale = torch.where(k_aux > 0, -2.0 * self.aux_coeff / (B * den), 0.0)
        ga = d.mul_(scale.view(-1, 1, 1))
        self.grads["W_dec"].baddbmm_(h_aux.transpose(1, 2), ga)
        return aux, torch.bmm(ga, W_dec.transpose(1, 2)).mul_(amask)


class StackedBatchTopK(StackedGroup):
    """BatchTopK models (per-model ``k_top``), in training mode."""

    family: ClassVar[str] = "batchtopk"

    def __init__(self, models: Sequence[BatchTopKSAE]) -> None:
        super().__init__(models)
        self.k = [int(m.hyper["k_top"]) for m in self.models]

    def _forward_backward(self, x: torch.Tensor) -> list[LossOutput]:
        B = x.shape[0]
        G, m = len(self.models), self.d_sae
        W_dec = self.params["W_dec"]
        xc, pre = self._pre(x)
        flat = pre.relu_().view(G, B * m)
        vals, idx, keep = _top_entries(flat, [min(k * B, B * m) for k in self.k])
        keep = keep & (vals > 0)
        h_flat, mask = _scatter(flat, idx, vals, keep)
        h = h_flat.view(G, B, m)
        a_min = torch.where(keep, vals, torch.inf).amin(1)
        has_min = torch.isfinite(a_min).tolist()
        x_hat, mse, g = self._decode(x, h)
        dpre = torch.bmm(g, W_dec.transpose(1, 2)).mul_(mask.view(G, B, m))
        self._encoder_grads(xc, g, dpre)
        fired = _fired(h)
        return [LossOutput(mse[i], x_hat[i], h[i], {"mse": mse[i]},
                           {"min_kept": a_min[i] if has_min[i] else None, "fired": fired[i]})
                for i in range(G)]


class StackedJumpReLU(StackedGroup):
    """JumpReLU models (per-model ``l0`` and ``bandwidth``; thresholds are parameters)."""

    family: ClassVar[str] = "jumprelu"
    PARAMS: ClassVar[tuple[str, ...]] = ("W_enc", "W_dec", "b_enc", "b_dec", "log_threshold")

    def __init__(self, models: Sequence[JumpReLUSAE]) -> None:
        super().__init__(models)
        self.l0 = self.hyper("l0")
        self.eps = self.hyper("bandwidth")

    def _forward_backward(self, x: torch.Tensor) -> list[LossOutput]:
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
        loss = mse + l0_term
        fired = _fired(h)
        return [LossOutput(loss[i], x_hat[i], h[i], {"mse": mse[i], "l0": l0_term[i]},
                           {"fired": fired[i]})
                for i in range(len(self.models))]


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

