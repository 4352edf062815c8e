r"""The calibration search shared by both grids: the penalty that gives a target L0.

A search holds, per family variant, the measured points ``(penalty, L0)`` and the
targets; the grid trains the penalties it asks for and adds what it measured. In order:

1. **ladder** (:func:`initial_ladder`): penalties log-spaced over the family's
   ``calibrate_range``;
2. **bracket** (:func:`next_penalties`): while some target is not bracketed (no measured
   penalty with L0 >= the target beside one with L0 <= it), widen geometrically in the
   direction it lies, one penalty :data:`WIDEN` times beyond the current end, until the
   penalty reaches :data:`SPAN` times the range's ends; a target still outside the L0
   range seen is **unreachable**;
3. **refine**: ``rounds`` passes train, for each bracketed target, the penalty read off
   inside its bracket (log-log interpolation first, the geometric midpoint later: L0 can
   fall off a cliff, where interpolation keeps landing on one side).

:func:`finish` reads each target's penalty off the points with
:func:`penalty_for_target`: with ``(log p_j, log L0_j)`` sorted by ``p`` and made
non-increasing in L0 (running minimum; L0 floored at ``1e-3`` for models that went
silent), linear interpolation of ``log p`` against ``log L0``. Inside the bracket this
never extrapolates. With a tolerance ``tol``, a measured penalty whose L0 is within a
factor ``tol`` of a target is taken as it is.

**Bracket search** (a state made with ``bracket=R``, for full-length passes whose points
are all kept as runs of the calibration seed): a target ``t`` is done once two measured
points bracket it within the ratio ``R`` -- ``L0_lo <= t <= L0_hi`` with
``L0_hi / L0_lo <= R`` (:func:`bracket_ratio`, on the points as measured, as the verdicts
read them) -- instead of once each run target is landed within ``tol``. Widening is the
same; each refinement pass aims, for every target not done, at the run target
(``aims``, e.g. ``t / 1.41`` and ``t * 1.41``) next to it on the side where its nearest
point is farther away, read off as above: interpolation the first time a run target is
aimed at, bisection of its bracket each time after. :func:`finish`
then gives the penalties of the run targets inside the L0 range seen (for other seeds)
and calls a target unreachable when no point lies on one side of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["SPAN", "WIDEN", "add_points", "bracket_ratio", "bracket_search", "finish",
           "initial_ladder", "new_state", "next_penalties", "penalty_for_target"]

_L0_FLOOR = 1e-3
#: Widest search, as factors of ``calibrate_range``'s low and high ends.
SPAN = (1e-6, 1e3)
#: Geometric widening step (each widening round adds one penalty ``WIDEN`` times beyond).
WIDEN = 10.0


def penalty_for_target(
    penalties: np.ndarray, l0s: np.ndarray, target: float, bounds: tuple[float, float]
) -> tuple[float, bool]:
    r"""Penalty whose L0 is ``target`` by log-log interpolation (see the module docstring).

    Outside the measured L0 range the end segment's slope is extended (clamped to
    ``[bounds[0] / 10, bounds[1] * 10]``) and the result is flagged extrapolated; the
    bracketing search (:func:`bracket_search`) only asks for bracketed targets.

    Returns
    -------
    (penalty, extrapolated)
    """
    lp, ll = _envelope(penalties, l0s)
    t = math.log(target)
    lo_b, hi_b = math.log(bounds[0] / 10.0), math.log(bounds[1] * 10.0)
    # ll is non-increasing along lp; np.interp needs increasing x: reverse
    x, y = ll[::-1], lp[::-1]
    x, keep = np.unique(x, return_index=True)
    y = y[keep]
    if x.size == 1:
        return float(math.exp(np.clip(y[0], lo_b, hi_b))), True
    if x[0] <= t <= x[-1]:
        return float(math.exp(np.interp(t, x, y))), False
    i, j = (0, 1) if t < x[0] else (-2, -1)
    slope = (y[j] - y[i]) / (x[j] - x[i])
    val = y[i] + slope * (t - x[i])
    return float(math.exp(np.clip(val, lo_b, hi_b))), True


def _envelope(penalties: Any, l0s: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(log p, log L0)`` sorted by ``p``, L0 made non-increasing and floored."""
    order = np.argsort(np.asarray(penalties, dtype=float), kind="stable")
    lp = np.log(np.asarray(penalties, dtype=float)[order])
    ll = np.log(np.maximum(np.minimum.accumulate(np.asarray(l0s, dtype=float)[order]),
                           _L0_FLOOR))
    return lp, ll


def _bracketed(points: list[list[float]], target: float) -> bool:
    """Whether the monotone envelope of ``points`` has L0 on both sides of ``target``."""
    _, ll = _envelope([p for p, _ in points], [v for _, v in points])
    t = math.log(target)
    return bool(ll.max() >= t >= ll.min())


