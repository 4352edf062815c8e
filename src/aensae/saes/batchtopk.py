r"""BatchTopK sparse autoencoder (Bussmann et al. 2024) with its inference threshold.

Training: keep the ``B * k_top`` largest rectified pre-activations of the whole batch::

    a = relu(pre);  h = a * [a is among the B * k_top largest entries of a]

so the mean number of active latents per sample is ``k_top`` (exactly, when the batch has
at least ``B * k_top`` positive pre-activations). After each step the inference threshold
tracks the smallest kept activation ``a_min`` by an EMA::

    theta <- a_min                                        (first step)
    theta <- threshold_beta * theta + (1 - threshold_beta) * a_min

Inference (``model.eval()``): ``h = pre * [pre > theta]`` per sample, a JumpReLU with one
shared threshold. Loss: the reconstruction term of :func:`aensae.objective.sae_loss`.

Data-parallel training (:mod:`aensae.saes.training.distributed`): each rank holds ``B / W`` rows,
and the ``B * k_top`` largest entries are those of the global batch, found from the
ranks' own largest, so every rank keeps what the single-process batch top-k keeps
(entries tied at the threshold: the first in the global batch's row order).

Gradients (single process), with ``xc = x - b_dec``, ``g = -2 (x - x_hat) / (B n)`` and
``M = [h > 0]`` (an entry passes its gradient iff it was kept and positive)::

    dL/dW_dec = h^T g;  dpre = (g W_dec^T) * M;  dL/dW_enc = xc^T dpre
    dL/db_enc = sum_b dpre;  dL/db_dec = sum_b g - sum_b dpre W_enc^T

:meth:`BatchTopKSAE.compute_grads` computes them with autograd's six products in its order
of rounding, so on the CPU the weights after any number of steps equal those of autograd
on :meth:`BatchTopKSAE.loss`, bit for bit (a test compares them).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from aensae.objective import sae_loss
from aensae.saes.base import INIT, SAE, Hyper, LossOutput, check_batch
from aensae.saes.collectives import batch_world, count_before, global_top_values
from aensae.saes.topk import K_TOP, selected_codes_grads

__all__ = ["BatchTopKSAE"]


class BatchTopKSAE(SAE):
    """BatchTopK activation in training, a learned global threshold at inference.

    Buffer ``threshold`` (scalar): negative until the first training step estimates it;
    encoding in eval mode before that is an error.
    """

    arch: ClassVar[str] = "batchtopk"
    HYPER: ClassVar[dict[str, Hyper]] = {
        "init": INIT,
        "k_top": K_TOP,
        "threshold_beta": Hyper(0.999, low=0.0, high=1.0, high_inclusive=False,
                                doc="EMA decay of the inference threshold"),
    }

    def __init__(self, d_in: int, d_sae: int, **kwargs: Any) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        if self.hyper["k_top"] > self.d_sae:
            raise ValueError(f"k_top must be <= d_sae={self.d_sae}, got {self.hyper['k_top']}")
        self.register_buffer("threshold", torch.full((), -1.0, dtype=self.W_dec.dtype))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """Batch top-k in training mode, the threshold in eval mode."""
        if self.training:
            return self._batch_topk(pre)[0]
        if float(self.threshold) < 0:
            raise RuntimeError("the BatchTopK inference threshold has not been estimated yet "
                               "(the model was never trained); use model.train() to encode "
                               "with batch top-k")
        return torch.where(pre > self.threshold, pre, torch.zeros_like(pre))

    def _batch_topk(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        a = torch.relu(pre)
        flat = a.reshape(-1)
        world = batch_world()
        if world is not None:
            return self._global_batch_topk(a, world.size)
        kk = min(int(self.hyper["k_top"]) * pre.shape[0], flat.numel())
        vals, idx = flat.topk(kk, sorted=False)
        h = torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)
        with torch.no_grad():
            pos = vals[vals > 0]
            a_min = pos.min() if pos.numel() else None
        return h, a_min

    def _global_batch_topk(self, a: torch.Tensor, ranks: int
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batch top-k of a data-parallel step: ``a`` (B_r, d_sae) is this rank's share of
        a global batch of ``B = ranks * B_r`` rows.

        The ``kk = k_top * B`` largest entries of the global batch are found from every
        rank's own largest (:func:`~aensae.saes.collectives.global_top_values`); their
        smallest, ``t``, is the threshold. Entries above ``t`` are kept, and of those equal
        to ``t`` as many as the ``kk`` hold, the first in the global batch's row-major
        order (ranks in order, :func:`~aensae.saes.collectives.count_before`): exactly
        ``kk`` entries, as the single-process batch top-k keeps. Which tied entries that
        keeps is ``torch.topk``'s choice; ties arise from repeated rows (a token that
        occurs twice), and for identical rows any choice gives the same loss and
        gradients. When ``t = 0`` (fewer than ``kk`` positive entries) all of ``a`` is
        kept, as the zeros add nothing.
        """
        kk = min(int(self.hyper["k_top"]) * a.shape[0], a.numel()) * ranks
        vals = global_top_values(a.reshape(-1), kk)
        t = vals.min()
        if float(t) > 0:
            tied = (a == t).reshape(-1)
            n_tied = int(tied.sum())
            want = int((vals == t).sum()) - count_before(n_tied)  # this rank's tied share
            first = tied.nonzero().squeeze(1)[:max(0, min(want, n_tied))]
            keep = (a > t).reshape(-1).index_fill_(0, first, True).view_as(a)
            h = torch.where(keep, a, torch.zeros_like(a))
        else:
            h = a
        with torch.no_grad():
            pos = vals[vals > 0]
            a_min = pos.min() if pos.numel() else None
        return h, a_min

    def loss(self, x: torch.Tensor) -> LossOutput:
        """Reconstruction loss of the batch top-k codes (training mode)."""
        pre = self.pre_activation(x)
        h, a_min = self._batch_topk(pre)
        x_hat = self.decode(h)
        loss = sae_loss(x, x_hat, h, 0.0)
        return LossOutput(loss, x_hat, h, {"mse": loss.detach()}, {"min_kept": a_min})

    def compute_grads(self, x: torch.Tensor) -> LossOutput:
        """Loss of ``x`` and its gradients by the module docstring's formulas; autograd in
        a data-parallel step."""
        if batch_world() is not None:
            return super().compute_grads(x)
        check_batch("x", x, self.d_in)
        with torch.no_grad():
            xc = x - self.b_dec
            h, a_min = self._batch_topk(torch.addmm(self.b_enc, xc, self.W_enc))
        mse, x_hat = selected_codes_grads(self, x, xc, h)
        return LossOutput(mse, x_hat, h, {"mse": mse},
                          {"min_kept": a_min, "fired": h.sum(0) > 0})

    @torch.no_grad()
    def after_step(self, out: LossOutput) -> None:
        """EMA update of the inference threshold from the smallest kept activation."""
        a_min = out.stats.get("min_kept")
        if a_min is None:
            return
        if float(self.threshold) < 0:
            self.threshold.copy_(a_min)
        else:
            beta = self.hyper["threshold_beta"]
            self.threshold.mul_(beta).add_((1.0 - beta) * a_min)
