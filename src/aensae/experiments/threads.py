"""Thread limits of a process that runs grid tasks: torch, numba and every BLAS / OpenMP
pool at once. The one place for them: worker processes, submitit jobs, Ray tasks and a
driver that runs its tasks itself all go through :func:`limit_threads` or
:func:`limited_threads`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["available_cores", "limit_threads", "limited_threads", "run_limited"]

_LIMITS: list[Any] = []  # keeps a worker's threadpoolctl limits alive
_LIMITED: list[int] = []  # the thread count this process is limited to (run_limited)


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _set_counts(threads: int) -> tuple[int, int]:
    """Set torch's and numba's thread counts; return the previous ones."""
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return before


def limit_threads(threads: int) -> None:
    """Limit torch, numba and every BLAS / OpenMP pool of this process to ``threads``
    for the rest of its life (a worker process, a job, a Ray worker)."""
    from threadpoolctl import threadpool_limits

    _set_counts(threads)
    _LIMITS.append(threadpool_limits(limits=threads))


def run_limited(threads: int, fn: Callable[..., Any], task: tuple[Any, ...]) -> Any:
    """``fn(*task)`` in a process limited to ``threads`` threads: what a submitit job or a
    Ray task runs (a Ray worker process serves many tasks; it is limited once)."""
    if _LIMITED != [threads]:
        limit_threads(threads)
        _LIMITED[:] = [threads]
    return fn(*task)


@contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """Inside the block, this process is limited to ``threads`` threads; afterwards torch
    and numba get their counts back and the BLAS / OpenMP limits are lifted."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    torch_threads, numba_threads = _set_counts(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)
