r"""The callable a submitit job runs: one grid task, checkpointable (the ``cluster`` extra).

Imported only by :class:`aensae.benchmarks.executors.SubmititExecutor` and inside the
jobs, never by the base install: it imports ``submitit`` at the top.

submitit's checkpointing protocol: when SLURM preempts a job, or its time is about to run
out, submitit's signal handler calls the job callable's ``checkpoint(*args)`` and
requeues the ``DelayedSubmission`` it returns. A grid task keeps its state on disk, not in
memory (finished runs hold ``metrics.json``, a group being trained its trainer checkpoint
in ``OUT/groups/``), so the requeued submission is the same task: it skips what is
finished and resumes the rest from those checkpoints.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import submitit

from aensae.benchmarks.executors import run_limited

__all__ = ["TaskJob"]


class TaskJob(submitit.helpers.Checkpointable):
    """``fn(*task)`` limited to ``threads`` threads; requeued as it is when interrupted."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __call__(self, fn: Callable[..., Any], task: tuple[Any, ...]) -> Any:
        return run_limited(self.threads, fn, task)

    def checkpoint(self, fn: Callable[..., Any], task: tuple[Any, ...]
                   ) -> submitit.helpers.DelayedSubmission:
        """The same task again: it resumes from the checkpoints it wrote."""
        print("aensae: job interrupted; requeued, the task resumes from its checkpoints",
              file=sys.stderr, flush=True)
        return submitit.helpers.DelayedSubmission(self, fn, task)
