r"""The tidy results table: one row per run, every hyperparameter and metric a column.

Rows are flat dicts. Hyperparameters appear as ``hp_<name>``; the identifying columns
(:data:`ID_COLUMNS`) come first, then ``hp_*`` in name order, then every other column in
name order. Values are written with ``repr`` for floats (round-trip exact), ``true`` /
``false`` for booleans and an empty cell for a missing value; :func:`read_table` parses
them back (numbers as ``float``, booleans as ``bool``, empty as ``None``, the rest as
``str``). The CSV is written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aensae._io import atomic_write_text

__all__ = ["ID_COLUMNS", "REQUIRED_COLUMNS", "column_order", "read_table", "write_table"]

#: Columns that identify a run and its provenance, first in every table.
ID_COLUMNS = ("run_id", "kind", "family", "arch", "init", "rho", "seed", "target_l0",
              "calibrated", "calibrated_param", "calibrated_value", "calibration_extrapolated",
              "variant", "config_name", "config_hash", "aensae_version")
#: Columns every results table holds (checked by the tests).
REQUIRED_COLUMNS = ID_COLUMNS + (
    "n", "m", "d_sae", "k", "steps", "batch_size", "lr", "dead_window_samples",
    "l0", "mse", "explained_variance", "explained_variance_centred", "shrinkage",
    "code_bias", "dead_final", "dead_median_last", "supp_f1", "supp_precision",
    "supp_recall", "dict_hungarian_mean_cos", "dict_hungarian_mean_cos_deflated",
    "dict_mmcs_learned", "l0_ratio", "l0_matched",
    "amort_rel_median", "amort_gap_median", "lip_exact_lasso_median",
    "lip_exact_enet_median", "hoffman_median", "lip_encoder_median", "jump_size_median",
    "exact_certified", "train_seconds")


def column_order(rows: Iterable[dict[str, Any]], first: tuple[str, ...] = ID_COLUMNS,
                 required: tuple[str, ...] = REQUIRED_COLUMNS) -> list[str]:
    """``first`` columns, then ``hp_*``, then the rest, each group sorted by name."""
    keys: set[str] = set(required) | set(first)
    for row in rows:
        keys.update(row)
    hp = sorted(k for k in keys if k.startswith("hp_") and k not in first)
    rest = sorted(keys - set(first) - set(hp))
    return list(first) + hp + rest


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def write_table(path: str | Path, rows: list[dict[str, Any]], *,
                first: tuple[str, ...] = ID_COLUMNS,
                required: tuple[str, ...] = REQUIRED_COLUMNS) -> list[str]:
    """Write ``rows`` as CSV to ``path`` atomically; return the column order used."""
    cols = column_order(rows, first, required)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in cols])
    atomic_write_text(path, buf.getvalue())
    return cols


def _parse(text: str) -> Any:
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Read a table written by :func:`write_table`: (columns, rows with parsed values)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results table {path} not found (run `aensae reproduce` "
                                "first)")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            cols = next(reader)
        except StopIteration:
            raise ValueError(f"results table {path} is empty") from None
        rows = [dict(zip(cols, (_parse(v) for v in rec), strict=True)) for rec in reader]
    return cols, rows
