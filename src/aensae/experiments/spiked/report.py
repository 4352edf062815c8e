r"""``report.md``: each claim, the numbers bearing on it, and a verdict, per init.

Everything is computed from ``results.csv`` alone. Comparisons between families are made
at matched sparsity, cell by cell: a cell is one (rho, target L0, init), and only runs
whose achieved L0 lies within the tolerance of their target enter it (``l0_matched``;
targets the calibration could not reach have no run, so no point is extrapolated).
In a cell the adaptive family is compared with the best baseline by paired differences
over seeds (:func:`compare_cell`): decided only when the difference exceeds the seed
spread. Verdicts follow the fixed rule written in the report (:data:`RULE`):
``supported``, ``contradicted``, or ``inconclusive`` (with the reason). A claim our data
contradict is reported as contradicted. The report also holds a table of the paper's
setting (independent init) against the conventional one (tied), flags runs whose
explained variance is negative and lists unreachable and unmatched targets.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from aensae._io import atomic_write_text
from aensae.experiments.results import read_table
from aensae.experiments.verdicts import (
    ADAPTIVE,
    DEAD_FLOOR,
    EMA_START,
    MIN_SEEDS,
    PINNED,
    RULE,
    compare,
    ema_start_count,
    ema_start_share,
    frontier_value,
    pinned_count,
    seed_values,
    span,
    summarise,
    tally_verdict,
)

__all__ = ["matched", "write_report"]

L1_BASELINES = ("relu_l1", "elastic_net")
#: Differences of a metric below this (absolute) are ties in matched comparisons.
TIE = 0.005
#: Matched-L0 comparison points per rho (log-spaced over the reached L0 range).
GRID_POINTS = 7


def _n(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _rows(rows: list[dict[str, Any]], **eq: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in eq.items())]


def matched(rows: list[dict[str, Any]], family: str, rho: float, metric: str,
            l0: float) -> float:
    """Seed-averaged ``metric`` of ``family`` at ``rho`` interpolated at ``L0 = l0``.

    Points: mean (L0, metric) over seeds of each target (or penalty); linear interpolation
    in ``log L0``; NaN outside the measured L0 range.
    """
    groups: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r.get("kind") == "sae" and r["family"] == family and _n(r["rho"]) == rho:
            key = r.get("target_l0") if r.get("target_l0") is not None else r["run_id"]
            groups[key].append((_n(r["l0"]), _n(r.get(metric))))
    pts = sorted((np.nanmean([p[0] for p in v]), np.nanmean([p[1] for p in v]))
                 for v in groups.values())
    pts = [(x, y) for x, y in pts if x > 0 and math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return math.nan
    xs = np.log([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    t = math.log(l0)
    if t < xs[0] - 1e-12 or t > xs[-1] + 1e-12:
        return math.nan
    return float(np.interp(t, xs, ys))


def _median(values: list[float]) -> float:
    """Median of the finite values (NaN when there are none)."""
    v = [x for x in values if math.isfinite(x)]
    return float(np.median(v)) if v else math.nan


def _fmt(v: float, spec: str = ".3g") -> str:
    return "n/a" if not math.isfinite(v) else format(v + 0.0, spec)  # + 0.0: no "-0"


def l0_grid(rows: list[dict[str, Any]], rho: float, n: int = GRID_POINTS) -> list[float]:
    """``n`` log-spaced L0 values spanning the L0s the SAE runs at ``rho`` reached."""
    l0s = [_n(r["l0"]) for r in rows if r.get("kind") == "sae" and _n(r["rho"]) == rho]
    l0s = [v for v in l0s if v > 0 and math.isfinite(v)]
    if not l0s:
        return []
    return [float(v) for v in np.geomspace(min(l0s), max(l0s), n)]


def _claim_lipschitz(rows, rhos, k) -> list[str]:
    exact = [r for r in rows if r.get("kind") == "exact"]

    def near(arch: str, rho: float) -> list[dict[str, Any]]:
        out = []
        for seed in sorted({r["seed"] for r in exact}):
            sub = [r for r in exact if r["arch"] == arch and _n(r["rho"]) == rho
                   and r["seed"] == seed]
            if sub:
                out.append(min(sub, key=lambda r: abs(_n(r["l0"]) - k)))
        return out

    lo, hi = rhos[0], rhos[-1]
    las = {rho: np.median([_n(r["lip_exact_lasso_q95"]) for r in near("exact_lasso", rho)])
           if near("exact_lasso", rho) else math.nan for rho in (lo, hi)}
    en = {rho: np.median([_n(r["lip_exact_enet_max"]) for r in near("exact_enet", rho)])
          if near("exact_enet", rho) else math.nan for rho in (lo, hi)}
    bound = np.median([_n(r["lip_exact_enet_bound"]) for r in near("exact_enet", hi)]) \
        if near("exact_enet", hi) else math.nan
    growth = las[hi] / las[lo] if las[lo] > 0 else math.nan
    if not all(math.isfinite(v) for v in (*las.values(), *en.values(), bound)) \
            and not math.isinf(las[hi]):
        verdict = "inconclusive (missing reference rows)"
    elif en[hi] > bound * (1 + 1e-9):
        verdict = "contradicted (elastic-net constant above its bound)"
    elif math.isinf(las[hi]) or growth >= 2.0:
        verdict = "supported"
    elif growth < 1.2:
        verdict = "contradicted (lasso constant does not grow with rho)"
    else:
        verdict = f"inconclusive (lasso p95 grows only {growth:.2f}x)"
    enc = []
    for fam in ("relu_l1", "elastic_net", "aen"):
        v = {rho: _median(_at_targets(rows, fam, rho, "lip_encoder_median"))
             for rho in (lo, hi)}
        enc.append(f"{fam} {_fmt(v[lo])} -> {_fmt(v[hi])}")
    return [
        "1. **The l2 term makes the sparse-coding map Lipschitz; plain l1 maps are unstable "
        "when atoms are correlated.**",
        f"   - exact lasso map on the true dictionary (L0 nearest k={k:g}), p95 local constant: "
        f"rho={lo:g}: {_fmt(las[lo])}, rho={hi:g}: {_fmt(las[hi])} (x{_fmt(growth)})",
        f"   - exact elastic-net map, max local constant: rho={lo:g}: {_fmt(en[lo])}, "
        f"rho={hi:g}: {_fmt(en[hi])}; bound 1/(2 sqrt(lam2)) = {_fmt(bound)}",
        f"   - encoders' median local constant (at the targets: median over targets, inits "
        f"and seeds), rho={lo:g} -> {hi:g}: " + "; ".join(enc),
        "   - rule: supported if the elastic net stays under its bound and the lasso p95 grows "
        ">= 2x from the smallest to the largest rho; contradicted if it grows < 1.2x",
        f"   - **verdict: {verdict}**",
    ]


# ----------------------------------------------------------------------------- verdict cells
#: Smallest difference that can decide a cell, per metric (in the metric's units).
FLOORS = {"dead_median_last": DEAD_FLOOR, "explained_variance": 0.01, "rec_code_bias": TIE,
          "exact_rec_code_bias": TIE, "rec_supp_f1": TIE, "exact_rec_supp_f1": TIE}
#: Explained variance within this of the best baseline counts as competitive (claim 3).
EV_COMPETITIVE = 0.02
DEAD_BASELINES = ("topk", "relu_l1", "elastic_net", "batchtopk")


def _init(r: dict[str, Any]) -> str:
    return str(r.get("init") or "tied")


def _inits(rows: list[dict[str, Any]]) -> list[str]:
    """Inits present, the paper's (independent) first."""
    found = {_init(r) for r in rows if r.get("kind") == "sae"}
    return sorted(found, key=lambda i: (i != "independent", i))


