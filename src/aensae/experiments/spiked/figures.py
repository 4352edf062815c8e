r"""The seven figures of ``aensae reproduce``, drawn from the results tables alone.

``draw_all(RESULTS_DIR)`` reads ``results.csv`` (and ``speed.csv`` when present) and writes
``figures/fig<i>_<name>.png`` and ``.svg``; SAE runs are drawn from the test seeds only
(``role`` other than ``selection``):

1. ``fig1_dead_ev_vs_l0``: dead-latent % (median of the last training windows) and explained
   variance against the held-out L0, one panel per rho, one curve per family and init
   (solid: tied, dashed: independent; mean over seeds at each target L0 / penalty); a
   point whose explained variance is negative is marked with a hollow X; targets the
   calibration could not reach are listed in the panel (they have no run, no point);
2. ``fig2_recovery_vs_l0``: support F1 against the true codes and Hungarian-matched
   dictionary recovery (shared spike projected out) against L0; reference lines: exact
   lasso / elastic-net codes on the true dictionary; chance level of a random dictionary;
3. ``fig3_amortization_gap``: relative amortization gap ``(F(h_enc) - F(h_exact)) /
   F(h_exact)`` (median over held-out signals) against rho, per family (median over runs,
   bars from the smallest to the largest run);
4. ``fig4_lipschitz``: local Lipschitz constants against rho -- exact lasso and elastic-net
   maps on the true dictionary (the reference point whose L0 is nearest the true k), the
   elastic-net bound ``1/(2 sqrt(lam2))``, every continuous encoder; jump sizes of the
   discontinuous encoders (TopK, BatchTopK, JumpReLU);
5. ``fig5_hoffman``: distributions (5/25/50/75/95 percentiles) of local Hoffman constants
   against rho, exact elastic net on the true dictionary and each l1 family's decoder;
6. ``fig6_solver_speed``: exact-solver throughput (signals/s) and the ratio to
   scikit-learn, from ``aensae bench solvers``;
7. ``fig7_authors_overlay``: the authors' published spiked runs (package data
   ``data/authors_spiked_runs.csv``) in grey under ours, for the rho values both have:
   dead %, centred explained variance and raw MMCS against L0 / k (their k = 16), like
   with like (our ``explained_variance_centred`` and ``dict_mmcs_learned``);
8. ``fig8_regime``: from ``windows.csv``, the dead-latent % and, for the adaptive
   families, the % of latents at ``w_max`` against training steps, one column per rho,
   one curve per family and init (median over the test runs at each window); the hold
   and ramp are where the pinned curve leaves zero.

Output is byte-identical for the same tables: fixed backend (Agg), fixed style, no
timestamps in the metadata, a fixed SVG hash salt, sorted inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aensae.experiments.plotting import (
    AUTHORS_CLASS,
    family_colors,
    family_list,
    init_of,
    num,
    plain_log_ticks,
    render,
    run_inits,
    seed_curve,
)
from aensae.experiments.results import read_table

__all__ = ["FIGURES", "draw_all"]

FIGURES = ("fig1_dead_ev_vs_l0", "fig2_recovery_vs_l0", "fig3_amortization_gap",
           "fig4_lipschitz", "fig5_hoffman", "fig6_solver_speed", "fig7_authors_overlay",
           "fig8_regime")


def _sae(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The SAE rows the figures draw: test runs only (a ``[selection]`` seed's runs, one
    per swept variant, are in ``selection.json`` and the report, not on the curves)."""
    return [r for r in rows if r.get("kind") == "sae" and r.get("role", "test") != "selection"]


