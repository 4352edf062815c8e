r"""Figures of the LLM grid, drawn from ``results.csv`` alone (and the authors' table).

``draw_llm_figures(RESULTS_DIR)`` writes ``figures/<name>.png`` and ``.svg``:

1. ``llm1_dead_ev_ce_vs_l0`` (the paper's Pythia figure): dead-latent % in the last
   training window, explained variance and CE-loss score
   :math:`(CE_{zero} - CE_{spliced}) / (CE_{zero} - CE_{clean})` against the eval L0, one
   curve per architecture (line style per init); a hollow X marks a point whose EV is
   negative; unreachable targets are listed in the first panel;
2. ``llm2_authors_pythia``: the authors' published Pythia-70M runs (package data
   ``data/authors_pythia70m_runs.csv``) in grey under ours, like with like where the
   definitions allow: dead %, centred EV, and CE recovered with the mean-ablation
   baseline (their runs with L0 >= 1). Their CE recovered comes from the defective
   splice (normalisation not undone): ours is drawn twice, correct (filled) and with the
   same defect (hollow, ``ce_loss_score_unnormalised_splice_mean_ablation``);
3. ``llm3_exact_codes``: for the l1-family SAEs, against exact certified codes on the
   same tokens and dictionary: the relative amortization gap (median over tokens),
   support F1 of the encoder, and explained variance of exact codes beside the
   encoder's;
4. ``llm4_dead_over_training``: the time course of starvation, from the per-window
   columns (``dead_fractions`` against ``dead_window_ends``): dead % in each window of
   ``dead_window_tokens`` tokens against the tokens seen, one curve per SAE (colour per
   family, line style per target L0; a thin vertical line where an adaptive family's
   weights reach full strength, ``hold_ramp_tokens``), and for the adaptive SAEs the
   fractions of latents whose weight is pinned at ``w_max`` (filled) and at ``w_min``
   (hollow) at each window's end (``regime_w_max_frac_windows``,
   ``regime_w_min_frac_windows``). A table without those columns gets a panel saying so.

Byte-identical for the same tables (:func:`aensae.experiments.plotting.render`).
"""

from __future__ import annotations

import csv
import math
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from aensae.experiments.llm.schema import window_values
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

__all__ = ["AUTHORS_PYTHIA_CSV", "LLM_FIGURES", "authors_pythia_runs", "draw_llm_figures"]

LLM_FIGURES = ("llm1_dead_ev_ce_vs_l0", "llm2_authors_pythia", "llm3_exact_codes",
               "llm4_dead_over_training")
AUTHORS_PYTHIA_CSV = "authors_pythia70m_runs.csv"
_STYLE = {"tied": "-", "independent": "--"}
#: Architectures with an exact problem (``SAE.exact_problem()`` is not None).
_L1_FAMILY = ("relu_l1", "elastic_net", "adaptive_lasso", "aen")


def authors_pythia_runs() -> list[dict[str, Any]]:
    """The authors' Pythia-70M runs (package data), with our architecture names."""
    text = (files("aensae.experiments") / "data" / AUTHORS_PYTHIA_CSV).read_text()
    out = []
    for r in csv.DictReader(text.splitlines()):
        out.append({"arch": AUTHORS_CLASS.get(r["model_class"], r["model_class"]),
                    "model_class": r["model_class"], "seed": int(r["seed"]),
                    **{k: float(r[k]) if r[k] != "" else math.nan
                       for k in ("l1", "l2", "k", "l0", "dead_pct",
                                 "explained_variance_centred", "ce_clean", "ce_spliced",
                                 "ce_ablated", "ce_recovered", "kl_div")}})
    return out


