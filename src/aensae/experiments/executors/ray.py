"""The ``ray`` executor (the ``cluster`` extra): each grid task a Ray task."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from aensae._validation import InputError
from aensae.experiments.executors.spec import RAY_CANCEL_WAIT, RAY_MAX_RETRIES, ExecutorSpec
from aensae.experiments.threads import available_cores, run_limited

__all__ = ["RayExecutor"]


class RayExecutor:
    """Each task a Ray task of ``threads`` CPUs and ``gpus`` GPUs (fractions allowed).

    Connects to the cluster at ``spec.ray_address`` (or ``RAY_ADDRESS``), or starts a
    local Ray with this machine's cores; a Ray already initialised in this process is
    used as it is and left running. Every node must see the output folder (a shared
    file system) and have aensae installed. Before any task, the request is checked
    against the cluster: a task asking for more CPUs or GPUs than its largest node has
    would wait forever. At most ``workers`` tasks are in flight (0: as many as the
    cluster's CPUs hold). A task whose worker or node dies is retried
    (:data:`RAY_MAX_RETRIES`) and resumes from its checkpoints.
    """

    inline = False

    def __init__(self, spec: ExecutorSpec, workers: int, threads: int) -> None:
        import ray

        self.spec = spec
        self.threads = threads
        self.gpus = float(spec.gpus or 0)
        self._owned = False
        self._live: list[Any] = []
        if not ray.is_initialized():
            address = spec.ray_address or os.environ.get("RAY_ADDRESS")
            try:
                if address:
                    ray.init(address=address)
                else:
                    ray.init(address="local", num_cpus=available_cores(),
                             include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = spec.given.get("ray_address", "RAY_ADDRESS") if address else "ray"
                raise InputError(f"{where}: cannot start or reach a Ray cluster at "
                                 f"{address or 'a new local instance'!r} ({err})"
                                 ) from None
            self._owned = True
        try:
            self._check_feasible(ray)
        except InputError:
            self.close()
            raise
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, cpus // threads)

    def _check_feasible(self, ray: Any) -> None:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        gpus = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
        if self.threads > cpus:
            raise InputError(f"config experiment.threads: {self.threads} CPUs per task, but "
                             f"the largest node of the Ray cluster has {cpus:g}")
        if self.gpus > gpus:
            raise InputError(f"{self.spec.given.get('gpus', '--gpus')}: {self.gpus:g} GPUs per "
                             f"task, but the largest node of the Ray cluster has {gpus:g}")

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, ...]]
            ) -> Iterator[tuple[int, Any]]:
        import ray

        if not tasks:
            return
        remote = ray.remote(run_limited).options(
            num_cpus=self.threads, num_gpus=self.gpus, max_retries=RAY_MAX_RETRIES,
            retry_exceptions=False)
        queue = list(enumerate(tasks))
        index: dict[Any, int] = {}
        while queue or index:
            while queue and len(index) < self.workers:
                i, task = queue.pop(0)
                ref = remote.remote(self.threads, fn, task)
                index[ref] = i
                self._live.append(ref)
            ready, _ = ray.wait(list(index), num_returns=1)
            for ref in ready:
                i = index.pop(ref)
                self._live.remove(ref)
                yield i, ray.get(ref)

    def close(self) -> None:
        import ray

        if ray.is_initialized() and self._live:
            for ref in self._live:
                ray.cancel(ref, force=True)
            # a killed task's worker is gone before this driver returns, so a rerun never
            # meets a task of this one still writing into the run folders it takes over
            ray.wait(self._live, num_returns=len(self._live), timeout=RAY_CANCEL_WAIT)
        self._live = []
        if self._owned and ray.is_initialized():
            ray.shutdown()
            self._owned = False
