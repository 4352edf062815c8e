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
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from aensae.objective import sae_loss
from aensae.saes.base import INIT, SAE, Hyper, LossOutput

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
