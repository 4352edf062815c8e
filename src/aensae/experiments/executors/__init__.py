r"""Executors: how a grid driver hands its independent tasks to workers.

The driver (:mod:`aensae.experiments.spiked.driver`) cuts a grid into tasks that share
nothing but the output folder (exact references and calibration per rho, then groups of
models per (rho, seed, family)); each task writes its own files atomically, so tasks may run in any
order, in any process and on any node that sees the output folder. An executor runs
``fn(*task)`` for a list of argument tuples and yields ``(index, result)`` as tasks
finish. The driver never imports an engine itself; it asks :func:`make_executor` for an
executor described by an :class:`ExecutorSpec` (``aensae reproduce --executor``, or the
config's ``[executor]`` table), and the engines (``submitit``, ``ray``: the ``cluster``
extra) are imported only inside the executors that use them.

- :class:`~.local.SerialExecutor` (``local.py``) runs the tasks in this process, one
  after another (``local`` with ``workers = 1``): nothing is spawned, and tests can patch
  the task functions.
- :class:`~.local.ProcessExecutor` runs them in ``workers`` worker processes started with
  the ``spawn`` method (numba and torch are not fork-safe once their thread pools exist);
  each worker limits torch, numba and every BLAS / OpenMP pool to ``threads`` threads
  (:mod:`aensae.experiments.threads`).
- :class:`~.submitit.SubmititExecutor` (``submitit.py``) submits one job per task: a SLURM
  job array of at most ``workers`` jobs at once, ``threads`` CPUs and ``gpus`` GPUs per
  job; or, with ``submitit_cluster = "local"``, submitit's ``LocalExecutor`` (real jobs,
  pickles, job folders and logs on this machine, at most ``workers`` at once). A job is
  :class:`submitit.helpers.Checkpointable`: preempted or timed out, it is requeued with
  the same task, which resumes from the checkpoints in the output folder.
- :class:`~.ray.RayExecutor` (``ray.py``) runs each task as a Ray task with ``threads``
  CPUs and ``gpus`` GPUs (fractional: several small groups share one device) on the
  cluster at ``ray_address``, or on a local Ray started on demand; at most ``workers`` in
  flight.

What an executor is asked for (:class:`ExecutorSpec`, the options, their checks) is in
:mod:`aensae.experiments.executors.spec`.

Results do not depend on the executor: a task's numbers are a function of its arguments
and of the thread count, which is the same in every worker (``threads`` per task).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from aensae.experiments.executors.spec import (
    CLUSTER_EXTRA,
    DEFAULT_SLURM_TIME,
    KINDS,
    OPTIONS,
    ExecutorSpec,
    check_engine,
    parse_executor_table,
    resolve_spec,
)

__all__ = ["CLUSTER_EXTRA", "DEFAULT_SLURM_TIME", "KINDS", "OPTIONS", "Executor",
           "ExecutorSpec", "check_engine", "make_executor", "parse_executor_table",
           "resolve_spec"]


# ----------------------------------------------------------------------------- the spec


# ----------------------------------------------------------------------------- executors
class Executor(Protocol):
    """What a driver needs of an executor."""

    #: Tasks that run at once (the ETA divides by it).
    workers: int
    #: Whether tasks run in this process (their progress bars show here).
    inline: bool

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, ...]]
            ) -> Iterator[tuple[int, Any]]:
        """Run ``fn(*task)`` for every task; yield ``(index, result)`` as each finishes."""
        ...

    def close(self) -> None:
        """Stop the workers (tasks not started are cancelled)."""
        ...


def make_executor(workers: int, threads: int, spec: ExecutorSpec | None = None,
                  folder: str | Path | None = None, name: str = "aensae") -> Executor:
    """The executor of ``spec`` (default ``local``): ``workers`` tasks at once, each
    limited to ``threads`` threads. ``local`` with ``workers = 1`` runs them in this
    process. ``folder`` holds submitit's job files (``OUT/jobs``); ``name`` names the
    SLURM jobs."""
    from aensae.experiments.executors.local import ProcessExecutor, SerialExecutor

    if spec is None or spec.kind == "local":
        if workers <= 1:
            return SerialExecutor()
        return ProcessExecutor(workers, threads)
    check_engine(spec)
    if spec.kind == "submitit":
        if folder is None:
            raise ValueError("the submitit executor needs a folder for its job files")
        from aensae.experiments.executors.submitit import SubmititExecutor

        return SubmititExecutor(spec, workers, threads, Path(folder), name=name)
    from aensae.experiments.executors.ray import RayExecutor

    return RayExecutor(spec, workers, threads)
