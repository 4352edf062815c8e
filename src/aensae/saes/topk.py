r"""TopK sparse autoencoder (Gao et al. 2024), with the optional AuxK loss.

Codes keep the ``k_top`` largest pre-activations of each sample, rectified::

    h = scatter(topk_indices(pre, k_top), relu(topk_values(pre, k_top)))

so every sample has at most ``k_top`` non-zeros (exactly ``k_top`` when its ``k_top``
largest pre-activations are positive). Loss: the reconstruction term of
:func:`aensae.objective.sae_loss` (``l1 = l2 = 0``), plus, when ``aux_k > 0``, the AuxK
term for dead latents (those that have not fired for ``dead_samples`` samples)::

    e      = x - x_hat                  (detached)
    e_hat  = h_aux @ W_dec              h_aux: top aux_k pre-activations among dead latents
    aux    = sum_b ||e_b - e_hat_b||^2 / sum_b ||e_b - mean_b e||^2
    L      = mean_{b,d} (x - x_hat)^2 + aux_coeff * aux

AuxK is off by default (``aux_k = 0``), as in the baseline the AEN-SAE is compared with.
In a data-parallel step (:mod:`aensae.saes.training.distributed`) ``mean_b e`` and the
denominator's mean run over the global batch.
TopK has no l1 objective, so :meth:`exact_problem` returns ``None``.

Gradients without AuxK (:meth:`TopKSAE.compute_grads`), with ``xc = x - b_dec``,
``g = -2 (x - x_hat) / (B n)`` and ``M = [h > 0]`` (kept and positive)::

    dL/dW_dec = h^T g
    dpre      = (g W_dec^T) * M
    dL/dW_enc = xc^T dpre,   dL/db_enc = sum_b dpre,   dL/db_dec = sum_b g - sum_b dpre W_enc^T

the products autograd performs, in its order of rounding, without its graph: on the CPU
the steps are bit-identical to autograd's (a test trains both paths and compares the
weights), so runs trained before this backward are reproduced exactly. ``dL/db_dec``
keeps autograd's sixth product ``dpre W_enc^T`` (summing first, ``W_enc sum_b dpre``,
would save it but round differently). A step whose AuxK term is on (``aux_k > 0`` and
some latent dead) goes through autograd.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from numba import njit

from aensae.objective import sae_loss
from aensae.saes.base import INIT, SAE, Hyper, LossOutput, check_batch
from aensae.saes.collectives import global_mean
from aensae.saes.dead import fired_latents

__all__ = ["TopKSAE", "selected_codes_grads"]

K_TOP = Hyper(16, kind="int", low=1, doc="number of active latents per sample")


def topk_codes(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Rectified top-``k`` of each row of ``pre``, zeros elsewhere.

    A 2-D CPU tensor without gradient goes through a compiled row selection
    (:func:`_select_rows`, 1.4-2.9x cheaper than ``torch.topk`` at k 2-16 of 256; at
    ``m = 256`` torch's selection costs as much as a matrix product of the step). A row
    whose k-th and (k+1)-th largest values tie, or that holds a NaN, would leave the
    choice to the algorithm, so such a batch goes through ``torch.topk``: the codes are
    then always those of ``torch.topk``, bit for bit (a test compares both on data with
    ties).
    """
    if (pre.device.type == "cpu" and pre.ndim == 2 and not pre.requires_grad
            and pre.dtype in (torch.float32, torch.float64) and pre.shape[1] > k):
        h = torch.zeros_like(pre)
        if _select_rows(pre.numpy(), k, h.numpy()):
            return h
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


@njit(cache=True, nogil=True)
def _select_rows(pre, k, h):  # pragma: no cover - compiled
    """Write ``relu`` of each row's ``k`` largest entries of ``pre`` (B, m), ``k < m``,
    into ``h`` (zeros, same shape); ``False`` (``h`` then partly written) when a row
    holds a NaN or its k-th and (k+1)-th largest values are equal.

    One pass per row over an insertion-sorted buffer of the k largest so far: an entry
    enters only when larger than the buffer's smallest, ``low``. A tie at the boundary
    means that an entry left out (skipped, or pushed out of the buffer) equals the
    final ``low``; ``low`` only grows, so only the latest such equality can still hold.
    ``relu`` as torch's: a negative value becomes +0, a -0 stays -0.
    """
    B, m = pre.shape
    vals = np.empty(k, pre.dtype)
    idx = np.empty(k, np.int64)
    for b in range(B):
        row = pre[b]
        nan = False
        for j in range(m):
            nan |= row[j] != row[j]
        if nan:
            return False
        for j in range(k):
            _insert_descending(vals, idx, j, row[j], j)
        low = vals[k - 1]
        tied = False  # whether a left-out entry equals `low`
        for j in range(k, m):
            v = row[j]
            if v >= low:
                if v > low:
                    _insert_descending(vals, idx, k - 1, v, j)
                    out = low  # pushed out of the buffer
                    low = vals[k - 1]
                    tied = out == low
                else:
                    tied = True
        if tied:
            return False
        for p in range(k):
            v = vals[p]
            h[b, idx[p]] = 0.0 if v < 0 else v
    return True


@njit(cache=True, inline="always")
def _insert_descending(vals, idx, p, v, j):  # pragma: no cover - compiled
    """Put ``(v, j)`` into the descending ``vals[:p + 1]`` (slot ``p`` free or dropped),
    moving the smaller entries one slot down."""
    while p > 0 and vals[p - 1] < v:
        vals[p] = vals[p - 1]
        idx[p] = idx[p - 1]
        p -= 1
    vals[p] = v
    idx[p] = j


