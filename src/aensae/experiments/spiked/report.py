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
from pathlib import Path
from typing import Any

import numpy as np

from aensae._io import atomic_write_text
from aensae.experiments.results import read_table

__all__ = ["matched", "write_report"]

L1_BASELINES = ("relu_l1", "elastic_net")
#: Differences of a metric below this (absolute) are ties in matched comparisons.
TIE = 0.005
#: Matched-L0 comparison points per rho (log-spaced over the reached L0 range).
GRID_POINTS = 7
#: Fewest matched cells on which a comparison gives a verdict (else inconclusive).
MIN_CELLS = 2
ADAPTIVE = ("aen", "adaptive_lasso")


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
        v = {rho: _median([_n(r.get("lip_encoder_median")) for r in
                           _rows(rows, kind="sae", family=fam) if _n(r["rho"]) == rho])
             for rho in (lo, hi)}
        enc.append(f"{fam} {_fmt(v[lo])} -> {_fmt(v[hi])}")
    return [
        "1. **The l2 term makes the sparse-coding map Lipschitz; plain l1 maps are unstable "
        "when atoms are correlated.**",
        f"   - exact lasso map on the true dictionary (L0 nearest k={k:g}), p95 local constant: "
        f"rho={lo:g}: {_fmt(las[lo])}, rho={hi:g}: {_fmt(las[hi])} (x{_fmt(growth)})",
        f"   - exact elastic-net map, max local constant: rho={lo:g}: {_fmt(en[lo])}, "
        f"rho={hi:g}: {_fmt(en[hi])}; bound 1/(2 sqrt(lam2)) = {_fmt(bound)}",
        f"   - encoders' median local constant, rho={lo:g} -> {hi:g}: " + "; ".join(enc),
        "   - rule: supported if the elastic net stays under its bound and the lasso p95 grows "
        ">= 2x from the smallest to the largest rho; contradicted if it grows < 1.2x",
        f"   - **verdict: {verdict}**",
    ]


# ----------------------------------------------------------------------------- matched cells
#: Tolerance (a ratio) assumed for tables that do not record ``l0_tolerance``.
DEFAULT_TOLERANCE = 1.5
#: Smallest difference that can decide a cell, per metric (in the metric's units).
FLOORS = {"dead_median_last": 0.01, "explained_variance": 0.01, "code_bias": TIE,
          "supp_f1": TIE}
#: Explained variance within this of the best baseline counts as competitive (claim 3).
EV_COMPETITIVE = 0.02
DEAD_BASELINES = ("topk", "relu_l1", "elastic_net", "batchtopk")


def _init(r: dict[str, Any]) -> str:
    return str(r.get("init") or "tied")


def _inits(rows: list[dict[str, Any]]) -> list[str]:
    found = {_init(r) for r in rows if r.get("kind") == "sae"}
    return sorted(found, key=lambda i: (i != "tied", i))


def is_matched(r: dict[str, Any]) -> bool:
    """Whether a run reached its target L0 within the tolerance (``l0_matched``)."""
    if r.get("kind") != "sae" or r.get("target_l0") is None:
        return False
    if isinstance(r.get("l0_matched"), bool):
        return bool(r["l0_matched"])
    tol = _n(r.get("l0_tolerance"))
    tol = tol if math.isfinite(tol) else DEFAULT_TOLERANCE
    ratio = _n(r["l0"]) / _n(r["target_l0"])
    return bool(1.0 / tol <= ratio <= tol)


def _seed_values(rows, fam: str, rho: float, target: float, init: str,
                 value: Any) -> dict[float, float]:
    """seed -> metric of ``fam``'s matched runs in the cell (finite values only)."""
    out = {}
    for r in rows:
        if (r.get("kind") == "sae" and r["family"] == fam and _n(r["rho"]) == rho
                and _n(r.get("target_l0")) == target and _init(r) == init and is_matched(r)):
            v = value(r)
            if math.isfinite(v):
                out[_n(r["seed"])] = v
    return out


def _span(v: list[float]) -> float:
    return max(v) - min(v) if v else math.nan