def _exact(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind") == "exact"]


def _rhos(rows: list[dict[str, Any]]) -> list[float]:
    return sorted({float(r["rho"]) for r in rows})


def _dead(r: dict[str, Any]) -> float:
    v = num(r.get("dead_median_last"))
    return 100.0 * (v if math.isfinite(v) else num(r.get("dead_final")))


def _ev(r: dict[str, Any]) -> float:
    return num(r.get("explained_variance"))


def _legend_entries(axes: np.ndarray) -> tuple[dict, list[str]]:
    """Each label drawn in any panel once, in first-drawn order, with its first handle."""
    handles: dict = {}
    labels: list[str] = []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    return handles, labels


_INIT_STYLE = {"tied": "-", "independent": "--"}


def _draw_curves(ax: Any, sae: list[dict[str, Any]], rho: float,
                 fn: Callable[[dict[str, Any]], float], fams: list[str], inits: list[str],
                 col: dict[str, Any], x_div: float = 1.0, flag_negative_ev: bool = False
                 ) -> bool:
    """One seed-averaged curve of ``fn`` against L0 (divided by ``x_div``) per family and
    initialisation at ``rho``; with ``flag_negative_ev`` the points whose explained
    variance is below 0 (worse than the mean) are marked with an open X. Returns whether
    any point was so marked."""
    flagged = False
    for fam in fams:
        for init in inits:
            sub = [r for r in sae if r["family"] == fam and float(r["rho"]) == rho
                   and init_of(r) == init]
            if not sub:
                continue
            xs, ys = seed_curve(sub, "l0", fn)
            ok = np.isfinite(xs) & np.isfinite(ys) & (xs > 0)
            ax.plot(xs[ok] / x_div, ys[ok], marker="o", ms=4, lw=1.3, color=col[fam],
                    ls=_INIT_STYLE.get(init, "-."),
                    label=fam if len(inits) == 1 else f"{fam}, {init}")
            if not flag_negative_ev:
                continue
            neg = ok & (seed_curve(sub, "l0", _ev)[1] < 0)
            if neg.any():
                flagged = True
                ax.plot(xs[neg] / x_div, ys[neg], ls="none", marker="X", ms=9,
                        mfc="white", mec=col[fam], mew=1.5)
    return flagged


def _unreachable_note(rows: list[dict[str, Any]], rho: float) -> str:
    """``unreachable L0 targets: fam/init t, ...`` for the ``kind = unreachable`` rows."""
    items = sorted({(r["family"], init_of(r), num(r.get("target_l0"))) for r in rows
                    if r.get("kind") == "unreachable" and num(r["rho"]) == rho})
    if not items:
        return ""
    return "unreachable L0 targets (no run): " + ", ".join(
        f"{f}/{i[:3]} {t:g}" for f, i, t in items)


def _pareto_panels(fig: Any, rows: list[dict[str, Any]], specs: list[tuple], title: str
                   ) -> None:
    sae, exact = _sae(rows), _exact(rows)
    rhos = _rhos([r for r in rows if r.get("kind") in ("sae", "exact")])
    fams = family_list(sae)
    col = family_colors(fams)
    inits = run_inits(sae)
    axes = fig.subplots(len(specs), len(rhos), squeeze=False, sharex=True)
    flagged = False
    for j, rho in enumerate(rhos):
        for i, (ylabel, fn, ref_fn, clip) in enumerate(specs):
            ax = axes[i, j]
            flagged |= _draw_curves(ax, sae, rho, fn, fams, inits, col, flag_negative_ev=True)
            ylim = ax.get_ylim() if ax.has_data() else None
            if ref_fn is not None:
                ref_fn(ax, [r for r in exact if float(r["rho"]) == rho],
                       [r for r in sae if float(r["rho"]) == rho])
            if clip is not None:
                low = clip[0]
                if clip[0] < 0 and ylim is not None:  # signed metric: start at 0 or below
                    low = max(clip[0], min(0.0, ylim[0]) - 0.05)
                ax.set_ylim(low, clip[1])
            ax.set_xscale("log")
            plain_log_ticks(ax)
            ax.grid(True, which="both", alpha=0.25)
            if i == 0:
                ax.set_title(f"rho = {rho:g}")
                note = _unreachable_note(rows, rho)
                if note:
                    ax.text(0.02, 0.98, note, transform=ax.transAxes, fontsize=6,
                            va="top", wrap=True)
            if i == len(specs) - 1:
                ax.set_xlabel("L0 (active latents per sample, held-out)")
            if j == 0:
                ax.set_ylabel(ylabel)
    handles, labels = _legend_entries(axes)
    if flagged:
        from matplotlib.lines import Line2D

        lab = "X: explained variance < 0 (flagged)"
        handles[lab] = Line2D([], [], ls="none", marker="X", ms=8, mfc="white", mec="black")
        labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="outside right center",
               fontsize=7, title="family, init" if len(inits) > 1 else "family")
    fig.suptitle(title + ("" if len(inits) == 1 else
                          " (solid: tied init, dashed: independent init)"))


