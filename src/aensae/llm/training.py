r"""SAEs trained on an activation cache (``aensae llm train``).

The trainer and the architectures are those of the synthetic grid, unchanged
(:func:`aensae.saes.training.trainer.train`); the data are the cache's batches from
:class:`~aensae.llm.store.ActivationStore`, normalised with the cache's own constant
(:mod:`aensae.llm.normalise`). Several SAEs are trained together on the same batches in
one pass (each with its own Adam moments, so each gets the weights it would get alone).

Dead latents: a latent is dead in a window of :math:`W` tokens when it fired on none of
them; the window is counted in tokens, ``W = min(10^7, steps * batch_size)`` by default
(the whole run when it is shorter than 10M tokens), and recorded with the result. Each
SAE's ``metrics.json`` holds the tracker's summary (:class:`aensae.saes.dead.DeadTracker`):
the dead fraction of every window and, for adaptive SAEs, the weight regime at the end of
each window; :func:`window_columns` turns it into the columns of a results table.

Outlier tokens (``outlier_factor``, off by default): tokens of the cache whose activation
norm exceeds that multiple of the cache's median token norm are left out of every batch
(:meth:`aensae.llm.store.ActivationStore.outliers`), and the scalar normalisation
constant is estimated on the tokens kept. The SAE's ``cfg.json`` records the constant it
was trained with and, under ``llm.outliers``, the factor, the median norm, the threshold
and the tokens excluded, so that a spliced evaluation passes the same tokens through.

Output folder ``OUT``::

    OUT/run.json               the run: config, cache identity, one entry per SAE
    OUT/<name>/sae.safetensors
    OUT/<name>/cfg.json        the SAE's config plus "llm": model, hook, layer, d_in,
                               normalisation (kind and constant), cache path and token count
    OUT/<name>/metrics.json    dead-latent windows, training losses, seconds

written as one set when training ends (:func:`aensae._io.replace_together`). While it
runs, ``OUT/checkpoint.pt`` and ``OUT/checkpoint_config.json`` let a killed run resume
exactly (the batches are a pure function of the seed and the batch index).

Before any work: the cache's manifest and every shard's SHA-256 are checked
(:class:`~aensae.llm.store.ActivationStore`), a batch larger than the cache is refused
(it would repeat tokens within a batch), and the memory the run needs is estimated
(:func:`train_memory`) and refused above ``max_memory`` GiB or the memory available.
Then ``OUT``'s lock (``OUT/.aensae.lock``, :func:`aensae._io.folder_lock`) is taken: a
second process training into the same folder is refused with one line naming the holder.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the SAEs are trained data-parallel
(:mod:`aensae.saes.training.distributed`): rank ``r`` of ``W`` reads rows ``[r B/W, (r+1) B/W)``
of every batch of the store, and rank 0 alone writes the folder.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aensae._dtypes import torch_dtype
from aensae._io import atomic_write_json, check_resumable, replace_together
from aensae._validation import InputError, check_memory
from aensae.llm.cache import owned_folder
from aensae.llm.normalise import check_outlier_factor
from aensae.llm.store import ActivationStore

if TYPE_CHECKING:
    from aensae.saes.training.distributed import World

__all__ = ["DEAD_WINDOW_TOKENS", "LLM_KEY", "SAESpec", "TrainRun", "hold_ramp_steps",
           "sae_name", "train_memory", "train_on_cache", "window_columns"]

#: Default dead-latent window, in tokens (shortened to the run when the run is shorter).
DEAD_WINDOW_TOKENS = 10_000_000
#: Key of the LLM provenance in an SAE's ``cfg.json``.
LLM_KEY = "llm"
RUN_FILE = "run.json"
CHECKPOINT_CONFIG = "checkpoint_config.json"


@dataclass(frozen=True)
class SAESpec:
    """One SAE of a run: architecture, validated hyperparameters, folder name."""

    arch: str
    hyper: dict[str, float | int]
    name: str


def sae_name(arch: str, swept: dict[str, float | int]) -> str:
    """Folder name of an SAE: the architecture, then ``-NAME=VALUE`` per swept value."""
    return arch + "".join(f"-{k}={v:g}" if isinstance(v, float) else f"-{k}={v}"
                          for k, v in swept.items())


@dataclass
class TrainRun:
    """Everything ``aensae llm train`` needs, validated by the command line."""

    cache: Path
    specs: list[SAESpec]
    d_sae: int
    steps: int
    batch_size: int
    out: Path
    lr: float = 1e-3
    lr_warmup_steps: int = 0
    grad_clip: float | None = None
    dead_window: int | None = None
    normalisation: str = "scalar"
    seed: int = 0
    checkpoint_every: int = 500
    device: str = "auto"
    dtype: str = "float32"
    progress: bool = True
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: Refuse a run whose estimated memory (:func:`train_memory`) exceeds this many GiB
    #: (``None``: the memory available on this machine).
    max_memory: float | None = None
    #: How errors name the settings the user gave: ``--batch-size``, ``--d-sae``,
    #: ``--max-memory``, ``--cache``, ``--out``, ``--outlier-factor`` (a grid names its
    #: config keys).
    names: dict[str, str] = field(default_factory=dict)
    #: Leave out of training the cache's tokens of norm above this multiple of its median
    #: token norm (``None``: keep every token); the scalar constant is then estimated
    #: without them.
    outlier_factor: float | None = None

    def name(self, option: str) -> str:
        """The user's name of command-line ``option`` for this run."""
        return self.names.get(option, option)

    def window(self) -> int:
        """The dead-latent window in tokens."""
        if self.dead_window is not None:
            return self.dead_window
        return min(DEAD_WINDOW_TOKENS, self.steps * self.batch_size)


