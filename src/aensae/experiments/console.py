"""Progress lines of the grid drivers: one line on stderr, durations as ``1h02m03s``."""

from __future__ import annotations

import sys

__all__ = ["hms", "log"]


def log(msg: str) -> None:
    """Print ``msg`` on stderr now (progress bars and logs of workers interleave)."""
    print(msg, file=sys.stderr, flush=True)


def hms(seconds: float) -> str:
    """``seconds`` as ``<h>h<mm>m<ss>s``."""
    s = int(round(seconds))
    return f"{s // 3600}h{(s % 3600) // 60:02d}m{s % 60:02d}s"