def _test_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The test runs every statistic of the report uses: those with a run target, and
    a bracket search's points (no target) that some seed's value at a target is
    interpolated from (:func:`_outside_reach` lists the others)."""
    runs = _all_test_runs(rows)
    far = {id(r) for r in _outside_reach(runs)}
    return [r for r in runs if id(r) not in far]


def _at_targets(rows: list[dict[str, Any]], fam: str, rho: float, column: str
                ) -> list[float]:
    """``column`` of ``fam`` at ``rho`` read off at every target: one value per (init,
    target, test seed), interpolated along the seed's runs
    (:func:`~aensae.experiments.verdicts.seed_values`), so that the statistic does not
    depend on where the runs happen to lie."""
    out = []
    for init in _inits(rows):
        for t in _targets(rows, rho, init):
            vals = seed_values(rows, fam, rho, t, init, lambda r: _n(r.get(column)))
            out += [v for v, _ in vals.values()]
    return out


def _all_test_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind") == "sae" and r.get("role", "test") != "selection"]


def _outside_reach(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A bracket search's runs (calibrated, no target L0) that bracket no target for
    their seed: the search's far points (e.g. the ladder's ends), drawn in the figures
    but kept out of the report's medians, which would otherwise depend on how far the
    search had to look."""
    points = [r for r in runs if r.get("target_l0") is None and r.get("calibrated") is True]
    if not points:
        return []
    used = {id(u) for _, _, brackets in _seed_brackets(runs) for u in brackets}
    return [r for r in points if id(r) not in used]