def _sae(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind") == "sae"]


def _unreachable(rows: list[dict[str, Any]]) -> str:
    items = sorted({(r["family"], init_of(r), num(r.get("target_l0"))) for r in rows
                    if r.get("kind") == "unreachable"})
    return ("unreachable L0 targets (no run): "
            + ", ".join(f"{f}/{i[:3]} {t:g}" for f, i, t in items)) if items else ""


def _panels(fig: Any, rows: list[dict[str, Any]], specs: list[tuple[str, Any, Any]],
            title: str, hollow: dict[int, Any] | None = None) -> list[Any]:
    """One panel per ``(ylabel, fn, ylim)``: a curve per family and init against L0."""
    sae = _sae(rows)
    fams = family_list(sae)
    col = family_colors(fams)
    inits = run_inits(sae)
    axes = fig.subplots(1, len(specs), squeeze=False)[0]
    for i, (ylabel, fn, ylim) in enumerate(specs):
        ax = axes[i]
        for fam in fams:
            for init in inits:
                sub = [r for r in sae if r["family"] == fam and init_of(r) == init]
                if not sub:
                    continue
                label = fam if len(inits) == 1 else f"{fam}, {init}"
                xs, ys = seed_curve(sub, "l0", fn)
                ok = np.isfinite(xs) & np.isfinite(ys) & (xs > 0)
                ax.plot(xs[ok], ys[ok], marker="o", ms=4, lw=1.3, color=col[fam],
                        ls=_STYLE.get(init, "-."), label=label)
                _, evs = seed_curve(sub, "l0", lambda r: num(r.get("explained_variance")))
                neg = ok & (evs < 0)
                if neg.any():
                    ax.plot(xs[neg], ys[neg], ls="none", marker="X", ms=9, mfc="white",
                            mec=col[fam], mew=1.5)
                if hollow and i in hollow:
                    xs2, ys2 = seed_curve(sub, "l0", hollow[i])
                    ok2 = np.isfinite(xs2) & np.isfinite(ys2) & (xs2 > 0)
                    ax.plot(xs2[ok2], ys2[ok2], marker="o", ms=5, lw=0.8, ls=":",
                            mfc="white", color=col[fam])
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xscale("log")
        plain_log_ticks(ax)
        ax.grid(True, which="both", alpha=0.25)
        ax.set_xlabel("L0 (active latents per token, eval split)")
        ax.set_ylabel(ylabel)
    note = _unreachable(rows)
    if note:
        axes[0].text(0.02, 0.98, note, transform=axes[0].transAxes, fontsize=6, va="top",
                     wrap=True)
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside right center",
                   fontsize=7, title="architecture" if len(inits) == 1
                   else "architecture, init")
    fig.suptitle(title, fontsize=9)
    return list(axes)


def _setting(rows: list[dict[str, Any]]) -> str:
    sae = _sae(rows) or rows
    r = sae[0] if sae else {}
    return (f"{r.get('model')} L{num(r.get('layer')):.0f} {r.get('hook')}, "
            f"{num(r.get('cache_tokens')):,.0f} tokens of {r.get('text')}, "
            f"{num(r.get('d_sae')):.0f} latents, {num(r.get('steps')):.0f} steps of "
            f"{num(r.get('batch_size')):.0f} tokens, normalisation {r.get('normalisation')}")


def _fig1(fig: Any, rows: list[dict[str, Any]], extra: Any) -> None:
    _panels(fig, rows, [
        ("dead latents (%, last training window)", lambda r: 100.0 * num(r.get("dead_final")),
         (-2.0, 102.0)),
        ("explained variance (1 = perfect)", lambda r: num(r.get("explained_variance")),
         None),
        ("CE-loss score (zero-ablation baseline)",
         lambda r: num(r.get("ce_loss_score")), None)],
        "Dead latents, explained variance and CE-loss score against L0\n" + _setting(rows))


def _fig2(fig: Any, rows: list[dict[str, Any]], extra: Any) -> None:
    theirs = authors_pythia_runs()
    specs = [("dead latents (%)", lambda r: 100.0 * num(r.get("dead_final")), "dead_pct"),
             ("explained variance, centred", lambda r: num(r.get("explained_variance_centred")),
              "explained_variance_centred"),
             ("CE recovered, mean-ablation baseline",
              lambda r: num(r.get("ce_loss_score_mean_ablation")), "ce_recovered")]
    axes = _panels(fig, rows, [(y, fn, None) for y, fn, _ in specs],
                   "aensae (colour) beside the authors' published Pythia-70M runs (grey)\n"
                   "authors: Pythia-70M-deduped blocks.3, 4096 latents, 204.8M Pile tokens, "
                   "per-token normalisation, defective splice (normalisation not undone)\n"
                   "ours: " + _setting(rows) + "\nright panel: filled = our correct splice, "
                   "hollow = ours with the authors' defect",
                   hollow={2: lambda r: num(
                       r.get("ce_loss_score_unnormalised_splice_mean_ablation"))})
    for ax, (_, _, key) in zip(axes, specs, strict=True):
        xs = np.array([t["l0"] for t in theirs])
        ys = np.array([t[key] for t in theirs])
        ok = np.isfinite(xs) & np.isfinite(ys) & (xs >= 1.0)
        ax.scatter(xs[ok], ys[ok], s=6, color="0.6", alpha=0.5, zorder=0)
        ax.set_xscale("log")
        ax.set_xlim(left=0.8)
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,)))
        fmt = ScalarFormatter()
        fmt.set_scientific(False)
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(NullFormatter())


def _fig3(fig: Any, rows: list[dict[str, Any]], extra: Any) -> None:
    l1 = [r for r in rows if r.get("arch") in _L1_FAMILY
          and (r.get("kind") == "unreachable" or math.isfinite(num(r.get("amort_rel_median"))))]
    if not _sae(l1):
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no l1-family SAE with exact codes in this table", ha="center")
        ax.set_axis_off()
        return
    axes = _panels(fig, l1, [
        ("amortization gap, relative (median)", lambda r: num(r.get("amort_rel_median")),
         None),
        ("support F1 of the encoder vs exact codes",
         lambda r: num(r.get("amort_support_f1")), (0.0, 1.02)),
        ("explained variance: encoder (filled), exact codes (hollow)",
         lambda r: num(r.get("encoder_explained_variance")), None)],
        "l1-family SAEs against exact certified codes (same dictionary, same tokens)",
        hollow={2: lambda r: num(r.get("exact_explained_variance"))})
    axes[0].set_yscale("log")


