r"""The verdict rule of the spiked grid's report: cells decided at the target L0 itself,
by seeds, and only where training has settled.

A **cell** is one (rho, target L0, init). For a family and a test seed, the seed's
value of a metric at the target is read off its own frontier: linear interpolation in
``log L0`` between the seed's two runs that bracket the target most tightly
(:func:`seed_values`; a seed whose runs do not bracket the target gives no value).
The family is compared with each baseline; the best baseline is the one with the best
mean over its seeds. Then, in this order:

1. **undecided (n seeds)**: either side has fewer than :data:`MIN_SEEDS` seeds at the
   target (``n`` is the smaller count);
2. **not converged**: in a run that a seed's value comes from, the dead fraction moved by
   more than its floor (:data:`DEAD_FLOOR`) over the last windows (``dead_trend``); the
   cell still carries the paired differences below and, as ``if_settled``, the outcome
   they would give, for the report to show;
3. over the seeds both sides have, ``d_s`` is the paired difference oriented so that
   ``d > 0`` favours the family; **better** when every ``d_s > 0`` and the mean exceeds
   ``max(spread, floor)`` (``spread``: the larger max - min over seeds of the two
   sides), **worse** in the mirror case, **undecided** otherwise.

A claim over cells is **supported** when at least one cell is decided, at least 75 % of
the decided cells favour it and none goes against it; **contradicted** in the mirror
case; otherwise **inconclusive**, with the counts, the undecided and the not-converged
cells listed. A cell that cannot be decided is an outcome, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aensae.experiments.plotting import init_of, num

__all__ = ["ADAPTIVE", "DEAD_FLOOR", "EMA_START", "MIN_SEEDS", "PINNED", "RULE", "compare",
           "ema_start_count", "ema_start_share", "frontier_value", "pinned_count",
           "seed_values", "span", "summarise", "tally_verdict"]

#: The adaptive families (the claims' subject), when a grid has them.
ADAPTIVE = ("aen", "adaptive_lasso")

#: Fewest seeds per side at the target for a decided cell.
MIN_SEEDS = 3
#: The dead fraction's floor: smallest difference that decides a cell, and the largest
#: move over the last windows of a run that still counts as converged.
DEAD_FLOOR = 0.01
#: A run with more than this fraction of its latents at ``w_max`` is outside the
#: method's intended regime ("valid features w ~ 1, noise w >> 1").
PINNED = 0.5

#: A run in which the EMA's start, decayed to ``beta^T``, is more than this share of the
#: active latents' EMA (95th percentile) at the end has weights set by that start (and so
#: by the run's length), not by the latents' activity (:func:`ema_start_share`).
EMA_START = 0.5

RULE = (f"a cell is one (rho, target L0, init). Each test seed's value at the target is "
        "interpolated in log L0 between its own two runs that bracket the target (a seed "
        "whose runs do not bracket it gives none). A cell is undecided when either side has "
        f"fewer than {MIN_SEEDS} seeds at the target; not converged when the dead fraction "
        f"of a run it uses moved by more than {DEAD_FLOOR:g} over its last windows; "
        "otherwise the paired differences against the best baseline (best mean over seeds) "
        "decide it when all have the same sign and their mean exceeds both the seed spread "
        "(larger max - min of the two sides) and the metric's floor. A claim is supported "
        "when >= 75% of its decided cells favour it and none goes against it, contradicted "
        "in the mirror case, inconclusive otherwise")


def frontier_value(points: Sequence[tuple[float, float, Any]], target: float
                   ) -> tuple[float, list[Any]]:
    """``(value at L0 = target, the payloads of the points it came from)`` along one seed's
    frontier of ``(L0, value, payload)`` points.

    Linear interpolation in ``log L0`` between the two points that bracket the target
    most tightly; NaN (and no payload) when no point lies on one side. Points with a
    non-finite or non-positive L0 or a non-finite value are ignored; points at the target
    itself give their mean.
    """
    pts = [p for p in points if math.isfinite(p[0]) and p[0] > 0 and math.isfinite(p[1])]
    if not (math.isfinite(target) and target > 0):
        return math.nan, []
    below = [p for p in pts if p[0] <= target]
    above = [p for p in pts if p[0] >= target]
    if not below or not above:
        return math.nan, []
    lo = max(below, key=lambda p: p[0])
    hi = min(above, key=lambda p: p[0])
    if lo[0] == hi[0]:
        same = [p for p in pts if p[0] == lo[0]]
        return sum(p[1] for p in same) / len(same), [p[2] for p in same]
    t = (math.log(target) - math.log(lo[0])) / (math.log(hi[0]) - math.log(lo[0]))
    return lo[1] + t * (hi[1] - lo[1]), [lo[2], hi[2]]


def seed_values(rows: list[dict[str, Any]], fam: str, rho: float | None, target: float,
                init: str, value: Callable[[dict[str, Any]], float]
                ) -> dict[float, tuple[float, bool]]:
    """seed -> (value at ``target``, settled) for ``fam``'s test runs in the cell
    (``rho=None``: rows of any ``rho``, as the LLM grid's, which have none).

    ``settled``: every run the value comes from moved its dead fraction by at most
    :data:`DEAD_FLOOR` over its last windows (``|dead_trend|``; a table without the
    column counts as settled).
    """
    by_seed: dict[float, list[tuple[float, float, dict[str, Any]]]] = {}
    for r in rows:
        if (r.get("kind") == "sae" and r.get("family") == fam
                and (rho is None or num(r.get("rho")) == rho)
                and init_of(r) == init and r.get("role", "test") != "selection"):
            by_seed.setdefault(num(r.get("seed")), []).append((num(r.get("l0")), value(r), r))
    out = {}
    for seed, pts in by_seed.items():
        v, used = frontier_value(pts, target)
        if math.isfinite(v):
            trend = [abs(num(u.get("dead_trend"))) for u in used]
            out[seed] = (v, all(not math.isfinite(t) or t <= DEAD_FLOOR for t in trend))
    return out


def pinned_count(runs: list[dict[str, Any]], column: str) -> tuple[int, int]:
    """``(runs with more than PINNED of their latents at w_max, runs)`` among ``runs``
    whose ``column`` (the final fraction at w_max) is a number."""
    values = [num(r.get(column)) for r in runs]
    values = [v for v in values if math.isfinite(v)]
    return sum(v > PINNED for v in values), len(values)


def ema_start_share(row: dict[str, Any], prefix: str = "") -> float:
    r"""Share of the active latents' EMA at the end of a run that is still its start.

    The EMA of mean ``|h_i|`` starts at 1 and takes one update per step,
    ``ema <- beta ema + (1 - beta) mean_b |h_bi|``, so after ``T`` steps
    ``ema_i = beta^T + a_i`` with ``a_i = (1 - beta) sum_t beta^(T-1-t) mean_b |h_bi|(t)``
    the latent's own activity. The weights ``w_i = (ref / ema_i)^gamma`` then compare
    ``beta^T + a_ref`` with ``beta^T + a_i``: while the residue ``beta^T`` is not small
    beside the activity of the most active latents, it compresses every weight toward 1
    and the weights move with the run's length, not with the latents' activity. The share
    is ``beta^T / ema_q95`` (``hp_beta``, ``steps``, ``ema_q95_final``: the 95th percentile,
    the active latents; the median is the residue itself where most latents never fire),
    NaN for runs without an EMA. ``prefix`` names the grid's regime columns (``"regime_"``
    in the LLM grid's table).
    """
    beta, steps = num(row.get("hp_beta")), num(row.get("steps"))
    ema = num(row.get(f"{prefix}ema_q95_final"))
    if not (math.isfinite(beta) and math.isfinite(steps) and math.isfinite(ema) and ema > 0):
        return math.nan
    return beta ** steps / ema


def ema_start_count(runs: list[dict[str, Any]], prefix: str = "") -> tuple[int, int]:
    """``(runs whose start share exceeds EMA_START, runs)`` among ``runs`` with an EMA
    (:func:`ema_start_share`)."""
    values = [ema_start_share(r, prefix) for r in runs]
    values = [v for v in values if math.isfinite(v)]
    return sum(v > EMA_START for v in values), len(values)


def span(v: list[float]) -> float:
    """``max - min`` (NaN for no values)."""
    return max(v) - min(v) if v else math.nan


def compare(rows: list[dict[str, Any]], fam: str, baselines: Sequence[str],
            value: Callable[[dict[str, Any]], float], better: str, rho: float | None,
            target: float, init: str, floor: float,
            exclude: Callable[[str], bool] | None = None) -> dict[str, Any] | None:
    """``fam`` against its best baseline in one cell (module docstring). ``None`` when
    neither side has any run in the cell."""
    a = seed_values(rows, fam, rho, target, init, value)
    sign = 1.0 if better == "higher" else -1.0
    best = None
    for b in baselines:
        if exclude is not None and exclude(b):
            continue
        bv = seed_values(rows, b, rho, target, init, value)
        if not bv:
            continue
        score = sign * float(np.mean([v for v, _ in bv.values()]))
        if best is None or score > best[0]:
            best = (score, b, bv)
    if not a and best is None:
        return None
    b, bv = (best[1], best[2]) if best is not None else ("none", {})
    cell: dict[str, Any] = {"fam": fam, "base": b, "rho": rho, "target": target,
                            "init": init, "a": [v for v, _ in a.values()],
                            "b": [v for v, _ in bv.values()], "d": [], "spread": math.nan}
    n = min(len(a), len(bv))
    if n < MIN_SEEDS:
        cell["outcome"] = f"undecided ({n} seed{'s' if n != 1 else ''})"
        return cell
    settled = all(ok for _, ok in a.values()) and all(ok for _, ok in bv.values())
    common = sorted(set(a) & set(bv))
    if len(common) < MIN_SEEDS:
        cell["outcome"] = (f"undecided ({len(common)} paired seeds)" if settled
                           else "not converged")
        return cell
    d = [sign * (a[s][0] - bv[s][0]) for s in common]
    av, bvals = [a[s][0] for s in common], [bv[s][0] for s in common]
    spread = max(span(av), span(bvals))
    margin = max(spread, floor)
    mean = float(np.mean(d))
    if min(d) > 0 and mean > margin:
        outcome = "better"
    elif max(d) < 0 and -mean > margin:
        outcome = "worse"
    else:
        outcome = "undecided"
    cell.update({"a": av, "b": bvals, "d": d, "spread": spread, "outcome": outcome})
    if not settled:  # the differences are shown, the cell is not decided
        cell.update({"outcome": "not converged", "if_settled": outcome})
    return cell


def tally_verdict(cells: list[dict[str, Any]]) -> str:
    """The claim's verdict over its cells (module docstring)."""
    wins = sum(c["outcome"] == "better" for c in cells)
    losses = sum(c["outcome"].startswith("worse") for c in cells)
    decided = wins + losses
    rest = [c["outcome"] for c in cells if c["outcome"] not in ("better",)
            and not c["outcome"].startswith("worse")]
    why = ", ".join(f"{rest.count(o)} {o}" for o in sorted(set(rest)))
    if decided and wins >= 0.75 * decided and losses == 0:
        return f"supported (better in {wins} of {len(cells)} cells" + \
            (f"; {why})" if why else ")")
    if decided and losses >= 0.75 * decided and wins == 0:
        return f"contradicted (worse in {losses} of {len(cells)} cells" + \
            (f"; {why})" if why else ")")
    return (f"inconclusive (better in {wins}, worse in {losses} of {len(cells)} cells"
            + (f"; {why})" if why else ")"))


def summarise(v: list[float], spec: str = ".3g") -> str:
    """``mean [min, max]`` (the value for one, ``n/a`` for none)."""
    v = [x for x in v if math.isfinite(x)]
    if not v:
        return "n/a"
    if len(v) == 1:
        return format(v[0] + 0.0, spec)
    return (f"{format(float(np.mean(v)) + 0.0, spec)} [{format(min(v) + 0.0, spec)}, "
            f"{format(max(v) + 0.0, spec)}]")
