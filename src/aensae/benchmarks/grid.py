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
  flight; ``aensae reproduce --workers`` overrides it);
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
  (refinement passes inside the bracket), ``tolerance`` (a run is matched when its L0 is
  within a factor ``tolerance`` of its target);
- ``[reference]``: exact codes on the true dictionary, ``ladder`` points of ``lam1`` in
  ``[fraction_min, fraction_max] * lam_max`` and the ridge ``l2`` (SAE scaling);
- ``[speed]``: ``run`` (call ``aensae bench solvers``), ``quick``, ``signals``, ``rho``;
- ``[executor]`` (optional, not hashed: where tasks run changes no result): ``kind``
  (``local``, ``submitit``, ``ray``) and the engine options of
  :data:`aensae.benchmarks.executors.OPTIONS` (``slurm_partition``, ``slurm_account``,
  ``slurm_time``, ``submitit_cluster``, ``gpus``, ``ray_address``); the matching
  ``aensae reproduce`` options override them;
- ``[[family]]`` (one or more): ``name`` (a folder name, as the experiment's), ``arch``,
  ``hyper`` (fixed hyperparameters), ``sweep`` (name -> list, cartesian product;
  ``init = ["tied", "independent"]`` sweeps the initialisation) and either ``target_l0``
  (list: matched sparsity, the arch's sparsity parameter is calibrated, see
  :data:`SPARSITY_PARAM`, within ``calibrate_range``) or the sparsity parameter itself in
  ``hyper``/``sweep``.

Matched sparsity: for ``topk`` / ``batchtopk`` the sparsity parameter is ``k_top`` and a
target L0 sets it directly (``k_top = round(target)``); for the l1 architectures it is
``l1`` and for ``jumprelu`` the L0 coefficient ``l0``, found by calibration
(:mod:`aensae.benchmarks.calibrate`).

Every key is checked: an unknown table or key is an error naming it and listing the
allowed ones; values are checked for type and range.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aensae._validation import InputError, check_name, check_threads

if TYPE_CHECKING:  # importlib.resources.abc is new in Python 3.11
    from importlib.resources.abc import Traversable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

__all__ = [
    "CONFIG_DIR",
    "DEFAULTS",
    "REQUIRED_TABLES",
    "SPARSITY_PARAM",
    "Family",
    "GridConfig",
    "RunSpec",
    "canonical_hash",
    "config_kind",
    "load_config",
    "read_config",
    "resolve_config_path",
]

#: Folder of the named configs: package data ``aensae/configs/`` (a ``Traversable``).
CONFIG_DIR: Traversable = importlib.resources.files("aensae") / "configs"
#: Tables a config must hold (the others have defaults).
REQUIRED_TABLES = ("data", "family")

#: The hyperparameter that sets each architecture's sparsity.
SPARSITY_PARAM: dict[str, str] = {
    "relu_l1": "l1", "elastic_net": "l1", "adaptive_lasso": "l1", "aen": "l1",
    "jumprelu": "l0", "topk": "k_top", "batchtopk": "k_top",
}
#: Architectures whose sparsity parameter is set directly from the target L0.
DIRECT_K = ("topk", "batchtopk")

DEFAULTS: dict[str, dict[str, Any]] = {
    "experiment": {"name": "custom", "seeds": [0], "device": "cpu", "dtype": "float32",
                   "threads": 1, "workers": 0},
    "data": {"kind": "spiked", "n": 64, "m": 256, "d_sae": None, "k": 4, "lo": 1.0,
             "hi": 3.0, "nonneg": True, "noise_std": 0.0, "rho": [0.0]},
    "train": {"steps": 1000, "batch_size": 256, "lr": 1e-3, "dead_window": 65536,
              "dead_last": 5, "checkpoint_every": 1000, "progress": True, "stack": False,
              "graph": "auto"},
    "eval": {"samples": 1024, "encoder_samples": 128, "hoffman_samples": 256, "tol": 1e-10},
    "calibrate": {"steps": 500, "ladder": 5, "rounds": 1, "tolerance": 1.5},
    "reference": {"ladder": 6, "fraction_min": 0.01, "fraction_max": 0.5, "l2": 1e-3},
    "speed": {"run": False, "quick": True, "signals": 1000, "rho": [0.0, 0.9], "json": None},
}
_FAMILY_KEYS = {"name", "arch", "hyper", "sweep", "target_l0", "calibrate_range"}


def canonical_hash(obj: Any, length: int = 10) -> str:
    """First ``length`` hex digits of the SHA-1 of ``obj`` as sorted, compact JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def named_configs() -> list[str]:
    """Names of the configs shipped with the package, sorted."""
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(p.name[:-5] for p in CONFIG_DIR.iterdir() if p.name.endswith(".toml"))


def resolve_config_path(config: str | Path) -> Traversable | Path:
    """``quick`` / ``paper`` / ``tiny`` -> the packaged ``<name>.toml``; otherwise a file path.

    A value without ``/`` and not ending in ``.toml`` is a name; anything else a path.
    Either way a missing file is an :class:`~aensae._validation.InputError` naming
    ``--config`` (and, for a name, listing the named configs).
    """
    text = str(config)
    if text == "":
        raise InputError("--config: must be a config name or a .toml path, got an empty "
                         "string")
    if "/" not in text and not text.endswith(".toml"):
        res = CONFIG_DIR / f"{text}.toml"
        if not res.is_file():
            raise InputError(f"--config {text!r}: no named config of that name; named "
                             f"configs: {', '.join(named_configs()) or '(none found)'}, or "
                             "pass a .toml path")
        return res
    path = Path(text)
    if path.is_dir():
        raise InputError(f"--config {text!r}: is a folder, not a TOML file")
    if not path.is_file():
        raise InputError(f"--config {text!r}: file not found")
    return path


@dataclass(frozen=True)
class Family:
    """One model family of the grid (see the module docstring)."""

    name: str
    arch: str
    hyper: dict[str, Any]
    sweep: dict[str, list[Any]]
    target_l0: tuple[float, ...] = ()
    calibrate_range: tuple[float, float] | None = None

    @property
    def sparsity_param(self) -> str:
        return SPARSITY_PARAM[self.arch]

    @property
    def calibrated(self) -> bool:
        """Whether the sparsity parameter comes from a calibration pass."""
        return bool(self.target_l0) and self.arch not in DIRECT_K

    def variants(self) -> list[dict[str, Any]]:
        """Fixed hyperparameters combined with every point of the sweep (sorted keys)."""
        names = sorted(self.sweep)
        out = []
        for values in itertools.product(*(self.sweep[k] for k in names)):
            out.append({**self.hyper, **dict(zip(names, values, strict=True))})
        return out


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
        """Everything that determines the run's result (hashed into its id)."""
        return {"family": self.family, "arch": self.arch, "hyper": self.hyper,
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
    #: The ``[executor]`` table (:func:`~aensae.benchmarks.executors.parse_executor_table`):
    #: where the tasks run, so not part of :meth:`to_dict` or the config hash.
    executor: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.experiment["name"])

    @property
    def seeds(self) -> list[int]:
        return list(self.experiment["seeds"])

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
        return {"experiment": self.experiment, "data": self.data, "train": self.train,
                "eval": self.eval, "calibrate": self.calibrate, "reference": self.reference,
                "speed": self.speed,
                "family": [{"name": f.name, "arch": f.arch, "hyper": f.hyper,
                            "sweep": f.sweep, "target_l0": list(f.target_l0),
                            "calibrate_range": (None if f.calibrate_range is None
                                                else list(f.calibrate_range))}
                           for f in self.families]}

    def config_hash(self) -> str:
        """Hash of the normalised config (progress and checkpoint cadence excluded)."""
        d = self.to_dict()
        d["train"] = self.train_record()
        return canonical_hash(d)

    def runs(self, penalties: dict[tuple[str, str, float], dict[float, float]] | None = None
             ) -> list[RunSpec]:
        """Every SAE run of the grid, in a stable order.

        ``penalties[(family, variant, rho)][target]`` gives the calibrated sparsity value
        for families with ``target_l0``; it is required for those (see
        :func:`aensae.benchmarks.calibrate.calibrate`). A target missing from it is
        unreachable and has no run.
        """
        out = []
        for rho in self.rhos:
            for seed in self.seeds:
                for fam in self.families:
                    for hyper in fam.variants():
                        variant = "v" + canonical_hash(hyper, 8)
                        if not fam.target_l0:
                            out.append(RunSpec(fam.name, fam.arch, hyper, rho, seed, None,
                                               False, variant))
                            continue
                        for target in fam.target_l0:
                            h = dict(hyper)
                            if fam.arch in DIRECT_K:
                                h[fam.sparsity_param] = max(1, int(round(target)))
                            else:
                                key = (fam.name, variant, rho)
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
        return [(f, h, "v" + canonical_hash(h, 8)) for f in self.families if f.calibrated
                for h in f.variants()]


# ----------------------------------------------------------------------------- validation
def _fail(where: str, msg: str) -> InputError:
    return InputError(f"config {where}: {msg}")


def _check_keys(where: str, table: Any, allowed: set[str] | dict) -> None:
    if not isinstance(table, dict):
        raise _fail(where, f"must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(unknown)}; allowed keys: "
                           f"{', '.join(sorted(allowed))}")


def _num(where: str, value: Any, *, kind: type = float, low: float | None = None,
         high: float | None = None, low_open: bool = False, high_open: bool = False) -> Any:
    ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise _fail(where, f"must be {'an integer' if kind is int else 'a number'}, got "
                           f"{value!r}")
    v = kind(value)
    if kind is float and not math.isfinite(v):
        raise _fail(where, f"must be finite, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise _fail(where, f"must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise _fail(where, f"must be {'<' if high_open else '<='} {high:g}, got {value!r}")
    return v


def _scalar(where: str, value: Any) -> int | float:
    """A number, kept an ``int`` when written as one (integer hyperparameters)."""
    return _num(where, value, kind=int if isinstance(value, int) else float)


def _choice(where: str, value: Any) -> str:
    """A string value of a choice hyperparameter (``init``); checked against its choices
    with the family's other hyperparameters."""
    if not isinstance(value, str):
        raise _fail(where, f"must be a string, got {value!r}")
    return value


def _list(where: str, value: Any, item: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise _fail(where, f"must be a non-empty list, got {value!r}")
    out = [item(f"{where}[{i}]", v) for i, v in enumerate(value)]
    if len(set(map(repr, out))) != len(out):
        raise _fail(where, f"must not repeat values, got {value!r}")
    return out


def _validate_tables(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    t: dict[str, dict[str, Any]] = {}
    for name, defaults in DEFAULTS.items():
        table = raw.get(name, {})
        _check_keys(f"[{name}]", table, defaults)
        t[name] = {**copy.deepcopy(defaults), **table}
    e, d, tr, ev, c, r, s = (t[k] for k in DEFAULTS)
    check_name("config experiment.name", e["name"])
    e["seeds"] = _list("experiment.seeds", e["seeds"], lambda w, v: _num(w, v, kind=int, low=0))
    if not isinstance(e["device"], str):
        raise _fail("experiment.device", f"must be a string, got {e['device']!r}")
    if e["dtype"] not in ("float32", "float64"):
        raise _fail("experiment.dtype", f"must be 'float32' or 'float64', got {e['dtype']!r}")
    # checked against this machine's cores when the executor is local (runner.reproduce):
    # with submitit or ray the threads are the remote node's
    e["threads"] = check_threads("config experiment.threads", e["threads"], here=False)
    e["workers"] = _num("experiment.workers", e["workers"], kind=int, low=0)
    if d["kind"] != "spiked":
        raise _fail("data.kind", f"must be 'spiked' (or 'llm': an LLM config, "
                                 f"aensae.benchmarks.llm_grid), got {d['kind']!r}")
    for key, low in (("n", 2), ("m", 1), ("k", 1)):  # n >= 2: a spike needs room
        d[key] = _num(f"data.{key}", d[key], kind=int, low=low)
    if d["k"] > d["m"]:
        raise _fail("data.k", f"must be <= data.m={d['m']}, got {d['k']}")
    if d["d_sae"] is not None:
        d["d_sae"] = _num("data.d_sae", d["d_sae"], kind=int, low=1)
    d["lo"] = _num("data.lo", d["lo"], low=0.0, low_open=True)
    d["hi"] = _num("data.hi", d["hi"], low=d["lo"])
    if not isinstance(d["nonneg"], bool):
        raise _fail("data.nonneg", f"must be true or false, got {d['nonneg']!r}")
    d["noise_std"] = _num("data.noise_std", d["noise_std"], low=0.0)
    d["rho"] = _list("data.rho", d["rho"], lambda w, v: _num(w, v, low=0.0, high=1.0,
                                                             high_open=True))
    for key in ("steps", "batch_size", "dead_window", "dead_last"):
        tr[key] = _num(f"train.{key}", tr[key], kind=int, low=1)
    tr["checkpoint_every"] = _num("train.checkpoint_every", tr["checkpoint_every"], kind=int,
                                  low=0)
    tr["lr"] = _num("train.lr", tr["lr"], low=0.0, low_open=True)
    for key in ("progress", "stack"):
        if not isinstance(tr[key], bool):
            raise _fail(f"train.{key}", f"must be true or false, got {tr[key]!r}")
    if tr["graph"] not in ("auto", "off"):
        raise _fail("train.graph", f"must be \"auto\" or \"off\", got {tr['graph']!r}")
    for key in ("samples", "encoder_samples", "hoffman_samples"):
        ev[key] = _num(f"eval.{key}", ev[key], kind=int, low=2)
    ev["tol"] = _num("eval.tol", ev["tol"], low=0.0, low_open=True)
    c["steps"] = _num("calibrate.steps", c["steps"], kind=int, low=1)
    c["ladder"] = _num("calibrate.ladder", c["ladder"], kind=int, low=2)
    c["rounds"] = _num("calibrate.rounds", c["rounds"], kind=int, low=1)
    c["tolerance"] = _num("calibrate.tolerance", c["tolerance"], low=1.0, low_open=True)
    r["ladder"] = _num("reference.ladder", r["ladder"], kind=int, low=2)
    r["fraction_min"] = _num("reference.fraction_min", r["fraction_min"], low=0.0,
                             low_open=True, high=1.0)
    r["fraction_max"] = _num("reference.fraction_max", r["fraction_max"],
                             low=r["fraction_min"], high=1.0, low_open=True)
    r["l2"] = _num("reference.l2", r["l2"], low=0.0, low_open=True)
    if not isinstance(s["run"], bool) or not isinstance(s["quick"], bool):
        raise _fail("speed", f"run and quick must be true or false, got {s['run']!r}, "
                             f"{s['quick']!r}")
    s["signals"] = _num("speed.signals", s["signals"], kind=int, low=1)
    s["rho"] = _list("speed.rho", s["rho"], lambda w, v: _num(w, v, low=0.0, high=1.0,
                                                              high_open=True))
    if s["json"] is not None and not isinstance(s["json"], str):
        raise _fail("speed.json", f"must be a path string, got {s['json']!r}")
    return t


def _validate_family(i: int, raw: Any, d_sae: int) -> Family:
    from aensae.saes import ARCHITECTURES

    where = f"[[family]] #{i + 1}"
    _check_keys(where, raw, _FAMILY_KEYS)
    for key in ("name", "arch"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            raise _fail(f"{where}.{key}", f"is required and must be a non-empty string, got "
                                          f"{raw.get(key)!r}")
    name, arch = raw["name"], raw["arch"]
    check_name(f"config {where}.name", name)
    where = f"family {name!r}"
    if arch not in ARCHITECTURES:
        raise _fail(f"{where}.arch", f"unknown architecture {arch!r}; valid architectures: "
                                     f"{', '.join(ARCHITECTURES)}")
    hyper, sweep = raw.get("hyper", {}), raw.get("sweep", {})
    cls = ARCHITECTURES[arch]
    _check_keys(f"{where}.hyper", hyper, cls.HYPER)
    _check_keys(f"{where}.sweep", sweep, cls.HYPER)
    both = sorted(set(hyper) & set(sweep))
    if both:
        raise _fail(where, f"{', '.join(both)} given in both hyper and sweep")
    sweep = {k: _list(f"{where}.sweep.{k}", v,
                      _choice if cls.HYPER[k].kind == "choice" else _scalar)
             for k, v in sweep.items()}
    param = SPARSITY_PARAM[arch]
    target = raw.get("target_l0")
    targets: tuple[float, ...] = ()
    crange = None
    if target is not None:
        targets = tuple(_list(f"{where}.target_l0", target,
                              lambda w, v: _num(w, v, low=0.0, low_open=True, high=d_sae)))
        if param in hyper or param in sweep:
            raise _fail(where, f"target_l0 calibrates {param}; do not also set {param}")
        if arch not in DIRECT_K:
            if "calibrate_range" not in raw:
                raise _fail(where, f"target_l0 needs calibrate_range = [low, high] for {param}")
            crange = tuple(_list(f"{where}.calibrate_range", raw["calibrate_range"],
                                 lambda w, v: _num(w, v, low=0.0, low_open=True)))
            if len(crange) != 2 or crange[0] >= crange[1]:
                raise _fail(f"{where}.calibrate_range", f"must be [low, high] with low < high, "
                                                        f"got {raw['calibrate_range']!r}")
    elif "calibrate_range" in raw:
        raise _fail(where, "calibrate_range is only used with target_l0")
    fam = Family(name, arch, dict(hyper), sweep, targets, crange)  # type: ignore[arg-type]
    probe = {param: 1 if param == "k_top" else 1e-3} if targets else {}
    for h in fam.variants():
        try:
            cls.validate_hyper({**h, **probe})
        except (TypeError, ValueError) as err:  # the architecture's own checks
            raise _fail(where, str(err)) from None
        for key in ("k_top", "aux_k"):  # checked by the model only when it is built
            if h.get(key, 0) > d_sae:
                raise _fail(f"{where}.{key}", f"must be <= the latents d_sae={d_sae}, got "
                                              f"{h[key]}")
    return fam


def read_config(config: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The raw TOML tables of a config (a name, a path or a dict) and where they came from.

    Nothing is validated but the reading itself (a missing file, non-UTF-8 text, invalid
    TOML: :class:`~aensae._validation.InputError`). ``aensae reproduce`` reads ``[data]
    kind`` from it to choose the pipeline (``spiked``: :func:`load_config`; ``llm``:
    :func:`aensae.benchmarks.llm_grid.load_llm_config`).
    """
    if isinstance(config, dict):
        raw, source = copy.deepcopy(config), "<dict>"
    else:
        path = resolve_config_path(config)
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"config {path}: not UTF-8 text ({err.reason} at byte "
                             f"{err.start}); TOML files are UTF-8") from None
        except OSError as err:
            raise InputError(f"config {path}: cannot be read ({err.strerror})") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise InputError(f"config {path}: invalid TOML: {err}") from None
        source = str(path)
    return raw, source


def config_kind(config: str | Path | dict[str, Any]) -> str:
    """``[data] kind`` of a config as written (``spiked`` when absent or not a string)."""
    raw, _ = read_config(config)
    data = raw.get("data")
    kind = data.get("kind", "spiked") if isinstance(data, dict) else "spiked"
    return kind if isinstance(kind, str) else "spiked"


def load_config(config: str | Path | dict[str, Any]) -> GridConfig:
    """Read and validate a config: a name (``quick``, ``paper``, ``tiny``), a path or a dict."""
    raw, source = read_config(config)
    _check_keys("(top level)", raw, {*DEFAULTS, "family", "executor"})
    if "data" not in raw:
        raise _fail("[data]", "the table is required (it states the experiment's data: n, m, "
                              "k, rho; omitted keys take their defaults); every other table "
                              "but [[family]] may be omitted")
    t = _validate_tables(raw)
    fams = raw.get("family")
    if not isinstance(fams, list) or not fams:
        raise _fail("[[family]]", "at least one [[family]] table is required")
    d_sae = int(t["data"]["d_sae"] or t["data"]["m"])
    families = [_validate_family(i, f, d_sae) for i, f in enumerate(fams)]
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise _fail("[[family]]", f"family names must be unique, got {names}")
    from aensae.benchmarks.executors import parse_executor_table

    executor = parse_executor_table(raw.get("executor", {}))
    return GridConfig(**t, families=families, source=source, raw=raw, executor=executor)
