r"""SAEs trained on an activation cache (``aensae llm train``).

The trainer and the architectures are those of the synthetic grid, unchanged
(:func:`aensae.saes.training.trainer.train`); the data are the cache's batches from
:class:`~aensae.llm.store.ActivationStore`, normalised with the cache's own constant
(:mod:`aensae.llm.normalise`). Several SAEs are trained together on the same batches in
one pass (each with its own Adam moments, so each gets the weights it would get alone).

Dead latents: a latent is dead in a window of :math:`W` tokens when it fired on none of
them; the window is counted in tokens, ``W = min(10^7, steps * batch_size)`` by default
(the whole run when it is shorter than 10M tokens), and recorded with the result.

Output folder ``OUT``::

    OUT/run.json               the run: config, cache identity, one entry per SAE
    OUT/<name>/sae.safetensors
    OUT/<name>/cfg.json        the SAE's config plus "llm": model, hook, layer, d_in,
                               normalisation (kind and constant), cache path and token count
    OUT/<name>/metrics.json    dead-latent windows, training losses, seconds

written as one set when training ends (:func:`aensae._io.replace_together`). While it
runs, ``OUT/checkpoint.pt`` and ``OUT/checkpoint_config.json`` let a killed run resume
exactly (the batches are a pure function of the seed and the batch index).

Under ``torchrun`` (``WORLD_SIZE`` > 1) the SAEs are trained data-parallel
(:mod:`aensae.saes.training.distributed`): rank ``r`` of ``W`` reads rows ``[r B/W, (r+1) B/W)``
of every batch of the store, and rank 0 alone writes the folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aensae._dtypes import torch_dtype
from aensae._io import atomic_write_json, check_resumable, replace_together
from aensae._validation import InputError
from aensae.llm.store import ActivationStore

if TYPE_CHECKING:
    from aensae.saes.training.distributed import World

__all__ = ["DEAD_WINDOW_TOKENS", "LLM_KEY", "SAESpec", "TrainRun", "sae_name", "train_on_cache"]

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

    def window(self) -> int:
        """The dead-latent window in tokens."""
        if self.dead_window is not None:
            return self.dead_window
        return min(DEAD_WINDOW_TOKENS, self.steps * self.batch_size)


def _provenance(store: ActivationStore, normalisation: str) -> dict[str, Any]:
    man = store.manifest
    constant = store.scalar_constant if normalisation == "scalar" else None
    return {"model": man["model"], "hook": man["hook"], "layer": man["layer"],
            "d_in": store.d_in, "normalisation": {"kind": normalisation, "constant": constant},
            "cache": {"path": str(store.path.resolve()), "tokens": store.n_tokens,
                      "split": man.get("split"), "text": man.get("text", {}).get("spec"),
                      "special_tokens": man.get("special_tokens"), "ctx": man.get("ctx")}}


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
    from aensae import __version__
    from aensae.saes import TrainConfig, create, save, train
    from aensae.saes.training.trainer import CHECKPOINT_FILE

    store = ActivationStore(run.cache)
    prov = _provenance(store, run.normalisation)
    for spec in run.specs:
        for key in ("k_top", "aux_k"):
            if spec.hyper.get(key, 0) > run.d_sae:
                raise InputError(f"--arch {spec.arch}: {key} must be <= --d-sae {run.d_sae}, "
                                 f"got {spec.hyper[key]}")
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
    config = json.loads(json.dumps(config))
    out = run.out
    rows = None if world is None else world.rows(run.batch_size)  # this rank's share
    main = world is None or world.is_main
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
    data = store.batch_source(run.batch_size, seed=run.seed, normalisation=run.normalisation,
                              dtype=run.dtype, rows=rows)
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