def _fig1(fig: Any, rows: list[dict[str, Any]], speed: Any) -> None:
    _pareto_panels(fig, rows, [("dead latents (%)", _dead, None, (0.0, 102.0)),
                               ("explained variance (1 = perfect)", _ev, _ref_ev, (-1.0, 1.02))],
                   "Dead latents and explained variance against L0")


def _ref_line(ax: Any, exact: list[dict[str, Any]], key: str) -> None:
    for arch, style in (("exact_lasso", "--"), ("exact_enet", ":")):
        sub = [r for r in exact if r["arch"] == arch]
        if sub:
            xs, ys = seed_curve([{**r, "variant": arch, "target_l0": r["lam1_fraction"]}
                             for r in sub], "l0", lambda r, k=key: num(r.get(k)))
            ok = np.isfinite(xs) & np.isfinite(ys) & (xs > 0)
            ax.plot(xs[ok], ys[ok], style, color="black", lw=1.2,
                    label=f"{arch.replace('_', ' ')} (true dictionary)")


def _ref_ev(ax: Any, exact: list[dict[str, Any]], sae: list[dict[str, Any]]) -> None:
    _ref_line(ax, exact, "explained_variance")


def _ref_f1(ax: Any, exact: list[dict[str, Any]], sae: list[dict[str, Any]]) -> None:
    _ref_line(ax, exact, "supp_f1")


def _ref_dict(ax: Any, exact: list[dict[str, Any]], sae: list[dict[str, Any]]) -> None:
    ax.axhline(1.0, color="black", ls="--", lw=1.0, label="true dictionary")
    chance = [num(r.get("dict_chance_hungarian_mean_cos_deflated")) for r in sae]
    chance = [c for c in chance if math.isfinite(c)]
    if chance:
        ax.axhline(float(np.mean(chance)), color="grey", ls=":", lw=1.2,
                   label="chance (random dictionary)")


def _fig2(fig: Any, rows: list[dict[str, Any]], speed: Any) -> None:
    _pareto_panels(fig, rows, [
        ("support F1 vs true codes", lambda r: num(r.get("supp_f1")), _ref_f1, (0.0, 1.02)),
        ("dictionary recovery\n(Hungarian |cos|, spike removed)",
         lambda r: num(r.get("dict_hungarian_mean_cos_deflated")), _ref_dict, (0.0, 1.02))],
        "Support and dictionary recovery against L0")


def _by_rho(rows: list[dict[str, Any]], fn: Callable[[dict[str, Any]], float]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """rho, median, min, max of ``fn`` over the rows at each rho (finite values only)."""
    out = []
    for rho in _rhos(rows):
        v = np.array([fn(r) for r in rows if float(r["rho"]) == rho], dtype=float)
        v = v[np.isfinite(v)]
        if v.size:
            out.append((rho, float(np.median(v)), float(v.min()), float(v.max())))
    a = np.array(out, dtype=float).reshape(-1, 4)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3]


def _errplot(ax: Any, x: np.ndarray, med: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             **kw: Any) -> None:
    if x.size:
        ax.errorbar(x, med, yerr=[med - lo, hi - med], marker="o", ms=4, capsize=3, **kw)