def _nearest(points: list[list[float]], target: float) -> tuple[float, float]:
    """``(L0_lo, L0_hi)``: the measured L0s nearest ``target`` on each side (``0 < L0_lo
    <= target <= L0_hi``), 0 and inf where a side has none."""
    lo = max((v for _, v in points if 0 < v <= target), default=0.0)
    hi = min((v for _, v in points if v >= target), default=math.inf)
    return lo, hi


def bracket_ratio(points: list[list[float]], target: float) -> float:
    """``L0_hi / L0_lo`` of the measured points nearest ``target`` on each side
    (``L0_lo <= target <= L0_hi``; 1 for a point at the target); inf when one side has
    none. As :func:`~aensae.experiments.verdicts.frontier_value` reads a seed's runs."""
    lo, hi = _nearest(points, target)
    return hi / lo if lo > 0.0 and hi < math.inf else math.inf


def bracket_search(
    measure: Callable[[list[float]], list[float]], bounds: tuple[float, float],
    targets: list[float], ladder: int, rounds: int, *, bracket: float | None = None,
    aims: list[float] | None = None,
) -> dict[str, Any]:
    """The search of the module docstring for one variant, on a map ``measure``.

    ``measure(penalties) -> L0s`` trains (or evaluates) one model per penalty. Returns
    ``{"points": [[p, L0], ...], "penalties": {t: p}, "extrapolated": {t: False},
    "unreachable": {t: [L0 min, L0 max]}}`` (unreachable targets have no penalty).
    :func:`calibrate` runs the same steps for all variants of a rho at once. With
    ``bracket`` (and its ``aims``), the bracket search of the module docstring.
    """
    state = new_state(bounds, targets, bracket=bracket, aims=aims)
    todo = initial_ladder(bounds, ladder)
    while todo:
        add_points(state, measure(todo), todo)
        todo = next_penalties(state, rounds)
    return finish(state)


def new_state(bounds: tuple[float, float], targets: list[float], *,
              bracket: float | None = None, aims: list[float] | None = None
              ) -> dict[str, Any]:
    """Search state of one variant: its points, range limits and refinement count; with
    ``bracket`` (a ratio > 1) a bracket search aiming at the run targets ``aims``."""
    lo, hi = bounds
    state = {"bounds": [lo, hi], "limits": [lo * SPAN[0], hi * SPAN[1]],
             "targets": [float(t) for t in targets], "points": [], "refined": 0}
    if bracket is not None:
        if not bracket > 1 or not aims:
            raise ValueError(f"a bracket search needs a ratio > 1 and run targets to aim "
                             f"at, got bracket={bracket!r}, aims={aims!r}")
        state.update(bracket=float(bracket), aims=sorted(float(a) for a in aims))
    return state


def initial_ladder(bounds: tuple[float, float], n: int) -> list[float]:
    """``n`` penalties log-spaced over ``bounds``."""
    return [float(v) for v in np.geomspace(bounds[0], bounds[1], n)]


def add_points(state: dict[str, Any], l0s: list[float], penalties: list[float]) -> None:
    for p, v in zip(penalties, l0s, strict=True):
        state["points"].append([float(p), float(v)])


def _closest(points: list[list[float]], target: float, tol: float | None
             ) -> float | None:
    """The measured penalty whose L0 is nearest ``target`` in ratio, if within ``tol``."""
    if tol is None:
        return None
    best = None
    for p, v in points:
        if v > 0 and 1.0 / tol <= v / target <= tol:
            err = abs(math.log(v / target))
            if best is None or err < best[0]:
                best = (err, p)
    return None if best is None else best[1]


def next_penalties(state: dict[str, Any], rounds: int, tol: float | None = None
                   ) -> list[float]:
    """Penalties to measure next: widening while a reachable target is unbracketed, then
    up to ``rounds`` refinement passes; empty when the search is over. With ``tol``
    (passes as long as the main runs) a target that a measured penalty already reaches
    within the factor ``tol`` is neither widened for nor refined further."""
    pts = state["points"]
    ps = [p for p, _ in pts]
    lo_lim, hi_lim = state["limits"]
    _, ll = _envelope(ps, [v for _, v in pts])
    l0_max, l0_min = math.exp(ll.max()), math.exp(ll.min())
    ratio = state.get("bracket")
    if ratio is not None:
        tol = None  # a bracket search asks for brackets, not for landed run targets
    out: set[float] = set()
    for t in state["targets"]:
        if _bracketed(pts, t) or _closest(pts, t, tol) is not None:
            continue
        if t < l0_min and max(ps) < hi_lim:  # more penalty, lower L0
            out.add(min(max(ps) * WIDEN, hi_lim))
        elif t > l0_max and min(ps) > lo_lim:
            out.add(max(min(ps) / WIDEN, lo_lim))
    if out:
        return sorted(out)
    if state["refined"] >= rounds:
        return []
    if ratio is not None:
        aims = _bracket_aims(state)
        if not aims:
            return []
        state["refined"] += 1
        # an aim beyond the L0 range seen (a floor between it and its target) cannot be
        # read off: bisect the target's own bracket instead
        return sorted({_read_off(state, a) if _bracketed(pts, a) else _bisect(pts, t)
                       for a, t in aims} - set(ps))
    state["refined"] += 1
    refine: set[float] = set()
    for t in state["targets"]:
        if _bracketed(pts, t) and _closest(pts, t, tol) is None:
            if state["refined"] == 1:  # log-log interpolation first
                refine.add(penalty_for_target(np.array(ps), np.array([v for _, v in pts]),
                                              t, (lo_lim, hi_lim))[0])
            else:  # then bisection in log p: L0(p) can fall off a cliff
                refine.add(_bisect(pts, t))
    return sorted(refine - set(ps))


