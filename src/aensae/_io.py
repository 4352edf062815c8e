"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file that looks finished.

Data go to a temporary file in the destination's folder, are flushed and fsynced, and
only then renamed over the destination (``os.replace`` is atomic on POSIX). The one
implementation used by every writer in aensae (models, checkpoints, tables, JSON).

A *set* of outputs that belong together (figures and report, a model and its metrics)
is staged in a hidden folder beside them and swapped in by :func:`replace_together`, so
a failure part-way leaves the previous set as it was. A process killed outright cannot
clean up; the work that next owns the folder removes what it left
(:func:`remove_partial_files`). :func:`check_output_dir` checks an output folder before
any work is done.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aensae._validation import InputError

__all__ = ["LOCK_FILE", "STAGE_PREFIX", "atomic_write", "atomic_write_bytes",
           "atomic_write_json", "atomic_write_text", "check_output_dir", "check_output_file",
           "check_resumable", "folder_lock", "is_partial", "read_json_record",
           "remove_partial_files", "replace_together"]

#: Name prefix of the staging folders of :func:`replace_together`.
STAGE_PREFIX = ".aensae-stage-"
#: The advisory lock file of an output folder (:func:`folder_lock`).
LOCK_FILE = ".aensae.lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to produce the file, then move it to ``path`` atomically.

    Parent folders are created. On any exception (KeyboardInterrupt included) the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual file mode
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def is_partial(entry: Path, names: Iterable[str] | None = None) -> bool:
    """Whether ``entry`` is what a killed writer left: the temporary file of an
    :func:`atomic_write` (``.<name>.<random>.tmp``) or a staging folder of
    :func:`replace_together` (``.aensae-stage-<random>``). With ``names``, only temporary
    files of those file names count (a staging folder always does)."""
    name = entry.name
    if name.startswith(STAGE_PREFIX):
        return True
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    return names is None or any(name.startswith(f".{n}.") for n in names)