def _fig3(fig: Any, rows: list[dict[str, Any]], speed: Any) -> None:
    ax = fig.subplots()
    sae = [r for r in _sae(rows) if r.get("has_exact_problem") is True]
    fams = family_list(_sae(rows))
    col = family_colors(fams)
    rhos = _rhos(rows)
    width = 0.02 * (max(rhos) - min(rhos) if len(rhos) > 1 else 1.0)
    drawn = [f for f in fams if any(r["family"] == f for r in sae)]
    for i, fam in enumerate(drawn):
        x, med, lo, hi = _by_rho([r for r in sae if r["family"] == fam],
                                 lambda r: num(r.get("amort_rel_median")))
        off = (i - (len(drawn) - 1) / 2) * width
        ok = med > 0
        _errplot(ax, x[ok] + off, med[ok], lo[ok], hi[ok], color=col[fam], label=fam)
    ax.set_yscale("log")
    plain_log_ticks(ax, "y")
    ax.set_xlabel("rho (atom correlation)")
    ax.set_ylabel("relative amortization gap (dimensionless)\n"
                  "(F(h_enc) - F(h_exact)) / F(h_exact)")
    ax.set_xticks(rhos)
    ax.grid(True, which="both", alpha=0.25)
    skipped = [f for f in fams if f not in drawn]
    note = ("no exact problem (no l1 objective): " + ", ".join(skipped)) if skipped else ""
    ax.set_title("Amortization gap: encoder codes vs certified exact codes on its decoder\n"
                 + note, fontsize=10)
    if drawn:
        ax.legend(fontsize=8, title="family (median over runs, bars: min-max)")