def compare_cell(rows, fam: str, baselines: tuple[str, ...], value: Any, better: str,
                 rho: float, target: float, init: str, floor: float,
                 exclude: Any = None) -> dict[str, Any] | None:
    """``fam`` against the best baseline in one (rho, target L0, init) cell.

    The best baseline is the one with the best mean over its matched seeds (a baseline
    for which ``exclude(family, rho, target, init)`` is true is skipped). Over the seeds
    both have, ``d_s`` is the paired difference oriented so that ``d > 0`` favours
    ``fam``; ``spread`` is the larger of the two families' seed ranges (max - min). The
    outcome is ``better`` when every ``d_s > 0`` and ``mean d > max(spread, floor)``,
    ``worse`` in the mirror case, ``undecided`` otherwise. ``None`` when either side has
    no matched run.
    """
    a = _seed_values(rows, fam, rho, target, init, value)
    if not a:
        return None
    sign = 1.0 if better == "higher" else -1.0
    best = None
    for b in baselines:
        if exclude is not None and exclude(b, rho, target, init):
            continue
        bv = _seed_values(rows, b, rho, target, init, value)
        common = sorted(set(a) & set(bv))
        if not common:
            continue
        score = sign * float(np.mean(list(bv.values())))
        if best is None or score > best[0]:
            best = (score, b, bv, common)
    if best is None:
        return None
    _, b, bv, common = best
    d = [sign * (a[s] - bv[s]) for s in common]
    av, bvals = [a[s] for s in common], [bv[s] for s in common]
    spread = max(_span(av), _span(bvals))
    margin = max(spread, floor)
    mean = float(np.mean(d))
    if min(d) > 0 and mean > margin:
        outcome = "better"
    elif max(d) < 0 and -mean > margin:
        outcome = "worse"
    else:
        outcome = "undecided"
    return {"fam": fam, "base": b, "n": len(common), "a": av, "b": bvals,
            "d": d, "spread": spread, "margin": margin,
            "outcome": outcome, "rho": rho, "target": target, "init": init}


def _mm(v: list[float], spec: str = ".3g") -> str:
    """``mean [min, max]`` (just the value for one seed)."""
    if not v:
        return "n/a"
    if len(v) == 1:
        return _fmt(v[0], spec)
    return f"{_fmt(float(np.mean(v)), spec)} [{_fmt(min(v), spec)}, {_fmt(max(v), spec)}]"


def _cell_table(cells: list[dict[str, Any]], label: str, spec: str = ".3g") -> list[str]:
    if not cells:
        return ["   - no cell where both have runs within the L0 tolerance"]
    lines = [f"   | rho | target L0 | {cells[0]['fam']} | best baseline | paired diff "
             f"({label}) | spread | outcome |", "   |---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"   | {c['rho']:g} | {c['target']:g} | {_mm(c['a'], spec)} | {c['base']} "
                     f"{_mm(c['b'], spec)} | {_mm(c['d'], spec)} | {_fmt(c['spread'], spec)} | "
                     f"{c['outcome']} |")
    return lines


def _tally(cells: list[dict[str, Any]]) -> tuple[int, int, int]:
    w = sum(c["outcome"] == "better" for c in cells)
    lo = sum(c["outcome"] == "worse" for c in cells)
    return w, lo, len(cells)


def _verdict_cells(wins: int, losses: int, total: int) -> str:
    if total < MIN_CELLS:
        return f"inconclusive (only {total} matched cell(s); {MIN_CELLS} needed)"
    if wins >= 0.75 * total and losses == 0:
        return "supported"
    if losses >= 0.75 * total and wins == 0:
        return "contradicted"
    return (f"inconclusive (better in {wins}, worse in {losses}, undecided in "
            f"{total - wins - losses} of {total} cells)")


