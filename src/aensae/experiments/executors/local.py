"""The ``local`` executor: tasks in this process, or in spawned worker processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from aensae.experiments.threads import limit_threads

__all__ = ["ProcessExecutor", "SerialExecutor"]


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
    """Tasks in ``workers`` spawned processes of ``threads`` threads each."""

    inline = False

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
