r"""LLM grid configs: ``[data] kind = "llm"`` TOML files, their validation and defaults.

An LLM config is run by the same command as the synthetic grid, ``aensae reproduce
--config NAME``; the command reads ``[data] kind`` (:func:`aensae.experiments.config.config_kind`)
and hands ``kind = "llm"`` to :func:`aensae.experiments.llm.driver.reproduce_llm`. Named LLM
configs ship with the package (``llm-quick``, ``llm-pythia70m``, ``llm-llama3.1-8b``).

Tables (every key checked; unknown keys are errors listing the allowed ones):

- ``[experiment]``: ``name`` (a folder name), ``seed`` (the calibration seed: its passes
  search the penalties), ``seeds`` (the seeds every chosen SAE is trained on, ``seed``
  among them, at least 3: the fewest that decide a verdict cell; absent: ``seed`` alone;
  several need ``calibrate.frontier``: the verdicts interpolate each seed's runs to the
  target), ``device`` (SAEs and model;
  ``auto``: CUDA when present), ``dtype`` (SAEs: float32 / float64), ``threads`` (torch
  threads; 0: the library default), ``max_memory_gb`` (the memory the harvest and a
  training pass may need by their estimates, checked before any work; absent: what is
  available on this machine; not hashed);
- ``[data]``: ``kind = "llm"``, ``model`` (alias, ``.gguf``, folder or hub name),
  ``revision``, ``layer``, ``hook``, ``text`` (``python-docs``, ``hf:...``, a file or
  folder), ``text_column``, ``tokens`` (harvested for training), ``ctx``,
  ``batch_size`` (windows per forward pass of the harvest), ``model_dtype``,
  ``eval_fraction``, ``shard_windows``, ``shuffle_windows``, ``exclude_outliers``
  (``true`` by default: the outlier tokens, see ``eval.outlier_factor``, are left out of
  SAE training, the scalar normalisation constant is estimated without them, and the
  headline EV, MSE, L0 and dead fractions are measured without them while the spliced
  CE/KL passes them through unchanged; every metric is also reported the other way,
  under ``..._all_tokens`` / ``..._outliers_excluded``);
- ``[train]``: ``d_sae``, ``steps``, ``batch_size`` (tokens per step), ``lr``,
  ``lr_warmup_steps``, ``normalisation`` (``scalar``: one constant for the cache;
  ``per_token``: each token scaled to norm ``sqrt(d_in)``, the reference
  implementation's; ``none``), ``dead_window`` (tokens per dead-latent window, between
  one batch and the whole run; absent: a tenth of the run, rounded up to whole batches),
  ``checkpoint_every``;
- ``[eval]``: ``tokens`` (held-out eval tokens: spliced CE/KL, EV, L0, and the
  calibration's L0), ``batch_size`` (windows per forward pass), ``exact_tokens``
  (exact certified codes per l1-family SAE), ``exact_tol``, ``group_size`` (SAEs spliced
  in one evaluation: the clean and ablated passes are shared by a group; a group is the
  unit of resume), ``outlier_factor`` (> 1, default 10, dictionary_learning's
  convention: a token whose activation norm exceeds this multiple of the training
  cache's median token norm is an outlier), ``rare_rate`` (a latent whose firing rate on
  the measured eval tokens is below it counts in ``rare_fraction``; default 1e-5, the
  paper's dead criterion);
- ``[calibrate]``: ``ladder``, ``rounds``, ``tolerance`` (as the synthetic grid's;
  every pass is a full-length run, so a calibration model within the tolerance of its
  target is the run of that target), ``max_passes`` (training passes the search may
  take, the ladder's included; targets still unbracketed then are unreachable),
  ``frontier`` (> 1; absent: the runs are calibrated to ``target_l0`` itself): the runs
  are calibrated to ``t / frontier`` and ``t * frontier`` of every target ``t``
  (:meth:`~aensae.experiments.config.Family.run_targets`), so that each seed's two runs
  bracket ``t`` and the report's verdicts read every metric at ``t`` itself;
- ``[[family]]``: as in the synthetic grid (:mod:`aensae.experiments.spiked.config`): ``name``,
  ``arch``, ``hyper``, ``sweep``, ``target_l0`` and, for calibrated architectures,
  ``calibrate_range``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aensae._dtypes import MODEL_DTYPES, SAE_DTYPES
from aensae._validation import InputError, check_name, check_threads
from aensae.experiments.config import (
    ConfigText,
    Family,
    canonical_hash,
    check_keys,
    check_number,
    config_error,
    read_config,
    validate_family,
)
from aensae.experiments.verdicts import MIN_SEEDS

__all__ = ["DEAD_WINDOWS", "LLM_DEFAULTS", "LLMGridConfig", "load_llm_config"]

LLM_DEFAULTS: dict[str, dict[str, Any]] = {
    "experiment": {"name": "llm", "seed": 0, "seeds": None, "device": "auto",
                   "dtype": "float32",
                   "threads": 0, "max_memory_gb": None},
    "data": {"kind": "llm", "model": "smollm2-135m", "revision": None, "layer": 15,
             "hook": "resid_post", "text": "python-docs", "text_column": "text",
             "tokens": 200_000, "ctx": 128, "batch_size": 32, "model_dtype": "float32",
             "eval_fraction": 0.05, "shard_windows": 256, "shuffle_windows": 1024,
             "exclude_outliers": True},
    "train": {"d_sae": 4096, "steps": 1000, "batch_size": 4096, "lr": 1e-3,
              "lr_warmup_steps": 0, "normalisation": "scalar", "dead_window": None,
              "checkpoint_every": 200},
    "eval": {"tokens": 8192, "batch_size": 8, "exact_tokens": 4096, "exact_tol": 1e-10,
             "group_size": 8, "outlier_factor": 10.0, "rare_rate": 1e-5},
    "calibrate": {"ladder": 3, "rounds": 1, "tolerance": 1.3, "max_passes": 8,
                  "frontier": None},
}
#: Dead-latent windows of a run whose ``train.dead_window`` is not set.
DEAD_WINDOWS = 10
_HOOKS = ("resid_post", "mlp_out", "attn_out")
_NORMALISATIONS = ("scalar", "per_token", "none")


@dataclass
class LLMGridConfig:
    """A validated LLM config (defaults filled)."""

    experiment: dict[str, Any]
    data: dict[str, Any]
    train: dict[str, Any]
    eval: dict[str, Any]
    calibrate: dict[str, Any]
    families: list[Family]
    source: str = "<dict>"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return str(self.experiment["name"])

    @property
    def seeds(self) -> list[int]:
        """The seeds every chosen SAE is trained on (``experiment.seeds``, or the
        calibration seed alone)."""
        if self.experiment["seeds"] is None:
            return [int(self.experiment["seed"])]
        return [int(s) for s in self.experiment["seeds"]]

    @property
    def frontier(self) -> float:
        """``calibrate.frontier`` (1.0 when absent: runs calibrated to the targets)."""
        f = self.calibrate["frontier"]
        return 1.0 if f is None else float(f)

    @property
    def d_sae(self) -> int:
        return int(self.train["d_sae"])

    @property
    def dead_window(self) -> int:
        """Tokens per dead-latent window: ``train.dead_window``, or a tenth of the run
        (:data:`DEAD_WINDOWS`) rounded up to whole batches."""
        tr = self.train
        if tr["dead_window"] is not None:
            return int(tr["dead_window"])
        return int(tr["batch_size"]) * -(-int(tr["steps"]) // DEAD_WINDOWS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready normalised config."""
        return {"experiment": self.experiment, "data": self.data, "train": self.train,
                "eval": self.eval, "calibrate": self.calibrate,
                "family": [{"name": f.name, "arch": f.arch, "hyper": f.hyper,
                            "sweep": f.sweep, "target_l0": list(f.target_l0),
                            "calibrate_range": (None if f.calibrate_range is None
                                                else list(f.calibrate_range))}
                           for f in self.families]}

    def config_hash(self) -> str:
        """Hash of the normalised config (``threads``, ``max_memory_gb`` and
        ``checkpoint_every`` excluded: they change no number; ``experiment.seeds`` and
        ``calibrate.frontier`` left out when absent, so a config without them keeps the
        hash it had before they existed)."""
        d = json.loads(json.dumps(self.to_dict()))
        for table, key in (("experiment", "seeds"), ("calibrate", "frontier")):
            if d[table].get(key) is None:
                d[table].pop(key, None)
        d["experiment"].pop("threads", None)
        d["experiment"].pop("max_memory_gb", None)
        d["train"].pop("checkpoint_every", None)
        return canonical_hash(d)


