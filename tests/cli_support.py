"""Checks shared by the tests of bad input: one-line errors, and trees of files that must
not change."""

from __future__ import annotations

from pathlib import Path

#: Options of an ``aensae train`` run of a few steps on tiny sizes.
TINY_TRAIN = ["--n", "6", "--m", "8", "--k", "1", "--steps", "3", "--batch-size", "8",
              "--eval-samples", "16", "--dead-window", "16", "--no-progress"]


def one_line_error(capsys, *needles: str) -> str:
    """stderr holds exactly one line, ``aensae ...: error: ...``, with every needle."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aensae ") and ": error: " in lines[0], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root`` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}
