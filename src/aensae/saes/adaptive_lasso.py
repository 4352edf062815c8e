r"""Adaptive-lasso sparse autoencoder: ReLU codes with population-adaptive l1 weights.

Loss ``L = mean_{b,d} (x - x_hat)^2 + l1 * mean_b sum_i w_i h_bi`` with weights that carry
no gradient and are recomputed every step from a per-latent EMA of mean ``|h|``:

    ema_i  <- beta * ema_i + (1 - beta) * mean_b |h_bi|        (ema_0 = 1)
    w_pop  =  clip((ref / ema)^gamma, w_min, w_max)             ref = mean of the top K of ema
    w      =  1 + alpha(t) * (w_pop - 1)

Order (``ema_update``): ``"before"`` (default) updates the EMA with the current batch's
codes and then computes that step's weights from it, as the reference implementation's
``compute_loss`` does (``update_ema(h)`` then ``get_adaptive_weights()``); ``"after"``
(aensae's order before issue 24) computes the weights from the EMA of the previous steps
and updates it after the optimizer step. ``K = max(1, int(top_p * m))`` (``ref_count =
"floor"``, the reference's count; ``"ceil"`` rounds up, aensae's earlier count).

``alpha(t) = 0`` for the first ``hold = warmup_steps + floor(warmup_frac * T)`` optimizer
steps (weights exactly 1; ``T`` is the training run's length, set by the trainer through
:meth:`AdaptiveLassoSAE.set_run_length`), then rises linearly to 1 over ``ramp_steps``.
The default hold is 20 % of the run (``warmup_frac = 0.2``, ``warmup_steps = 0``): the
reference's spiked sweep holds 10,000 of 50,000 steps. The formulas live in
:mod:`aensae.objective` (:func:`~aensae.objective.update_ema`,
:func:`~aensae.objective.population_weights`, :func:`~aensae.objective.hold_steps`,
:func:`~aensae.objective.ramp_factor`, :func:`~aensae.objective.blend_weights`), the same
functions the exact solvers use.

:meth:`AdaptiveLassoSAE.regime` summarises the weights' state (fractions at ``w_max`` and
``w_min``, quantiles of the weights and of the EMA): the trainer records it at every
dead-latent window (:class:`aensae.saes.dead.DeadTracker`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from aensae.objective import (
    REF_COUNTS,
    blend_weights,
    hold_steps,
    ramp_factor,
    ref_count,
    torch_population_weights,
    update_ema,
)
from aensae.saes.base import INIT, Hyper, LossOutput
from aensae.saes.collectives import global_average
from aensae.saes.relu_l1 import L1, ReluL1SAE

__all__ = ["ADAPTIVE_HYPER", "REGIME_QUANTILES", "AdaptiveLassoSAE"]

#: Defaults: the AEN-SAE paper's reference implementation (EMA decay ``beta = 0.999``;
#: reference = mean of the top 1 % of the EMA, ``top_p = 0.01``, counted as
#: ``int(top_p * m)``; weights clamped to ``[w_min, w_max] = [0.1, 10]``; the EMA updated
#: with the current batch before the weights; the weights held at 1 for 20 % of the run
#: as in its spiked sweep, then a linear ramp of 2,000 steps). The authors' published
#: sweeps (``../shared/reference/``) also ran ``ema_beta`` 0.9999, ``ref_top_frac`` 0.05
#: and ``w_min`` 0.01; grids set those explicitly where they sweep them. Each default can
#: be set back to aensae's earlier choice: ``ref_count = "ceil"``, ``ema_update =
#: "after"``, ``warmup_frac = 0`` with ``warmup_steps = 1000``.
ADAPTIVE_HYPER: dict[str, Hyper] = {
    "gamma": Hyper(1.0, low=0.0, doc="exponent of the population weights"),
    "beta": Hyper(0.999, low=0.0, high=1.0, high_inclusive=False, doc="EMA decay"),
    "top_p": Hyper(0.01, low=0.0, high=1.0, low_inclusive=False,
                   doc="fraction of largest EMA entries averaged into the reference"),
    "w_min": Hyper(0.1, low=0.0, low_inclusive=False, doc="lower clamp of the weights"),
    "w_max": Hyper(10.0, low=0.0, low_inclusive=False, doc="upper clamp of the weights"),
    "warmup_steps": Hyper(0, kind="int", low=0,
                          doc="steps of the hold (weights at 1) on top of warmup_frac * T"),
    "warmup_frac": Hyper(0.2, low=0.0, high=1.0, high_inclusive=False,
                         doc="hold as a fraction of the run's T steps (reference: 0.2)"),
    "ramp_steps": Hyper(2000, kind="int", low=0, doc="steps of the linear ramp to w_pop"),
    "ema_update": Hyper("before", kind="choice", choices=("before", "after"),
                        doc="EMA updated with the batch before its weights (the reference) "
                            "or after the step"),
    "ref_count": Hyper("floor", kind="choice", choices=REF_COUNTS,
                       doc="reference size max(1, int(top_p m)) (floor, the reference) or "
                           "ceil"),
}

#: Quantiles of the weights and of the EMA in :meth:`AdaptiveLassoSAE.regime`.
REGIME_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: A weight within this relative distance of a clamp counts as at that clamp.
_AT_CLAMP = 1e-6


class AdaptiveLassoSAE(ReluL1SAE):
    """ReLU encoder with the AEN-SAE's population-adaptive l1 weights and no l2 term.

    Buffers: ``ema`` (d_sae,) initialised to 1, ``step`` (the number of optimizer steps
    taken) and ``hold`` (the steps the weights stay at 1; ``warmup_steps`` until the
    trainer sets the run's length), int64 scalars; all are saved with the model.
    """

    arch: ClassVar[str] = "adaptive_lasso"
    HYPER: ClassVar[dict[str, Hyper]] = {"l1": L1, **ADAPTIVE_HYPER, "init": INIT}

    def __init__(self, d_in: int, d_sae: int, **kwargs: Any) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        self.register_buffer("ema", torch.ones(self.d_sae, dtype=self.W_dec.dtype))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("hold", torch.tensor(int(self.hyper["warmup_steps"]),
                                                  dtype=torch.int64))
        self._ema_next: torch.Tensor | None = None
        hp = self.hyper  # validated and fixed: the step's arguments, counted once
        self._population = (float(hp["gamma"]),
                            ref_count(float(hp["top_p"]), self.d_sae, str(hp["ref_count"])),
                            float(hp["w_min"]), float(hp["w_max"]))

    @classmethod
    def check_hyper_relations(cls, hyper: dict[str, float | int]) -> None:
        if hyper["w_min"] > hyper["w_max"]:
            raise ValueError(f"w_min must be <= w_max, got w_min={hyper['w_min']!r} > "
                             f"w_max={hyper['w_max']!r}")

    def set_run_length(self, steps: int) -> None:
        """Fix the hold for a run of ``steps`` optimizer steps:
        ``hold = warmup_steps + floor(warmup_frac * steps)``.

        Only a model that has not stepped yet takes it; a model resumed or trained further
        keeps the hold of the run it started with.
        """
        if int(self.step) == 0:
            self.hold.fill_(hold_steps(int(self.hyper["warmup_steps"]),
                                       float(self.hyper["warmup_frac"]), steps))

    def ramp(self, step: int | None = None) -> float:
        """Cold-start factor ``alpha`` at the current step (``step``: its value, when the
        caller has already read the buffer, e.g. once for a stacked group on a GPU)."""
        return ramp_factor(int(self.step) if step is None else step, int(self.hold),
                           int(self.hyper["ramp_steps"]))

    def _weights_from(self, ema: torch.Tensor, step: int | None) -> torch.Tensor:
        alpha = self.ramp(step)
        if alpha == 0.0:
            return torch.ones_like(ema)
        return blend_weights(torch_population_weights(ema, *self._population), alpha)

    @torch.no_grad()
    def l1_weights(self, step: int | None = None) -> torch.Tensor:
        """``blend_weights(population_weights(ema, ...), ramp())`` (d_sae,), no gradient:
        the weights of the current EMA (what the exact problem of the trained model uses).

        During the cold-start hold (``ramp() == 0``) the blend is exactly 1 for any finite
        population weights (they are clamped to ``[w_min, w_max]``), so the population
        weights are not computed then and ones are returned. ``step``: as for
        :meth:`ramp`.
        """
        return self._weights_from(self.ema, step)

    @torch.no_grad()
    def step_weights(self, mean_abs: torch.Tensor) -> torch.Tensor:
        """The weights of a training step whose batch has ``mean_b |h_b|`` = ``mean_abs``.

        ``ema_update = "before"``: ``ema' = update_ema(ema, mean_abs, beta)`` (over the
        global batch in a data-parallel step) and the weights of ``ema'``, which
        :meth:`after_step` then stores; ``"after"``: :meth:`l1_weights`.
        """
        if self.hyper["ema_update"] != "before":
            self._ema_next = None
            return self.l1_weights()
        mean_abs = global_average(mean_abs.detach().to(self.ema.dtype))
        self._ema_next = update_ema(self.ema, mean_abs, self.hyper["beta"])
        return self._weights_from(self._ema_next, None)

    def loss_weights(self, h: torch.Tensor) -> torch.Tensor:
        """:meth:`step_weights` of ``mean_b |h_b|`` of the batch's codes ``h``."""
        return self.step_weights(h.detach().abs().mean(0))

    @torch.no_grad()
    def after_step(self, out: LossOutput) -> None:
        """``ema <- update_ema(ema, mean_b |h_b|, beta)`` (the value the step's weights
        used, under ``ema_update = "before"``); ``step += 1``."""
        if self._ema_next is not None:
            self.ema.copy_(self._ema_next)
            self._ema_next = None
        else:
            mean_abs = out.stats.get("mean_abs_h")
            if mean_abs is None:
                mean_abs = out.h.detach().abs().mean(0)
            self.ema.copy_(update_ema(self.ema, mean_abs.to(self.ema.dtype),
                                      self.hyper["beta"]))
        self.step.add_(1)

    @torch.no_grad()
    def regime(self) -> dict[str, float]:
        """The weights' state now: ``w_max_frac`` and ``w_min_frac`` (fractions of latents
        whose weight is at the clamp, within a relative 1e-6), ``w_qXX`` and ``ema_qXX``
        (quantiles :data:`REGIME_QUANTILES` of the weights and of the EMA), ``alpha``
        (the ramp factor) and ``step``. During the hold every weight is 1."""
        w = self.l1_weights().to(torch.float64)
        ema = self.ema.detach().to(torch.float64)
        hp = self.hyper
        out = {"step": int(self.step), "alpha": self.ramp(),
               "w_max_frac": float((w >= hp["w_max"] * (1 - _AT_CLAMP)).double().mean()),
               "w_min_frac": float((w <= hp["w_min"] * (1 + _AT_CLAMP)).double().mean())}
        q = torch.tensor(REGIME_QUANTILES, dtype=torch.float64, device=w.device)
        for name, v in (("w", w), ("ema", ema)):
            vals = torch.quantile(v, q).tolist()
            out.update({f"{name}_q{int(round(100 * p)):02d}": float(x)
                        for p, x in zip(REGIME_QUANTILES, vals, strict=True)})
        return out