RULE = ("a cell is one (rho, target L0, init); only runs whose L0 is within the tolerance "
        "of their target enter it. Per seed, the paired difference against the best "
        "baseline (best mean over seeds) is taken; the cell is decided only when every "
        "seed's difference has the same sign and their mean exceeds both the seed spread "
        "(the larger max - min over seeds of the two families) and a floor "
        "(dead fraction 0.01, explained variance 0.01, code bias and support F1 "
        f"{TIE}); otherwise it is undecided. A claim is supported when at least "
        f"{MIN_CELLS} cells were compared, >= 75% are decided in its favour and none "
        "against; contradicted in the mirror case; inconclusive otherwise")


def _targets(rows, rho: float, init: str) -> list[float]:
    return sorted({_n(r["target_l0"]) for r in rows if r.get("kind") == "sae"
                   and _n(r["rho"]) == rho and _init(r) == init
                   and r.get("target_l0") is not None})


def _claim_matched(title: str, rows, rhos, metric: str, better: str,
                   transform: str, init: str) -> list[str]:
    def value(r: dict[str, Any]) -> float:
        v = _n(r.get(metric))
        return abs(1.0 - v) if transform == "abs1" else v

    lines = [title]
    all_w, all_l, all_t = 0, 0, 0
    for fam in ADAPTIVE:
        if not _rows(rows, kind="sae", family=fam):
            continue
        cells = [c for rho in rhos for t in _targets(rows, rho, init)
                 if (c := compare_cell(rows, fam, L1_BASELINES, value,
                                       better, rho, t, init, FLOORS[metric])) is not None]
        w, lo, t = _tally(cells)
        all_w, all_l, all_t = all_w + w, all_l + lo, all_t + t
        lines.append(f"   - {fam} vs the best of {', '.join(L1_BASELINES)}: better in {w}, "
                     f"worse in {lo} of {t} cells (mean [min, max] over seeds)")
        lines += _cell_table(cells, "+ favours " + fam)
    lines.append("   - rule: the verdict rule above; a difference counts when it exceeds "
                 f"{FLOORS[metric]} and the seed spread")
    lines.append(f"   - **verdict: {_verdict_cells(all_w, all_l, all_t)}**")
    return lines


def negative_ev(rows) -> set[tuple[str, float, float, str]]:
    """(family, rho, target, init) cells whose matched runs explain less than the mean."""
    out = set()
    for r in rows:
        if is_matched(r) and _n(r.get("explained_variance")) < 0:
            out.add((r["family"], _n(r["rho"]), _n(r["target_l0"]), _init(r)))
    return out