def remove_partial_files(folder: str | os.PathLike, names: Iterable[str] | None = None
                         ) -> int:
    """Remove from ``folder`` (not below it) what killed writers left (:func:`is_partial`);
    return how many entries went. A missing folder holds none.

    :func:`atomic_write` and :func:`replace_together` clean up after any exception, but a
    process killed outright (SIGKILL, a cancelled Ray task, a node lost) leaves its
    temporary file or staging folder behind. Call it only on a folder no live process is
    writing into: the start of the work that owns the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    gone = 0
    for entry in folder.iterdir():
        if not is_partial(entry, names):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        gone += 1
    return gone


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically (numpy scalars ok)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n")


def _default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def read_json_record(path: str | os.PathLike, keys: Sequence[str] = (), *,
                     remedy: str) -> dict[str, Any]:
    """The JSON object aensae wrote at ``path``, with at least ``keys``.

    A file that cannot be read, is not UTF-8 JSON (a truncated copy), is not an object or
    lacks a key is an :class:`~aensae._validation.InputError` naming the file and what
    to do (``remedy``, e.g. "delete that run folder to redo the run").
    """
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is damaged ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:160]}); {remedy}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path} is damaged (a JSON {type(obj).__name__}, not an object); "
                         f"{remedy}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise InputError(f"{path} is damaged (no {', '.join(map(repr, missing))}); {remedy}")
    return obj


# ----------------------------------------------------------------------------- output folders
def check_output_dir(where: str, path: str | os.PathLike) -> Path:
    """Check that ``path`` can be an output folder; return it as a ``Path``. Creates nothing.

    ``where`` is the option or key as the user wrote it (``--out``). Rejected, each with
    :class:`~aensae._validation.InputError`: an empty string (``Path("")`` would silently
    mean the current folder), an existing file, a path below a file, and a folder (or,
    when the folder does not exist yet, its nearest existing parent) that this process
    may not write into. Commands call it after validating their other inputs and before
    loading data or training, so a bad location never costs a run.
    """
    text = os.fspath(path)
    if text == "":
        raise InputError(f"{where}: must be a folder path, got an empty string")
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise InputError(f"{where}: {text!r} is a file, not a folder")
    probe = p
    while not probe.exists():  # the nearest existing ancestor decides whether mkdir works
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{where}: {text!r} lies below {str(probe)!r}, which is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "folder" if probe == p else f"parent folder {str(probe)!r}"
        raise InputError(f"{where}: {text!r}: the {what} is not writable")
    return p


def check_output_file(where: str, path: str | os.PathLike) -> Path:
    """Check that a file can be written at ``path`` (its folder via :func:`check_output_dir`).

    An existing file is fine (it is replaced atomically); a folder, an empty string or a
    path whose folder cannot be created or written is an
    :class:`~aensae._validation.InputError` naming ``where``.
    """
    text = os.fspath(path)
    if text == "":
        raise InputError(f"{where}: must be a file path, got an empty string")
    p = Path(text)
    if p.is_dir() or text.endswith(os.sep):
        raise InputError(f"{where}: {text!r} is a folder, not a file")
    check_output_dir(where, p.parent)
    return p


def check_resumable(out: Path, done_file: str, config: dict[str, Any], overwrite: bool,
                    checkpoint_file: str, checkpoint_config: str) -> dict[str, Any] | None:
    """Decide what a training command finds in its ``--out`` folder, before any work.

    Returns the record ``out/done_file`` (a finished run whose ``"config"`` equals
    ``config``: the caller skips the run), else ``None`` (train, resuming from
    ``out/checkpoint_file`` when one is there). A finished run or a checkpoint of another
    configuration (``out/checkpoint_config`` records the checkpoint's), or a damaged
    record, is an :class:`~aensae._validation.InputError` naming ``--out``; with
    ``overwrite`` a stale checkpoint and its configuration are removed instead. Before a
    run starts, the temporary files a killed run left in ``out`` are removed
    (:func:`remove_partial_files`).
    """
    config = json.loads(json.dumps(config, default=_default))  # as it reads back from JSON
    done_path = out / done_file
    if done_path.is_file() and not overwrite:
        try:
            done = json.loads(done_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"--out {str(out)!r}: {done_file} is damaged ({err}); pass "
                             "--overwrite to redo the run") from None
        if isinstance(done, dict) and done.get("config") == config:
            print(f"{out}: finished run with this configuration found; skipped "
                  "(--overwrite to redo)", file=sys.stderr)
            return done
        raise InputError(f"--out {str(out)!r} holds a finished run with a different "
                         "configuration; choose another --out or pass --overwrite")
    ckpt, ckpt_config = out / checkpoint_file, out / checkpoint_config
    if overwrite:
        ckpt.unlink(missing_ok=True)
        ckpt_config.unlink(missing_ok=True)
    elif ckpt.is_file():
        try:
            saved = json.loads(ckpt_config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            saved = None
        if saved != config:
            raise InputError(f"--out {str(out)!r} holds a checkpoint of another (or an "
                             f"unrecorded) configuration ({checkpoint_file} without a "
                             f"matching {checkpoint_config}); choose another --out or pass "
                             "--overwrite to start afresh")
    remove_partial_files(out)  # a killed run's temporary files; nothing writes here yet
    return None


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())


@contextmanager
def replace_together(folder: str | os.PathLike, names: Sequence[str]) -> Iterator[Path]:
    """Stage the outputs ``names`` (files or folders) of ``folder`` and swap them in at once.

    Yields an empty staging folder (``folder/.aensae-stage-*``, same file system); the
    caller writes every entry of ``names`` into it. When the block ends normally, each
    entry is fsynced and then, entry by entry, the old one is moved aside and the new one
    renamed into place; the old ones are deleted last. Any exception in the block
    (Ctrl-C included) removes the staging folder and leaves ``folder`` untouched, so the
    previous set stays byte-identical. A failure during the swap itself (renames within
    one folder) moves back what was already swapped. An entry of ``names`` the block did
    not write is an error (:class:`RuntimeError`), and the old set is kept.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=folder))
    try:
        yield stage
        missing = [n for n in names if not os.path.lexists(stage / n)]
        if missing:
            raise RuntimeError(f"replace_together: {', '.join(missing)} not written to {stage}")
        _fsync_tree(stage)
        old = stage / ".old"
        old.mkdir()
        moved: list[tuple[str, bool]] = []  # (name, had an old entry)
        try:
            for name in names:
                target = folder / name
                had_old = os.path.lexists(target)
                if had_old:
                    os.rename(target, old / name)
                moved.append((name, had_old))
                os.rename(stage / name, target)
        except BaseException:
            for name, had_old in reversed(moved):
                target = folder / name
                if os.path.lexists(target) and not os.path.lexists(stage / name):
                    os.rename(target, stage / name)
                if had_old:
                    os.rename(old / name, target)
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------- one writer
@contextmanager
def folder_lock(where: str, folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the advisory lock of output folder ``folder`` for the block: one writer at once.

    The lock is ``folder/.aensae.lock`` (:data:`LOCK_FILE`; the folder is created), held
    with ``fcntl.flock``. The kernel releases a flock when its holder exits, however it
    exits, so a crashed run leaves at most a lock *file*, which the next run takes over
    (no stale lock); a run that ends removes the file. The file records the holder (pid,
    host, start time, command line). A second process on the same folder gets an
    :class:`~aensae._validation.InputError` at once, naming ``where`` and the holder. The
    same process may take a lock it holds already (nested calls are no-ops). Where
    ``fcntl`` is missing (Windows) no lock is taken.
    """
    folder = Path(folder)
    key = os.path.realpath(folder)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if key in _HELD or fcntl is None:
        yield folder / LOCK_FILE
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            os.close(fd)
            raise InputError(f"{where} {str(folder)!r} is in use by another aensae process "
                             f"({' '.join(holder.split()) or 'holder unknown'}); wait for "
                             f"it to finish, or choose another {where}") from None
        try:  # the file may have been removed by its last holder between open and flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        import socket
        import time

        record = (f"pid {os.getpid()} on {socket.gethostname()}, started "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:300]}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        _HELD.add(key)
        try:
            yield path
        finally:
            _HELD.discard(key)
            path.unlink(missing_ok=True)  # before the unlock: a waiter re-checks the inode
    finally:
        os.close(fd)  # releases the flock


_HELD: set[str] = set()  # real paths of the folders whose lock this process holds
