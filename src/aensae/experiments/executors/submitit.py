r"""The ``submitit`` executor (the ``cluster`` extra): one SLURM job per grid task, or
submitit's ``LocalExecutor``; and the checkpointable callable each job runs.

Imported only by :func:`aensae.experiments.executors.make_executor` for
``--executor submitit`` and inside the jobs, never by the base install: it imports
``submitit`` at the top.

submitit's checkpointing protocol: when SLURM preempts a job, or its time is about to run
out, submitit's signal handler calls the job callable's ``checkpoint(*args)`` and
requeues the ``DelayedSubmission`` it returns. A grid task keeps its state on disk, not in
memory (finished runs hold ``metrics.json``, a group being trained its trainer checkpoint
in ``OUT/groups/``), so the requeued submission is the same task: it skips what is
finished and resumes the rest from those checkpoints.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import submitit

from aensae.experiments.executors.spec import DEFAULT_SLURM_TIME, ExecutorSpec
from aensae.experiments.threads import available_cores, run_limited

__all__ = ["SubmititExecutor", "TaskJob"]


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


class SubmititExecutor:
    """One submitit job per task: a SLURM job array, or submitit's ``LocalExecutor``.

    Jobs pickle ``fn`` and the task (submitit uses cloudpickle), run it limited to
    ``threads`` threads (:func:`run_limited`), and leave their pickles and logs in
    ``folder`` (``OUT/jobs``). The job callable is checkpointable
    (:class:`aensae.experiments.executors.submitit.TaskJob`): when SLURM preempts a job or its
    time runs out, submitit's signal handler requeues the same task, and the task resumes
    from what it wrote (finished runs are skipped, a group restarts from its trainer
    checkpoint). ``workers`` caps the jobs running at once (SLURM's array parallelism;
    the driver enforces it for the local cluster, which has no queue of its own).
    """

    inline = False

    def __init__(self, spec: ExecutorSpec, workers: int, threads: int, folder: Path,
                 name: str = "aensae") -> None:
        self.spec = spec
        self.cluster = spec.submitit_cluster or "slurm"
        self.threads = threads
        self.folder = Path(folder)
        self.name = name
        if workers:
            self.workers = workers
        elif self.cluster == "local":
            self.workers = max(1, available_cores() // threads)
        else:
            self.workers = 256  # submitit's default array parallelism
        #: Seconds between polls of the jobs' states.
        self.poll = 0.2 if self.cluster == "local" else 10.0
        self._live: list[Any] = []
        self._executor: Any = None

    def _get_executor(self) -> Any:
        if self._executor is None:
            import submitit

            time_min = self.spec.slurm_time or DEFAULT_SLURM_TIME
            gpus = int(self.spec.gpus or 0)
            if self.cluster == "local":
                ex = submitit.LocalExecutor(folder=self.folder / "%j")
                ex.update_parameters(timeout_min=time_min, gpus_per_node=gpus)
            else:
                ex = submitit.SlurmExecutor(folder=self.folder / "%j")
                params: dict[str, Any] = {
                    "time": time_min, "nodes": 1, "ntasks_per_node": 1,
                    "cpus_per_task": self.threads, "array_parallelism": self.workers,
                    "job_name": self.name}
                if gpus:
                    params["gpus_per_node"] = gpus
                if self.spec.slurm_partition:
                    params["partition"] = self.spec.slurm_partition
                if self.spec.slurm_account:
                    params["account"] = self.spec.slurm_account
                ex.update_parameters(**params)
            self._executor = ex
        return self._executor

    def submit(self, fn: Callable[..., Any], tasks: list[tuple[Any, ...]]) -> list[Any]:
        """Submit every task as one job (SLURM: one array); returns the jobs in order."""

        ex = self._get_executor()
        job = TaskJob(self.threads)
        jobs = ex.map_array(job, [fn] * len(tasks), tasks)
        self._live.extend(jobs)
        return jobs

    def wait(self, jobs: list[Any]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, result)`` of ``jobs`` as they finish (a failed job raises)."""
        pending = dict(enumerate(jobs))
        while pending:
            done = [i for i, j in pending.items() if j.done()]
            for i in done:
                job = pending.pop(i)
                result = job.result()
                self._live.remove(job)
                yield i, result
            if pending and not done:
                time.sleep(self.poll)

    def run(self, fn: Callable[..., Any], tasks: list[tuple[Any, ...]]
            ) -> Iterator[tuple[int, Any]]:
        if not tasks:
            return
        if self.cluster != "local":
            yield from self.wait(self.submit(fn, tasks))
            return
        # the local cluster starts every job at once: keep at most `workers` running
        queue = list(enumerate(tasks))
        running: dict[Any, int] = {}
        while queue or running:
            while queue and len(running) < self.workers:
                i, task = queue.pop(0)
                running[self.submit(fn, [task])[0]] = i
            done = [j for j in running if j.done()]
            for job in done:
                i = running.pop(job)
                result = job.result()
                self._live.remove(job)
                yield i, result
            if not done:
                time.sleep(self.poll)

    def close(self) -> None:
        """Cancel the jobs still queued or running (the driver stopped early)."""
        for job in self._live:
            try:
                job.cancel(check=False)
            except Exception as err:  # noqa: BLE001 - a job that ended meanwhile
                print(f"submitit: cancelling job {job.job_id}: {err}", file=sys.stderr)
        self._live = []
