r"""Experiment grids: TOML configs, their validation, and their expansion into runs.

A config is a named one shipped with the package (``quick``, ``paper``, ``tiny``: the files
``aensae/configs/<name>.toml``, found through :mod:`importlib.resources`, so they work from
a wheel as from a checkout) or a path to a TOML file. It must hold ``[data]`` and at least
one ``[[family]]``; every other table may be omitted (its defaults, :data:`DEFAULTS`, are
used). The tables:

- ``[experiment]``: ``name`` (a folder name: :data:`aensae._validation.NAME_RULE`),
  ``seeds`` (list), ``device``, ``dtype``, ``threads`` (per task: per local worker
  process, submitit job or Ray task; 0: an equal share of this machine's cores locally,
  1 on submitit or ray; with the local executor at most this machine's cores, on
  submitit or ray the nodes' schedulers hold it to theirs), ``workers`` (tasks at once:
  local processes, 0 = the cores available; submitit's array parallelism; Ray tasks in
  flight; ``aensae reproduce --workers`` overrides it), ``max_memory_gb`` (not hashed: the
  memory one task may need, in GiB; absent: the memory available here; see
  :func:`aensae.experiments.spiked.driver.check_reproduce`);
- ``[data]``: the spiked stream -- ``n``, ``m`` (true atoms), ``k``, ``lo``, ``hi``,
  ``nonneg``, ``noise_std``, ``rho`` (list), ``d_sae`` (latents);
- ``[train]``: ``steps``, ``batch_size``, ``lr``, ``dead_window`` (samples), ``dead_last``,
  ``checkpoint_every``, ``progress``, ``stack`` (batched products for the models of a
  group, any architecture, :class:`~aensae.saes.TrainConfig`'s ``stack``: equal to separate
  training to rounding, not bit for bit; about 1.5x faster per model-step on a GPU, where
  separate small products are bound by kernel launches), ``graph`` (not hashed:
  :class:`~aensae.saes.TrainConfig`'s ``graph``, ``auto`` captures a stacked group's
  step in a CUDA graph on a GPU, ``off`` never; the replay is checked against the eager
  step, so results do not depend on it);
- ``[eval]``: ``samples`` (held-out signals), ``encoder_samples`` (Jacobians, jumps),
  ``hoffman_samples``, ``tol`` (certificate: gap <= tol ||x||^2);
- ``[calibrate]``: ``steps``, ``ladder`` (first penalties per family and rho), ``rounds``
  (refinement passes inside the bracket), ``tolerance`` (a penalty is taken as measured
  when its L0 is within a factor ``tolerance`` of its run target), ``frontier`` (> 1: the
  runs of a calibrated family are calibrated to ``t / frontier`` and ``t * frontier`` for
  every target ``t`` (:meth:`~aensae.experiments.config.Family.run_targets`), so that each
  seed's metrics can be interpolated to the targets themselves along its own frontier;
  1: runs at the targets), ``bracket`` (optional, a ratio ``>= frontier ** 2``; needs
  full-length passes and no ``[selection]``): the search only brackets each target
  within this ratio and every model it trains is a run of the calibration seed (see
  :mod:`aensae.experiments.spiked.calibrate`);
- ``[selection]`` (optional): a selection seed that picks each family's configuration
  among its sweep before any test seed runs (:mod:`aensae.experiments.spiked.selection`):
  ``seed`` (used for nothing else; also the calibration's seed), ``target_l0`` (the
  primary target), ``init`` (the initialisation the selection is made on; its choice is
  used for every init of the family), ``metric`` (a results column, minimised or
  maximised as :data:`~aensae.experiments.spiked.selection.SELECTION_METRICS` says),
  ``ev_within`` (candidates: explained variance within this of the family's best),
  ``ablation_targets`` (optional: the only targets the other init runs at, an ablation
  needing fewer runs; default every target); ``experiment.seeds`` are then the test
  seeds, the only seeds trained after the selection (at least
  :data:`~aensae.experiments.spiked.selection.MIN_TEST_SEEDS`, the selection seed not
  among them);
- ``[reference]``: exact codes on the true dictionary, ``ladder`` points of ``lam1`` in
  ``[fraction_min, fraction_max] * lam_max`` and the ridge ``l2`` (SAE scaling);
- ``[speed]``: ``run`` (call ``aensae bench solvers``), ``quick``, ``signals``, ``rho``;
- ``[executor]`` (optional, not hashed: where tasks run changes no result): ``kind``
  (``local``, ``submitit``, ``ray``) and the engine options of
  :data:`aensae.experiments.executors.OPTIONS` (``slurm_partition``, ``slurm_account``,
  ``slurm_time``, ``submitit_cluster``, ``gpus``, ``ray_address``); the matching
  ``aensae reproduce`` options override them;
- ``[[family]]`` (one or more): ``name`` (a folder name, as the experiment's), ``arch``,
  ``hyper`` (fixed hyperparameters), ``sweep`` (name -> list, cartesian product;
  ``init = ["tied", "independent"]`` sweeps the initialisation) and either ``target_l0``
  (list: matched sparsity, the arch's sparsity parameter is calibrated, see
  :data:`~aensae.experiments.config.SPARSITY_PARAM`, within ``calibrate_range``) or the
  sparsity parameter itself in ``hyper``/``sweep``.

Matched sparsity: for ``topk`` / ``batchtopk`` the sparsity parameter is ``k_top`` and a
target L0 sets it directly (``k_top = round(target)``); for the l1 architectures it is
``l1`` and for ``jumprelu`` the L0 coefficient ``l0``, found by calibration
(:mod:`aensae.experiments.spiked.calibrate`).

Every key is checked: an unknown table or key is an error naming it and listing the
allowed ones; values are checked for type and range.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aensae._dtypes import SAE_DTYPES
from aensae._validation import check_name, check_threads
from aensae.experiments.config import (
    DIRECT_K,
    ConfigText,
    Family,
    arch_defaults,
    canonical_hash,
    check_keys,
    check_number,
    config_error,
    read_config,
    validate_family,
    value_list,
    variant_id,
)

__all__ = ["DEFAULTS", "REQUIRED_TABLES", "GridConfig", "RunSpec", "load_config"]

#: Tables a config must hold (the others have defaults).
REQUIRED_TABLES = ("data", "family")


DEFAULTS: dict[str, dict[str, Any]] = {
    "experiment": {"name": "custom", "seeds": [0], "device": "cpu", "dtype": "float32",
                   "threads": 1, "workers": 0, "max_memory_gb": None},
    "data": {"kind": "spiked", "n": 64, "m": 256, "d_sae": None, "k": 4, "lo": 1.0,
             "hi": 3.0, "nonneg": True, "noise_std": 0.0, "rho": [0.0]},
    "train": {"steps": 1000, "batch_size": 256, "lr": 1e-3, "dead_window": 65536,
              "dead_last": 5, "checkpoint_every": 1000, "progress": True, "stack": False,
              "graph": "auto"},
    "eval": {"samples": 1024, "encoder_samples": 128, "hoffman_samples": 256, "tol": 1e-10},
    "calibrate": {"steps": 500, "ladder": 5, "rounds": 1, "tolerance": 1.5, "frontier": 1.0,
                  "bracket": None},
    "reference": {"ladder": 6, "fraction_min": 0.01, "fraction_max": 0.5, "l2": 1e-3},
    "speed": {"run": False, "quick": True, "signals": 1000, "rho": [0.0, 0.9], "json": None},
}


@dataclass(frozen=True)
class RunSpec:
    """One SAE to train: architecture, full hyperparameters, data point and seed."""

    family: str
    arch: str
    hyper: dict[str, Any]
    rho: float
    seed: int
    target_l0: float | None
    calibrated: bool
    variant: str

    def record(self, grid: GridConfig) -> dict[str, Any]:
        """Everything that determines the run's result (hashed into its id), the
        architecture's defaults included."""
        return {"family": self.family, "arch": self.arch, "hyper": self.hyper,
                "defaults": arch_defaults(self.arch),
                "rho": self.rho, "seed": self.seed, "target_l0": self.target_l0,
                "calibrated": self.calibrated, "variant": self.variant,
                "data": grid.data_record(), "train": grid.train_record(),
                "eval": grid.eval, "d_sae": grid.d_sae}

    def run_id(self, grid: GridConfig) -> str:
        """``family-rhoR-sS-HASH``: readable and unique per configuration."""
        return (f"{self.family}-rho{self.rho:g}-s{self.seed}-"
                f"{canonical_hash(self.record(grid))}")


