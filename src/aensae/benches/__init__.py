"""Performance benchmarks: each prints ratios against an anchor run in the same process.

Imports the domain packages only (never :mod:`aensae.experiments` or :mod:`aensae.cli`).
"""

from __future__ import annotations

import os
import platform

__all__ = ["machine"]


def machine() -> str:
    """This machine in one line, for the records benches and summaries write."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