def _nearest_k(exact: list[dict[str, Any]], arch: str, k: float) -> list[dict[str, Any]]:
    """Per (rho, seed), the reference row of ``arch`` whose L0 is nearest ``k``."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in exact:
        if r["arch"] != arch:
            continue
        key = (float(r["rho"]), r["seed"])
        if key not in best or abs(num(r["l0"]) - k) < abs(num(best[key]["l0"]) - k):
            best[key] = r
    return [best[key] for key in sorted(best)]


def _fig4(fig: Any, rows: list[dict[str, Any]], speed: Any) -> None:
    ax1, ax2 = fig.subplots(1, 2)
    exact, sae = _exact(rows), _sae(rows)
    k = float(np.nanmedian([num(r.get("k")) for r in rows])) if rows else math.nan
    for arch, key, style in (("exact_lasso", "lip_exact_lasso", "--"),
                             ("exact_enet", "lip_exact_enet", ":")):
        sub = _nearest_k(exact, arch, k)
        for q, alpha in (("median", 1.0), ("q95", 0.5)):
            x, med, lo, hi = _by_rho(sub, lambda r, c=f"{key}_{q}": num(r.get(c)))
            _errplot(ax1, x, med, lo, hi, color="black", ls=style, alpha=alpha,
                     label=f"{arch.replace('_', ' ')} map, {q} (true dictionary)")
    bound = _by_rho(_nearest_k(exact, "exact_enet", k),
                    lambda r: num(r.get("lip_exact_enet_bound")))
    if bound[0].size:
        ax1.plot(bound[0], bound[1], color="red", lw=1.0, label="enet bound 1/(2 sqrt(lam2))")
    fams = family_list(sae)
    col = family_colors(fams)
    for fam in fams:
        sub = [r for r in sae if r["family"] == fam]
        x, med, lo, hi = _by_rho(sub, lambda r: num(r.get("lip_encoder_median")))
        _errplot(ax1, x, med, lo, hi, color=col[fam], label=f"{fam} encoder (median)")
        x, med, lo, hi = _by_rho(sub, lambda r: num(r.get("jump_size_median")))
        _errplot(ax2, x, med, lo, hi, color=col[fam], label=f"{fam} encoder")
    for ax in (ax1, ax2):
        ax.set_yscale("log")
        plain_log_ticks(ax, "y")
        ax.set_xlabel("rho (atom correlation)")
        ax.grid(True, which="both", alpha=0.25)
        ax.set_xticks(_rhos(rows))
    ax1.set_ylabel("local Lipschitz constant ||dh/dx||_2 (code units per signal unit)")
    ax1.set_title("Continuous maps (median over signals; bars: runs/seeds)", fontsize=10)
    ax2.set_ylabel("largest jump ||h(x+) - h(x-)|| on a segment (median over pairs)")
    ax2.set_title("Discontinuous encoders: jump size", fontsize=10)
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Lipschitz constants and jumps against rho")


def _box(r: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    cols = ("q05", "q25", "median", "q75", "q95")
    vals = np.array([[num(x.get(f"{prefix}_{c}")) for c in cols] for x in r], dtype=float)
    vals = vals[np.all(np.isfinite(vals), axis=1)]
    if not vals.size:
        return None
    q = np.median(vals, axis=0)
    return {"whislo": q[0], "q1": q[1], "med": q[2], "q3": q[3], "whishi": q[4],
            "fliers": []}


def _fig5(fig: Any, rows: list[dict[str, Any]], speed: Any) -> None:
    ax = fig.subplots()
    exact, sae = _exact(rows), _sae(rows)
    k = float(np.nanmedian([num(r.get("k")) for r in rows])) if rows else math.nan
    sources: list[tuple[str, list[dict[str, Any]], Any]] = [
        ("exact enet, true dictionary", _nearest_k(exact, "exact_enet", k), "black")]
    fams = family_list(sae)
    col = family_colors(fams)
    for fam in fams:
        sub = [r for r in sae if r["family"] == fam and r.get("has_exact_problem") is True]
        if sub:
            sources.append((f"{fam} decoder", sub, col[fam]))
    rhos = _rhos(rows)
    n = len(sources)
    width = 0.8 / max(n, 1)
    handles = []
    for i, (label, sub, color) in enumerate(sources):
        stats, pos = [], []
        for j, rho in enumerate(rhos):
            b = _box([r for r in sub if float(r["rho"]) == rho], "hoffman")
            if b is not None:
                stats.append(b)
                pos.append(j + (i - (n - 1) / 2) * width)
        if stats:
            art = ax.bxp(stats, positions=pos, widths=width * 0.85, patch_artist=True,
                         manage_ticks=False)
            for patch in art["boxes"]:
                patch.set_facecolor(color)
                patch.set_alpha(0.6)
            handles.append((art["boxes"][0], label))
    ax.set_xticks(range(len(rhos)), [f"{r:g}" for r in rhos])
    ax.set_yscale("log")
    plain_log_ticks(ax, "y")
    ax.set_xlabel("rho (atom correlation)")
    ax.set_ylabel("local Hoffman constant ||M_A^-1||_2 (dimensionless)")
    ax.grid(True, which="both", axis="y", alpha=0.25)
    ax.set_title("Local Hoffman constants of the KKT system at the exact solution\n"
                 "(box: 25-75th percentile, whiskers: 5-95th, over held-out signals)",
                 fontsize=10)
    if handles:
        ax.legend([h for h, _ in handles], [lab for _, lab in handles], fontsize=8)


def _fig6(fig: Any, rows: list[dict[str, Any]], speed: list[dict[str, Any]] | None) -> None:
    if not speed:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no solver speed data in this results folder\n"
                "(set [speed] run = true or json = PATH in the config)",
                ha="center", va="center")
        return
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    solvers = sorted({str(r["solver"]) for r in speed})
    rhos = sorted({num(r["rho"]) for r in speed})
    width = 0.8 / max(len(solvers), 1)
    cmap = family_colors(solvers)
    for i, s in enumerate(solvers):
        xs, ys = [], []
        for j, rho in enumerate(rhos):
            v = [num(r.get("signals_per_s")) for r in speed
                 if str(r["solver"]) == s and num(r["rho"]) == rho]
            if v and math.isfinite(v[0]):
                xs.append(j + (i - (len(solvers) - 1) / 2) * width)
                ys.append(v[0])
        ax1.bar(xs, ys, width=width * 0.9, color=cmap[s], label=s)
    ax1.set_xticks(range(len(rhos)), [f"{r:g}" for r in rhos])
    ax1.set_yscale("log")
    ax1.set_xlabel("rho (atom correlation)")
    ax1.set_ylabel("throughput (signals / s)")
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", axis="y", alpha=0.25)
    cols = [c for c in ("solver", "rho", "n", "m", "signals", "signals_per_s",
                        "ratio_vs_sklearn", "max_rel_gap") if any(c in r for r in speed)]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in sorted(
        speed, key=lambda r: (num(r["rho"]), str(r["solver"])))]
    ax2.axis("off")
    tab = ax2.table(cellText=cells, colLabels=cols, loc="center", cellLoc="right")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.scale(1.0, 1.3)
    fig.suptitle("Exact solver speed (aensae bench solvers)")


#: The authors' published spiked runs (package data; see data/README.md).
AUTHORS_CSV = "authors_spiked_runs.csv"
#: k of the authors' spiked data (16 non-zero codes per signal).
AUTHORS_K = 16.0
_AUTHORS_MARKER = {"relu_l1": "s", "elastic_net": "D", "adaptive_lasso": "^", "aen": "o",
                   "topk": "v"}


def authors_runs() -> list[dict[str, Any]]:
    """The authors' spiked runs shipped with the package (columns of their README)."""
    import csv
    from importlib.resources import files

    text = (files("aensae.experiments") / "data" / AUTHORS_CSV).read_text()
    out = []
    for r in csv.DictReader(text.splitlines()):
        out.append({"arch": AUTHORS_CLASS.get(r["model_class"], r["model_class"]),
                    "rho": float(r["rho"]), "l0": float(r["l0"]),
                    "dead_pct": float(r["dead_pct"]),
                    "ev_centred": float(r["explained_variance_centred"]),
                    "mmcs_raw": float(r["mmcs_raw"])})
    return out