def _window_xy(r: dict[str, Any], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens seen at each window's end, values of ``column`` per window) of one row."""
    ys = np.array(window_values(r.get(column)), dtype=float)
    xs = np.array(window_values(r.get("dead_window_ends")), dtype=float)
    if len(xs) != len(ys):  # no ends recorded: whole windows of dead_window_tokens
        xs = np.arange(1, len(ys) + 1) * num(r.get("dead_window_tokens"))
    return xs, ys


def _fig4(fig: Any, rows: list[dict[str, Any]], extra: Any) -> None:
    sae = [r for r in _sae(rows) if window_values(r.get("dead_fractions"))]
    axes = fig.subplots(1, 2, squeeze=False)[0]
    if not sae:
        for ax in axes:
            ax.text(0.5, 0.5, "no per-window dead fractions in this table\n(written before "
                    "the dead-latent windows were recorded)", ha="center", va="center")
            ax.set_axis_off()
        return
    sae = sorted(sae, key=lambda r: (str(r["family"]), init_of(r), num(r.get("target_l0"))))
    fams = family_list(sae)
    col = family_colors(fams)
    inits = run_inits(sae)
    targets = sorted({num(r.get("target_l0")) for r in sae})
    styles = ("-", "--", ":", "-.")

    seeds = {num(r.get("seed")) for r in sae}

    def label(r: dict[str, Any]) -> str:
        init = f", {init_of(r)}" if len(inits) > 1 else ""
        seed = f", seed {num(r.get('seed')):g}" if len(seeds) > 1 else ""
        return f"{r['family']}{init}, L0 {num(r.get('target_l0')):.3g}{seed}"

    ax = axes[0]
    drawn: set[tuple[str, float]] = set()
    for r in sae:
        xs, ys = _window_xy(r, "dead_fractions")
        ls = styles[targets.index(num(r.get("target_l0"))) % len(styles)]
        ax.plot(xs, 100.0 * ys, marker="o", ms=3, lw=1.2, ls=ls, color=col[r["family"]],
                label=label(r))
        hr = num(r.get("hold_ramp_tokens"))
        if math.isfinite(hr) and (r["family"], hr) not in drawn:
            drawn.add((r["family"], hr))
            ax.axvline(hr, color=col[r["family"]], lw=0.7, alpha=0.5)
    ax.set_ylim(-2.0, 102.0)
    ax.set_xlabel("tokens seen (end of each window)")
    ax.set_ylabel("dead latents (% of latents, per window)")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    adaptive = [r for r in sae if window_values(r.get("regime_w_max_frac_windows"))]
    for r in adaptive:
        xs, ys = _window_xy(r, "regime_w_max_frac_windows")
        ls = styles[targets.index(num(r.get("target_l0"))) % len(styles)]
        ax.plot(xs, 100.0 * ys, marker="o", ms=3, lw=1.2, ls=ls, color=col[r["family"]],
                label=f"{label(r)}: at w_max")
        xs, ys = _window_xy(r, "regime_w_min_frac_windows")
        if len(ys):
            ax.plot(xs, 100.0 * ys, marker="o", ms=4, lw=0.8, ls=ls, mfc="white",
                    color=col[r["family"]], label=f"{label(r)}: at w_min")
    if adaptive:
        ax.set_xlabel("tokens seen (end of each window)")
        ax.set_ylabel("latents whose adaptive weight is pinned (%)")
        ax.set_ylim(-2.0, 102.0)
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "no adaptive SAE with weight-regime diagnostics in this table",
                ha="center", va="center")
        ax.set_axis_off()
    window = num(sae[0].get("dead_window_tokens"))
    fig.suptitle(f"Dead latents per window of {window:,.0f} tokens during training (left; "
                 "vertical lines: an adaptive family's weights at full strength, after the "
                 "hold and ramp) and the adaptive weights pinned at their clamps (right)\n"
                 + _setting(rows), fontsize=9)


_DRAW = {"llm1_dead_ev_ce_vs_l0": (_fig1, (14, 4.8)),
         "llm2_authors_pythia": (_fig2, (14, 5.8)),
         "llm3_exact_codes": (_fig3, (14, 4.8)),
         "llm4_dead_over_training": (_fig4, (14, 5.2))}


def draw_llm_figures(results_dir: str | Path, out_dir: str | Path | None = None
                     ) -> list[Path]:
    """Draw every LLM figure from ``results_dir/results.csv`` into ``out_dir`` (default
    ``results_dir/figures``)."""
    results_dir = Path(results_dir)
    _, rows = read_table(results_dir / "results.csv")
    out = results_dir / "figures" if out_dir is None else Path(out_dir)
    return render([(n, *_DRAW[n]) for n in LLM_FIGURES], rows, None, out)
