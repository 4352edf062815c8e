r"""Forward and backward of several ReLU-family SAEs at once, with batched products.

For ``G`` models of :class:`~aensae.saes.relu_l1.ReluL1SAE` type (relu_l1, elastic_net,
adaptive_lasso, aen) of equal shape, trained on the same batch ``x`` (B, n), the formulas
of :mod:`aensae.saes.relu_l1` are evaluated for all models together: the parameters are
stacked into ``(G, ...)`` tensors (each model's parameters become views of them, so the
per-model optimizers, decoder projection and checkpoints keep working unchanged) and the
five matrix products of each model become five batched products (``torch.baddbmm`` /
``torch.bmm``), one kernel call each for the whole group::

    xc    = x - b_dec_g                                  (G, B, n)
    h     = relu(xc @ W_enc_g + b_enc_g)                 (G, B, m)
    r     = h @ W_dec_g + b_dec_g - x;  g = 2 r / (B n)
    dW_dec_g = h^T g;  dh = g W_dec_g^T + (l1_g / B) w_g + (2 l2_g / B) h
    dpre  = dh * [h > 0];  dW_enc_g = xc^T dpre;  db_enc_g = sum_b dpre
    db_dec_g = sum_b g - W_enc_g db_enc_g

The result equals each model's own :meth:`~aensae.saes.relu_l1.ReluL1SAE.compute_grads`
up to floating-point rounding (batched and single products may sum in a different order);
a test bounds the difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from aensae.saes.base import LossOutput, check_batch
from aensae.saes.relu_l1 import ReluL1SAE

__all__ = ["StackedReLU", "stackable"]


def stackable(model: object) -> bool:
    """Whether ``model`` can join a :class:`StackedReLU` group."""
    return isinstance(model, ReluL1SAE)


class StackedReLU:
    """Batched loss and gradients of ReLU-family SAEs sharing ``d_in``, ``d_sae``, dtype.

    Construction re-seats every model's parameters as views of stacked tensors (values
    unchanged) and their gradients as views of stacked gradient buffers.
    """

    def __init__(self, models: Sequence[ReluL1SAE]) -> None:
        if len(models) == 0:
            raise ValueError("StackedReLU needs at least one model")
        for i, m in enumerate(models):
            if not stackable(m):
                raise TypeError(f"models[{i}] ({type(m).__name__}) is not a ReLU-family SAE")
        first = models[0]
        keys = {(m.d_in, m.d_sae, m.W_dec.dtype, m.W_dec.device) for m in models}
        if len(keys) != 1:
            raise ValueError(f"stacked models must share d_in, d_sae, dtype and device, got "
                             f"{sorted(map(str, keys))}")
        self.models = list(models)
        self.d_in, self.d_sae = first.d_in, first.d_sae
        self.params: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            stacked = torch.stack([getattr(m, name).detach() for m in self.models])
            self.params[name] = stacked
            self.grads[name] = torch.zeros_like(stacked)
            for i, m in enumerate(self.models):
                getattr(m, name).data = stacked[i]
        dtype, device = first.W_dec.dtype, first.W_dec.device
        self.l1 = torch.tensor([m.l1 for m in self.models], dtype=dtype, device=device)
        self.l2 = torch.tensor([m.l2 for m in self.models], dtype=dtype, device=device)
        self.any_l2 = bool((self.l2 != 0).any())

    def _weights(self) -> torch.Tensor:
        """(G, d_sae) l1 weights of every model (ones where a model has none)."""
        rows = []
        for m in self.models:
            w = m.l1_weights()
            rows.append(torch.ones(self.d_sae, dtype=self.l1.dtype, device=self.l1.device)
                        if w is None else w)
        return torch.stack(rows)

    def compute_grads(self, x: torch.Tensor) -> list[LossOutput]:
        """Losses of ``x`` (B, d_in) for every model; gradients left in each ``.grad``."""
        check_batch("x", x, self.d_in)
        B, n = x.shape
        P, Gr = self.params, self.grads
        W_enc, W_dec, b_enc, b_dec = P["W_enc"], P["W_dec"], P["b_enc"], P["b_dec"]
        w = self._weights()
        with torch.no_grad():
            xc = x.unsqueeze(0) - b_dec.unsqueeze(1)
            h = torch.baddbmm(b_enc.unsqueeze(1), xc, W_enc).relu_()
            x_hat = torch.baddbmm(b_dec.unsqueeze(1), h, W_dec)
            r = x_hat - x
            mse = (r * r).sum((1, 2)) / (B * n)
            h_sum = h.sum(1)
            l1_term = self.l1 * (h_sum * w).sum(1) / B
            g = r.mul_(2.0 / (B * n))
            torch.bmm(h.transpose(1, 2), g, out=Gr["W_dec"])
            l1_vec = (w * (self.l1 / B).unsqueeze(1)).unsqueeze(1)
            dh = torch.baddbmm(l1_vec, g, W_dec.transpose(1, 2))
            if self.any_l2:
                l2_term = self.l2 * (h * h).sum((1, 2)) / B
                dh.addcmul_(h, (2.0 * self.l2 / B).view(-1, 1, 1))
            else:
                l2_term = torch.zeros_like(mse)
            dpre = torch.ops.aten.threshold_backward.grad_input(dh, h, 0, grad_input=dh)
            torch.bmm(xc.transpose(1, 2), dpre, out=Gr["W_enc"])
            torch.sum(dpre, 1, out=Gr["b_enc"])
            torch.sub(g.sum(1), torch.bmm(W_enc, Gr["b_enc"].unsqueeze(2)).squeeze(2),
                      out=Gr["b_dec"])
        outs = []
        loss = mse + l1_term + l2_term
        for i, m in enumerate(self.models):
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(m, name).grad = Gr[name][i]
            outs.append(LossOutput(loss[i], x_hat[i], h[i],
                                   {"mse": mse[i], "l1": l1_term[i], "l2": l2_term[i]},
                                   {"mean_abs_h": h_sum[i] / B, "fired": h_sum[i] > 0}))
        return outs