@dataclass
class GridConfig:
    """A validated experiment config (tables as plain dicts, families parsed)."""

    experiment: dict[str, Any]
    data: dict[str, Any]
    train: dict[str, Any]
    eval: dict[str, Any]
    calibrate: dict[str, Any]
    reference: dict[str, Any]
    speed: dict[str, Any]
    families: list[Family]
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    #: The ``[executor]`` table (:func:`~aensae.experiments.executors.parse_executor_table`):
    #: where the tasks run, so not part of :meth:`to_dict` or the config hash.
    executor: dict[str, Any] = field(default_factory=dict)
    #: The ``[selection]`` table (``None``: every variant runs on every seed).
    selection: dict[str, Any] | None = None
    #: While the selection seed runs: the primary target, so that each variant is
    #: calibrated and run only at the run targets around it (:meth:`run_targets`). Not part
    #: of the config or its hash.
    scope: float | None = None

    @property
    def name(self) -> str:
        return str(self.experiment["name"])

    @property
    def seeds(self) -> list[int]:
        """The seeds whose runs the verdicts use (the test seeds under a selection)."""
        return list(self.experiment["seeds"])

    @property
    def calibration_seed(self) -> int:
        """The seed the calibration trains on: the selection seed, else the first seed."""
        return int(self.selection["seed"]) if self.selection else self.seeds[0]

    @property
    def rhos(self) -> list[float]:
        return list(self.data["rho"])

    @property
    def d_sae(self) -> int:
        return int(self.data["d_sae"] or self.data["m"])

    def data_record(self) -> dict[str, Any]:
        """The data parameters common to every run (rho and seed are per run)."""
        return {k: v for k, v in self.data.items() if k != "rho"}

    def train_record(self) -> dict[str, Any]:
        """Training parameters that change results (not progress, checkpoint cadence or
        whether a stacked step is replayed from a CUDA graph).

        ``stack`` appears only when true, so that configs written before the option keep
        their hashes and run ids.
        """
        return {k: v for k, v in self.train.items()
                if k not in ("progress", "checkpoint_every", "graph")
                and (k != "stack" or v)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready normalised config (defaults filled)."""
        out = {"experiment": self.experiment, "data": self.data, "train": self.train,
               "eval": self.eval, "calibrate": self.calibrate, "reference": self.reference,
               "speed": self.speed,
               "family": [{"name": f.name, "arch": f.arch, "hyper": f.hyper,
                           "defaults": f.defaults(),
                           "sweep": f.sweep, "target_l0": list(f.target_l0),
                           "calibrate_range": (None if f.calibrate_range is None
                                               else list(f.calibrate_range))}
                          for f in self.families]}
        if self.selection is not None:
            out["selection"] = self.selection
        return out

    def config_hash(self) -> str:
        """Hash of the normalised config (progress, checkpoint cadence and the memory
        limit excluded: they change no result)."""
        d = self.to_dict()
        d["train"] = self.train_record()
        d["experiment"] = {k: v for k, v in self.experiment.items() if k != "max_memory_gb"}
        return canonical_hash(d)

    def runs(self, penalties: dict[tuple[str, str, float], dict[float, float]] | None = None,
             *, seeds: list[int] | None = None, keep: Any = None,
             points: dict[tuple[str, str, float], list[float]] | None = None
             ) -> list[RunSpec]:
        """Every SAE run of the grid, in a stable order.

        ``penalties[(family, variant, rho)][target]`` gives the calibrated sparsity value
        for families with ``target_l0``; it is required for those (see
        :func:`aensae.experiments.spiked.calibrate.calibrate`). A target missing from it is
        unreachable and has no run. ``seeds`` (default :attr:`seeds`) and
        ``keep(family, hyper, rho)`` (default: every variant) restrict the runs.

        With ``calibrate.bracket``, ``points[(family, variant, rho)]`` lists the penalties
        the calibration measured: the calibration seed's runs of that variant are one per
        penalty (``target_l0`` None), the models the calibration trained.
        """
        out = []
        for rho in self.rhos:
            for seed in (self.seeds if seeds is None else seeds):
                for fam in self.families:
                    for hyper in fam.variants():
                        if keep is not None and not keep(fam, hyper, rho):
                            continue
                        variant = variant_id(hyper)
                        if not fam.target_l0:
                            out.append(RunSpec(fam.name, fam.arch, hyper, rho, seed, None,
                                               False, variant))
                            continue
                        key = (fam.name, variant, rho)
                        if (points is not None and key in points and fam.calibrated
                                and seed == self.calibration_seed
                                and "bracket" in self.calibrate):
                            out += [RunSpec(fam.name, fam.arch,
                                            {**hyper, fam.sparsity_param: float(p)}, rho,
                                            seed, None, True, variant)
                                    for p in sorted(set(points[key]))]
                            continue
                        for target in self.run_targets(fam, hyper):
                            h = dict(hyper)
                            if fam.arch in DIRECT_K:
                                h[fam.sparsity_param] = max(1, int(round(target)))
                            else:
                                if penalties is None or key not in penalties:
                                    raise KeyError(f"no calibrated {fam.sparsity_param} for "
                                                   f"family {fam.name!r}, rho={rho}")
                                if target not in penalties[key]:
                                    continue  # unreachable: recorded by the calibration
                                h[fam.sparsity_param] = float(penalties[key][target])
                            out.append(RunSpec(fam.name, fam.arch, h, rho, seed, float(target),
                                               fam.calibrated, variant))
        return out

    def calibration_jobs(self) -> list[tuple[Family, dict[str, Any], str]]:
        """(family, hyper without the sparsity parameter, variant hash) to calibrate."""
        return [(f, h, variant_id(h)) for f in self.families if f.calibrated
                for h in f.variants()]

    def primary_init(self, fam: Family, hyper: dict[str, Any]) -> bool:
        """Whether ``fam``'s variant ``hyper`` runs in the primary setting: with
        ``selection.init``, or any init of a family that runs no variant with it (always,
        without a ``[selection]``); the other variants are the ablation."""
        sel = self.selection
        if sel is None:
            return True
        return hyper.get("init", "tied") == sel["init"] or not any(
            h.get("init", "tied") == sel["init"] for h in fam.variants())

    def targets(self, fam: Family, hyper: dict[str, Any] | None = None
                ) -> tuple[float, ...]:
        """The verdict targets of ``fam``'s variant ``hyper``: ``target_l0``, or for an
        ablation variant (not :meth:`primary_init`) the family's targets among
        ``selection.ablation_targets`` when that is set."""
        sel = self.selection
        if (sel is None or sel.get("ablation_targets") is None or hyper is None
                or self.primary_init(fam, hyper)):
            return fam.target_l0
        keep = set(sel["ablation_targets"])
        return tuple(t for t in fam.target_l0 if t in keep)

    def run_targets(self, fam: Family, hyper: dict[str, Any] | None = None
                    ) -> tuple[float, ...]:
        """The L0 targets the runs of ``fam``'s variant ``hyper`` are calibrated to
        (:meth:`Family.run_targets` of :meth:`targets`); under a :attr:`scope`, only the
        nearest on each side of it (the scope itself for a family whose sparsity is set
        directly)."""
        full = fam.run_targets(float(self.calibrate["frontier"]), self.targets(fam, hyper))
        if self.scope is None:
            return full
        if not fam.calibrated:
            return tuple(t for t in full if t == self.scope) or full
        below = [t for t in full if t <= self.scope]
        above = [t for t in full if t >= self.scope]
        return tuple(sorted({*([max(below)] if below else []),
                             *([min(above)] if above else [])}))


# ----------------------------------------------------------------------------- validation


def _validate_tables(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    t: dict[str, dict[str, Any]] = {}
    for name, defaults in DEFAULTS.items():
        table = raw.get(name, {})
        check_keys(f"[{name}]", table, defaults)
        t[name] = {**copy.deepcopy(defaults), **table}
    e, d, tr, ev, c, r, s = (t[k] for k in DEFAULTS)
    check_name("config experiment.name", e["name"])
    e["seeds"] = value_list("experiment.seeds", e["seeds"],
                            lambda w, v: check_number(w, v, kind=int, low=0))
    if not isinstance(e["device"], str):
        raise config_error("experiment.device", f"must be a string, got {e['device']!r}")
    if e["dtype"] not in SAE_DTYPES:
        raise config_error("experiment.dtype",
                           f"must be 'float32' or 'float64', got {e['dtype']!r}")
    # checked against this machine's cores when the executor is local (driver.reproduce):
    # with submitit or ray the threads are the remote node's
    e["threads"] = check_threads("config experiment.threads", e["threads"], here=False)
    e["workers"] = check_number("experiment.workers", e["workers"], kind=int, low=0)
    if e["max_memory_gb"] is not None:
        e["max_memory_gb"] = check_number("experiment.max_memory_gb", e["max_memory_gb"],
                                          low=0.0, low_open=True)
    if d["kind"] != "spiked":
        raise config_error("data.kind", f"must be 'spiked' (or 'llm': an LLM config, "
                                 f"aensae.experiments.llm.driver), got {d['kind']!r}")
    for key, low in (("n", 2), ("m", 1), ("k", 1)):  # n >= 2: a spike needs room
        d[key] = check_number(f"data.{key}", d[key], kind=int, low=low)
    if d["k"] > d["m"]:
        raise config_error("data.k", f"must be <= data.m={d['m']}, got {d['k']}")
    if d["d_sae"] is not None:
        d["d_sae"] = check_number("data.d_sae", d["d_sae"], kind=int, low=1)
    d["lo"] = check_number("data.lo", d["lo"], low=0.0, low_open=True)
    d["hi"] = check_number("data.hi", d["hi"], low=d["lo"])
    if not isinstance(d["nonneg"], bool):
        raise config_error("data.nonneg", f"must be true or false, got {d['nonneg']!r}")
    d["noise_std"] = check_number("data.noise_std", d["noise_std"], low=0.0)
    d["rho"] = value_list("data.rho", d["rho"], lambda w, v: check_number(w, v, low=0.0, high=1.0,
                                                             high_open=True))
    for key in ("steps", "batch_size", "dead_window", "dead_last"):
        tr[key] = check_number(f"train.{key}", tr[key], kind=int, low=1)
    tr["checkpoint_every"] = check_number("train.checkpoint_every", tr["checkpoint_every"],
                                          kind=int, low=0)
    tr["lr"] = check_number("train.lr", tr["lr"], low=0.0, low_open=True)
    for key in ("progress", "stack"):
        if not isinstance(tr[key], bool):
            raise config_error(f"train.{key}", f"must be true or false, got {tr[key]!r}")
    if tr["graph"] not in ("auto", "off"):
        raise config_error("train.graph", f"must be \"auto\" or \"off\", got {tr['graph']!r}")
    for key in ("samples", "encoder_samples", "hoffman_samples"):
        ev[key] = check_number(f"eval.{key}", ev[key], kind=int, low=2)
    ev["tol"] = check_number("eval.tol", ev["tol"], low=0.0, low_open=True)
    c["steps"] = check_number("calibrate.steps", c["steps"], kind=int, low=1)
    c["ladder"] = check_number("calibrate.ladder", c["ladder"], kind=int, low=2)
    c["rounds"] = check_number("calibrate.rounds", c["rounds"], kind=int, low=1)
    c["tolerance"] = check_number("calibrate.tolerance", c["tolerance"], low=1.0, low_open=True)
    c["frontier"] = check_number("calibrate.frontier", c["frontier"], low=1.0)
    if c["bracket"] is None:  # unset: left out, so that older configs keep their hash
        del c["bracket"]
    else:
        _check_bracket(c, tr)
    r["ladder"] = check_number("reference.ladder", r["ladder"], kind=int, low=2)
    r["fraction_min"] = check_number("reference.fraction_min", r["fraction_min"], low=0.0,
                             low_open=True, high=1.0)
    r["fraction_max"] = check_number("reference.fraction_max", r["fraction_max"],
                             low=r["fraction_min"], high=1.0, low_open=True)
    r["l2"] = check_number("reference.l2", r["l2"], low=0.0, low_open=True)
    if not isinstance(s["run"], bool) or not isinstance(s["quick"], bool):
        raise config_error("speed", f"run and quick must be true or false, got {s['run']!r}, "
                             f"{s['quick']!r}")
    s["signals"] = check_number("speed.signals", s["signals"], kind=int, low=1)
    s["rho"] = value_list("speed.rho", s["rho"], lambda w, v: check_number(w, v, low=0.0, high=1.0,
                                                              high_open=True))
    if s["json"] is not None and not isinstance(s["json"], str):
        raise config_error("speed.json", f"must be a path string, got {s['json']!r}")
    return t


def _check_bracket(c: dict[str, Any], tr: dict[str, Any]) -> None:
    """``calibrate.bracket``: a ratio of at least ``frontier ** 2`` (two runs landed on
    the run targets around a target must satisfy it), with full-length passes."""
    c["bracket"] = check_number("calibrate.bracket", c["bracket"], low=1.0, low_open=True)
    if c["frontier"] <= 1.0 or c["bracket"] < c["frontier"] ** 2:
        raise config_error("calibrate.bracket", f"must be >= calibrate.frontier ** 2 with "
                           f"calibrate.frontier > 1 (its runs aim at t / frontier and t * "
                           f"frontier), got bracket {c['bracket']:g}, frontier "
                           f"{c['frontier']:g}")
    if c["steps"] != tr["steps"] or tr["stack"]:
        raise config_error("calibrate.bracket", f"needs full-length calibration passes, whose "
                           f"models are the calibration seed's runs: calibrate.steps = "
                           f"train.steps and train.stack false, got calibrate.steps "
                           f"{c['steps']}, train.steps {tr['steps']}, train.stack "
                           f"{str(tr['stack']).lower()}")


def load_config(config: str | Path | dict[str, Any] | ConfigText) -> GridConfig:
    """Read and validate a config: a name (``quick``, ``paper``, ``tiny``), a path, a dict
    or one :func:`~aensae.experiments.config.read_config` already read."""
    raw, source = read_config(config)
    check_keys("(top level)", raw, {*DEFAULTS, "family", "executor", "selection"})
    if "data" not in raw:
        raise config_error("[data]", "the table is required (it states the experiment's data: "
                                     "n, m, k, rho; omitted keys take their defaults); every "
                                     "other table but [[family]] may be omitted")
    t = _validate_tables(raw)
    fams = raw.get("family")
    if not isinstance(fams, list) or not fams:
        raise config_error("[[family]]", "at least one [[family]] table is required")
    d_sae = int(t["data"]["d_sae"] or t["data"]["m"])
    families = [validate_family(i, f, d_sae) for i, f in enumerate(fams)]
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise config_error("[[family]]", f"family names must be unique, got {names}")
    from aensae.experiments.executors import parse_executor_table
    from aensae.experiments.spiked.selection import validate_selection

    executor = parse_executor_table(raw.get("executor", {}))
    selection = (validate_selection(raw["selection"], t["experiment"]["seeds"], families)
                 if "selection" in raw else None)
    if selection is not None and "bracket" in t["calibrate"]:
        raise config_error("calibrate.bracket", "cannot be used with a [selection] table: its "
                           "test seeds train at penalties landed on the run targets "
                           "(calibrate.tolerance); remove one of them")
    return GridConfig(**t, families=families, source=source, raw=raw, executor=executor,
                      selection=selection)