def _string(where: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise config_error(where, f"must be a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise config_error(where, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _validate(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    t: dict[str, dict[str, Any]] = {}
    for name, defaults in LLM_DEFAULTS.items():
        table = raw.get(name, {})
        check_keys(f"[{name}]", table, defaults)
        t[name] = {**copy.deepcopy(defaults), **table}
    e, d, tr, ev, c = (t[k] for k in LLM_DEFAULTS)
    check_name("config experiment.name", e["name"])
    e["seed"] = check_number("experiment.seed", e["seed"], kind=int, low=0)
    if e["seeds"] is not None:
        seeds = e["seeds"]
        if not isinstance(seeds, list) or not seeds:
            raise config_error("experiment.seeds", f"must be a non-empty list of seeds, got "
                               f"{seeds!r}")
        e["seeds"] = [check_number(f"experiment.seeds[{i}]", v, kind=int, low=0)
                      for i, v in enumerate(seeds)]
        if len(set(e["seeds"])) != len(e["seeds"]):
            raise config_error("experiment.seeds", f"must not repeat a seed, got {seeds!r}")
        if e["seed"] not in e["seeds"]:
            raise config_error("experiment.seeds", f"must include the calibration seed "
                               f"experiment.seed = {e['seed']}, got {seeds!r}")
        if len(e["seeds"]) < MIN_SEEDS:
            raise config_error("experiment.seeds", f"must list at least {MIN_SEEDS} seeds, "
                               f"the fewest that decide a verdict cell, got {seeds!r} (leave "
                               "it out for a run of experiment.seed alone)")
    _string("experiment.device", e["device"])
    _string("experiment.dtype", e["dtype"], SAE_DTYPES)
    e["threads"] = check_threads("config experiment.threads", e["threads"])
    if e["max_memory_gb"] is not None:
        e["max_memory_gb"] = check_number("experiment.max_memory_gb", e["max_memory_gb"],
                                          low=0.0, low_open=True)
    _string("data.kind", d["kind"], ("llm",))
    _string("data.model", d["model"])
    if d["revision"] is not None:
        _string("data.revision", d["revision"])
    d["layer"] = check_number("data.layer", d["layer"], kind=int, low=0)
    _string("data.hook", d["hook"], _HOOKS)
    _string("data.text", d["text"])
    _string("data.text_column", d["text_column"])
    _string("data.model_dtype", d["model_dtype"], MODEL_DTYPES)
    d["tokens"] = check_number("data.tokens", d["tokens"], kind=int, low=1)
    d["ctx"] = check_number("data.ctx", d["ctx"], kind=int, low=2)
    for key in ("batch_size", "shard_windows", "shuffle_windows"):
        d[key] = check_number(f"data.{key}", d[key], kind=int, low=1)
    d["eval_fraction"] = check_number("data.eval_fraction", d["eval_fraction"], low=0.0, high=1.0,
                              low_open=True, high_open=True)
    for key in ("d_sae", "steps", "batch_size"):
        tr[key] = check_number(f"train.{key}", tr[key], kind=int, low=1)
    tr["lr"] = check_number("train.lr", tr["lr"], low=0.0, low_open=True)
    tr["lr_warmup_steps"] = check_number("train.lr_warmup_steps", tr["lr_warmup_steps"], kind=int,
                                 low=0)
    _string("train.normalisation", tr["normalisation"], _NORMALISATIONS)
    if tr["dead_window"] is not None:
        run = tr["steps"] * tr["batch_size"]
        tr["dead_window"] = check_number("train.dead_window", tr["dead_window"], kind=int, low=1)
        if not tr["batch_size"] <= tr["dead_window"] <= run:
            raise config_error("train.dead_window", f"must lie between one batch "
                               f"(train.batch_size {tr['batch_size']} tokens) and the whole "
                               f"run (train.steps x train.batch_size = {run} tokens), got "
                               f"{tr['dead_window']!r}")
    tr["checkpoint_every"] = check_number("train.checkpoint_every", tr["checkpoint_every"],
                                  kind=int, low=0)
    ev["tokens"] = check_number("eval.tokens", ev["tokens"], kind=int, low=2)
    ev["batch_size"] = check_number("eval.batch_size", ev["batch_size"], kind=int, low=1)
    ev["exact_tokens"] = check_number("eval.exact_tokens", ev["exact_tokens"], kind=int, low=0,
                              high=ev["tokens"])
    ev["exact_tol"] = check_number("eval.exact_tol", ev["exact_tol"], low=0.0, low_open=True)
    ev["group_size"] = check_number("eval.group_size", ev["group_size"], kind=int, low=1)
    ev["outlier_factor"] = check_number("eval.outlier_factor", ev["outlier_factor"], low=1.0,
                                low_open=True)
    ev["rare_rate"] = check_number("eval.rare_rate", ev["rare_rate"], low=0.0, high=1.0,
                                   low_open=True, high_open=True)
    if not isinstance(d["exclude_outliers"], bool):
        raise config_error("data.exclude_outliers", f"must be true or false, got "
                           f"{d['exclude_outliers']!r}")
    c["ladder"] = check_number("calibrate.ladder", c["ladder"], kind=int, low=2)
    c["rounds"] = check_number("calibrate.rounds", c["rounds"], kind=int, low=1)
    c["tolerance"] = check_number("calibrate.tolerance", c["tolerance"], low=1.0, low_open=True)
    c["max_passes"] = check_number("calibrate.max_passes", c["max_passes"], kind=int, low=1)
    if c["frontier"] is not None:
        c["frontier"] = check_number("calibrate.frontier", c["frontier"], low=1.0,
                                     low_open=True)
    if e["seeds"] is not None and len(e["seeds"]) > 1 and c["frontier"] is None:
        raise config_error("calibrate.frontier", "must be set (> 1) when experiment.seeds "
                           f"lists several seeds ({e['seeds']}): the verdicts interpolate "
                           "each seed's runs to the target")
    return t


def load_llm_config(config: str | Path | dict[str, Any] | ConfigText) -> LLMGridConfig:
    """Read and validate an LLM config: a name (``llm-quick``), a TOML path or a dict.

    Every family needs ``target_l0`` (the LLM grid compares architectures at matched
    sparsity only). Errors are :class:`~aensae._validation.InputError` naming the key.
    """
    raw, source = read_config(config)
    check_keys("(top level)", raw, {*LLM_DEFAULTS, "family"})
    if not isinstance(raw.get("data"), dict) or raw["data"].get("kind") != "llm":
        raise config_error("data.kind", "an LLM config needs [data] kind = \"llm\"")
    t = _validate(raw)
    fams = raw.get("family")
    if not isinstance(fams, list) or not fams:
        raise config_error("[[family]]", "at least one [[family]] table is required")
    families = [validate_family(i, f, t["train"]["d_sae"]) for i, f in enumerate(fams)]
    for fam in families:
        if not fam.target_l0:
            raise config_error(f"family {fam.name!r}", "target_l0 is required in an LLM config "
                                                "(architectures are compared at matched L0)")
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise config_error("[[family]]", f"family names must be unique, got {names}")
    return LLMGridConfig(**t, families=families, source=source, raw=raw)


def check_model_reachable(cfg: LLMGridConfig) -> Any:
    """Resolve ``data.model`` and read its config (no weights), before any work; return
    that config (a transformers ``PretrainedConfig``).

    A hub model that cannot be fetched here (no local copy, no hub) is one
    :class:`InputError` naming the model; so is an unknown architecture or a layer out
    of range.
    """
    name = cfg.data["model"]
    check_hub_model(name, cfg.data["revision"])
    from aensae.llm.models import family_of, load_config, resolve_model

    hub = source_is_hub(name)
    try:
        mconfig = load_config(resolve_model(name, cfg.data["revision"]))
    except InputError as err:
        if hub:
            reason = str(err).partition("cannot provide it: ")[2] or str(err)
            raise InputError(f"config data.model {name!r}: the model cannot be fetched here "
                             f"(no local copy and no access to the Hugging Face hub: "
                             f"{_short(reason)}); run this config on a machine with hub "
                             "access") from None
        raise InputError(f"config data.model {name!r}: {_short(str(err))}") from None
    family_of(mconfig.model_type, name)
    n_layers = int(getattr(mconfig, "num_hidden_layers", 0) or 0)
    if n_layers and cfg.data["layer"] >= n_layers:
        raise InputError(f"config data.layer: must lie in [0, {n_layers - 1}] for {name} "
                         f"({n_layers} blocks), got {cfg.data['layer']}")
    return mconfig


def check_hub_model(name: Any, revision: Any = None) -> None:
    """For a model name of the form ``org/name`` that is no local path: an
    :class:`InputError` naming it when the hub cannot be reached and no copy is cached.
    Imports neither torch nor transformers, so it answers within a second (``aensae
    reproduce`` calls it on the raw config, before the validation imports torch)."""
    if not isinstance(name, str) or not (revision is None or isinstance(revision, str)):
        return  # the validation names the key
    path = Path(name).expanduser()
    if ("/" not in name or path.exists() or name.lower().endswith(".gguf")
            or name.startswith((".", "/", "~"))):
        return
    reason = _hub_unreachable(name, revision)
    if reason is not None:
        raise InputError(f"config data.model {name!r}: the model cannot be fetched here "
                         f"(no local copy and no access to the Hugging Face hub: "
                         f"{reason}); run this config on a machine with hub access")


def _hub_unreachable(name: str, revision: str | None, timeout: float = 3.0) -> str | None:
    """Why the hub cannot give ``name``'s config here, or ``None`` (it can, or a copy is
    cached). One TCP connection with a short timeout: without it, huggingface_hub retries
    for half a minute, printing a line per retry, before it gives up."""
    import socket
    import urllib.parse
    import urllib.request

    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(cached, str):
        return None
    if constants.HF_HUB_OFFLINE:
        return "offline mode (HF_HUB_OFFLINE is set) and no cached copy"
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if urllib.request.getproxies().get("https") and not urllib.request.proxy_bypass(host):
        return None  # through a proxy a direct connection says nothing: let the hub try
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as err:
        return f"{host} unreachable: {err.strerror or err}"


def source_is_hub(name: str) -> bool:
    """Whether ``name`` would be looked up on the hub (not an alias, file or folder)."""
    from aensae.llm.models import resolve_model

    try:
        return resolve_model(name).kind == "hub"
    except InputError:
        return False


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
