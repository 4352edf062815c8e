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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["SPAN", "WIDEN", "add_points", "bracket_search", "finish", "initial_ladder",
           "new_state", "next_penalties", "penalty_for_target"]

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


def bracket_search(
    measure: Callable[[list[float]], list[float]], bounds: tuple[float, float],
    targets: list[float], ladder: int, rounds: int,
) -> dict[str, Any]:
    """The search of the module docstring for one variant, on a map ``measure``.

    ``measure(penalties) -> L0s`` trains (or evaluates) one model per penalty. Returns
    ``{"points": [[p, L0], ...], "penalties": {t: p}, "extrapolated": {t: False},
    "unreachable": {t: [L0 min, L0 max]}}`` (unreachable targets have no penalty).
    :func:`calibrate` runs the same steps for all variants of a rho at once.
    """
    state = new_state(bounds, targets)
    todo = initial_ladder(bounds, ladder)
    while todo:
        add_points(state, measure(todo), todo)
        todo = next_penalties(state, rounds)
    return finish(state)


def new_state(bounds: tuple[float, float], targets: list[float]) -> dict[str, Any]:
    """Search state of one variant: its points, range limits and refinement count."""
    lo, hi = bounds
    return {"bounds": [lo, hi], "limits": [lo * SPAN[0], hi * SPAN[1]],
            "targets": [float(t) for t in targets], "points": [], "refined": 0}


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


def _bisect(points: list[list[float]], target: float) -> float:
    """Geometric midpoint of the tightest bracket of ``target`` on the monotone envelope."""
    lp, ll = _envelope([p for p, _ in points], [v for _, v in points])
    t = math.log(target)
    above = [x for x, y in zip(lp, ll, strict=True) if y >= t]  # smaller penalties
    below = [x for x, y in zip(lp, ll, strict=True) if y <= t]
    return float(math.exp(0.5 * (max(above) + min(x for x in below if x >= max(above)))))


def finish(state: dict[str, Any], tol: float | None = None) -> dict[str, Any]:
    """Penalties of the bracketed targets; L0 range of the unreachable ones.

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
