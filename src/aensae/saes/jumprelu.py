r"""JumpReLU sparse autoencoder (Rajamanoharan et al. 2024) with straight-through gradients.

Codes ``h = pre * H(pre - theta)``, ``theta = exp(log_threshold)`` (d_sae,), ``H`` the
Heaviside step. Loss (reference scaling, an L0 penalty in place of l1)::

    L = mean_{b,d} (x - x_hat)^2 + l0 * mean_b sum_i H(pre_bi - theta_i)

The step has zero derivative almost everywhere, so ``theta`` is trained with the
pseudo-derivatives of the paper (rectangle kernel ``K(u) = [|u| < 1/2]``, bandwidth
``eps``)::

    d h / d theta          = -(theta / eps) * K((pre - theta) / eps)
    d H(pre - theta)/d theta = -(1 / eps) * K((pre - theta) / eps)

while ``d h / d pre = H(pre - theta)`` and ``H`` passes no gradient to ``pre``.
The objective is not an l1 problem, so :meth:`exact_problem` returns ``None``.

Gradients, with ``xc = x - b_dec``, ``M = H(pre - theta)``, ``K = K((pre - theta) / eps)``
and ``g = dL/dx_hat = -2 (x - x_hat) / (B n)``::

    dL/dW_dec = h^T g                     dh   = g W_dec^T
    dpre      = dh * M                    dL/dtheta = -sum_b (dh * theta / eps + l0 / (B eps)) * K
    dL/dW_enc = xc^T dpre                 dL/db_enc = sum_b dpre
    dL/db_dec = sum_b g - sum_b dpre W_enc^T
    dL/dlog_threshold = theta * dL/dtheta

:meth:`JumpReLUSAE.compute_grads` computes these with autograd's operations in autograd's
order (the kernel ``K`` and the step ``M`` once each, not once per straight-through
function), so on the CPU its weights after any number of steps equal those of
:meth:`~aensae.saes.base.SAE.compute_grads` on :meth:`JumpReLUSAE.loss` (a test compares
them bit for bit).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from aensae.objective import sae_loss
from aensae.saes.base import INIT, SAE, Hyper, LossOutput, check_batch

__all__ = ["JumpReLUSAE", "jumprelu", "step_ste"]


def _kernel(pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    return ((pre - theta).abs() < 0.5 * eps).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_pre = grad * (pre > theta).to(pre.dtype)
        grad_theta = (grad * (-(theta / eps)) * _kernel(pre, theta, eps)).sum(0)
        return grad_pre, grad_theta, None


class _StepSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = (grad * (-1.0 / eps) * _kernel(pre, theta, eps)).sum(0)
        return torch.zeros_like(pre), grad_theta, None


def jumprelu(pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """``pre * H(pre - theta)`` with the straight-through gradient for ``theta``."""
    return _JumpReLU.apply(pre, theta, eps)


def step_ste(pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """``H(pre - theta)`` with the straight-through gradient for ``theta``."""
    return _StepSTE.apply(pre, theta, eps)


class JumpReLUSAE(SAE):
    """JumpReLU activation with a learned per-latent threshold (parameter ``log_threshold``)."""

    arch: ClassVar[str] = "jumprelu"
    HYPER: ClassVar[dict[str, Hyper]] = {
        "init": INIT,
        "l0": Hyper(1e-3, low=0.0, doc="coefficient of the L0 penalty (SAE scaling)"),
        "bandwidth": Hyper(0.05, low=0.0, low_inclusive=False,
                           doc="width eps of the straight-through kernel"),
        "init_threshold": Hyper(0.1, low=0.0, low_inclusive=False,
                                doc="initial threshold theta of every latent"),
    }

    def __init__(self, d_in: int, d_sae: int, **kwargs: Any) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        self.log_threshold = nn.Parameter(torch.full(
            (self.d_sae,), math.log(self.hyper["init_threshold"]), dtype=self.W_dec.dtype))

    @property
    def threshold(self) -> torch.Tensor:
        """``theta = exp(log_threshold)``."""
        return self.log_threshold.exp()

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """``pre * H(pre - theta)``."""
        return jumprelu(pre, self.threshold, float(self.hyper["bandwidth"]))

    def loss(self, x: torch.Tensor) -> LossOutput:
        """Reconstruction plus ``l0 * mean_b sum_i H(pre_bi - theta_i)``."""
        eps = float(self.hyper["bandwidth"])
        pre = self.pre_activation(x)
        theta = self.threshold
        h = jumprelu(pre, theta, eps)
        x_hat = self.decode(h)
        mse = sae_loss(x, x_hat, h, 0.0)
        l0 = step_ste(pre, theta, eps).sum(-1).mean()
        loss = mse + self.hyper["l0"] * l0
        return LossOutput(loss, x_hat, h, {"mse": mse.detach(),
                                           "l0": (self.hyper["l0"] * l0).detach()})

    def compute_grads(self, x: torch.Tensor) -> LossOutput:
        """Loss of ``x`` and its gradients by the module docstring's formulas."""
        check_batch("x", x, self.d_in)
        B, n = x.shape
        eps = float(self.hyper["bandwidth"])
        l0c = float(self.hyper["l0"])
        W_enc, W_dec, b_enc, b_dec = self.W_enc, self.W_dec, self.b_enc, self.b_dec
        with torch.no_grad():
            xc = x - b_dec
            pre = torch.addmm(b_enc, xc, W_enc)
            theta = self.log_threshold.exp()
            step = (pre > theta).to(pre.dtype)
            h = pre * step
            x_hat = torch.addmm(b_dec, h, W_dec)
            diff = x - x_hat
            mse = (diff * diff).mean()
            l0 = step.sum(-1).mean()
            loss = mse + l0c * l0
            # autograd's order of rounding: (1 / (B n)) * diff, doubled, negated
            g = diff.mul_(torch.ones((), dtype=x.dtype).div_(B * n)).mul_(-2.0)
            grad_W_dec = torch.mm(h.t(), g)
            dh = torch.mm(g, W_dec.t())
            kern = _kernel(pre, theta, eps)
            # the L0 term's gradient reaches each step as (l0 * 1) / B, as autograd's
            # mean backward gives it
            g_step = (torch.ones((), dtype=x.dtype) * l0c).div_(B).expand(B, self.d_sae)
            grad_theta = ((dh * (-(theta / eps)) * kern).sum(0)
                          + (g_step * (-1.0 / eps) * kern).sum(0))
            dpre = dh.mul_(step)
            grad_W_enc = torch.mm(xc.t(), dpre)
            grad_b_enc = dpre.sum(0)
            grad_b_dec = g.sum(0).sub_(torch.mm(dpre, W_enc.t()).sum(0))
            grad_log = grad_theta * theta
        self.W_enc.grad = grad_W_enc
        self.W_dec.grad = grad_W_dec
        self.b_enc.grad = grad_b_enc
        self.b_dec.grad = grad_b_dec
        self.log_threshold.grad = grad_log
        return LossOutput(loss, x_hat, h, {"mse": mse, "l0": l0c * l0},
                          {"fired": step.sum(0) > 0})
