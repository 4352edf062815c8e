"""The ``local`` executor: tasks in this process, or in spawned worker processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from aensae.experiments.threads import limit_threads

__all__ = ["ProcessExecutor", "SerialExecutor"]


def _init_worker(threads: int, parent: int) -> None:
    """A worker's start: die with the driver, then :func:`limit_threads`.

    On Linux the kernel sends the worker SIGTERM when the driver exits in any way (a
    kill, not only an exception the driver can handle), so no worker outlives its run and
    goes on writing into the output folder beside the next run. Elsewhere only the
    driver's own shutdown (:meth:`ProcessExecutor._stop_workers`) stops them.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the driver died before the request was made
            os._exit(1)
    limit_threads(threads)


class SerialExecutor:
    """Tasks in this process, in order (the caller sets its threads)."""

    workers = 1
    inline = True

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, ...]]
            ) -> Iterator[tuple[int, Any]]:
        for i, task in enumerate(tasks):
            yield i, fn(*task)

    def close(self) -> None:
        return None


class ProcessExecutor:
    """Tasks in ``workers`` spawned processes of ``threads`` threads each.

    Ctrl-C belongs to the driver: the workers are spawned with SIGINT blocked (a process
    inherits its parent's signal mask), so an interrupt prints one line from the driver
    instead of a traceback from every worker. An interrupt that arrives while they are
    being spawned waits in the driver until the spawning is done (blocked, not lost), and
    the driver stops the workers (:meth:`_stop_workers`) when a run ends on any exception;
    a driver killed outright takes its workers with it (:func:`_init_worker`, Linux).
    A task cut short leaves temporary files that the next run removes, as after a kill.
    """

    inline = False

    def __init__(self, workers: int, threads: int) -> None:
        self.workers = workers
        self.threads = threads
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(self.threads, os.getpid()))
        return self._pool

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, ...]]
            ) -> Iterator[tuple[int, Any]]:
        if not tasks:
            return
        pool = self._get_pool()
        futures: dict[Future, int] = {}
        pending: set[Future] = set()
        try:
            futures = self._submit(pool, fn, tasks)
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=futures.__getitem__):
                    yield futures[fut], fut.result()
        except BaseException:
            self._stop_workers()
            raise
        finally:
            for fut in pending:
                fut.cancel()

    @staticmethod
    def _submit(pool: ProcessPoolExecutor, fn: Callable[..., Any],
                tasks: list[tuple[Any, ...]]) -> dict[Future, int]:
        """Submit every task; the submits spawn the workers, with SIGINT blocked (a Ctrl-C
        meanwhile is delivered to this process when the block ends)."""
        mask = getattr(signal, "pthread_sigmask", None)  # POSIX
        before = mask(signal.SIG_BLOCK, {signal.SIGINT}) if mask else None
        try:
            return {pool.submit(fn, *t): i for i, t in enumerate(tasks)}
        finally:
            if mask:
                mask(signal.SIG_SETMASK, before)

    def _stop_workers(self) -> None:
        """Terminate the workers now (their running tasks resume on the next run)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join(timeout=10)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
