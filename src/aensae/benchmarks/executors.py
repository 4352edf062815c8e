r"""Executors: how the grid runner hands its independent tasks to workers.

The runner (:mod:`aensae.benchmarks.runner`) cuts a grid into tasks that share nothing but
the output folder (exact references and calibration per rho, then groups of models per
(rho, seed, family)); each task writes its own files atomically, so tasks may run in any
order and in any process. An executor runs ``fn(*args)`` for a list of argument tuples
and yields ``(index, result)`` as tasks finish. The runner never imports an engine
itself; it asks :func:`make_executor` for one.

- :class:`SerialExecutor` runs the tasks in this process, one after another (``workers =
  1``): nothing is spawned, and tests can patch the task functions.
- :class:`ProcessExecutor` runs them in ``workers`` worker processes started with the
  ``spawn`` method (numba and torch are not fork-safe once their thread pools exist);
  each worker limits torch, numba and every BLAS / OpenMP pool to ``threads`` threads.

Results do not depend on the executor: a task's numbers are a function of its arguments
and of the thread count, which is the same in every worker (``threads`` per process).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

__all__ = ["Executor", "ProcessExecutor", "SerialExecutor", "available_cores",
           "limit_threads", "make_executor"]

_LIMITS: list[Any] = []  # keeps a worker's threadpoolctl limits alive


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def limit_threads(threads: int) -> None:
    """Limit torch, numba and every BLAS / OpenMP pool of this process to ``threads``."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    _LIMITS.append(threadpool_limits(limits=threads))


class Executor(Protocol):
    """What the runner needs of an executor."""

    workers: int

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, ...]]
            ) -> Iterator[tuple[int, Any]]:
        """Run ``fn(*task)`` for every task; yield ``(index, result)`` as each finishes."""
        ...

    def close(self) -> None:
        """Stop the workers (tasks not started are cancelled)."""
        ...


class SerialExecutor:
    """Tasks in this process, in order (the caller sets its threads)."""

    workers = 1

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, ...]]
            ) -> Iterator[tuple[int, Any]]:
        for i, task in enumerate(tasks):
            yield i, fn(*task)

    def close(self) -> None:
        return None


class ProcessExecutor:
    """Tasks in ``workers`` spawned processes of ``threads`` threads each."""

    def __init__(self, workers: int, threads: int) -> None:
        self.workers = workers
        self.threads = threads
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=limit_threads, initargs=(self.threads,))
        return self._pool

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, ...]]
            ) -> Iterator[tuple[int, Any]]:
        if not tasks:
            return
        pool = self._get_pool()
        futures: dict[Future, int] = {pool.submit(fn, *t): i for i, t in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=futures.__getitem__):
                    yield futures[fut], fut.result()
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def make_executor(workers: int, threads: int) -> SerialExecutor | ProcessExecutor:
    """``workers`` processes of ``threads`` threads (``workers = 1``: this process)."""
    if workers <= 1:
        return SerialExecutor()
    return ProcessExecutor(workers, threads)