def hold_ramp_steps(hyper: dict[str, Any], steps: int) -> int | None:
    """Optimizer steps until an adaptive SAE's weights reach full strength: its hold,
    ``warmup_steps + floor(warmup_frac * steps)`` (``warmup_frac`` 0 where the
    architecture has none), plus ``ramp_steps``; ``None`` for an architecture without a
    hold and ramp (no ``ramp_steps`` hyperparameter)."""
    if "ramp_steps" not in hyper:
        return None
    hold = int(hyper.get("warmup_steps", 0)) + math.floor(
        float(hyper.get("warmup_frac", 0.0)) * steps)
    return hold + int(hyper["ramp_steps"])


def _joined(values: list[Any]) -> str:
    """Numbers joined by ``;`` (one results-table cell): integers as they are, others
    with 6 significant digits; a missing value is left empty."""
    return ";".join("" if v is None else str(v) if isinstance(v, int) else format(v, ".6g")
                    for v in values)


def window_columns(dead: dict[str, Any], batch_size: int, hold_ramp: int | None
                   ) -> dict[str, Any]:
    """Results-table columns of the dead-latent windows of one SAE, from the tracker's
    summary ``dead`` (an SAE's ``metrics.json`` ``"dead"``; see
    :meth:`aensae.saes.dead.DeadTracker.summary`):

    - ``dead_windows`` (closed windows), ``dead_final`` (the last one's dead fraction),
      ``dead_median_last`` (median of the last ``last`` windows), ``dead_trend`` (the
      last window's fraction minus that of the window ``last - 1`` windows before it);
    - ``hold_ramp_tokens``: tokens seen before the weights of an adaptive SAE reach full
      strength (``hold_ramp`` steps of ``batch_size``; empty for other architectures);
    - ``dead_post_ramp_windows``: windows that start at or after that point (every window
      for other architectures), ``dead_post_ramp_median_last`` and
      ``dead_post_ramp_trend``: the median and the trend over the last ``last`` of them;
    - the time course: ``dead_fractions`` (every window's dead fraction) and
      ``dead_window_ends`` (tokens seen at each window's end), ``;``-joined;
    - for each key of the per-window ``regime`` records but ``samples_seen``, ``dead``
      and ``step`` (adaptive SAEs: ``w_max_frac``, ``w_min_frac``, ``w_qXX``,
      ``ema_qXX``, ``alpha``): ``regime_<key>_final`` (the last window) and
      ``regime_<key>_windows`` (every window, ``;``-joined).
    """
    fractions = [float(f) for f in dead.get("fractions") or []]
    per = [int(n) for n in dead.get("samples_per_window") or []]
    ends = [sum(per[:i + 1]) for i in range(len(per))]
    last = int(dead.get("last") or 5)
    cut = 0 if hold_ramp is None else int(hold_ramp) * int(batch_size)
    post = [f for f, end, n in zip(fractions, ends, per, strict=False) if end - n >= cut]
    tail, post_tail = fractions[-last:], post[-last:]
    trend = dead.get("trend", tail[-1] - tail[0] if tail else None)
    out: dict[str, Any] = {
        "dead_windows": len(fractions),
        "dead_final": fractions[-1] if fractions else None,
        "dead_median_last": dead.get("median_last"),
        "dead_trend": trend,
        "hold_ramp_tokens": None if hold_ramp is None else cut,
        "dead_post_ramp_windows": len(post),
        "dead_post_ramp_median_last": statistics.median(post_tail) if post_tail else None,
        "dead_post_ramp_trend": post_tail[-1] - post_tail[0] if post_tail else None,
        "dead_fractions": _joined(fractions),
        "dead_window_ends": _joined(ends),
    }
    regime = [r for r in dead.get("regime") or [] if isinstance(r, dict)]
    keys = sorted({k for r in regime for k, v in r.items()
                   if k not in ("samples_seen", "dead", "step")
                   and isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in keys:
        values = [r.get(key) for r in regime]
        out[f"regime_{key}_final"] = values[-1]
        out[f"regime_{key}_windows"] = _joined(values)
    return out


def _provenance(store: ActivationStore, normalisation: str,
                outliers: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``llm`` record of an SAE's ``cfg.json``: the hook point, the normalisation it
    was trained with (the constant of the kept tokens when outliers are left out) and the
    cache; ``outliers`` (only when tokens were left out): :meth:`ActivationStore.outliers`."""
    man = store.manifest
    constant = None
    if normalisation == "scalar":
        constant = (store.scalar_constant if outliers is None
                    else outliers["scalar_constant"])
    prov = {"model": man["model"], "hook": man["hook"], "layer": man["layer"],
            "d_in": store.d_in, "normalisation": {"kind": normalisation, "constant": constant},
            "cache": {"path": str(store.path.resolve()), "tokens": store.n_tokens,
                      "split": man.get("split"), "text": man.get("text", {}).get("spec"),
                      "special_tokens": man.get("special_tokens"), "ctx": man.get("ctx")}}
    if outliers is not None:
        prov["outliers"] = dict(outliers)
    return prov


def train_memory(store: ActivationStore, n_saes: int, d_sae: int, batch_size: int,
                 dtype: str = "float32", buffer_tokens: int = 2**17
                 ) -> list[tuple[str, str, int]]:
    """An estimate of the memory ``aensae llm train`` holds at once, as ``(what, option,
    bytes)`` parts (``option``: the one that sets that part's size):

    - per SAE, its parameters (``W_enc``, ``W_dec``: ``2 d_in d_sae``, the biases and
      per-latent buffers) four times: the weights, their gradients and Adam's two moments;
    - one step's activations: pre-activations, codes and their gradients for the batch
      (``6 batch_size d_sae`` values, one SAE at a time) and the batch itself;
    - the store's shuffle buffer: ``buffer_tokens`` rows rounded up to whole shards, held
      twice while the shards are joined, and its permutation.
    """
    e = torch_dtype(dtype).itemsize
    d = store.d_in
    params = 2 * d * d_sae + 4 * d_sae + d
    cache_e = {"float32": 4, "float16": 2, "bfloat16": 2}.get(
        str(store.manifest.get("dtype")), 4)
    rows = store._buffer_shards(buffer_tokens) * int(store.sizes.max())
    rows = min(rows, store.n_tokens)
    return [(f"{n_saes} SAE(s) with gradients and Adam moments", "--d-sae",
             n_saes * 4 * params * e),
            ("one step's activations", "--batch-size",
             (6 * batch_size * d_sae + 3 * batch_size * d) * e),
            ("the shuffle buffer of the cache", "--cache", rows * (2 * d * cache_e + 8))]


def _check_train_memory(run: TrainRun, store: ActivationStore) -> None:
    parts = train_memory(store, len(run.specs), run.d_sae, run.batch_size, run.dtype)
    need = sum(b for _, _, b in parts)
    what, option, _ = max(parts, key=lambda p: p[2])
    d_sae = f"{run.name('--d-sae')} {run.d_sae}"
    batch = f"{run.name('--batch-size')} {run.batch_size}"
    where = {"--d-sae": d_sae, "--batch-size": f"{batch} (with {d_sae})",
             "--cache": f"{run.name('--cache')} {store.path}"}[option]
    check_memory(where, need,
                 f"training (mostly {what}, at d_in {store.d_in}, {run.name('--d-sae')} "
                 f"{run.d_sae}, {run.name('--batch-size')} {run.batch_size})",
                 limit_gib=run.max_memory, override=run.name("--max-memory"))


def train_on_cache(run: TrainRun) -> dict[str, Any]:
    """Train ``run.specs`` together on the cache's batches; write ``run.out``; return run.json.

    A finished run with the same configuration is returned as it is (``overwrite`` redoes
    it); a checkpoint of the same configuration is resumed. Under ``torchrun`` every rank
    calls it (see the module docstring).
    """
    from aensae.saes.training.distributed import from_env

    with from_env(run.device) as world:
        return _train_on_cache(run, world)


def _train_on_cache(run: TrainRun, world: World | None) -> dict[str, Any]:
    """:func:`train_on_cache` on one process (``world=None``) or on one rank."""
    from aensae.saes import TrainConfig

    store = ActivationStore(run.cache, verify=False, where=run.name("--cache"))
    if run.outlier_factor is not None:
        check_outlier_factor(run.name("--outlier-factor"), run.outlier_factor)
    for spec in run.specs:
        for key in ("k_top", "aux_k"):
            if spec.hyper.get(key, 0) > run.d_sae:
                raise InputError(f"--arch {spec.arch}: {key} must be <= --d-sae {run.d_sae}, "
                                 f"got {spec.hyper[key]}")
    if run.batch_size > store.n_tokens:
        raise InputError(f"{run.name('--batch-size')} {run.batch_size} exceeds the "
                         f"{store.n_tokens} tokens of the cache {store.path}: each batch "
                         "would hold some tokens twice; choose a batch of at most "
                         f"{store.n_tokens}, or harvest more tokens")
    _check_train_memory(run, store)
    store.verify()  # every shard is the one the harvest wrote, before any work
    outliers = None
    if run.outlier_factor is not None:
        outliers = store.outliers(run.outlier_factor)
        if run.batch_size > outliers["kept_tokens"]:
            raise InputError(f"{run.name('--batch-size')} {run.batch_size} exceeds the "
                             f"{outliers['kept_tokens']} tokens of the cache {store.path} "
                             f"left once its {outliers['excluded_tokens']} outlier tokens "
                             f"(norm > {run.outlier_factor:g} x the median) are left out; "
                             "choose a smaller batch")
    prov = _provenance(store, run.normalisation, outliers)
    window = run.window()
    cfg = TrainConfig(steps=run.steps, lr=run.lr, lr_warmup_steps=run.lr_warmup_steps,
                      grad_clip=run.grad_clip, dead_window=window,
                      checkpoint_every=run.checkpoint_every, device=run.device,
                      dtype=run.dtype, seed=run.seed, progress=run.progress)
    config = {
        "saes": [{"name": s.name, "arch": s.arch, "hyper": s.hyper} for s in run.specs],
        "d_sae": run.d_sae, "batch_size": run.batch_size, "normalisation": run.normalisation,
        "cache": prov["cache"], "dead_window_tokens": window,
        "train": {k: v for k, v in cfg.to_dict().items() if k != "progress"}, **run.extra,
    }
    if outliers is not None:  # absent otherwise: a run without it resumes as before
        config["outliers"] = {k: outliers[k] for k in ("factor", "threshold",
                                                       "excluded_tokens", "scalar_constant")}
    config = json.loads(json.dumps(config))
    out = run.out
    rows = None if world is None else world.rows(run.batch_size)  # this rank's share
    main = world is None or world.is_main
    with ExitStack() as held:
        if main:  # one writer per folder: rank 0 writes, and holds the folder's lock
            held.enter_context(owned_folder(run.name("--out"), out))
        return _train_locked(run, world, store, prov, window, cfg, config, rows, main)


def _train_locked(run: TrainRun, world: World | None, store: ActivationStore,
                  prov: dict[str, Any], window: int, cfg: Any, config: dict[str, Any],
                  rows: tuple[int, int] | None, main: bool) -> dict[str, Any]:
    """The rest of :func:`_train_on_cache`, with ``run.out`` locked (on rank 0)."""
    from aensae import __version__
    from aensae.saes import create, save, train
    from aensae.saes.training.trainer import CHECKPOINT_FILE

    out = run.out
    done = check_resumable(out, RUN_FILE, config, run.overwrite, CHECKPOINT_FILE,
                           CHECKPOINT_CONFIG)
    if world is not None:
        world.barrier()  # every rank has looked at --out before rank 0 writes there
    if done is not None:
        return done
    ckpt, ckpt_config = out / CHECKPOINT_FILE, out / CHECKPOINT_CONFIG
    dtype = torch_dtype(run.dtype)
    models = {s.name: create(s.arch, store.d_in, run.d_sae, seed=run.seed, dtype=dtype,
                             **s.hyper) for s in run.specs}
    outliers = prov.get("outliers")
    data = store.batch_source(
        run.batch_size, seed=run.seed, normalisation=run.normalisation, dtype=run.dtype,
        rows=rows, exclude_above=None if outliers is None else outliers["threshold"],
        constant=prov["normalisation"]["constant"])
    t0 = time.perf_counter()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if run.checkpoint_every:
            atomic_write_json(ckpt_config, config)
    results = train(models, data, cfg, checkpoint_dir=out, resume=not run.overwrite,
                    world=world)
    seconds = time.perf_counter() - t0
    common = {"seed": run.seed, "aensae_version": __version__,
              "torch_version": torch.__version__, "dead_window_tokens": window,
              "world_size": 1 if world is None else world.size}
    record: dict[str, Any] = {"config": config, **common, "llm": prov, "saes": {}}
    metrics_of: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        res = results[name]
        metrics_of[name] = {
            "name": name, **common, "device": res.device, "dead": res.dead,
            "steps": res.steps, "tokens": res.steps * run.batch_size,
            "train_loss_first": res.train_loss[0] if res.train_loss else None,
            "train_loss_last": res.train_loss[-1] if res.train_loss else None,
            "last_terms": res.last_terms, "seconds": seconds}
        record["saes"][name] = {"arch": model.arch, "dead": res.dead,
                                "train_loss_last": metrics_of[name]["train_loss_last"]}
    record["seconds"] = seconds
    if main:  # rank 0 writes the folder; the other ranks wait for it below
        with replace_together(out, [*models, RUN_FILE]) as stage:
            for name, model in models.items():
                folder = stage / name
                save(model, folder)
                atomic_write_json(folder / "cfg.json", {**model.config(), LLM_KEY: prov})
                atomic_write_json(folder / "metrics.json", metrics_of[name])
            atomic_write_json(stage / RUN_FILE, record)
        ckpt.unlink(missing_ok=True)
        ckpt_config.unlink(missing_ok=True)
    if world is not None:
        world.barrier()
    return record
