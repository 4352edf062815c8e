r"""The work of ``aensae train``: one SAE trained on the spiked synthetic stream.

:func:`run_train` takes a :class:`TrainJob` (every option of ``aensae train`` as a field),
draws a spiked dictionary ``(n, m, rho)``, trains one SAE on
:class:`~aensae.synthetic.SyntheticStream` batches and writes ``out/sae.safetensors``,
``out/cfg.json`` and, last, ``out/metrics.json`` (config, seed, aensae version,
dead-latent windows, evaluation metrics against the true dictionary and codes) as one set.
A folder whose metrics.json records the same configuration is a finished run and is
skipped; a half-finished one resumes from ``out/checkpoint.pt`` when
``out/checkpoint_config.json`` records the same configuration.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aensae._dtypes import torch_dtype
from aensae._io import atomic_write_json, check_output_dir, check_resumable, folder_lock
from aensae._validation import (
    InputError,
    check_device,
    check_int,
    check_memory,
    check_real,
    check_rho,
    user_input,
)
from aensae.experiments.spiked.data import EVAL_INDEX, memory_terms

if TYPE_CHECKING:
    from aensae.saes.training.distributed import World

__all__ = ["CHECKPOINT_CONFIG", "OUTPUT_FILES", "TrainJob", "check_optimiser",
           "check_train_job", "run_train"]


@dataclass(frozen=True)
class TrainJob:
    """One ``aensae train`` run; the defaults are the command's.

    ``hyper`` holds the architecture's hyperparameters (``l1``, ``k_top``, ``init`` ...;
    the architecture's defaults for the others). ``d_sae`` defaults to ``m``.
    """

    arch: str
    out: str | Path
    rho: float = 0.0
    n: int = 256
    m: int = 1024
    d_sae: int | None = None
    k: int = 16
    lo: float = 1.0
    hi: float = 3.0
    noise_std: float = 0.0
    steps: int = 5000
    batch_size: int = 256
    lr: float = 1e-3
    lr_warmup_steps: int = 0
    grad_clip: float | None = None
    hyper: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    dead_window: int = 65536
    eval_samples: int = 8192
    eval_every: int = 0
    checkpoint_every: int = 500
    device: str = "auto"
    dtype: str = "float32"
    progress: bool = True
    overwrite: bool = False
    max_memory_gb: float | None = None


def check_optimiser(lr: Any, lr_warmup_steps: Any, grad_clip: Any) -> None:
    """Check the optimiser settings of ``aensae train`` and ``aensae llm train`` (inside
    ``user_input()``): ``lr > 0``, ``lr_warmup_steps >= 0``, ``grad_clip`` > 0 or None."""
    check_real("--lr", lr, low=0.0, low_inclusive=False)
    check_int("--lr-warmup-steps", lr_warmup_steps, low=0)
    if grad_clip is not None:
        check_real("--grad-clip", grad_clip, low=0.0, low_inclusive=False)


#: The files ``aensae train`` writes as one set (swapped in together when the run ends).
OUTPUT_FILES = ("sae.safetensors", "cfg.json", "metrics.json")


#: The run configuration of ``checkpoint.pt``, beside it while a run is unfinished: a
#: resume must match it (the checkpoint itself records the models and the optimizer, not
#: the data stream).
CHECKPOINT_CONFIG = "checkpoint_config.json"


def check_train_job(job: TrainJob) -> tuple[dict[str, float | int], Path]:
    """Validate every field of ``job``; return (hyperparameters, output folder).

    Raises :class:`~aensae._validation.InputError` naming the field as the option of
    ``aensae train`` that sets it. Order: values, hyperparameters of ``arch``,
    ``device``, then ``out`` (nothing is created).
    """
    from aensae.saes import ARCHITECTURES

    if job.arch not in ARCHITECTURES:
        raise InputError(f"--arch: unknown architecture {job.arch!r}; valid architectures: "
                         f"{', '.join(ARCHITECTURES)}")
    with user_input():
        check_rho(job.rho, "--rho")
        check_int("--n", job.n, low=2)  # a spike needs room: in R^1 every atom is +-v
        check_int("--m", job.m, low=1)
        if job.d_sae is not None:
            check_int("--d-sae", job.d_sae, low=1)
        check_int("--k", job.k, low=1, high=job.m)
        check_real("--lo", job.lo, low=0.0, low_inclusive=False)
        check_real("--hi", job.hi)
        if job.hi < job.lo:
            raise InputError(f"--hi must be >= --lo = {job.lo!r}, got {job.hi!r}")
        check_real("--noise-std", job.noise_std, low=0.0)
        check_int("--steps", job.steps, low=1)
        check_int("--batch-size", job.batch_size, low=1)
        check_optimiser(job.lr, job.lr_warmup_steps, job.grad_clip)
        check_int("--seed", job.seed, low=0)
        check_int("--dead-window", job.dead_window, low=1)
        check_int("--eval-samples", job.eval_samples, low=2)
        check_int("--eval-every", job.eval_every, low=0)
        check_int("--checkpoint-every", job.checkpoint_every, low=0)
        if job.max_memory_gb is not None:
            check_real("--max-memory", job.max_memory_gb, low=0.0, low_inclusive=False)
    hyper = dict(job.hyper)
    with user_input(f"--arch {job.arch} hyperparameters: "):
        hyper = ARCHITECTURES[job.arch].validate_hyper(hyper)
        d_sae = job.m if job.d_sae is None else job.d_sae
        for key in ("k_top", "aux_k"):  # checked by the model only when it is built
            if hyper.get(key, 0) > d_sae:
                raise ValueError(f"{key} must be <= the latents d_sae={d_sae}, got "
                                 f"{hyper[key]}")
    terms = memory_terms(n=job.n, m=job.m, d_sae=d_sae, batch_size=job.batch_size,
                         eval_samples=job.eval_samples, models=1,
                         dtype_bytes=4 if job.dtype == "float32" else 8, exact=False)
    flags = {"data.n, data.m": "--n/--m", "eval.samples": "--eval-samples",
             "data.d_sae (models trained together)":
                 "--d-sae" if job.d_sae is not None else "--m (the default of --d-sae)"}
    check_memory(flags[max(terms, key=terms.__getitem__)], sum(terms.values()),
                 "the run (true dictionary, held-out set and codes, model and optimiser)",
                 limit_gib=job.max_memory_gb, override="--max-memory")
    check_device("--device", job.device)
    return hyper, check_output_dir("--out", job.out)


def run_train(job: TrainJob) -> dict[str, Any]:
    """Train, save and evaluate as ``aensae train`` does; return the metrics record.

    Every field is checked before any data is drawn (:func:`check_train_job`). The
    model, its ``cfg.json`` and ``metrics.json`` are written as one set
    (:func:`aensae._io.replace_together`): a run that fails or is redone with
    ``--overwrite`` leaves the previous set as it was until the new one is complete.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the ranks train the model data-parallel
    (:mod:`aensae.saes.training.distributed`): rank ``r`` of ``W`` draws rows ``[r B/W, (r+1) B/W)``
    of every batch (``--batch-size`` a multiple of ``W``), and rank 0 alone writes files.
    """
    hyper, out = check_train_job(job)

    from aensae.saes.training.distributed import from_env

    with from_env(job.device) as world:
        main = world is None or world.is_main  # rank 0 alone writes, so it alone locks
        with folder_lock("--out", out) if main else nullcontext():
            return _train(job, hyper, out, world)


def _train(job: TrainJob, hyper: dict[str, Any], out: Path,
           world: World | None) -> dict[str, Any]:
    """:func:`run_train` after the checks, on one process (``world=None``) or a rank."""
    import torch

    from aensae import __version__
    from aensae._io import replace_together
    from aensae.saes import TrainConfig, create, save, train
    from aensae.saes.evaluate import evaluate
    from aensae.saes.training.trainer import CHECKPOINT_FILE
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    d_sae = job.m if job.d_sae is None else job.d_sae
    dtype = torch_dtype(job.dtype)
    cfg = TrainConfig(steps=job.steps, lr=job.lr, lr_warmup_steps=job.lr_warmup_steps,
                      grad_clip=job.grad_clip, dead_window=job.dead_window,
                      eval_every=job.eval_every, checkpoint_every=job.checkpoint_every,
                      device=job.device, dtype=job.dtype, seed=job.seed,
                      progress=job.progress)
    run_config = {
        "arch": job.arch, "hyper": hyper, "d_sae": d_sae,
        "data": {"kind": "spiked", "rho": job.rho, "n": job.n, "m": job.m, "k": job.k,
                 "lo": job.lo, "hi": job.hi, "noise_std": job.noise_std,
                 "batch_size": job.batch_size, "seed": job.seed,
                 "eval_samples": job.eval_samples, "eval_index": EVAL_INDEX},
        "train": {k: v for k, v in cfg.to_dict().items() if k != "progress"},
    }
    rows = None if world is None else world.rows(job.batch_size)  # this rank's share
    main = world is None or world.is_main
    done = check_resumable(out, "metrics.json", run_config, job.overwrite, CHECKPOINT_FILE,
                           CHECKPOINT_CONFIG)
    if world is not None:
        world.barrier()  # every rank has looked at --out before rank 0 writes there
    if done is not None:
        return done
    ckpt, ckpt_config = out / CHECKPOINT_FILE, out / CHECKPOINT_CONFIG

    model = create(job.arch, job.n, d_sae, seed=job.seed, dtype=dtype, **hyper)
    dic = spiked_dictionary(job.n, job.m, job.rho, seed=job.seed)
    common = {"lo": job.lo, "hi": job.hi, "nonneg": True, "noise_std": job.noise_std}
    stream = SyntheticStream(dic.D, job.k, job.batch_size, seed=job.seed, **common)
    X_eval, H_eval = SyntheticStream(dic.D, job.k, job.eval_samples, seed=job.seed,
                                     **common).torch_batch(EVAL_INDEX, dtype=torch.float64)

    def data(start: int):
        # only X is needed for training: no true codes, batches generated a chunk at a time
        return stream.torch_signal_batches(job.steps - start, start=start, dtype=dtype,
                                           rows=rows)

    def eval_fn(m):
        return evaluate(m, X_eval, H_eval, D_true=dic.D, shared=dic.shared)

    t0 = time.perf_counter()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if job.checkpoint_every:
            atomic_write_json(ckpt_config, run_config)  # what a resume must match
    results = train(model, data, cfg, eval_fn=eval_fn, checkpoint_dir=out,
                    resume=not job.overwrite, world=world)
    res = results["model"]
    final = res.evals[-1] if res.evals else eval_fn(model)
    record = {
        "config": run_config,
        "seed": job.seed,
        "init": model.hyper["init"],
        "aensae_version": __version__,
        "torch_version": torch.__version__,
        "device": res.device,
        "path": res.path,
        "world_size": 1 if world is None else world.size,
        "dead": res.dead,
        "final": final,
        "evals": res.evals,
        "train_loss_first": res.train_loss[0] if res.train_loss else None,
        "train_loss_last": res.train_loss[-1] if res.train_loss else None,
        "last_terms": res.last_terms,
        "seconds": time.perf_counter() - t0,
    }
    if main:
        with replace_together(out, OUTPUT_FILES) as stage:
            save(model, stage)
            atomic_write_json(stage / "metrics.json", record)
        ckpt.unlink(missing_ok=True)
        ckpt_config.unlink(missing_ok=True)
    if world is not None:
        world.barrier()
    return record
