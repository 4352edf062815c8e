r"""The selection seed: each family's configuration picked before any test seed runs.

A family that sweeps hyperparameters (the adaptive families over the reference's grid
``gamma x beta x top_p``, elastic net over ``l2``) gives the claim its best shot only if
the configuration is chosen by a rule fixed in advance, on data the verdicts never see.
``[selection]`` names that data: one seed (also the calibration's), the primary target
L0, the initialisation the choice is made on, a metric and an explained-variance band.

The rule, per (family, rho), over the family's variants with ``init = selection.init``:

1. each variant's metric and explained variance at the primary target ``t``: linear
   interpolation in ``log L0`` between the selection seed's two runs that bracket ``t``
   (:func:`at_target`); a variant whose runs do not bracket ``t`` is not a candidate;
2. candidates: explained variance ``>= best - ev_within`` (the best among the variants);
3. the candidate with the best metric (:data:`SELECTION_METRICS` says lower or higher);
   ties go to the first variant in the config's sweep order.

When no variant brackets the target, the first variant is used and the report says so.
The choice (hyperparameters without ``init``) holds for every init of the family at that
rho. It is written to ``OUT/selection.json`` with every candidate's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aensae.experiments.config import (
    Family,
    check_keys,
    check_number,
    config_error,
    variant_id,
)
from aensae.experiments.plotting import num
from aensae.experiments.verdicts import frontier_value

__all__ = ["MIN_TEST_SEEDS", "SELECTION_FILE", "SELECTION_METRICS", "at_target",
           "choose", "read_selection", "selection_rule", "strip_init", "validate_selection",
           "variant_id"]

#: Fewest test seeds a config with a selection must have (a verdict needs 3 per cell).
MIN_TEST_SEEDS = 3
#: Results columns the selection may use, and whether lower or higher is better.
SELECTION_METRICS = {"dead_median_last": "lower", "dead_final": "lower",
                     "explained_variance": "higher", "mse": "lower",
                     "supp_f1": "higher", "rec_supp_f1": "higher",
                     "rec_atoms_frac": "higher"}
SELECTION_FILE = "selection.json"
_KEYS = {"seed", "target_l0", "init", "metric", "ev_within", "ablation_targets"}


def validate_selection(raw: Any, seeds: list[int], families: list[Family]) -> dict[str, Any]:
    """The checked ``[selection]`` table (one-line :class:`InputError` otherwise)."""
    check_keys("[selection]", raw, _KEYS)
    for key in ("seed", "target_l0"):
        if key not in raw:
            raise config_error(f"selection.{key}", "is required")
    sel = {"init": "independent", "metric": "dead_median_last", "ev_within": 0.02, **raw}
    sel["seed"] = check_number("selection.seed", sel["seed"], kind=int, low=0)
    sel["target_l0"] = check_number("selection.target_l0", sel["target_l0"], low=0.0,
                                    low_open=True)
    if sel["init"] not in ("tied", "independent"):
        raise config_error("selection.init", f"must be \"tied\" or \"independent\", got "
                                             f"{sel['init']!r}")
    if sel["metric"] not in SELECTION_METRICS:
        raise config_error("selection.metric", f"unknown metric {sel['metric']!r}; expected "
                                               f"one of {', '.join(SELECTION_METRICS)}")
    sel["ev_within"] = check_number("selection.ev_within", sel["ev_within"], low=0.0)
    if sel["seed"] in seeds:
        raise config_error("selection.seed", f"{sel['seed']} is also in experiment.seeds "
                                             f"{seeds}; the selection seed is used for "
                                             "nothing else")
    if len(seeds) < MIN_TEST_SEEDS:
        raise config_error("experiment.seeds", f"a config with [selection] needs at least "
                                               f"{MIN_TEST_SEEDS} test seeds for a decided "
                                               f"verdict, got {len(seeds)} ({seeds})")
    _check_among_targets("selection.target_l0", [sel["target_l0"]], families)
    if "ablation_targets" in sel:  # absent: left out, so that older configs keep their hash
        sel["ablation_targets"] = _ablation_targets(sel["ablation_targets"], families)
    return sel


def _ablation_targets(raw: Any, families: list[Family]) -> list[float]:
    """``selection.ablation_targets``: the verdict targets of the inits other than
    ``selection.init`` (absent: all of each family's targets). A non-empty list of
    distinct targets, each among every targeted family's ``target_l0``."""
    key = "selection.ablation_targets"
    if not isinstance(raw, list) or not raw:
        raise config_error(key, f"must be a non-empty list of target L0s, got {raw!r}")
    out = [check_number(f"{key}[{i}]", v, low=0.0, low_open=True) for i, v in enumerate(raw)]
    if len(set(out)) != len(out):
        raise config_error(key, f"lists a target twice: {raw!r}")
    _check_among_targets(key, out, families)
    return sorted(out)


def _check_among_targets(key: str, values: list[float], families: list[Family]) -> None:
    """One-line error naming ``key`` unless every value is among the ``target_l0`` of each
    family that has targets."""
    for fam in families:
        missing = [t for t in values if fam.target_l0 and t not in fam.target_l0]
        if missing:
            raise config_error(key, f"{missing[0]:g} is not among family {fam.name!r}'s "
                                    f"target_l0 {list(fam.target_l0)}")


def selection_rule(sel: dict[str, Any]) -> str:
    """The rule in words, as the report prints it."""
    better = SELECTION_METRICS[sel["metric"]]
    return (f"on selection seed {sel['seed']} (used for nothing else), init {sel['init']}, "
            f"at the primary target L0 {sel['target_l0']:g} (interpolated in log L0 between "
            "the seed's two runs that bracket it): among the variants whose explained "
            f"variance is within {sel['ev_within']:g} of the family's best, the one with the "
            f"{'lowest' if better == 'lower' else 'highest'} {sel['metric']}; ties to the "
            "first in the sweep's order; per family and rho")


def at_target(points: Sequence[tuple[float, float]], target: float) -> float:
    """``value`` at ``L0 = target`` along one seed's ``(L0, value)`` frontier
    (:func:`aensae.experiments.verdicts.frontier_value`: linear in ``log L0``
    between the two points that bracket the target most tightly, NaN when none does)."""
    return frontier_value([(x, y, None) for x, y in points], target)[0]


def strip_init(hyper: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters without ``init`` (the choice holds for every init)."""
    return {k: v for k, v in hyper.items() if k != "init"}


def choose(families: list[Family], rhos: list[float], sel: dict[str, Any],
           rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The selection (see the module docstring) from the selection seed's result rows.

    Returns ``{"rule": ..., "choices": [{"family", "rho", "hyper", "variant", "reason",
    "candidates": [...]}, ...]}``, JSON-ready.
    """
    metric, target = sel["metric"], float(sel["target_l0"])
    sign = 1.0 if SELECTION_METRICS[metric] == "lower" else -1.0
    choices = []
    for fam in families:
        variants = [h for h in fam.variants() if h.get("init", "tied") == sel["init"]]
        if not variants:  # the family does not run the selection's init: its own ones
            variants = fam.variants()
        for rho in rhos:
            cands = []
            for order, h in enumerate(variants):
                runs = [r for r in rows if r.get("kind") == "sae"
                        and r.get("family") == fam.name and num(r.get("rho")) == rho
                        and r.get("seed") == sel["seed"]
                        and r.get("variant") == variant_id(h)]
                pts_m = [(num(r.get("l0")), num(r.get(metric))) for r in runs]
                pts_e = [(num(r.get("l0")), num(r.get("explained_variance"))) for r in runs]
                cands.append({"order": order, "hyper": strip_init(h),
                              "metric": at_target(pts_m, target),
                              "explained_variance": at_target(pts_e, target),
                              "l0_seen": sorted(num(r.get("l0")) for r in runs)})
            ok = [c for c in cands if math.isfinite(c["metric"])
                  and math.isfinite(c["explained_variance"])]
            if ok:
                best_ev = max(c["explained_variance"] for c in ok)
                band = [c for c in ok if c["explained_variance"] >= best_ev - sel["ev_within"]]
                pick = min(band, key=lambda c: (sign * c["metric"], c["order"]))
                reason = (f"{metric} {pick['metric']:.4g} at L0 {target:g}, explained "
                          f"variance {pick['explained_variance']:.4g} (family's best "
                          f"{best_ev:.4g}); {len(band)} of {len(cands)} variants in the band")
            else:
                pick = cands[0]
                seen = ", ".join(f"{v:.3g}" for c in cands for v in c["l0_seen"]) or "none"
                reason = (f"the family's only variant; its runs do not bracket L0 {target:g}"
                          if len(cands) == 1 else
                          f"no variant's runs bracket L0 {target:g}: the first variant of "
                          "the sweep is used") + f" (L0 seen: {seen})"
            choices.append({"family": fam.name, "rho": rho, "hyper": pick["hyper"],
                            "reason": reason, "candidates": cands})
    return {"rule": selection_rule(sel), "choices": choices}


def read_selection(out: Path) -> dict[str, Any] | None:
    """``OUT/selection.json`` (``None`` when absent)."""
    from aensae._io import read_json_record

    path = Path(out) / SELECTION_FILE
    if not path.is_file():
        return None
    return read_json_record(path, ("rule", "choices"),
                            remedy="delete it to make the selection again")
