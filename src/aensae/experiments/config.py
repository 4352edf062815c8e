r"""Config files of both grids: reading TOML once, hashing, and the checks they share.

A config is a named one shipped with the package (``quick``, ``claims``, ``paper``,
``tiny``, ``llm-quick`` ...: the files ``aensae/configs/<name>.toml``, found through
:mod:`importlib.resources`, so they work from a wheel as from a checkout) or a path to a
TOML file. :func:`read_config` parses it once into a :class:`ConfigText` (the raw tables
and where they came from); ``aensae reproduce`` reads ``[data] kind`` from it
(:func:`config_kind`) and hands the same object to the grid's own loader
(:func:`aensae.experiments.spiked.config.load_config` or
:func:`aensae.experiments.llm.config.load_llm_config`), which never parses it again.

Shared by both grids: the ``[[family]]`` table (:class:`Family`, :func:`validate_family`),
the sparsity parameter of each architecture (:data:`SPARSITY_PARAM`, :data:`DIRECT_K`)
and the checks of single values (:func:`check_keys`, :func:`check_number`, ...). Every
error is an :class:`~aensae._validation.InputError` naming the key as ``config <where>``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from aensae._validation import InputError, check_name

if TYPE_CHECKING:  # importlib.resources.abc is new in Python 3.11
    from importlib.resources.abc import Traversable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

__all__ = ["CONFIG_DIR", "DIRECT_K", "FAMILY_KEYS", "SPARSITY_PARAM", "ConfigText", "Family",
           "arch_defaults", "canonical_hash", "check_keys", "check_number", "choice_value",
           "config_error", "config_kind", "named_configs", "read_config", "resolve_config_path",
           "scalar_value", "validate_family", "value_list", "variant_id"]


class ConfigText(NamedTuple):
    """A config's raw TOML tables (nothing validated) and where they came from: the
    file's path, or ``"<dict>"``."""

    raw: dict[str, Any]
    source: str


#: Folder of the named configs: package data ``aensae/configs/`` (a ``Traversable``).
CONFIG_DIR: Traversable = importlib.resources.files("aensae") / "configs"


#: The hyperparameter that sets each architecture's sparsity.
SPARSITY_PARAM: dict[str, str] = {
    "relu_l1": "l1", "elastic_net": "l1", "adaptive_lasso": "l1", "aen": "l1",
    "jumprelu": "l0", "topk": "k_top", "batchtopk": "k_top",
}


#: Architectures whose sparsity parameter is set directly from the target L0.
DIRECT_K = ("topk", "batchtopk")


FAMILY_KEYS = {"name", "arch", "hyper", "sweep", "target_l0", "calibrate_range"}


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

    def run_targets(self, frontier: float, targets: Sequence[float] | None = None
                    ) -> tuple[float, ...]:
        """The L0 targets the runs are calibrated to, for the verdict targets ``targets``
        (default ``target_l0``): the targets themselves when ``frontier <= 1`` or the
        sparsity is set directly (TopK's ``k``); else, so that every target lies inside
        each seed's frontier with room to spare, the points ``t / frontier`` and
        ``t * frontier`` of every target ``t``, those within a factor ``sqrt(frontier)``
        of each other merged into their geometric mean (targets 2, 4, 8 with frontier
        sqrt 2 give 1.41, 2.83, 5.66, 11.3)."""
        targets = self.target_l0 if targets is None else tuple(targets)
        if frontier <= 1.0 or not self.calibrated:
            return targets
        pts = sorted({t / frontier for t in targets} | {t * frontier for t in targets})
        merged: list[list[float]] = []
        for v in pts:
            if merged and v / merged[-1][0] < math.sqrt(frontier):
                merged[-1].append(v)
            else:
                merged.append([v])
        return tuple(float(round(math.exp(sum(math.log(x) for x in g) / len(g)), 6))
                     for g in merged)

    def defaults(self) -> dict[str, Any]:
        """:func:`arch_defaults` of the family's architecture."""
        return arch_defaults(self.arch)

    def variants(self) -> list[dict[str, Any]]:
        """Fixed hyperparameters combined with every point of the sweep (sorted keys)."""
        names = sorted(self.sweep)
        out = []
        for values in itertools.product(*(self.sweep[k] for k in names)):
            out.append({**self.hyper, **dict(zip(names, values, strict=True))})
        return out


def arch_defaults(arch: str) -> dict[str, Any]:
    """The architecture's default hyperparameters (part of every run's identity, so that a
    change of a default changes the run ids and the config hash)."""
    from aensae.saes import ARCHITECTURES

    return {k: h.default for k, h in ARCHITECTURES[arch].HYPER.items()}


def variant_id(hyper: dict[str, Any]) -> str:
    """``v`` + the hash of a variant's hyperparameters (its sparsity parameter aside): the
    ``variant`` of its runs and the name of its calibration file."""
    return "v" + canonical_hash(hyper, 8)


def config_error(where: str, msg: str) -> InputError:
    return InputError(f"config {where}: {msg}")


def check_keys(where: str, table: Any, allowed: set[str] | dict) -> None:
    if not isinstance(table, dict):
        raise config_error(where, f"must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise config_error(where, f"unknown key(s) {', '.join(unknown)}; allowed keys: "
                           f"{', '.join(sorted(allowed))}")


