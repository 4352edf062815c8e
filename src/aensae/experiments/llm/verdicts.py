r"""The LLM grid's verdicts: each adaptive family against each baseline at the target L0,
by the synthetic grid's rule (:mod:`aensae.experiments.verdicts`).

A **cell** is one (metric, baseline, target ``t``, init). Each seed's value of the metric
at ``t`` is interpolated in ``log L0`` between that seed's two runs that bracket ``t``
(``calibrate.frontier`` places a calibrated family's runs at ``t / f`` and ``t * f``; a
TopK family's run has ``L0 = k = t``). The rule then needs ``MIN_SEEDS`` (3) seeds a
side, every run used settled (its dead fraction moved by at most ``DEAD_FLOOR`` (0.01)
over its last windows), and paired differences of one sign whose mean exceeds both the
seed spread and the metric's floor (:data:`CLAIMS`).

The paper's LLM claim is that the AEN-SAE has fewer dead latents than l1 baselines at
matched L0, with competitive CE loss. The three metrics, each against each baseline on
its own (not the best of them, so that a TopK baseline cannot hide an l1 one):

- ``dead_final``: the fraction of latents that never fired in the final training window
  (``train.dead_window`` tokens), lower is better;
- ``ce_loss_score``: :math:`(CE_0 - CE_{SAE}) / (CE_0 - CE_{clean})`, higher is better;
- ``kl_spliced``: KL from the clean to the spliced next-token distribution, nats, lower
  is better.
"""

from __future__ import annotations

import math
from typing import Any

from aensae.experiments.plotting import init_of, num
from aensae.experiments.verdicts import (
    ADAPTIVE,
    DEAD_FLOOR,
    compare,
    ema_start_count,
    pinned_count,
)

__all__ = ["CLAIMS", "pinned_runs", "start_set_runs", "verdict_cells", "verdict_targets"]

#: metric -> (what it is, which way is better, floor: the smallest difference that decides).
CLAIMS: dict[str, tuple[str, str, float]] = {
    "dead_final": ("dead fraction, final training window", "lower", DEAD_FLOOR),
    "ce_loss_score": ("CE-loss score (zero ablation)", "higher", 0.01),
    "kl_spliced": ("KL clean -> spliced, nats", "lower", 0.01),
}


def verdict_targets(rows: list[dict[str, Any]], config: dict[str, Any] | None
                    ) -> list[float]:
    """The targets the verdicts are read at: the config's ``target_l0`` of every family
    (``config``: ``config.json``'s normalised config), or, without it, the targets of the
    rows of uncalibrated (TopK) families and of tables with no frontier."""
    if config is not None:
        ts = {float(t) for f in config.get("family", []) for t in f.get("target_l0", [])}
        if ts:
            return sorted(ts)
    ts = {num(r.get("target_l0")) for r in rows if r.get("kind") == "sae"
          and (r.get("calibrated") is False or not num(r.get("calibrate_frontier")) > 1)}
    return sorted(t for t in ts if math.isfinite(t))


def verdict_cells(rows: list[dict[str, Any]], targets: list[float]
                  ) -> list[dict[str, Any]]:
    """Every cell (module docstring), as :func:`aensae.experiments.verdicts.compare`'s
    dicts with ``metric`` added; adaptive families without rows, or baselines without
    rows, give none."""
    sae = [r for r in rows if r.get("kind") == "sae"]
    fams = list(dict.fromkeys(str(r["family"]) for r in sae))
    tested = [f for f in fams if _arch(sae, f) in ADAPTIVE]
    bases = [f for f in fams if _arch(sae, f) not in ADAPTIVE]
    inits = sorted({init_of(r) for r in sae})
    cells = []
    for fam in tested:
        for metric, (_, better, floor) in CLAIMS.items():
            for base in bases:
                for init in inits:
                    for t in targets:
                        c = compare(sae, fam, (base,), _value(metric), better, None, t,
                                    init, floor)
                        if c is not None:
                            cells.append({**c, "base": base, "metric": metric})
    return cells


def _runs_of(rows: list[dict[str, Any]], fam: str, init: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind") == "sae" and r.get("family") == fam
            and init_of(r) == init]


def pinned_runs(rows: list[dict[str, Any]], fam: str, init: str) -> tuple[int, int]:
    """``(runs with more than PINNED of their latents at w_max at the end, runs)`` of an
    adaptive family under one init."""
    return pinned_count(_runs_of(rows, fam, init), "regime_w_max_frac_final")


def start_set_runs(rows: list[dict[str, Any]], fam: str, init: str) -> tuple[int, int]:
    """``(runs whose weights are still set by the EMA's start, runs)`` of an adaptive
    family under one init (:func:`aensae.experiments.verdicts.ema_start_share`)."""
    return ema_start_count(_runs_of(rows, fam, init), "regime_")


def _arch(rows: list[dict[str, Any]], fam: str) -> str:
    return next(str(r.get("arch")) for r in rows if r.get("family") == fam)


def _value(metric: str) -> Any:
    def value(r: dict[str, Any]) -> float:
        return num(r.get(metric))
    return value