def _fig7(fig: Any, rows: list[dict[str, Any]], speed: Any) -> None:
    theirs = authors_runs()
    sae = _sae(rows)
    ours_rhos = _rhos(sae)
    shared = [rho for rho in ours_rhos if any(abs(t["rho"] - rho) < 1e-9 for t in theirs)]
    if not shared:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no rho shared with the authors' runs (0, 0.3, 0.5, 0.7, 0.9)",
                ha="center", va="center")
        return
    k = float(np.nanmedian([num(r.get("k")) for r in sae])) if sae else math.nan
    specs = (("dead latents (%)", "dead_pct", lambda r: _dead(r)),
             ("explained variance, centred", "ev_centred",
              lambda r: num(r.get("explained_variance_centred"))),
             ("MMCS, raw (spike left in)", "mmcs_raw",
              lambda r: num(r.get("dict_mmcs_learned"))))
    fams = family_list(sae)
    col = family_colors(fams)
    inits = run_inits(sae)
    axes = fig.subplots(len(specs), len(shared), squeeze=False, sharex=True)
    for j, rho in enumerate(shared):
        for i, (ylabel, their_key, our_fn) in enumerate(specs):
            ax = axes[i, j]
            for arch in sorted(_AUTHORS_MARKER):
                pts = [t for t in theirs if t["arch"] == arch and abs(t["rho"] - rho) < 1e-9
                       and t["l0"] > 0]
                if pts:
                    ax.plot([t["l0"] / AUTHORS_K for t in pts], [t[their_key] for t in pts],
                            ls="none", marker=_AUTHORS_MARKER[arch], ms=4, color="0.6",
                            alpha=0.6, label=f"authors: {arch}")
            _draw_curves(ax, sae, rho, our_fn, fams, inits, col, x_div=k)
            ax.set_xscale("log")
            ax.grid(True, which="both", alpha=0.25)
            if i == 0:
                ax.set_title(f"rho = {rho:g}")
            if i == len(specs) - 1:
                ax.set_xlabel("L0 / k (active latents per true non-zero)")
            if j == 0:
                ax.set_ylabel(ylabel)
    handles, labels = _legend_entries(axes)
    fig.legend([handles[lab] for lab in labels], labels, loc="outside right center",
               fontsize=7, title="grey: authors; colour: aensae")
    fig.suptitle(
        "aensae (colour) over the authors' published spiked runs (grey), rho shared by both\n"
        f"authors: n=256, m=1024, k=16, 50,000 steps, GPU; aensae: this table (k={k:g}); "
        "x = L0 / k. Like with like: our centred EV against their centred EV;\n"
        "raw MMCS (mean over learned atoms of max |cos| to the true atoms, spike left in) "
        "against theirs; dead %: theirs over a window of 10,000 steps, ours the median of "
        "the last windows",
        fontsize=8)