def _bracket_aims(state: dict[str, Any]) -> list[tuple[float, float]]:
    """``(aim, target)``: for every target bracketed by the envelope but not within the
    ratio, the run target next to it on the side of its farther nearest point."""
    pts, aims = state["points"], state["aims"]
    out: dict[float, float] = {}
    for t in state["targets"]:
        if not _bracketed(pts, t) or bracket_ratio(pts, t) <= state["bracket"]:
            continue
        lo, hi = _nearest(pts, t)
        below = lo == 0.0 or (hi < math.inf and t / lo >= hi / t)
        side = [a for a in aims if a < t] if below else [a for a in aims if a > t]
        if side:
            out.setdefault(max(side) if below else min(side), t)
        else:  # no run target on that side: the target's own bracket
            out.setdefault(t, t)
    return sorted(out.items())


def _read_off(state: dict[str, Any], aim: float) -> float:
    """Penalty for the L0 ``aim`` (bracketed by the envelope), inside its tightest bracket:
    log-log interpolation the first time it is aimed at, the geometric midpoint after."""
    pts = state["points"]
    tried = state.setdefault("aimed", [])
    again = aim in tried
    tried.append(aim)
    lp, ll = _tightest(pts, aim)
    if again or ll[0] == ll[1]:
        return float(math.exp(0.5 * (lp[0] + lp[1])))
    t = (math.log(aim) - ll[0]) / (ll[1] - ll[0])
    return float(math.exp(lp[0] + t * (lp[1] - lp[0])))


def _tightest(points: list[list[float]], target: float
              ) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(log p, log L0)`` of the two envelope points that bracket ``target`` most tightly
    (the largest penalty with L0 >= it, the smallest after it with L0 <= it)."""
    lp, ll = _envelope([p for p, _ in points], [v for _, v in points])
    t = math.log(target)
    i = max(j for j in range(len(lp)) if ll[j] >= t)
    k = min(j for j in range(i, len(lp)) if ll[j] <= t)
    return (float(lp[i]), float(lp[k])), (float(ll[i]), float(ll[k]))


def _bisect(points: list[list[float]], target: float) -> float:
    """Geometric midpoint of the tightest bracket of ``target`` on the monotone envelope."""
    lp, _ = _tightest(points, target)
    return float(math.exp(0.5 * (lp[0] + lp[1])))


def finish(state: dict[str, Any], tol: float | None = None) -> dict[str, Any]:
    """Penalties of the bracketed targets; L0 range of the unreachable ones.

    For a bracket search: ``brackets`` (target -> :func:`bracket_ratio`, inf when the
    envelope brackets a target but the points as measured do not), ``unreachable``
    (targets outside the L0 range seen) and the penalties of the run targets (``aims``)
    inside that range, for the seeds other than the calibration's.

    With ``tol`` the measured penalty nearest the target (within the factor ``tol``) is
    chosen over the interpolated one: its L0 at the main length is already known (such a
    target counts as reached even where the points do not bracket it, e.g. an L0 floor
    of 2.01 for a target of 2).
    """
    pts = np.asarray(state["points"], dtype=float)
    _, ll = _envelope(pts[:, 0], pts[:, 1])
    seen = [float(math.exp(ll.min())), float(math.exp(ll.max()))]
    out: dict[str, Any] = {"points": state["points"], "penalties": {}, "extrapolated": {},
                           "unreachable": {}}
    if "bracket" in state:
        out["brackets"] = {}
        for t in state["targets"]:
            if _bracketed(state["points"], t):
                out["brackets"][t] = bracket_ratio(state["points"], t)
            else:
                out["unreachable"][t] = seen
        for a in state["aims"]:  # penalties for the run targets of other seeds
            if _bracketed(state["points"], a):
                p, _ = penalty_for_target(pts[:, 0], pts[:, 1], a, tuple(state["limits"]))
                out["penalties"][a] = p
                out["extrapolated"][a] = False
        return out
    for t in state["targets"]:
        near = _closest(state["points"], t, tol)
        if near is not None:  # a measured full-length run within the tolerance
            out["penalties"][t] = near
            out["extrapolated"][t] = False
        elif _bracketed(state["points"], t):
            p, ex = penalty_for_target(pts[:, 0], pts[:, 1], t, tuple(state["limits"]))
            out["penalties"][t] = p
            out["extrapolated"][t] = ex
        else:
            out["unreachable"][t] = seen
    return out