def _claim_dead(rows, rhos, init: str) -> list[str]:
    lo, hi = rhos[0], rhos[-1]
    neg = negative_ev(rows)

    def bad(fam: str, rho: float, target: float, ini: str) -> bool:
        return (fam, rho, target, ini) in neg

    def dead(r: dict[str, Any]) -> float:
        return _n(r.get("dead_median_last"))

    def ev(r: dict[str, Any]) -> float:
        return _n(r.get("explained_variance"))

    # starvation: dead share at the largest rho against the smallest, per family and target
    grow = []
    for fam in ("topk", "relu_l1"):
        for t in _targets(rows, hi, init):
            a = _seed_values(rows, fam, hi, t, init, dead)
            b = _seed_values(rows, fam, lo, t, init, dead)
            if a and b:
                d = float(np.mean(list(a.values())) - np.mean(list(b.values())))
                margin = max(_span(list(a.values())), _span(list(b.values())), 0.02)
                grow.append((fam, t, d, margin))
    ups = [g for g in grow if g[2] > g[3]]
    v1 = ("inconclusive (no matched topk / relu_l1 runs at both ends of rho)" if not grow
          else "supported" if ups else
          "contradicted (dead share does not grow with rho for topk or relu_l1)")
    base = tuple(f for f in DEAD_BASELINES if _rows(rows, kind="sae", family=f))
    cells = []
    for t in _targets(rows, hi, init):
        c = compare_cell(rows, "aen", base, dead, "lower", hi, t, init,
                         FLOORS["dead_median_last"], exclude=bad)
        if c is None:
            continue
        e = compare_cell(rows, "aen", (c["base"],), ev, "higher", hi, t, init,
                         FLOORS["explained_variance"])
        c["ev"] = e
        ev_ok = e is not None and float(np.mean(e["d"])) >= -max(EV_COMPETITIVE, e["spread"])
        if c["outcome"] == "better" and not ev_ok:
            c["outcome"] = "worse (EV)"
        cells.append(c)
    w = sum(c["outcome"] == "better" for c in cells)
    lo_ = sum(c["outcome"].startswith("worse") for c in cells)
    v2 = _verdict_cells(w, lo_, len(cells))
    lines = [
        f"   - starvation, dead latents % at rho={lo:g} -> {hi:g} (matched runs, mean over "
        "seeds): " + ("; ".join(f"{f} L0 {t:g}: {'+' if d >= 0 else ''}{100 * d:.1f} points "
                               f"(margin {100 * m:.1f})" for f, t, d, m in grow) or "none"),
        f"   - at rho={hi:g}, aen against the fewest dead latents among "
        f"{', '.join(base)} (dead fraction; baselines with EV < 0 in the cell excluded; "
        "paired diff > 0 favours aen), with explained variance against the same baseline:",
    ]
    if cells:
        lines += ["   | target L0 | aen dead | best baseline dead | paired diff | spread | "
                  "aen EV | baseline EV | outcome |", "   |---|---|---|---|---|---|---|---|"]
        for c in cells:
            e = c["ev"]
            lines.append(f"   | {c['target']:g} | {_mm(c['a'])} | {c['base']} {_mm(c['b'])} | "
                         f"{_mm(c['d'])} | {_fmt(c['spread'])} | "
                         f"{_mm(e['a']) if e else 'n/a'} | {_mm(e['b']) if e else 'n/a'} | "
                         f"{c['outcome']} |")
    else:
        lines.append("   - no target where aen and a baseline both have runs within the L0 "
                     "tolerance")
    lines += [
        "   - rules: starvation supported if topk or relu_l1 gains more dead latents from the "
        "smallest to the largest rho than the larger of 2 points and the seed spread at some "
        "target; mitigation: the verdict rule above (floor: 1 point of dead latents); a "
        "cell where aen has fewer dead latents but an "
        f"explained variance more than max({EV_COMPETITIVE}, spread) below the same "
        "baseline counts against the claim",
        f"   - **verdict (starvation grows with rho): {v1}**",
        f"   - **verdict (AEN mitigates at competitive reconstruction): {v2}**",
    ]
    return lines


def claim3_verdict(rows, rhos, init: str) -> str:
    """The mitigation verdict of claim 3 for ``init`` (as written in the report)."""
    for line in _claim_dead(rows, rhos, init):
        if "verdict (AEN mitigates" in line:
            return line.split(": ", 1)[1].rstrip("*")
    return "n/a"


def _settings_table(rows, rhos) -> list[str]:
    """The paper's setting (independent init) against the conventional one (tied)."""
    inits = _inits(rows)
    if not {"tied", "independent"} <= set(inits):
        return []
    hi = rhos[-1]
    metrics = (("dead %", lambda r: 100 * _n(r.get("dead_median_last")), ".1f"),
               ("L0", lambda r: _n(r.get("l0")), ".2f"),
               ("EV", lambda r: _n(r.get("explained_variance")), ".3f"),
               ("deflated recovery", lambda r: _n(r.get("dict_hungarian_mean_cos_deflated")),
                ".3f"))
    lines = ["## The paper's setting vs the conventional setting", "",
             f"rho = {hi:g}; paper's setting = init independent (torch.nn.Linear draws, the "
             "reference implementation's), conventional = init tied (W_enc = W_dec^T, zero "
             "biases); both with the adaptive defaults of the reference implementation. Mean "
             "over seeds of the runs within the L0 tolerance (n/a: none).", "",
             "| family | target L0 | " + " | ".join(f"{m} tied | {m} indep." for m, _, _ in
                                                   metrics) + " |",
             "|---|---|" + "---|---|" * len(metrics)]
    fams = [f for f in ("relu_l1", "elastic_net", "adaptive_lasso", "aen", "topk", "batchtopk",
                        "jumprelu") if _rows(rows, kind="sae", family=f)]
    for fam in fams:
        for t in sorted(set(_targets(rows, hi, "tied")) | set(_targets(rows, hi, "independent"))):
            cells = []
            for _, fn, spec in metrics:
                for init in ("tied", "independent"):
                    v = list(_seed_values(rows, fam, hi, t, init, fn).values())
                    cells.append(_fmt(float(np.mean(v)), spec) if v else "n/a")
            if any(c != "n/a" for c in cells):
                lines.append(f"| {fam} | {t:g} | " + " | ".join(cells) + " |")
    vt, vi = claim3_verdict(rows, rhos, "tied"), claim3_verdict(rows, rhos, "independent")
    ki, kt = vi.split(" (")[0], vt.split(" (")[0]
    if "inconclusive" in (ki, kt):
        follow = ("The data do not decide the claim under both settings, so they say nothing "
                  "yet about its dependence on the initialisation (see the cells above).")
    elif ki == kt:
        follow = "The verdict does not depend on the initialisation."
    else:
        follow = ("The verdict depends on the initialisation: a test of the claim must state "
                  "which encoder initialisation it uses, and the paper's own setting is the "
                  "independent one.")
    lines += ["", f"Claim 3 (AEN mitigates starvation at competitive reconstruction) under the "
                  f"paper's setting: **{vi}**; under the conventional setting: **{vt}**. "
              + follow, ""]
    return lines


