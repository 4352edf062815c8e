"""The LLM grid's results table: its columns and the check before it is drawn.

Shared by the driver (which writes the table) and the report (which reads it), so that
neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aensae.experiments.results import check_table

__all__ = ["KNOWN_EXTRA", "KNOWN_PREFIXES", "KNOWN_SUFFIXES", "LLM_ID_COLUMNS",
           "LLM_REQUIRED_COLUMNS", "WINDOW_COLUMNS", "check_llm_table", "window_values"]

#: Identifying columns, first in the table.
LLM_ID_COLUMNS = ("run_id", "kind", "family", "arch", "init", "target_l0", "calibrated",
                  "calibrated_param", "calibrated_value", "calibration_extrapolated",
                  "variant", "pass", "sae", "config_name", "config_hash", "aensae_version")


#: Columns every LLM results table holds.
LLM_REQUIRED_COLUMNS = LLM_ID_COLUMNS + (
    "model", "layer", "hook", "text", "cache_tokens", "d_in", "d_sae", "steps",
    "batch_size", "lr", "normalisation", "normalisation_constant", "dead_window_tokens",
    "seed", "device", "l0", "l0_ratio", "l0_matched", "dead_final", "dead_fraction",
    "explained_variance", "explained_variance_no_outliers", "explained_variance_centred",
    "mse", "ce_clean", "ce_zero", "ce_mean_ablation", "ce_spliced", "ce_loss_score",
    "ce_loss_score_mean_ablation", "kl_spliced", "kl_score", "ce_unnormalised_splice",
    "kl_unnormalised_splice", "ce_loss_score_unnormalised_splice",
    "ce_loss_score_unnormalised_splice_mean_ablation", "amort_rel_median",
    "amort_gap_median", "amort_support_f1", "exact_certified", "exact_l0",
    "exact_explained_variance", "encoder_l0", "encoder_explained_variance", "eval_tokens",
    "eval_outlier_tokens", "train_seconds", "eval_seconds")


_TEXT_COLUMNS = ("run_id", "kind", "family", "arch", "init", "calibrated",
                 "calibrated_param", "calibration_extrapolated", "variant", "sae",
                 "config_name", "config_hash", "aensae_version", "model", "hook", "text",
                 "normalisation", "device", "l0_matched")


_KINDS = ("sae", "unreachable")


#: Columns this module writes beyond the required ones, and the eval's own keys today:
#: any other column of the table is a number ``aensae llm eval`` added (passed through).
KNOWN_EXTRA = ("dead_median_last", "train_loss_last", "outlier_factor", "exact_tokens",
               "kl_zero", "kl_mean_ablation", "l0_seen_min", "l0_seen_max",
               "penalty_searched_min", "penalty_searched_max", "explained_variance_eval_cache",
               "lam1", "lam2", "exact_seconds", "amort_gap_mean", "amort_support_precision",
               "amort_support_recall", "exact_tokens",
               # several seeds and the frontier around each target (the verdicts)
               "calibration_seed", "calibrate_frontier",
               # outlier exclusion (data.exclude_outliers) and its counts
               "exclude_outliers", "outlier_threshold", "train_excluded_tokens",
               "eval_excluded_tokens", "eval_tokens_measured", "tokens_measured",
               "excluded_tokens",
               # the dead-latent windows (aensae.llm.training.window_columns)
               "dead_windows", "dead_trend", "hold_ramp_tokens", "dead_post_ramp_windows",
               "dead_post_ramp_median_last", "dead_post_ramp_trend", "dead_fractions",
               "dead_window_ends", "rare_fraction", "rare_rate")
#: Column-name suffixes and prefixes this module writes (each metric both ways; the
#: adaptive weights' regime per window): not extra columns either.
KNOWN_SUFFIXES = ("_all_tokens", "_outliers_excluded")
KNOWN_PREFIXES = ("regime_",)
#: Columns holding ``;``-joined numbers (one per dead-latent window).
WINDOW_COLUMNS = ("dead_fractions", "dead_window_ends")


def check_llm_table(path: str | Path) -> list[dict[str, Any]]:
    """Read an LLM ``results.csv`` and check it can be drawn (every required column, at
    least one row, known kinds, numbers where numbers belong:
    :func:`~aensae.experiments.results.check_table`); return its rows."""
    numeric = [c for c in LLM_REQUIRED_COLUMNS if c not in _TEXT_COLUMNS]
    return check_table(path, LLM_REQUIRED_COLUMNS, numeric, _KINDS)


def window_values(cell: Any) -> list[float]:
    """The numbers of a ``;``-joined cell (:data:`WINDOW_COLUMNS`, ``regime_*_windows``)
    as floats (an empty part: NaN); a cell read back as one number (one window) is that
    number; an empty cell is no window."""
    if cell is None or cell == "":
        return []
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return [float(cell)]
    out = []
    for part in str(cell).split(";"):
        try:
            out.append(float(part) if part else float("nan"))
        except ValueError:
            out.append(float("nan"))
    return out
