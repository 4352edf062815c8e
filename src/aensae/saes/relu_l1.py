r"""ReLU + l1 sparse autoencoder, and the hand-derived backward shared by the ReLU family.

Codes ``h = relu((x - b_dec) @ W_enc + b_enc)``; loss (reference scaling, see
:func:`aensae.objective.sae_loss`)::

    L = mean_{b,d} (x - x_hat)^2 + l1 * mean_b sum_i w_i h_bi + l2 * mean_b sum_i h_bi^2

(``|h| = h`` because ``h >= 0``; ``w = 1`` and ``l2 = 0`` for this architecture; subclasses
add ``l2`` and adaptive ``w``.)

Gradients, with ``xc = x - b_dec``, ``r = x_hat - x``, ``g = 2 r / (B n)``,
``M = [pre > 0] = [h > 0]``::

    dL/dW_dec = h^T g
    dh        = g W_dec^T + (l1 / B) w + (2 l2 / B) h       (on h > 0; h = 0 is masked)
    dpre      = dh * M
    dL/dW_enc = xc^T dpre
    dL/db_enc = sum_b dpre
    dL/db_dec = sum_b g - W_enc (sum_b dpre)

Five matrix products, the same five autograd performs; the bias gradient of the encoder
input needs only a matrix-vector product. :meth:`ReluL1SAE.compute_grads` implements
this (a test compares it with autograd).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from aensae.saes.base import INIT, SAE, Hyper, LossOutput, check_batch

__all__ = ["ReluL1SAE"]

L1 = Hyper(1e-3, low=0.0, doc="l1 coefficient (SAE scaling; lam1 = d_in * l1 / 2)")


class ReluL1SAE(SAE):
    """ReLU encoder trained with an l1 penalty on the codes (the classical SAE)."""

    arch: ClassVar[str] = "relu_l1"
    HYPER: ClassVar[dict[str, Hyper]] = {"l1": L1, "init": INIT}

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """``relu(pre)``."""
        return torch.relu(pre)

    def compute_grads(self, x: torch.Tensor) -> LossOutput:
        """Loss of ``x`` and its gradients, by the formulas of the module docstring."""
        check_batch("x", x, self.d_in)
        B, n = x.shape
        # the parameters are read inside no_grad, so no graph is recorded (no detach needed)
        W_enc, W_dec, b_enc, b_dec = self.W_enc, self.W_dec, self.b_enc, self.b_dec
        l1, l2 = self.l1, self.l2
        with torch.no_grad():
            xc = x - b_dec
            h = torch.addmm(b_enc, xc, W_enc).relu_()
            x_hat = torch.addmm(b_dec, h, W_dec)
            r = x_hat - x
            flat_r = r.reshape(-1)
            mse = torch.dot(flat_r, flat_r) / (B * n)
            h_sum = h.sum(0)
            # adaptive models: the EMA may take this batch before the weights (ema_update)
            w = self.step_weights(h_sum / B)
            l1_term = l1 * (h_sum.sum() if w is None else torch.dot(h_sum, w)) / B
            g = r.mul_(2.0 / (B * n))
            grad_W_dec = torch.mm(h.t(), g)
            # dh = g W_dec^T + (l1 / B) w  (the bias slot of addmm broadcasts the l1 part)
            l1_vec = (torch.full_like(h_sum, l1 / B) if w is None else w * (l1 / B))
            dh = torch.addmm(l1_vec, g, W_dec.t())
            if l2 != 0.0:
                flat_h = h.reshape(-1)
                l2_term = l2 * torch.dot(flat_h, flat_h) / B
                dh.add_(h, alpha=2.0 * l2 / B)
            else:
                l2_term = torch.zeros((), dtype=x.dtype, device=x.device)
            # dpre = dh * [h > 0]: the ReLU backward kernel, one fused pass, written over dh
            dpre = torch.ops.aten.threshold_backward.grad_input(dh, h, 0, grad_input=dh)
            grad_W_enc = torch.mm(xc.t(), dpre)
            grad_b_enc = dpre.sum(0)
            grad_b_dec = torch.mv(W_enc, grad_b_enc).neg_().add_(g.sum(0))
        self.W_enc.grad = grad_W_enc
        self.W_dec.grad = grad_W_dec
        self.b_enc.grad = grad_b_enc
        self.b_dec.grad = grad_b_dec
        loss = mse + l1_term + l2_term
        # h >= 0, so latent i fired in the batch iff sum_b h_bi > 0
        return LossOutput(loss, x_hat, h, {"mse": mse, "l1": l1_term, "l2": l2_term},
                          {"mean_abs_h": h_sum / B, "fired": h_sum > 0})