def _quality_notes(rows) -> list[str]:
    sae = [r for r in rows if r.get("kind") == "sae"]
    with_target = [r for r in sae if r.get("target_l0") is not None]
    ok = [r for r in with_target if is_matched(r)]
    tols = {_n(r.get("l0_tolerance")) for r in with_target}
    tol = next(iter(tols)) if len(tols) == 1 and all(math.isfinite(t) for t in tols) \
        else DEFAULT_TOLERANCE
    lines = ["## Matched sparsity", "",
             f"- {len(ok)} of {len(with_target)} SAE runs reached their target L0 within a "
             f"factor {tol:g} (achieved / target in [{1 / tol:.3g}, {tol:g}]); only those "
             "enter the comparisons. No L0 point is extrapolated: a target that the "
             "calibration could not bracket has no run."]
    off = [r for r in with_target if not is_matched(r)]
    if off:
        lines.append("- Outside the tolerance (excluded): " + "; ".join(
            f"{r['family']}/{_init(r)} rho={_n(r['rho']):g} target {_n(r['target_l0']):g} "
            f"reached {_fmt(_n(r['l0']))}" for r in sorted(
                off, key=lambda r: (r['family'], _init(r), _n(r['rho']),
                                    _n(r['target_l0']), _n(r['seed'])))))
    unr = [r for r in rows if r.get("kind") == "unreachable"]
    if unr:
        lines.append("- Unreachable targets (no penalty in the searched range reached them; "
                     "L0 range seen in calibration): " + "; ".join(
                         f"{r['family']}/{_init(r)} rho={_n(r['rho']):g} target "
                         f"{_n(r['target_l0']):g} (L0 {_fmt(_n(r.get('l0_seen_min')))}"
                         f"-{_fmt(_n(r.get('l0_seen_max')))})" for r in sorted(
                             unr, key=lambda r: (r['family'], _init(r), _n(r['rho']),
                                                 _n(r['target_l0'])))))
    neg = sorted(negative_ev(rows))
    if neg:
        lines.append("- **Flagged: explained variance below 0** (worse than predicting the "
                     "mean; never used as the best baseline of claim 3): " + "; ".join(
                         f"{f}/{i} rho={rho:g} target {t:g}" for f, rho, t, i in neg))
    return lines + [""]


