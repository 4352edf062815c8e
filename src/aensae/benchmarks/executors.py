r"""Executors: how the grid runner hands its independent tasks to workers.

The runner (:mod:`aensae.benchmarks.runner`) cuts a grid into tasks that share nothing but
the output folder (exact references and calibration per rho, then groups of models per
(rho, seed, family)); each task writes its own files atomically, so tasks may run in any
order, in any process and on any node that sees the output folder. An executor runs
``fn(*task)`` for a list of argument tuples and yields ``(index, result)`` as tasks
finish. The runner never imports an engine itself; it asks :func:`make_executor` for an
executor described by an :class:`ExecutorSpec` (``aensae reproduce --executor``, or the
config's ``[executor]`` table), and the engines (``submitit``, ``ray``: the ``cluster``
extra) are imported only inside the executors that use them.

- :class:`SerialExecutor` runs the tasks in this process, one after another (``local``
  with ``workers = 1``): nothing is spawned, and tests can patch the task functions.
- :class:`ProcessExecutor` runs them in ``workers`` worker processes started with the
  ``spawn`` method (numba and torch are not fork-safe once their thread pools exist);
  each worker limits torch, numba and every BLAS / OpenMP pool to ``threads`` threads.
- :class:`SubmititExecutor` (``submitit``) submits one job per task: a SLURM job array
  of at most ``workers`` jobs at once, ``threads`` CPUs and ``gpus`` GPUs per job; or,
  with ``submitit_cluster = "local"``, submitit's ``LocalExecutor`` (real jobs, pickles,
  job folders and logs on this machine, at most ``workers`` at once). A job is
  :class:`submitit.helpers.Checkpointable`: preempted or timed out, it is requeued with
  the same task, which resumes from the checkpoints in the output folder.
- :class:`RayExecutor` (``ray``) runs each task as a Ray task with ``threads`` CPUs and
  ``gpus`` GPUs (fractional: several small groups share one device) on the cluster at
  ``ray_address``, or on a local Ray started on demand; at most ``workers`` in flight.

Results do not depend on the executor: a task's numbers are a function of its arguments
and of the thread count, which is the same in every worker (``threads`` per task).
"""

from __future__ import annotations

import importlib.util
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aensae._validation import InputError

__all__ = ["CLUSTER_EXTRA", "KINDS", "OPTIONS", "Executor", "ExecutorSpec", "ProcessExecutor",
           "RayExecutor", "SerialExecutor", "SubmititExecutor", "available_cores",
           "check_engine", "limit_threads", "make_executor", "parse_executor_table",
           "resolve_spec", "run_limited"]

#: The executors of ``aensae reproduce --executor``.
KINDS = ("local", "submitit", "ray")
#: What installs the engines.
CLUSTER_EXTRA = "pip install 'aensae[cluster]'"
#: Engine options: name (the ``[executor]`` key) -> (command-line flag, executors it
#: applies to, what a value must be).
OPTIONS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "slurm_partition": ("--slurm-partition", ("submitit",), "a SLURM partition name"),
    "slurm_account": ("--slurm-account", ("submitit",), "a SLURM account name"),
    "slurm_time": ("--slurm-time", ("submitit",), "an integer >= 1 (minutes per job)"),
    "submitit_cluster": ("--submitit-cluster", ("submitit",),
                         "'slurm' or 'local' (submitit's LocalExecutor, on this machine)"),
    "gpus": ("--gpus", ("submitit", "ray"),
             "a number >= 0 (GPUs per job; an integer for submitit, fractions allowed for "
             "ray)"),
    "ray_address": ("--ray-address", ("ray",), "a Ray cluster address (host:port, 'auto' or "
                                               "ray://host:port)"),
}
#: Minutes per job asked of SLURM when ``slurm_time`` is not given.
DEFAULT_SLURM_TIME = 240
#: Retries of a Ray task whose worker or node died (it resumes from its checkpoints).
RAY_MAX_RETRIES = 3
#: Seconds a stopping driver waits for the Ray tasks it cancelled to be killed.
RAY_CANCEL_WAIT = 60.0

_LIMITS: list[Any] = []  # keeps a worker's threadpoolctl limits alive
_LIMITED: list[int] = []  # the thread count this process is limited to (run_limited)


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


def run_limited(threads: int, fn: Callable[..., Any], task: tuple[Any, ...]) -> Any:
    """``fn(*task)`` in a process limited to ``threads`` threads: what a submitit job or a
    Ray task runs (a Ray worker process serves many tasks; it is limited once)."""
    if _LIMITED != [threads]:
        limit_threads(threads)
        _LIMITED[:] = [threads]
    return fn(*task)


# ----------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class ExecutorSpec:
    """Which executor runs a grid's tasks, and its engine options (:data:`OPTIONS`).

    ``given`` maps each option that was set to where it was set (``--gpus`` or ``config
    executor.gpus``), so that errors name it as the user wrote it. Unset options take
    their defaults when the executor is made: ``slurm_time`` :data:`DEFAULT_SLURM_TIME`
    minutes, ``submitit_cluster`` ``"slurm"``, ``gpus`` 0, ``ray_address`` the
    ``RAY_ADDRESS`` environment variable or else a local Ray started on demand.
    """

    kind: str = "local"
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_time: int | None = None
    submitit_cluster: str | None = None
    gpus: float | None = None
    ray_address: str | None = None
    given: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def remote(self) -> bool:
        """Tasks run through an engine (submitit or ray), not in local worker processes."""
        return self.kind != "local"

    @property
    def here(self) -> bool:
        """Tasks certainly run on this machine (``local``, or submitit's local cluster), so
        threads and device are checked against it; else they are the nodes'."""
        return self.kind == "local" or (self.kind == "submitit"
                                        and self.submitit_cluster == "local")


