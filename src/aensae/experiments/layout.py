r"""The output folder of a grid (``aensae reproduce --out OUT``): what both grids share.

Every grid writes ``OUT/config.json`` (:data:`MANIFEST_FILE`) first and lists the entries
it writes at the top of ``OUT`` (the spiked grid's
:data:`aensae.experiments.spiked.driver.OUTPUT_ENTRIES`, the LLM grid's
:data:`aensae.experiments.llm.driver.OUTPUT_ENTRIES`). :func:`open_output` is the one
way a driver takes a folder over: a folder whose manifest records another config is
refused with how to proceed, or, with ``overwrite``, cleared of the grid's own entries
(and of nothing else: a folder holding anything aensae did not write is refused, so it
never deletes a user's file); what a killed writer left at the top is removed, and the
new manifest is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from aensae._io import atomic_write_json, is_partial, remove_partial_files
from aensae._validation import InputError

__all__ = ["FIGURES_DIR", "MANIFEST_FILE", "REPORT_FILE", "RESULTS_FILE", "check_manifest",
           "clear_outputs", "is_ours", "open_output"]

#: The tidy results table of a grid.
RESULTS_FILE = "results.csv"
#: The manifest: the normalised config, its hash and name, the aensae version.
MANIFEST_FILE = "config.json"
#: The report and the figures folder, drawn from the table and swapped in together.
REPORT_FILE = "report.md"
FIGURES_DIR = "figures"


def is_ours(entry: Path, entries: tuple[str, ...]) -> bool:
    """An entry of ``entries``, or what a killed writer of one left (a temporary file or
    a staging folder)."""
    return entry.name in entries or is_partial(entry, entries)


def clear_outputs(out: Path, entries: tuple[str, ...]) -> None:
    """Remove what a grid wrote into ``out`` (``entries``); refuse if anything else is
    there."""
    foreign = sorted(p.name for p in out.iterdir() if not is_ours(p, entries))
    if foreign:
        raise InputError(f"--overwrite: --out {str(out)!r} also holds files aensae did not "
                         f"write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
                         "); remove them or choose another --out")
    for entry in sorted(out.iterdir(), key=lambda p: p.name == MANIFEST_FILE):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()  # the manifest last: a killed removal still reads as ours


def check_manifest(out: Path, record: dict[str, Any], entries: tuple[str, ...],
                   overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) a folder holding another config's results.

    ``record`` is the manifest of the run about to start (its ``config_hash`` and
    ``config_name`` are read) and ``entries`` the names its pipeline writes.
    """
    path = out / MANIFEST_FILE
    name = record.get("config_name")
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as err:
        if not overwrite:
            raise InputError(f"--out {str(out)!r}: {MANIFEST_FILE} is damaged ({err}); pass "
                             "--overwrite to start afresh there, or choose another --out"
                             ) from None
        saved = {}
    if overwrite:
        clear_outputs(out, entries)
        return
    if saved.get("config_hash") == record["config_hash"]:
        return
    other = f"config {saved.get('config_name')!r}, hash {saved.get('config_hash')}"
    results = [p.name for p in out.iterdir() if p.name != MANIFEST_FILE and is_ours(p, entries)]
    if not results:
        raise InputError(f"--out {str(out)!r} holds only the manifest of another config "
                         f"({other}; a run that stopped before any result); this config "
                         f"({name!r}) has hash {record['config_hash']}: pass --overwrite "
                         "to start afresh there, or choose another --out")
    raise InputError(f"--out {str(out)!r} holds results of another config ({other}); this "
                     f"config ({name!r}) has hash {record['config_hash']}: pass "
                     "--overwrite to replace them, or choose another --out")


def open_output(out: Path, record: dict[str, Any], entries: tuple[str, ...], *,
                overwrite: bool) -> None:
    """Take ``out`` over for the run whose manifest is ``record``: check (or, with
    ``overwrite``, clear) an earlier run's manifest, remove what a killed writer left at
    the top (:func:`aensae._io.remove_partial_files`), and write the new manifest."""
    if out.is_dir():
        check_manifest(out, record, entries, overwrite)
        remove_partial_files(out, entries)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST_FILE, record)