def _amortization(rows, rhos) -> list[str]:
    lines = ["0. **Question of the suite: does the amortized encoder compute the exact "
             "sparse code?** (relative amortization gap (F(h_enc) - F(h_exact)) / "
             "F(h_exact), median over signals, median over runs; support F1 of encoder vs "
             "exact codes)"]
    worst = 0.0
    above: list[str] = []
    for fam in ("relu_l1", "elastic_net", "adaptive_lasso", "aen"):
        sub = _rows(rows, kind="sae", family=fam)
        if not sub:
            continue
        cells = []
        for rho in rhos:
            g = [_n(r.get("amort_rel_median")) for r in sub if _n(r["rho"]) == rho]
            f1 = [_n(r.get("amort_support_f1")) for r in sub if _n(r["rho"]) == rho]
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
            "provisional (`configs/claims.toml`: 30,000 steps, three seeds, settles them).",
            "- Adaptive weights switch on only after their warmup hold; in short runs they "
            "have acted for a fraction of training.",
        ]
    else:
        lines.append(f"- Runs are {int(steps):,} steps long: the paper's scale.")
    lines.append("- L0 drifts with run length (calibration passes shorter than the runs "
                 "miss it), so every run records the L0 it reached and comparisons keep only "
                 "runs within the tolerance of their target (see Matched sparsity).")
    return lines


def write_report(results_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write ``report.md`` from ``results_dir/results.csv``; return its path.

    To ``path`` (default ``results_dir/report.md``); see
    :func:`aensae.experiments.spiked.driver.write_figures` for the validated, all-or-nothing call.
    """
    results_dir = Path(results_dir)
    _, rows = read_table(results_dir / "results.csv")
    sae = [r for r in rows if r.get("kind") == "sae"]
    rhos = sorted({_n(r["rho"]) for r in rows})
    targets = sorted({_n(r["target_l0"]) for r in sae if r.get("target_l0") is not None})
    if not targets:
        targets = sorted({round(_n(r["l0"]), 1) for r in sae if _n(r["l0"]) > 0})
    k = float(np.nanmedian([_n(r.get("k")) for r in rows])) if rows else math.nan
    head = rows[0] if rows else {}
    lines = [
        f"# aensae reproduce: {head.get('config_name', '?')}", "",
        f"Config hash {head.get('config_hash', '?')}, aensae {head.get('aensae_version', '?')}"
        f"; {len(sae)} SAE runs, {len(rows) - len(sae)} exact reference rows; rho in "
        f"{', '.join(f'{r:g}' for r in rhos)}; seeds "
        f"{', '.join(str(int(s)) for s in sorted({_n(r['seed']) for r in rows}))}; data n="
        f"{_fmt(_n(head.get('n')))}, m={_fmt(_n(head.get('m')))}, k={_fmt(k)}, width "
        f"{_fmt(_n(head.get('d_sae')))}. Matched-L0 targets: "
        f"{', '.join(f'{t:g}' for t in targets)}.", "",
        "Verdicts are computed by fixed rules from `results.csv` (see each claim); "
        "`aensae figures` redraws the figures from the same table.", "",
        f"**Verdict rule for matched comparisons:** {RULE}.", "",
        "## Claims", "",
    ]
    if rhos:
        lines += _amortization(rows, rhos) + [""]
        lines += _claim_lipschitz(rows, rhos, k) + [""]
        for init in _inits(rows):
            lines += [f"### Claims 2-3, init {init}", ""]
            lines += _claim_matched(
                f"2a. **Adaptive l1 weights remove shrinkage bias** (init {init}). "
                "(|1 - code bias| against the true codes at matched L0; lower is better)",
                rows, rhos, "code_bias", "lower", "abs1", init) + [""]
            lines += _claim_matched(
                f"2b. **Adaptive weights suppress spurious latents and recover the global "
                f"support** (init {init}). (support F1 against the true codes at matched "
                "L0; higher is better)", rows, rhos, "supp_f1", "higher", "none", init) + [""]
            lines += [
                f"3. **Feature starvation (dead latents) is a geometric pathology of l1/TopK "
                f"coding that grows with correlation; AEN mitigates it without resampling or "
                f"auxiliary losses, at competitive reconstruction** (init {init})."]
            lines += _claim_dead(rows, rhos, init) + [""]
        lines += _settings_table(rows, rhos)
    lines += _quality_notes(rows)
    lines += _scale_notes(rows) + [""]
    path = results_dir / "report.md" if path is None else Path(path)
    atomic_write_text(path, "\n".join(lines))
    return path
