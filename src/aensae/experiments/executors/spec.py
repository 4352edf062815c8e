"""What an executor is asked for: :class:`ExecutorSpec` (``aensae reproduce --executor``
and its options, or a config's ``[executor]`` table), checked before any work."""

from __future__ import annotations

import importlib.util
import math
import shutil
from dataclasses import dataclass, field
from typing import Any

from aensae._validation import InputError

__all__ = ["CLUSTER_EXTRA", "DEFAULT_SLURM_TIME", "KINDS", "OPTIONS", "RAY_CANCEL_WAIT",
           "RAY_MAX_RETRIES", "ExecutorSpec", "check_engine", "parse_executor_table",
           "resolve_spec"]

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