def _fig8(fig: Any, windows: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    test_ids = {r["run_id"] for r in rows if r.get("kind") == "sae"
                and r.get("role", "test") != "selection"}
    win = [w for w in windows if w.get("run_id") in test_ids]
    rhos = sorted({num(w["rho"]) for w in win}) or [math.nan]
    axes = np.atleast_2d(fig.subplots(2, len(rhos), sharex=True, squeeze=False))
    if not win:
        axes[0, 0].text(0.5, 0.5, "no windows.csv (a table written before the regime "
                        "diagnostics)", ha="center", va="center", fontsize=8)
        return
    fams = sorted({w["family"] for w in win})
    col = family_colors(fams)
    for j, rho in enumerate(rhos):
        for fam in fams:
            for init in sorted({init_of(w) for w in win if w["family"] == fam}):
                sub = [w for w in win if w["family"] == fam and init_of(w) == init
                       and num(w["rho"]) == rho]
                if not sub:
                    continue
                steps = sorted({num(w["step"]) for w in sub})
                ls = "-" if init == "tied" else "--"
                for i, key in enumerate(("dead", "w_max_frac")):
                    ys = []
                    for t in steps:
                        v = [100 * num(w.get(key)) for w in sub if num(w["step"]) == t]
                        v = [x for x in v if math.isfinite(x)]
                        ys.append(float(np.median(v)) if v else math.nan)
                    if all(not math.isfinite(y) for y in ys):
                        continue
                    axes[i, j].plot(steps, ys, ls=ls, color=col[fam], lw=1.2,
                                    label=f"{fam} ({init})")
        axes[0, j].set_title(f"rho = {rho:g}")
        axes[1, j].set_xlabel("training step")
        for i in range(2):
            axes[i, j].grid(True, alpha=0.25)
            axes[i, j].axhline(50.0 if i == 1 else 0.0, color="0.5", lw=0.6, ls=":")
    axes[0, 0].set_ylabel("dead latents (%)")
    axes[1, 0].set_ylabel("latents at w_max (%)")
    handles, labels = _legend_entries(axes)
    fig.legend([handles[lab] for lab in labels], labels, loc="outside right center",
               fontsize=7)
    fig.suptitle("Regime over training (median over test runs at each window): above 50 % "
                 "at w_max a run is outside the method's intended regime", fontsize=9)


_DRAW = {"fig1_dead_ev_vs_l0": (_fig1, (13, 6.5)), "fig2_recovery_vs_l0": (_fig2, (13, 6.5)),
         "fig3_amortization_gap": (_fig3, (8, 5)), "fig4_lipschitz": (_fig4, (13, 5.5)),
         "fig5_hoffman": (_fig5, (10, 5.5)), "fig6_solver_speed": (_fig6, (13, 5)),
         "fig7_authors_overlay": (_fig7, (14, 8))}


def draw_all(results_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every figure from ``results_dir/results.csv`` (and ``speed.csv``).

    Into ``out_dir`` (default ``results_dir/figures``). ``aensae figures`` and ``aensae
    reproduce`` call it through :func:`aensae.experiments.spiked.driver.write_figures`, which
    validates the table first and swaps the new figures and report in together.
    """
    results_dir = Path(results_dir)
    _, rows = read_table(results_dir / "results.csv")
    speed_path = results_dir / "speed.csv"
    speed = read_table(speed_path)[1] if speed_path.is_file() else None
    win_path = results_dir / "windows.csv"
    windows = read_table(win_path)[1] if win_path.is_file() else []
    out_dir = results_dir / "figures" if out_dir is None else Path(out_dir)
    draw = {**_DRAW, "fig8_regime": (lambda fig, rows, speed: _fig8(fig, windows, rows),
                                      (12, 6))}
    return render([(name, *draw[name]) for name in FIGURES], rows, speed, out_dir)


