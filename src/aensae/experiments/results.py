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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aensae._io import atomic_write_text
from aensae._validation import InputError

__all__ = ["ID_COLUMNS", "NUMERIC_COLUMNS", "REQUIRED_COLUMNS", "check_results_table",
           "check_table", "column_order", "read_table", "write_table"]

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

#: Required columns whose cells are numbers (or empty): checked before figures are drawn.
NUMERIC_COLUMNS = tuple(c for c in REQUIRED_COLUMNS if c not in (
    "run_id", "kind", "family", "arch", "init", "calibrated", "calibrated_param",
    "calibration_extrapolated", "variant", "config_name", "config_hash", "aensae_version",
    "l0_matched"))
#: Values of the ``kind`` column.
KINDS = ("sae", "exact", "theorem", "unreachable")


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


def _parse(text: str, keep_text: bool = False) -> Any:
    """A cell's value: ``None`` (empty), a boolean, a float, or the text itself (always
    the text, when not empty, for ``keep_text``: a hash such as ``150e829907`` reads as a
    float)."""
    if text == "":
        return None
    if keep_text:
        return text
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Read a table written by :func:`write_table`: (columns, rows with parsed values).

    A missing, non-UTF-8, empty or ragged file (a row with more or fewer cells than the
    header, as a truncated copy leaves) is an :class:`~aensae._validation.InputError`
    naming the file and the line. Cells parse to booleans and floats where they can, but
    a column named ``*_hash`` stays text.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results table {path} not found (run `aensae reproduce` first)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"results table {path}: not UTF-8 text ({err.reason} at byte "
                         f"{err.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        cols = next(reader)
        rows = []
        for rec in reader:
            if len(rec) != len(cols):
                raise InputError(f"results table {path} line {reader.line_num}: {len(rec)} "
                                 f"cells, the header has {len(cols)} (a damaged or truncated "
                                 "table)")
            rows.append(dict(zip(cols, (_parse(v, c.endswith("_hash"))
                                        for c, v in zip(cols, rec, strict=True)),
                                 strict=True)))
    except StopIteration:
        raise InputError(f"results table {path} is empty") from None
    except csv.Error as err:
        raise InputError(f"results table {path} line {reader.line_num}: {err}") from None
    if len(set(cols)) != len(cols):
        raise InputError(f"results table {path}: repeated column names in the header")
    return cols, rows


def check_table(path: str | Path, required: Sequence[str], numeric: Sequence[str],
                kinds: Sequence[str], numbers: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Read a results table and check it can be drawn; return its rows.

    Checks, each an :class:`~aensae._validation.InputError` naming the file and line: the
    file reads (:func:`read_table`), every column of ``required`` is present, at least
    one row, ``kind`` is one of ``kinds``, every column of ``numbers`` holds a number
    (not NaN) in every row and every cell of ``numeric`` is a number or empty.
    """
    cols, rows = read_table(path)
    missing = [c for c in required if c not in cols]
    if missing:
        raise InputError(f"results table {path}: missing column(s) {', '.join(missing)}")
    if not rows:
        raise InputError(f"results table {path}: no rows")
    for i, row in enumerate(rows):
        line = i + 2  # header on line 1 (cells hold no line breaks)
        if row["kind"] not in kinds:
            raise InputError(f"results table {path} line {line}: kind must be one of "
                             f"{', '.join(kinds)}, got {row['kind']!r}")
        for c in numbers:
            if not isinstance(row[c], float) or math.isnan(row[c]):
                raise InputError(f"results table {path} line {line}: {c} must be a number, "
                                 f"got {row[c]!r}")
        for c in numeric:
            v = row[c]
            if v is not None and not isinstance(v, float):
                raise InputError(f"results table {path} line {line}: {c} must be a number "
                                 f"or empty, got {v!r}")
    return rows


def check_results_table(path: str | Path) -> list[dict[str, Any]]:
    """Read the synthetic grid's ``results.csv`` and check it can be drawn
    (:func:`check_table`: the columns of :data:`REQUIRED_COLUMNS`, ``kind`` in
    :data:`KINDS`, ``rho`` a number in every row, every cell of :data:`NUMERIC_COLUMNS` a
    number or empty); return its rows."""
    return check_table(path, REQUIRED_COLUMNS, NUMERIC_COLUMNS, KINDS, numbers=("rho",))
