r"""``report.md``: each claim in one line, the numbers bearing on it, and a verdict.

Everything is computed from ``results.csv`` alone. Comparisons between families are made
at matched sparsity: for each rho, a family's seed-averaged curve ``metric(L0)`` is
interpolated linearly in ``log L0`` at common L0 values (the configured targets that lie
inside the family's measured L0 range; no extrapolation), and two families are compared
only where both curves exist. Verdicts follow fixed rules stated beside each claim:
``supported``, ``contradicted``, or ``inconclusive`` (with the reason). A claim our data
contradict is reported as contradicted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from aensae._io import atomic_write_text
from aensae.benchmarks.results import read_table

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
    return "n/a" if not math.isfinite(v) else format(v, spec)


def l0_grid(rows: list[dict[str, Any]], rho: float, n: int = GRID_POINTS) -> list[float]:
    """``n`` log-spaced L0 values spanning the L0s the SAE runs at ``rho`` reached."""
    l0s = [_n(r["l0"]) for r in rows if r.get("kind") == "sae" and _n(r["rho"]) == rho]
    l0s = [v for v in l0s if v > 0 and math.isfinite(v)]
    if not l0s:
        return []
    return [float(v) for v in np.geomspace(min(l0s), max(l0s), n)]


def _compare(rows, fam_a: str, fams_b: tuple[str, ...], metric: str, better: str,
             rhos: list[float]) -> tuple[int, int, int, list[str]]:
    """Cells (rho, L0) where ``fam_a`` beats / loses to the best present ``fams_b``.

    Cells are the points of :func:`l0_grid` where ``fam_a`` and at least one of ``fams_b``
    have a matched value. A difference within ``TIE = 0.005`` (absolute) counts as
    neither. Returns ``(wins, losses, cells, notes)``.
    """
    wins, losses, total, notes = 0, 0, 0, []
    for rho in rhos:
        for t in l0_grid(rows, rho):
            a = matched(rows, fam_a, rho, metric, t)
            bs = [matched(rows, b, rho, metric, t) for b in fams_b]
            bs = [b for b in bs if math.isfinite(b)]
            if not math.isfinite(a) or not bs:
                continue
            total += 1
            best_b = min(bs) if better == "lower" else max(bs)
            diff = (best_b - a) if better == "lower" else (a - best_b)
            wins += int(diff > TIE)
            losses += int(diff < -TIE)
            notes.append(f"rho={rho:g}, L0={t:.2g}: {fam_a} {_fmt(a)} vs {_fmt(best_b)}")
    return wins, losses, total, notes


def _verdict_majority(wins: int, losses: int, total: int) -> str:
    if total < MIN_CELLS:
        return f"inconclusive (only {total} matched L0 point(s); {MIN_CELLS} needed)"
    if wins >= 0.75 * total:
        return "supported"
    if losses >= 0.75 * total:
        return "contradicted"
    return f"inconclusive (better in {wins}, worse in {losses}, tied in " \
           f"{total - wins - losses} of {total} cells)"


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


def _claim_matched(title: str, rows, rhos, metric: str, better: str,
                   transform: str, rule: str) -> list[str]:
    data = rows
    if transform == "abs1":
        data = [{**r, metric: abs(1.0 - _n(r.get(metric)))} for r in rows]
    lines = [title]
    all_w, all_l, all_t = 0, 0, 0
    for fam in ADAPTIVE:
        if not _rows(rows, kind="sae", family=fam):
            continue
        w, lo, t, notes = _compare(data, fam, L1_BASELINES, metric, better, rhos)
        all_w, all_l, all_t = all_w + w, all_l + lo, all_t + t
        lines.append(f"   - {fam} vs the best of {', '.join(L1_BASELINES)}: better in {w}, "
                     f"worse in {lo} of {t} (rho, L0) cells; " + "; ".join(notes[:6]))
    lines.append(f"   - rule: {rule}")
    lines.append(f"   - **verdict: {_verdict_majority(all_w, all_l, all_t)}**")
    return lines


def _family_mean(rows, fam: str, rho: float, metric: str) -> float:
    """Mean of ``fam``'s matched ``metric`` over the L0 grid points it reaches at ``rho``."""
    vals = [matched(rows, fam, rho, metric, t) for t in l0_grid(rows, rho)]
    return _median([v for v in vals if math.isfinite(v)]) if vals else math.nan


