r"""Adaptive-lasso sparse autoencoder: ReLU codes with population-adaptive l1 weights.

Loss ``L = mean_{b,d} (x - x_hat)^2 + l1 * mean_b sum_i w_i h_bi`` with weights that carry
no gradient and are recomputed every step from a per-latent EMA of mean ``|h|``:

    ema_i  <- beta * ema_i + (1 - beta) * mean_b |h_bi|        (after each step, ema_0 = 1)
    w_pop  =  clip((ref / ema)^gamma, w_min, w_max)             ref = mean of top-p of ema
    w      =  1 + alpha(t) * (w_pop - 1)

``alpha(t) = 0`` for the first ``warmup_steps`` optimizer steps (weights exactly 1), then
rises linearly to 1 over ``ramp_steps``. The formulas live in :mod:`aensae.objective`
(:func:`~aensae.objective.update_ema`, :func:`~aensae.objective.population_weights`,
:func:`~aensae.objective.ramp_factor`, :func:`~aensae.objective.blend_weights`), the same
functions the exact solvers use.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from aensae.objective import blend_weights, population_weights, ramp_factor, update_ema
from aensae.saes.base import INIT, Hyper, LossOutput
from aensae.saes.relu_l1 import L1, ReluL1SAE

__all__ = ["ADAPTIVE_HYPER", "AdaptiveLassoSAE"]

#: Defaults: the AEN-SAE paper's reference implementation as issue 11 quotes it (EMA decay
#: ``beta = 0.999``; reference = mean of the top 1 % of the EMA, ``top_p = 0.01``;
#: weights clamped to ``[w_min, w_max] = [0.1, 10]``; a linear ramp of 2,000 steps after
#: the hold). The hold (``warmup_steps = 1000``) is aensae's own. The authors' published
#: Pythia-70M sweep (``../shared/reference/authors_pythia70m_runs.csv``) also ran
#: ``ema_beta`` 0.9999, ``ref_top_frac`` 0.05 / 0.005 and ``w_min`` 0.01, with a
#: 4,000-step hold; grids set those explicitly where they sweep them.
ADAPTIVE_HYPER: dict[str, Hyper] = {
    "gamma": Hyper(1.0, low=0.0, doc="exponent of the population weights"),
    "beta": Hyper(0.999, low=0.0, high=1.0, high_inclusive=False, doc="EMA decay"),
    "top_p": Hyper(0.01, low=0.0, high=1.0, low_inclusive=False,
                   doc="fraction of largest EMA entries averaged into the reference"),
    "w_min": Hyper(0.1, low=0.0, low_inclusive=False, doc="lower clamp of the weights"),
    "w_max": Hyper(10.0, low=0.0, low_inclusive=False, doc="upper clamp of the weights"),
    "warmup_steps": Hyper(1000, kind="int", low=0, doc="steps with weights held at 1"),
    "ramp_steps": Hyper(2000, kind="int", low=0, doc="steps of the linear ramp to w_pop"),
}


class AdaptiveLassoSAE(ReluL1SAE):
    """ReLU encoder with the AEN-SAE's population-adaptive l1 weights and no l2 term.

    Buffers: ``ema`` (d_sae,) initialised to 1 and ``step`` (the number of optimizer steps
    taken, int64 scalar); both are saved with the model.
    """

    arch: ClassVar[str] = "adaptive_lasso"
    HYPER: ClassVar[dict[str, Hyper]] = {"l1": L1, **ADAPTIVE_HYPER, "init": INIT}

    def __init__(self, d_in: int, d_sae: int, **kwargs: Any) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        self.register_buffer("ema", torch.ones(self.d_sae, dtype=self.W_dec.dtype))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    @classmethod
    def check_hyper_relations(cls, hyper: dict[str, float | int]) -> None:
        if hyper["w_min"] > hyper["w_max"]:
            raise ValueError(f"w_min must be <= w_max, got w_min={hyper['w_min']!r} > "
                             f"w_max={hyper['w_max']!r}")

    def ramp(self, step: int | None = None) -> float:
        """Cold-start factor ``alpha`` at the current step (``step``: its value, when the
        caller has already read the buffer, e.g. once for a stacked group on a GPU)."""
        return ramp_factor(int(self.step) if step is None else step,
                           int(self.hyper["warmup_steps"]), int(self.hyper["ramp_steps"]))

    @torch.no_grad()
    def l1_weights(self, step: int | None = None) -> torch.Tensor:
        """``blend_weights(population_weights(ema, ...), ramp())`` (d_sae,), no gradient.

        During the cold-start hold (``ramp() == 0``) the blend is exactly 1 for any finite
        population weights (they are clamped to ``[w_min, w_max]``), so the population
        weights are not computed then and ones are returned. ``step``: as for
        :meth:`ramp`.
        """
        alpha = self.ramp(step)
        if alpha == 0.0:
            return torch.ones_like(self.ema)
        hp = self.hyper
        w_pop = population_weights(self.ema, gamma=hp["gamma"], top_p=hp["top_p"],
                                   w_min=hp["w_min"], w_max=hp["w_max"])
        return blend_weights(w_pop, alpha)

    @torch.no_grad()
    def after_step(self, out: LossOutput) -> None:
        """``ema <- update_ema(ema, mean_b |h_b|, beta)``; ``step += 1``."""
        mean_abs = out.stats.get("mean_abs_h")
        if mean_abs is None:
            mean_abs = out.h.detach().abs().mean(0)
        self.ema.copy_(update_ema(self.ema, mean_abs.to(self.ema.dtype), self.hyper["beta"]))
        self.step.add_(1)