def _seed_brackets(runs: list[dict[str, Any]]
                   ) -> Iterator[tuple[str, float, list[dict[str, Any]]]]:
    """``(where, target, rows)`` for every seed's value at every target: the runs it is
    interpolated between (:func:`~aensae.experiments.verdicts.frontier_value`), in a
    stable order; ``rows`` is empty where the seed's runs do not bracket the target."""
    by: dict[tuple[Any, ...], list[tuple[float, float, dict[str, Any]]]] = defaultdict(list)
    for r in runs:
        by[(r["family"], _init(r), _n(r["rho"]), _n(r.get("seed")))].append(
            (_n(r.get("l0")), 0.0, r))
    for (fam, init, rho, seed), pts in sorted(by.items(), key=lambda kv: kv[0]):
        one = [r for r in runs if r["family"] == fam and _init(r) == init
               and _n(r["rho"]) == rho]
        for t in _targets(one, rho, init):
            yield (f"{fam}/{init} rho={rho:g} target {t:g} seed {seed:g}", t,
                   frontier_value(pts, t)[1])


def _targets(rows, rho: float, init: str) -> list[float]:
    """The verdict targets (``family_targets``; the run targets in older tables)."""
    out: set[float] = set()
    for r in _all_test_runs(rows):
        if _n(r["rho"]) != rho or _init(r) != init:
            continue
        ft = r.get("family_targets")
        if isinstance(ft, str) and ft.strip():
            out.update(float(t) for t in ft.split())
        elif isinstance(ft, (int, float)) and not isinstance(ft, bool):
            out.add(float(ft))
        elif r.get("target_l0") is not None:
            out.add(_n(r["target_l0"]))
    return sorted(out)


