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

import fnmatch
import json
import os
import shutil
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aensae._io import (
    LOCK_FILE,
    STAGE_PREFIX,
    atomic_write_json,
    is_partial,
    remove_partial_files,
    replace_together,
)
from aensae._validation import InputError

__all__ = ["ANY", "FIGURES_DIR", "MANIFEST_FILE", "REPORT_FILE", "RESULTS_FILE",
           "check_manifest", "clear_outputs", "entries_tree", "foreign_entries", "is_ours",
           "open_output", "staged_report"]

#: The tidy results table of a grid.
RESULTS_FILE = "results.csv"
#: The manifest: the normalised config, its hash and name, the aensae version.
MANIFEST_FILE = "config.json"
#: The report and the figures folder, drawn from the table and swapped in together.
REPORT_FILE = "report.md"
FIGURES_DIR = "figures"


#: In an output tree: a folder that an engine fills (submitit's job files), all of it ours.
ANY = "*any*"


def entries_tree(entries: Iterable[str]) -> dict[str, Any]:
    """The tree of a grid that names only its top-level entries: everything below them is
    taken as its own."""
    return {name: ANY for name in entries}


def is_ours(entry: Path, entries: Iterable[str]) -> bool:
    """An entry of ``entries``, the folder's lock file, or what a killed writer of one
    left (a temporary file or a staging folder)."""
    entries = tuple(entries)
    return entry.name in entries or entry.name == LOCK_FILE or is_partial(entry, entries)


def _spec(tree: dict[str, Any], name: str) -> tuple[bool, Any]:
    if name in tree:
        return True, tree[name]
    for pattern, sub in tree.items():
        if fnmatch.fnmatchcase(name, pattern):
            return True, sub
    return False, None


def foreign_entries(folder: Path, tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Paths (relative to ``folder``) of what aensae did not write there, at every depth.

    ``tree`` maps each name or ``fnmatch`` pattern a grid writes to ``None`` (a file), a
    sub-tree (a folder and what it holds) or :data:`ANY`. The staging folders of killed
    swaps and the lock file are aensae's own everywhere, and so is the temporary file of
    a killed write of a file the tree names. A folder where a file belongs, or a file
    where a folder belongs, is foreign too.
    """
    found = []
    for entry in sorted(folder.iterdir()):
        rel = prefix + entry.name
        if entry.name == LOCK_FILE or entry.name.startswith(STAGE_PREFIX):
            continue
        if is_partial(entry):  # ``.<name>.<random>.tmp``: ours when <name> is
            if _spec(tree, entry.name[1:-4].rsplit(".", 1)[0]) == (True, None):
                continue
        known, sub = _spec(tree, entry.name)
        is_dir = entry.is_dir() and not entry.is_symlink()
        if not known or (sub is None and is_dir) or (sub is not None and not is_dir):
            found.append(rel + ("/" if is_dir else ""))
        elif isinstance(sub, dict):
            found += foreign_entries(entry, sub, rel + "/")
    return found


def clear_outputs(out: Path, tree: dict[str, Any]) -> None:
    """Remove what a grid wrote into ``out`` (its output ``tree``); refuse, before removing
    anything, if anything else is there, at any depth. The lock file stays (its holder
    is this process)."""
    foreign = foreign_entries(out, tree)
    if foreign:
        raise InputError(f"--overwrite: --out {str(out)!r} also holds files aensae did not "
                         f"write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
                         "); remove them or choose another --out")
    for entry in sorted(out.iterdir(), key=lambda p: p.name == MANIFEST_FILE):
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()  # the manifest last: a killed removal still reads as ours


def check_manifest(out: Path, record: dict[str, Any], tree: dict[str, Any],
                   overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) a folder holding another config's results.

    ``record`` is the manifest of the run about to start (its ``config_hash`` and
    ``config_name`` are read) and ``tree`` what its pipeline writes
    (:func:`foreign_entries`).
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
        clear_outputs(out, tree)
        return
    if saved.get("config_hash") == record["config_hash"]:
        return
    other = f"config {saved.get('config_name')!r}, hash {saved.get('config_hash')}"
    results = [p.name for p in out.iterdir() if p.name not in (MANIFEST_FILE, LOCK_FILE)
               and is_ours(p, tree)]
    if not results:
        raise InputError(f"--out {str(out)!r} holds only the manifest of another config "
                         f"({other}; a run that stopped before any result); this config "
                         f"({name!r}) has hash {record['config_hash']}: pass --overwrite "
                         "to start afresh there, or choose another --out")
    raise InputError(f"--out {str(out)!r} holds results of another config ({other}); this "
                     f"config ({name!r}) has hash {record['config_hash']}: pass "
                     "--overwrite to replace them, or choose another --out")


def open_output(out: Path, record: dict[str, Any], tree: dict[str, Any] | Iterable[str], *,
                overwrite: bool) -> None:
    """Take ``out`` over for the run whose manifest is ``record``: check (or, with
    ``overwrite``, clear) an earlier run's manifest, remove what a killed writer left at
    the top (:func:`aensae._io.remove_partial_files`), and write the new manifest. The
    caller holds the folder's lock (:func:`aensae._io.folder_lock`). ``tree`` may also be
    the top-level names alone (:func:`entries_tree`)."""
    if not isinstance(tree, dict):
        tree = entries_tree(tree)
    if out.is_dir():
        check_manifest(out, record, tree, overwrite)
        remove_partial_files(out, tuple(tree))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST_FILE, record)


@contextmanager
def staged_report(results_dir: Path, figure_files: Collection[str]) -> Iterator[Path]:
    """Stage ``figures/`` and ``report.md`` and swap them in together
    (:func:`aensae._io.replace_together`); yields the staging folder.

    A redraw replaces only aensae's own figures (``figure_files``, names in ``figures/``):
    anything else a user put in ``figures/`` is carried into the new folder (hard-linked
    where possible, else copied), so no file aensae did not write is removed.
    """
    old = results_dir / FIGURES_DIR
    with replace_together(results_dir, (FIGURES_DIR, REPORT_FILE)) as stage:
        yield stage
        if old.is_dir() and not old.is_symlink():
            new = stage / FIGURES_DIR
            for entry in old.iterdir():
                if entry.name in figure_files or is_partial(entry) \
                        or os.path.lexists(new / entry.name):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.copytree(entry, new / entry.name, symlinks=True,
                                    copy_function=_link_or_copy)
                else:
                    _link_or_copy(entry, new / entry.name)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