def check_number(where: str, value: Any, *, kind: type = float, low: float | None = None,
         high: float | None = None, low_open: bool = False, high_open: bool = False) -> Any:
    ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise config_error(where, f"must be {'an integer' if kind is int else 'a number'}, got "
                           f"{value!r}")
    v = kind(value)
    if kind is float and not math.isfinite(v):
        raise config_error(where, f"must be finite, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise config_error(where, f"must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise config_error(where, f"must be {'<' if high_open else '<='} {high:g}, got {value!r}")
    return v


def scalar_value(where: str, value: Any) -> int | float:
    """A number, kept an ``int`` when written as one (integer hyperparameters)."""
    return check_number(where, value, kind=int if isinstance(value, int) else float)


def choice_value(where: str, value: Any) -> str:
    """A string value of a choice hyperparameter (``init``); checked against its choices
    with the family's other hyperparameters."""
    if not isinstance(value, str):
        raise config_error(where, f"must be a string, got {value!r}")
    return value


def value_list(where: str, value: Any, item: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise config_error(where, f"must be a non-empty list, got {value!r}")
    out = [item(f"{where}[{i}]", v) for i, v in enumerate(value)]
    if len(set(map(repr, out))) != len(out):
        raise config_error(where, f"must not repeat values, got {value!r}")
    return out


def validate_family(i: int, raw: Any, d_sae: int) -> Family:
    from aensae.saes import ARCHITECTURES

    where = f"[[family]] #{i + 1}"
    check_keys(where, raw, FAMILY_KEYS)
    for key in ("name", "arch"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            raise config_error(f"{where}.{key}", f"is required and must be a non-empty string, got "
                                          f"{raw.get(key)!r}")
    name, arch = raw["name"], raw["arch"]
    check_name(f"config {where}.name", name)
    where = f"family {name!r}"
    if arch not in ARCHITECTURES:
        raise config_error(f"{where}.arch", f"unknown architecture {arch!r}; valid architectures: "
                                     f"{', '.join(ARCHITECTURES)}")
    hyper, sweep = raw.get("hyper", {}), raw.get("sweep", {})
    cls = ARCHITECTURES[arch]
    check_keys(f"{where}.hyper", hyper, cls.HYPER)
    check_keys(f"{where}.sweep", sweep, cls.HYPER)
    both = sorted(set(hyper) & set(sweep))
    if both:
        raise config_error(where, f"{', '.join(both)} given in both hyper and sweep")
    sweep = {k: value_list(f"{where}.sweep.{k}", v,
                      choice_value if cls.HYPER[k].kind == "choice" else scalar_value)
             for k, v in sweep.items()}
    param = SPARSITY_PARAM[arch]
    target = raw.get("target_l0")
    targets: tuple[float, ...] = ()
    crange = None
    if target is not None:
        targets = tuple(value_list(f"{where}.target_l0", target,
                              lambda w, v: check_number(w, v, low=0.0, low_open=True, high=d_sae)))
        if param in hyper or param in sweep:
            raise config_error(where, f"target_l0 calibrates {param}; do not also set {param}")
        if arch not in DIRECT_K:
            if "calibrate_range" not in raw:
                raise config_error(where, "target_l0 needs calibrate_range = [low, high] for "
                                          f"{param}")
            crange = tuple(value_list(f"{where}.calibrate_range", raw["calibrate_range"],
                                 lambda w, v: check_number(w, v, low=0.0, low_open=True)))
            if len(crange) != 2 or crange[0] >= crange[1]:
                raise config_error(f"{where}.calibrate_range",
                                   f"must be [low, high] with low < high, got "
                                   f"{raw['calibrate_range']!r}")
    elif "calibrate_range" in raw:
        raise config_error(where, "calibrate_range is only used with target_l0")
    fam = Family(name, arch, dict(hyper), sweep, targets, crange)  # type: ignore[arg-type]
    probe = {param: 1 if param == "k_top" else 1e-3} if targets else {}
    for h in fam.variants():
        try:
            cls.validate_hyper({**h, **probe})
        except (TypeError, ValueError) as err:  # the architecture's own checks
            raise config_error(where, str(err)) from None
        for key in ("k_top", "aux_k"):  # checked by the model only when it is built
            if h.get(key, 0) > d_sae:
                raise config_error(f"{where}.{key}", f"must be <= the latents d_sae={d_sae}, got "
                                              f"{h[key]}")
    return fam


def read_config(config: str | Path | dict[str, Any] | ConfigText) -> ConfigText:
    """The raw TOML tables of a config (a name, a path, a dict or a :class:`ConfigText`
    already read) and where they came from; a copy, so loaders may change it.

    Nothing is validated but the reading itself (a missing file, non-UTF-8 text, invalid
    TOML: :class:`~aensae._validation.InputError`). A file is parsed here and only here.
    """
    if isinstance(config, ConfigText):
        return ConfigText(copy.deepcopy(config.raw), config.source)
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
    return ConfigText(raw, source)


def config_kind(config: str | Path | dict[str, Any] | ConfigText) -> str:
    """``[data] kind`` of a config as written (``spiked`` when absent or not a string)."""
    raw, _ = read_config(config)
    data = raw.get("data")
    kind = data.get("kind", "spiked") if isinstance(data, dict) else "spiked"
    return kind if isinstance(kind, str) else "spiked"