def _claim_dead(rows, rhos) -> list[str]:
    lo, hi = rhos[0], rhos[-1]
    fams = ("topk", "relu_l1", "elastic_net", "aen")
    dead = {(f, rho): _family_mean(rows, f, rho, "dead_median_last")
            for f in fams for rho in (lo, hi)}
    starve = [f for f in ("topk", "relu_l1")
              if math.isfinite(dead[(f, hi)]) and dead[(f, hi)] > dead[(f, lo)] + 0.02]
    base = ("topk", "relu_l1", "elastic_net")
    have_base = [f for f in base if _rows(rows, kind="sae", family=f)]
    v1 = ("supported" if starve else "contradicted (dead share does not grow with rho "
          "for topk or relu_l1)") if have_base else "inconclusive (no baseline rows)"
    w, lo_, t, notes = _compare(rows, "aen", base, "dead_median_last", "lower", [hi])
    ew, el, et, enotes = _compare(rows, "aen", base, "explained_variance", "higher", [hi])
    ev_close = 0
    for cell in l0_grid(rows, hi):
        a = matched(rows, "aen", hi, "explained_variance", cell)
        bs = [matched(rows, b, hi, "explained_variance", cell) for b in base]
        bs = [b for b in bs if math.isfinite(b)]
        ev_close += int(math.isfinite(a) and bool(bs) and a >= max(bs) - 0.02)
    if t < MIN_CELLS:
        v2 = (f"inconclusive (only {t} L0 point(s) where aen and a baseline both have runs; "
              f"{MIN_CELLS} needed)")
    elif w >= 0.75 * t and ev_close >= 0.75 * t:
        v2 = "supported"
    elif lo_ >= 0.75 * t:
        v2 = "contradicted (aen has more dead latents than the best baseline)"
    elif w >= 0.75 * t:
        v2 = ("contradicted (fewer dead latents, but explained variance more than 0.02 "
              "below the best baseline)")
    else:
        v2 = f"inconclusive (fewer dead latents in {w}, more in {lo_} of {t} cells)"
    pct = {key: _fmt(100 * v, ".1f") for key, v in dead.items()}
    return [
        "3. **Feature starvation (dead latents) is a geometric pathology of l1/TopK coding "
        "that grows with correlation; AEN mitigates it without resampling or auxiliary "
        "losses, at competitive reconstruction.**",
        f"   - dead latents % (median over matched L0 points), rho {lo:g} -> {hi:g}: "
        + "; ".join(f"{f} {pct[(f, lo)]} -> {pct[(f, hi)]}" for f in fams),
        f"   - at rho={hi:g}, aen vs the fewest dead latents of {', '.join(base)} "
        "(as fractions, not %): " +
        ("; ".join(notes[:5]) or "no common L0"),
        f"   - explained variance at rho={hi:g}, aen vs the best baseline: " +
        ("; ".join(enotes[:5]) or "no common L0"),
        "   - rules: starvation supported if topk or relu_l1 gains > 2 points of dead "
        "latents from the smallest to the largest rho; mitigation supported if, at the "
        "largest rho, aen has fewer dead latents than every baseline (by > 0.005) in >= 75% "
        "of matched L0 points and its explained variance is within 0.02 of the best "
        "baseline there",
        f"   - **verdict (starvation grows with rho): {v1}**",
        f"   - **verdict (AEN mitigates at competitive reconstruction): {v2}**",
    ]


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
            "provisional (the paper config settles them).",
            "- Adaptive weights switch on only after their warmup hold; in short runs they "
            "have acted for a fraction of training.",
        ]
    else:
        lines.append(f"- Runs are {int(steps):,} steps long: the paper's scale.")
    lines.append("- Calibration is a short pass; L0 drifts with run length, so every "
                 "comparison interpolates at the L0 the runs actually reached.")
    missed: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r.get("kind") == "sae" and r.get("calibration_extrapolated") is True:
            missed[r["family"]].add(f"{_n(r['target_l0']):g}@rho={_n(r['rho']):g}")
    if missed:
        lines.append("- Targets the calibration ladder did not bracket (penalty extrapolated, "
                     "so these runs sit away from their target L0): " + "; ".join(
                         f"{fam}: {', '.join(sorted(v))}" for fam, v in sorted(missed.items())))
    return lines


def write_report(results_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write ``report.md`` from ``results_dir/results.csv``; return its path.

    To ``path`` (default ``results_dir/report.md``); see
    :func:`aensae.benchmarks.runner.write_figures` for the validated, all-or-nothing call.
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
        "## Claims", "",
    ]
    if rhos:
        lines += _amortization(rows, rhos) + [""]
        lines += _claim_lipschitz(rows, rhos, k) + [""]
        lines += _claim_matched(
            "2a. **Adaptive l1 weights remove shrinkage bias.** (|1 - code bias| against "
            "the true codes at matched L0; lower is better)",
            rows, rhos, "code_bias", "lower", "abs1",
            "supported if aen / adaptive_lasso beat the best l1 baseline by more than "
            f"{TIE} in >= 75% of cells, contradicted if worse by more than {TIE} in >= 75%"
        ) + [""]
        lines += _claim_matched(
            "2b. **Adaptive weights suppress spurious latents and recover the global "
            "support.** (support F1 against the true codes at matched L0; higher is better)",
            rows, rhos, "supp_f1", "higher", "none",
            "supported if aen / adaptive_lasso beat the best l1 baseline by more than "
            f"{TIE} in >= 75% of cells, contradicted if worse by more than {TIE} in >= 75%"
        ) + [""]
        lines += _claim_dead(rows, rhos) + [""]
    lines += _scale_notes(rows) + [""]
    path = results_dir / "report.md" if path is None else Path(path)
    atomic_write_text(path, "\n".join(lines))
    return path