def selected_codes_grads(model: SAE, x: torch.Tensor, xc: torch.Tensor, h: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mse, x_hat)`` of codes ``h`` that keep some rectified pre-activations of
    ``xc = x - b_dec`` (TopK, BatchTopK), with the module docstring's gradients left in
    ``model``'s ``.grad``: autograd's six products in its order of rounding."""
    B, n = x.shape
    W_enc, W_dec, b_dec = model.W_enc, model.W_dec, model.b_dec
    with torch.no_grad():
        x_hat = torch.addmm(b_dec, h, W_dec)
        diff = x - x_hat
        mse = (diff * diff).mean()
        # autograd's order of rounding: (1 / (B n)) * diff, doubled, negated
        g = diff.mul_(torch.ones((), dtype=x.dtype).div_(B * n)).mul_(-2.0)
        grad_W_dec = torch.mm(h.t(), g)
        dh = torch.mm(g, W_dec.t())
        dpre = torch.ops.aten.threshold_backward.grad_input(dh, h, 0, grad_input=dh)
        grad_W_enc = torch.mm(xc.t(), dpre)
        grad_b_enc = dpre.sum(0)
        grad_b_dec = g.sum(0).sub_(torch.mm(dpre, W_enc.t()).sum(0))
    model.W_enc.grad = grad_W_enc
    model.W_dec.grad = grad_W_dec
    model.b_enc.grad = grad_b_enc
    model.b_dec.grad = grad_b_dec
    return mse, x_hat


class TopKSAE(SAE):
    """TopK activation; optional AuxK loss; buffer ``samples_since_fired`` (d_sae,)."""

    arch: ClassVar[str] = "topk"
    HYPER: ClassVar[dict[str, Hyper]] = {
        "init": INIT,
        "k_top": K_TOP,
        "aux_k": Hyper(0, kind="int", low=0, doc="latents in the AuxK loss (0 = off)"),
        "aux_coeff": Hyper(1.0 / 32.0, low=0.0, doc="weight of the AuxK loss"),
        "dead_samples": Hyper(1_000_000, kind="int", low=1,
                              doc="samples without firing after which AuxK treats a latent "
                                  "as dead"),
    }

    def __init__(self, d_in: int, d_sae: int, **kwargs: Any) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        for name in ("k_top", "aux_k"):
            if self.hyper[name] > self.d_sae:
                raise ValueError(f"{name} must be <= d_sae={self.d_sae}, "
                                 f"got {self.hyper[name]}")
        self.register_buffer("samples_since_fired", torch.zeros(self.d_sae, dtype=torch.int64))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """Rectified top-``k_top`` of each sample."""
        return topk_codes(pre, int(self.hyper["k_top"]))

    def loss(self, x: torch.Tensor) -> LossOutput:
        """Reconstruction loss, plus ``aux_coeff * aux`` when AuxK is on."""
        pre = self.pre_activation(x)
        h = self.activation(pre)
        x_hat = self.decode(h)
        mse = sae_loss(x, x_hat, h, 0.0)
        loss = mse
        terms = {"mse": mse.detach()}
        aux_k = int(self.hyper["aux_k"])
        if aux_k > 0:
            dead = self.samples_since_fired >= int(self.hyper["dead_samples"])
            n_dead = int(dead.sum())
            if n_dead > 0:
                e = (x - x_hat).detach()
                masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
                h_aux = topk_codes(masked, min(aux_k, n_dead))
                e_hat = h_aux @ self.W_dec
                # mean over the batch; of the global batch in a data-parallel step
                denom = global_mean(((e - global_mean(e)) ** 2).sum(-1, keepdim=True))[0]
                aux = ((e - e_hat) ** 2).sum(-1).mean() / denom.clamp_min(
                    torch.finfo(e.dtype).tiny)
                loss = loss + self.hyper["aux_coeff"] * aux
                terms["aux"] = aux.detach()
        return LossOutput(loss, x_hat, h, terms)

    def compute_grads(self, x: torch.Tensor) -> LossOutput:
        """Loss of ``x`` and its gradients by the module docstring's formulas; autograd
        when the AuxK term is on in this step."""
        aux_k = int(self.hyper["aux_k"])
        if aux_k > 0 and bool((self.samples_since_fired
                               >= int(self.hyper["dead_samples"])).any()):
            return super().compute_grads(x)
        check_batch("x", x, self.d_in)
        with torch.no_grad():
            xc = x - self.b_dec
            h = topk_codes(torch.addmm(self.b_enc, xc, self.W_enc), int(self.hyper["k_top"]))
        mse, x_hat = selected_codes_grads(self, x, xc, h)
        return LossOutput(mse, x_hat, h, {"mse": mse}, {"fired": h.sum(0) > 0})

    @torch.no_grad()
    def after_step(self, out: LossOutput) -> None:
        """Reset the counter of latents that fired in the batch, add B to the others.

        ``out.stats`` ``"fired"`` and ``"samples"``, when present, are the batch's (the
        global batch of a data-parallel step); otherwise they are read off ``out.h``.
        """
        fired = out.stats.get("fired")
        if fired is None:
            fired = fired_latents(out.h)
        self.samples_since_fired.add_(out.stats.get("samples", out.h.shape[0])
                                      ).masked_fill_(fired, 0)