def _check_option(name: str, where: str, value: Any) -> Any:
    """One engine option's value, checked; ``where`` names it as the user wrote it."""
    what = OPTIONS[name][2]
    bad = InputError(f"{where}: must be {what}, got {value!r}")
    if name in ("slurm_partition", "slurm_account", "ray_address"):
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise bad
        return value
    if name == "slurm_time":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad
        return value
    if name == "submitit_cluster":
        if value not in ("slurm", "local"):
            raise bad
        return value
    # gpus
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise bad
    return float(value)


def _check_kind(where: str, kind: Any) -> str:
    if kind not in KINDS:
        raise InputError(f"{where}: must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def parse_executor_table(table: Any) -> dict[str, Any]:
    """The config's ``[executor]`` table, checked: ``kind`` and the :data:`OPTIONS`.

    It is not part of the config's hash: where the tasks run does not change the results,
    so a grid started on one executor resumes on another.
    """
    if not isinstance(table, dict):
        raise InputError(f"config [executor]: must be a table, got {type(table).__name__}")
    allowed = {"kind", *OPTIONS}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(f"config [executor]: unknown key(s) {', '.join(unknown)}; allowed "
                         f"keys: {', '.join(sorted(allowed))}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        where = f"config executor.{key}"
        out[key] = _check_kind(where, value) if key == "kind" \
            else _check_option(key, where, value)
    return out


def resolve_spec(table: dict[str, Any] | None = None, *, kind: str | None = None,
                 **options: Any) -> ExecutorSpec:
    """An :class:`ExecutorSpec` from the config's ``[executor]`` table (already checked by
    :func:`parse_executor_table`) and command-line values, which win (``None``: not given).

    Raises :class:`InputError` for an unknown executor, a bad value, or an option given
    for an executor it does not apply to (``--ray-address`` with ``--executor local``).
    """
    table = dict(table or {})
    values: dict[str, Any] = {}
    given: dict[str, str] = {}
    for name in OPTIONS:
        if options.get(name) is not None:
            values[name] = _check_option(name, OPTIONS[name][0], options[name])
            given[name] = OPTIONS[name][0]
        elif table.get(name) is not None:
            values[name] = table[name]
            given[name] = f"config executor.{name}"
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"resolve_spec: unknown option(s) {unknown}")
    if kind is not None:
        kind = _check_kind("--executor", kind)
        kind_where = "--executor"
    else:
        kind = table.get("kind", "local")
        kind_where = "config executor.kind" if "kind" in table else "--executor (default)"
    for name, where in given.items():
        kinds = OPTIONS[name][1]
        if kind not in kinds:
            raise InputError(f"{where} applies to --executor {' or '.join(kinds)}, not to "
                             f"{kind_where} {kind!r}")
    if kind == "submitit" and "gpus" in values and not float(values["gpus"]).is_integer():
        raise InputError(f"{given['gpus']}: submitit requests whole GPUs per job, got "
                         f"{values['gpus']:g} (fractional GPUs are for --executor ray)")
    return ExecutorSpec(kind=kind, given=given, **values)


_ENGINE = {"submitit": "submitit", "ray": "ray"}


def check_engine(spec: ExecutorSpec) -> None:
    """Before any work: the engine of ``spec`` is installed (found without importing it),
    and for SLURM that ``sbatch`` is on the PATH."""
    if not spec.remote:
        return
    module = _ENGINE[spec.kind]
    if importlib.util.find_spec(module) is None:
        raise InputError(f"--executor {spec.kind}: the {module} package is not installed; "
                         f"install the cluster extra: {CLUSTER_EXTRA}")
    if spec.kind == "submitit" and (spec.submitit_cluster or "slurm") == "slurm" \
            and shutil.which("sbatch") is None:
        raise InputError("--executor submitit: SLURM's sbatch is not on this machine's PATH; "
                         "run from a SLURM login node, or pass --submitit-cluster local to "
                         "run the jobs here")


# ----------------------------------------------------------------------------- executors
class Executor(Protocol):
    """What the runner needs of an executor."""

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


class SubmititExecutor:
    """One submitit job per task: a SLURM job array, or submitit's ``LocalExecutor``.

    Jobs pickle ``fn`` and the task (submitit uses cloudpickle), run it limited to
    ``threads`` threads (:func:`run_limited`), and leave their pickles and logs in
    ``folder`` (``OUT/jobs``). The job callable is checkpointable
    (:class:`aensae.benchmarks._submitit_job.TaskJob`): when SLURM preempts a job or its
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
        from aensae.benchmarks._submitit_job import TaskJob

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


def make_executor(workers: int, threads: int, spec: ExecutorSpec | None = None,
                  folder: str | Path | None = None, name: str = "aensae") -> Executor:
    """The executor of ``spec`` (default ``local``): ``workers`` tasks at once, each
    limited to ``threads`` threads. ``local`` with ``workers = 1`` runs them in this
    process. ``folder`` holds submitit's job files (``OUT/jobs``); ``name`` names the
    SLURM jobs."""
    if spec is None or spec.kind == "local":
        if workers <= 1:
            return SerialExecutor()
        return ProcessExecutor(workers, threads)
    check_engine(spec)
    if spec.kind == "submitit":
        if folder is None:
            raise ValueError("the submitit executor needs a folder for its job files")
        return SubmititExecutor(spec, workers, threads, Path(folder), name=name)
    return RayExecutor(spec, workers, threads)