def _bracket_widths(test: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """``(L0_hi / L0_lo, where)`` of the runs each seed's value at each target is
    interpolated between (:func:`~aensae.experiments.verdicts.frontier_value`)."""
    out = []
    for where, _, brackets in _seed_brackets(test):
        used = [_n(u.get("l0")) for u in brackets]
        if used:
            out.append((max(used) / min(used), where))
    return out


def _runs_of(rows, fam: str, init: str) -> list[dict[str, Any]]:
    """``fam``'s test runs with ``init``."""
    return [r for r in _test_rows(rows) if r["family"] == fam and _init(r) == init]


def setting(rows, fam: str, init: str) -> str:
    """The setting a verdict rests on: init, the family's hyperparameters (adaptive ones
    in full, with the hold), latents, steps, seeds."""
    sub = _runs_of(rows, fam, init)
    if not sub:
        return f"{fam}, init {init}: no runs"
    r = sub[0]
    parts = [f"init {init}"]
    if fam in ADAPTIVE or r.get("arch") in ADAPTIVE:
        hold = _n(r.get("hold_steps"))
        parts.append(
            f"gamma {_fmt(_n(r.get('hp_gamma')))}, beta {_fmt(_n(r.get('hp_beta')), '.5g')}, "
            f"top {_fmt(100 * _n(r.get('hp_top_p')))}% ({r.get('hp_ref_count', 'ceil')}), "
            f"w in [{_fmt(_n(r.get('hp_w_min')))}, {_fmt(_n(r.get('hp_w_max')))}], EMA "
            f"{r.get('hp_ema_update', 'after')} the weights, hold {_fmt(hold, '.0f')} steps "
            f"+ ramp {_fmt(_n(r.get('hp_ramp_steps')), '.0f')}")
    if _n(r.get("hp_l2")) > 0:
        parts.append(f"l2 {_fmt(_n(r.get('hp_l2')))}")
    seeds = sorted({int(_n(x["seed"])) for x in sub})
    parts.append(f"{_fmt(_n(r.get('d_sae')), '.0f')} latents, {_fmt(_n(r.get('steps')), ',.0f')} "
                 f"steps, test seeds {', '.join(map(str, seeds))}")
    return f"{fam}: " + "; ".join(parts)


def _regime_note(rows, fams, init: str) -> str:
    """Per adaptive family: its runs outside the intended regime (pinned) and start-set."""
    notes = []
    for fam in fams:
        runs = _runs_of(rows, fam, init)
        k, n = pinned_count(runs, "w_max_frac_final")
        if n:
            e, _ = ema_start_count(runs)
            notes.append(f"{fam}: {k} of {n} runs outside the intended regime (more than "
                         f"{PINNED:.0%} of latents at w_max at the end), {e} of {n} with "
                         f"weights set by the EMA's start (more than {EMA_START:.0%} of the "
                         "active latents' EMA is the start's residue beta^T)")
    return "; ".join(notes)


def _outcome(c: dict[str, Any]) -> str:
    """A cell's outcome; a not-converged cell with the outcome its differences give."""
    if "if_settled" in c:
        return f"{c['outcome']} (the differences alone: {c['if_settled']})"
    return str(c["outcome"])


def _cell_table(cells: list[dict[str, Any]], label: str, spec: str = ".3g") -> list[str]:
    if not cells:
        return ["   - no cell with runs of both sides"]
    lines = [f"   | rho | target L0 | {cells[0]['fam']} | best baseline | paired diff "
             f"({label}) | spread | outcome |", "   |---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"   | {c['rho']:g} | {c['target']:g} | {summarise(c['a'], spec)} | "
                     f"{c['base']} {summarise(c['b'], spec)} | {summarise(c['d'], spec)} | "
                     f"{_fmt(c['spread'], spec)} | {_outcome(c)} |")
    return lines


def _claim_matched(title: str, rows, rhos, metric: str, better: str, transform: str,
                   init: str, why: str) -> list[str]:
    def value_of(key: str) -> Any:
        def value(r: dict[str, Any]) -> float:
            v = _n(r.get(key))
            return abs(1.0 - v) if transform == "abs1" else v
        return value

    lines = [title, f"   - metric: {why}"]
    all_cells: list[dict[str, Any]] = []
    fams = [f for f in ADAPTIVE if _rows(rows, kind="sae", family=f)]
    for fam in fams:
        for key, what in ((metric, "encoder codes"), (f"exact_{metric}",
                                                       "exact codes of its own decoder")):
            cells = [c for rho in rhos for t in _targets(rows, rho, init)
                     if (c := compare(rows, fam, L1_BASELINES, value_of(key), better, rho, t,
                                      init, FLOORS[metric])) is not None]
            if key == metric:
                all_cells += cells
            lines.append(f"   - {fam} vs the best of {', '.join(L1_BASELINES)}, {what} "
                         f"({key}): {tally_verdict(cells) if cells else 'no cells'}")
            lines += _cell_table(cells, "+ favours " + fam)
        lines.append(f"   - setting: {setting(rows, fam, init)}")
    note = _regime_note(rows, fams, init)
    if note:
        lines.append(f"   - regime: {note}")
    lines.append(f"   - **verdict (SAE level, encoder codes): "
                 f"{tally_verdict(all_cells) if all_cells else 'inconclusive (no cells)'}**")
    return lines


def negative_ev(rows) -> set[tuple[str, float, str]]:
    """(family, rho, init) whose test runs explain less than the mean somewhere."""
    return {(r["family"], _n(r["rho"]), _init(r)) for r in _test_rows(rows)
            if _n(r.get("explained_variance")) < 0}


def _claim_dead(rows, rhos, init: str) -> tuple[list[str], str]:
    lo, hi = rhos[0], rhos[-1]
    neg = negative_ev(rows)

    def dead(r: dict[str, Any]) -> float:
        return _n(r.get("dead_median_last"))

    def ev(r: dict[str, Any]) -> float:
        return _n(r.get("explained_variance"))

    grow = []
    for fam in ("topk", "relu_l1"):
        for t in _targets(rows, hi, init):
            a = seed_values(rows, fam, hi, t, init, dead)
            b = seed_values(rows, fam, lo, t, init, dead)
            if a and b:
                av, bv = [v for v, _ in a.values()], [v for v, _ in b.values()]
                d = float(np.mean(av) - np.mean(bv))
                grow.append((fam, t, d, max(span(av), span(bv), 0.02)))
    ups = [g for g in grow if g[2] > g[3]]
    v1 = ("inconclusive (no topk / relu_l1 runs at both ends of rho)" if not grow
          else "supported" if ups else
          "contradicted (dead share does not grow with rho for topk or relu_l1)")
    base = tuple(f for f in DEAD_BASELINES if _rows(rows, kind="sae", family=f))
    cells = []
    for rho in rhos:
        for t in _targets(rows, rho, init):
            c = compare(rows, "aen", base, dead, "lower", rho, t, init, FLOORS["dead_median_last"],
                        exclude=lambda b, rho=rho: (b, rho, init) in neg)
            if c is None:
                continue
            e = (compare(rows, "aen", (c["base"],), ev, "higher", rho, t, init,
                         FLOORS["explained_variance"]) if c["base"] != "none" else None)
            c["ev"] = e
            ev_ok = (e is not None and bool(e["d"])
                     and float(np.mean(e["d"])) >= -max(EV_COMPETITIVE, e["spread"]))
            if c["outcome"] == "better" and not ev_ok:
                c["outcome"] = "worse (EV)"
            cells.append(c)
    v2 = tally_verdict(cells) if cells else "inconclusive (no cells)"
    lines = [
        f"   - starvation, dead latents % at rho={lo:g} -> {hi:g} (test seeds at the target, "
        "mean): " + ("; ".join(f"{f} L0 {t:g}: {'+' if d >= 0 else ''}{100 * d:.1f} points "
                               f"(margin {100 * m:.1f})" for f, t, d, m in grow) or "none"),
        f"   - aen against the fewest dead latents among {', '.join(base)} at every rho "
        "(dead fraction at the target; baselines with EV < 0 excluded; paired diff > 0 "
        "favours aen), with explained variance against the same baseline:",
    ]
    if cells:
        lines += ["   | rho | target L0 | aen dead | best baseline dead | paired diff | spread | "
                  "aen EV | baseline EV | outcome |", "   |---|---|---|---|---|---|---|---|---|"]
        for c in cells:
            e = c["ev"]
            lines.append(f"   | {c['rho']:g} | {c['target']:g} | {summarise(c['a'])} | "
                         f"{c['base']} {summarise(c['b'])} | {summarise(c['d'])} | "
                         f"{_fmt(c['spread'])} | {summarise(e['a']) if e else 'n/a'} | "
                         f"{summarise(e['b']) if e else 'n/a'} | {_outcome(c)} |")
    else:
        lines.append("   - no cell with aen and a baseline")
    note = _regime_note(rows, ["aen"], init)
    lines += [
        f"   - setting: {setting(rows, 'aen', init)}",
        *([f"   - regime: {note}"] if note else []),
        "   - rules: starvation supported if topk or relu_l1 gains more dead latents from the "
        "smallest to the largest rho than the larger of 2 points and the seed spread at some "
        f"target; mitigation: the verdict rule above (floor: {DEAD_FLOOR:g} of dead "
        "fraction); a cell where aen has fewer dead latents but an explained variance more "
        f"than max({EV_COMPETITIVE}, spread) below the same baseline counts against the claim",
        f"   - **verdict (starvation grows with rho): {v1}**",
        f"   - **verdict (AEN mitigates at competitive reconstruction): {v2}**",
    ]
    return lines, v2


def _regime_table(rows, rhos) -> list[str]:
    """Where the adaptive runs ended: pinned fraction, weights, EMA and dead trend."""
    sub = [r for r in _test_rows(rows) if math.isfinite(_n(r.get("w_max_frac_final")))]
    if not sub:
        return []
    lines = ["## Regime of the adaptive runs", "",
             f"At the last dead-latent window of each test run (median over runs): the "
             f"fraction of latents at w_max and at w_min, the weights' and EMA's medians, "
             "the change of the pinned fraction and of the dead fraction over the last "
             f"windows. A run with more than {PINNED:.0%} of its latents at w_max is outside "
             "the method's intended regime (valid features w ~ 1, noise w >> 1); "
             "`figures/fig8_regime.png` shows the time course. The EMA starts at 1, and "
             "after T steps beta^T of it is still that start: \"EMA start share\" is beta^T "
             "over the EMA's 95th percentile (the active latents). A run where it exceeds "
             f"{EMA_START:.0%} (\"start-set\") has weights compressed toward 1 by the "
             "start's residue and moving with the run's length, not set by the latents' "
             "activity: the method has not yet adapted.", "",
             "| family | init | rho | runs | outside regime | start-set | at w_max | at w_min | "
             "w median | EMA median | EMA start share | pinned trend | dead trend |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for fam in ADAPTIVE:
        for init in _inits(rows):
            for rho in rhos:
                g = [r for r in sub if r["family"] == fam and _init(r) == init
                     and _n(r["rho"]) == rho]
                if not g:
                    continue

                def med(key: str, g=g) -> str:
                    return _fmt(_median([_n(r.get(key)) for r in g]))
                out, _ = pinned_count(g, "w_max_frac_final")
                start, _ = ema_start_count(g)
                share = _fmt(_median([ema_start_share(r) for r in g]))
                lines.append(f"| {fam} | {init} | {rho:g} | {len(g)} | {out} | {start} | "
                             f"{med('w_max_frac_final')} | {med('w_min_frac_final')} | "
                             f"{med('w_q50_final')} | {med('ema_q50_final')} | {share} | "
                             f"{med('w_max_frac_trend')} | {med('dead_trend')} |")
    return lines + [""]


def _selection_section(results_dir: Path) -> list[str]:
    from aensae.experiments.spiked.selection import read_selection

    sel = read_selection(results_dir)
    if sel is None:
        return []
    lines = ["## Selection", "", f"Rule, fixed before the runs: {sel['rule']}.", "",
             "| family | rho | chosen | why |", "|---|---|---|---|"]
    for c in sel["choices"]:
        hp = ", ".join(f"{k}={v}" for k, v in sorted(c["hyper"].items()))
        lines.append(f"| {c['family']} | {c['rho']:g} | {hp or '(defaults)'} | "
                     f"{c['reason']} |")
    return lines + ["", "Verdicts use only the test seeds.", ""]


def _quality_notes(rows) -> list[str]:
    lines = ["## Frontiers", ""]
    unr = [r for r in rows if r.get("kind") == "unreachable"]
    test = _test_rows(rows)
    lines.append(f"- {len(test)} test runs; each seed's metrics are interpolated to every "
                 "target along its own runs (no point is extrapolated: a seed whose runs do "
                 "not bracket a target gives no value there).")
    far = _outside_reach(_all_test_runs(rows))
    if far:
        lines.append(f"- {len(far)} further runs of the calibration search bracket no target "
                     "(its far points, L0 " + ", ".join(sorted(
                         {_fmt(_n(r.get('l0')), '.2g') for r in far}, key=float))
                     + "): drawn in the figures, left out of every statistic of this report.")
    widths = _bracket_widths(test)
    if widths:
        ratio, where = max(widths)
        lines.append(f"- Interpolation reach: the two runs a seed's value at a target "
                     f"comes from have L0s a median factor {np.median([w for w, _ in widths]):.2f} "
                     f"apart (over {len(widths)} seed values), at most {ratio:.2f} ({where}).")
    if unr:
        lines.append("- Unreachable targets (no penalty in the searched range reached "
                     "them; L0 range seen in calibration): " + "; ".join(
                         f"{r['family']}/{_init(r)} rho={_n(r['rho']):g} target "
                         f"{_n(r['target_l0']):g} (L0 {_fmt(_n(r.get('l0_seen_min')))}"
                         f"-{_fmt(_n(r.get('l0_seen_max')))})" for r in sorted(
                             unr, key=lambda r: (r['family'], _init(r), _n(r['rho']),
                                                 _n(r['target_l0'])))))
    neg = sorted(negative_ev(rows))
    if neg:
        lines.append("- **Flagged: explained variance below 0** in some run (never used as "
                     "the best baseline of claim 3): " + "; ".join(
                         f"{f}/{i} rho={rho:g}" for f, rho, i in neg))
    return lines + [""]


def _amortization(rows, rhos) -> list[str]:
    lines = ["0. **Question of the suite: does the amortized encoder compute the exact "
             "sparse code?** (relative amortization gap (F(h_enc) - F(h_exact)) / "
             "F(h_exact), median over signals; support F1 of encoder vs exact codes; each "
             "at the targets: every seed interpolated to each target along its runs, median "
             "over targets, inits and seeds)"]
    worst = 0.0
    above: list[str] = []
    for fam in ("relu_l1", "elastic_net", "adaptive_lasso", "aen"):
        if not _rows(rows, kind="sae", family=fam):
            continue
        cells = []
        for rho in rhos:
            g = _at_targets(rows, fam, rho, "amort_rel_median")
            f1 = _at_targets(rows, fam, rho, "amort_support_f1")
            if g:
                worst = max(worst, _median(g)) if math.isfinite(_median(g)) else worst
                if math.isfinite(_median(g)) and _median(g) > 0.01:
                    above.append(f"{fam} at rho={rho:g}")
                cells.append(f"rho={rho:g}: gap {_fmt(_median(g))}, F1 {_fmt(_median(f1))}")
        lines.append(f"   - {fam}: " + "; ".join(cells))
    verdict = (f"no: a relative gap above 1% remains for {', '.join(above)} (worst "
               f"{_fmt(worst)}); elsewhere the encoders are within 1% of the exact objective"
               if worst > 0.01 else "yes, every encoder within 1% of the exact objective")
    lines.append(f"   - **answer: {verdict}**")
    return lines


def _scale_notes(rows) -> list[str]:
    steps = max([_n(r.get("steps")) for r in rows if r.get("kind") == "sae"] or [math.nan])
    lines = ["## What this scale can and cannot show", ""]
    if math.isfinite(steps) and steps < 30000:
        lines += [
            f"- Runs are {int(steps):,} steps long. TopK's starvation at high rho appears "
            "within a few thousand steps, so the dead-latent trend with rho is measurable "
            "here; separating AEN from plain l1 / elastic net needs closer to 30,000 steps, "
            "so verdicts that compare aen with relu_l1 / elastic_net at this scale are "
            "provisional (`configs/claims.toml`: 30,000 steps, a selection seed and four "
            "test seeds, settles them).",
            "- Adaptive weights switch on only after their warmup hold; in short runs they "
            "have acted for a fraction of training.",
        ]
    else:
        lines.append(f"- Runs are {int(steps):,} steps long: the paper's scale.")
    lines.append("- L0 drifts with run length (calibration passes shorter than the runs "
                 "miss it), so every run records the L0 it reached, and verdicts interpolate "
                 "each seed to the target along the L0s its own runs reached (see Frontiers).")
    return lines


def write_report(results_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write ``report.md`` from ``results_dir/results.csv`` (and ``selection.json`` when the
    grid had a selection); return its path.

    To ``path`` (default ``results_dir/report.md``); see
    :func:`aensae.experiments.spiked.driver.write_figures` for the validated, all-or-nothing call.
    """
    from aensae.experiments.spiked.theorem import theorem_verdicts

    results_dir = Path(results_dir)
    _, rows = read_table(results_dir / "results.csv")
    sae = [r for r in rows if r.get("kind") == "sae"]
    test = _test_rows(rows)
    rhos = sorted({_n(r["rho"]) for r in rows if r.get("kind") in ("sae", "exact")})
    targets = sorted({t for rho in rhos for init in _inits(rows)
                      for t in _targets(rows, rho, init)})
    k = float(np.nanmedian([_n(r.get("k")) for r in rows])) if rows else math.nan
    head = rows[0] if rows else {}
    seeds = sorted({int(_n(r["seed"])) for r in test})
    lines = [
        f"# aensae reproduce: {head.get('config_name', '?')}", "",
        f"Config hash {head.get('config_hash', '?')}, aensae {head.get('aensae_version', '?')}"
        f"; {len(sae)} SAE runs ({len(test)} on test seeds), "
        f"{sum(r.get('kind') == 'exact' for r in rows)} exact reference rows, "
        f"{sum(r.get('kind') == 'theorem' for r in rows)} theorem rows; rho in "
        f"{', '.join(f'{r:g}' for r in rhos)}; test seeds {', '.join(map(str, seeds))}; data "
        f"n={_fmt(_n(head.get('n')))}, m={_fmt(_n(head.get('m')))}, k={_fmt(k)}, width "
        f"{_fmt(_n(head.get('d_sae')))}. Target L0s: {', '.join(f'{t:g}' for t in targets)}.",
        "",
        "Verdicts are computed by fixed rules from `results.csv` (see each claim); "
        "`aensae figures` redraws the figures from the same table.", "",
        f"**Verdict rule:** {RULE}.", "",
    ]
    if len(seeds) < MIN_SEEDS:
        lines += [f"**This grid has {len(seeds)} test seed(s): every SAE-level cell needs "
                  f"{MIN_SEEDS}, so the SAE-level verdicts below are undecided by "
                  "construction; the numbers are shown for inspection. The claims grid "
                  "(`aensae reproduce --config claims`, `figures/claims/report.md`) decides "
                  "them.**", ""]
    lines += _selection_section(results_dir)
    lines += ["## Claims", ""]
    claim3: dict[str, str] = {}
    if rhos:
        lines += _amortization(rows, rhos) + [""]
        lines += _claim_lipschitz(rows, rhos, k) + [""]
        thm = [r for r in rows if r.get("kind") == "theorem"]
        if thm:
            lines += theorem_verdicts(thm) + [""]
        for init in _inits(rows):
            lines += [f"### Claims 2-3 at the SAE level, init {init}", ""]
            lines += _claim_matched(
                f"2a. **Adaptive l1 weights remove shrinkage bias** (init {init}).",
                rows, rhos, "rec_code_bias", "lower", "abs1", init,
                "|1 - code bias| on the true atoms the SAE recovered (|cos| >= 0.9) and on "
                "true-positive entries only (`rec_code_bias`), so that missed atoms and "
                "missed entries are not counted as shrinkage; the same on the exact codes of "
                "each SAE's own decoder (`exact_rec_code_bias`) separates the penalty from "
                "what the encoder learned. Lower is better") + [""]
            lines += _claim_matched(
                f"2b. **Adaptive weights suppress spurious latents and recover the global "
                f"support** (init {init}).", rows, rhos, "rec_supp_f1", "higher", "none",
                init, "support F1 on the recovered atoms (`rec_supp_f1`), so that dictionary "
                "recovery (`rec_atoms_frac`, reported beside) is not counted as support "
                "recovery; the same on the exact codes of the SAE's own decoder. Higher is "
                "better") + [""]
            lines += [
                f"3. **Feature starvation (dead latents) is a geometric pathology of l1/TopK "
                f"coding that grows with correlation; AEN mitigates it without resampling or "
                f"auxiliary losses, at competitive reconstruction** (init {init})."]
            dead_lines, claim3[init] = _claim_dead(rows, rhos, init)
            lines += dead_lines + [""]
        if len(claim3) > 1:
            lines += ["Claim 3 per init: " + "; ".join(f"{i}: **{v}**"
                                                      for i, v in claim3.items()), ""]
    lines += _regime_table(rows, rhos)
    lines += _quality_notes(rows)
    lines += _scale_notes(rows) + [""]
    path = results_dir / "report.md" if path is None else Path(path)
    atomic_write_text(path, "\n".join(lines))
    return path
