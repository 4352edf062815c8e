r"""``aensae train``: parse the options into a
:class:`~aensae.experiments.spiked.train_run.TrainJob` and run it.

``aensae train --arch ARCH --out DIR`` draws a spiked dictionary (n, m, rho), trains one
SAE on ``SyntheticStream`` batches and writes ``DIR/sae.safetensors``, ``DIR/cfg.json``
and, last, ``DIR/metrics.json`` (config, seed, aensae version, dead-latent windows,
evaluation metrics against the true dictionary and codes). A folder whose metrics.json
records the same configuration is a finished run and is skipped; a half-finished one
resumes from ``DIR/checkpoint.pt`` when ``DIR/checkpoint_config.json`` records the same
configuration.

The option groups shared with ``aensae llm train`` (run, optimiser and hyperparameter
options) are defined here.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from aensae._dtypes import SAE_DTYPES
from aensae._validation import (
    InputError,
)
from aensae.cli._options import add_command

__all__ = ["add_hyperparameter_options", "add_optimiser_options", "add_run_options",
           "check_optimiser_args", "hyper_from_args", "parse_set", "register", "train_job"]

ARCH_CHOICES = ("relu_l1", "elastic_net", "adaptive_lasso", "aen", "topk", "batchtopk",
                "jumprelu")
#: ``--init`` values (:data:`aensae.saes.base.INIT_CHOICES`, kept here to import no torch).
INIT_CHOICES = ("tied", "independent")


def parse_set(items: list[str]) -> dict[str, float | int]:
    """Parse ``NAME=VALUE`` strings; a value is an int when it reads as one, else a float."""
    out: dict[str, float | int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"--set expects NAME=VALUE, got {item!r}")
        if name in out:
            raise InputError(f"--set {name}: given twice")
        try:
            out[name] = int(value)
        except ValueError:
            try:
                out[name] = float(value)
            except ValueError:
                raise InputError(f"--set {name}: value must be a number, got {value!r}"
                                 ) from None
    return out


def register(top: Any, bench: Any) -> None:
    """Add ``aensae train`` to ``top`` (``bench`` is not used)."""
    p = add_command(top, "train", help="train one SAE on the spiked synthetic stream",
                    doc=__doc__.split("\n\n")[1])
    p.add_argument("--arch", required=True, choices=ARCH_CHOICES, help="SAE architecture")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created; must not be a file)")
    p.add_argument("--rho", type=float, default=0.0,
                   help="spike correlation of the true atoms, in [0, 1)")
    # --d-in, --atoms, --low: spellings torchrun's own parser passes on (it takes --n, --m
    # and --lo for ambiguous abbreviations of its --nnodes, --master-port, --log-dir ...)
    p.add_argument("--n", "--d-in", type=int, default=256,
                   help="signal dimension d_in (>= 2)")
    p.add_argument("--m", "--atoms", type=int, default=1024, help="true atoms (>= 1)")
    p.add_argument("--d-sae", type=int, default=None, help="SAE latents (default: --m)")
    p.add_argument("--k", type=int, default=16, help="non-zeros per true code, in [1, m]")
    p.add_argument("--lo", "--low", type=float, default=1.0,
                   help="smallest code magnitude (> 0)")
    p.add_argument("--hi", "--high", type=float, default=3.0,
                   help="largest code magnitude (>= --lo)")
    p.add_argument("--noise-std", type=float, default=0.0,
                   help="standard deviation of Gaussian noise added to signals (>= 0)")
    p.add_argument("--steps", type=int, default=5000, help="optimizer steps (>= 1)")
    p.add_argument("--batch-size", type=int, default=256, help="signals per step (>= 1)")
    add_optimiser_options(p)
    add_hyperparameter_options(p, "hyperparameters (only those of --arch are accepted)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and model (>= 0)")
    p.add_argument("--dead-window", type=int, default=65536,
                   help="dead-latent window, in samples (>= 1)")
    p.add_argument("--eval-samples", type=int, default=8192,
                   help="held-out signals for the evaluation (>= 2)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every this many steps (>= 0; 0: only at the end)")
    add_run_options(p, "model")
    p.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                   help="refuse a run whose estimated memory exceeds this many GiB (> 0; "
                        "default: the memory available on this machine)")
    p.set_defaults(func=_train_main)


def add_run_options(p: argparse.ArgumentParser, trained: str) -> None:
    """``--checkpoint-every``, ``--device``, ``--dtype``, ``--progress``, ``--overwrite``
    (``aensae train`` and ``aensae llm train``; ``trained`` names what is trained)."""
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="write a checkpoint every this many steps (>= 0; 0: never)")
    p.add_argument("--device", default="auto",
                   help="torch device: auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=SAE_DTYPES,
                   help=f"floating-point type of the {trained}")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="redo a finished run (its files are replaced only when the new "
                        "run has finished)")


def add_optimiser_options(p: argparse.ArgumentParser) -> None:
    """``--lr``, ``--lr-warmup-steps``, ``--grad-clip`` (shared with ``aensae llm train``)."""
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (> 0)")
    p.add_argument("--lr-warmup-steps", type=int, default=0,
                   help="steps of linear learning-rate warmup (>= 0; 0: none)")
    p.add_argument("--grad-clip", type=float, default=None,
                   help="max gradient norm per model (> 0; default: no clipping)")


def add_hyperparameter_options(p: argparse.ArgumentParser, title: str) -> Any:
    """The architecture hyperparameter options (group ``title``); read them back with
    :func:`hyper_from_args`. Shared with ``aensae llm train``."""
    hp = p.add_argument_group(title)
    hp.add_argument("--l1", type=float, default=None,
                    help="l1 penalty, SAE scaling (default: the architecture's)")
    hp.add_argument("--l2", type=float, default=None,
                    help="l2 penalty, SAE scaling (default: the architecture's)")
    hp.add_argument("--gamma", type=float, default=None,
                    help="adaptive-weight exponent (default: the architecture's)")
    hp.add_argument("--k-top", type=int, default=None,
                    help="latents kept per signal, TopK / BatchTopK (default: the "
                         "architecture's)")
    hp.add_argument("--init", default=None, choices=INIT_CHOICES,
                    help="initialisation: tied (W_enc = W_dec^T, zero biases) or independent "
                         "(torch.nn.Linear's draws, as the AEN-SAE reference) (default: tied)")
    hp.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="any other hyperparameter, repeatable, e.g. --set warmup_steps=500")
    return hp


def check_optimiser_args(args: argparse.Namespace) -> None:
    """Validate the options of :func:`add_optimiser_options` (inside ``user_input()``)."""
    from aensae.experiments.spiked.train_run import check_optimiser

    check_optimiser(args.lr, args.lr_warmup_steps, args.grad_clip)


def hyper_from_args(args: argparse.Namespace) -> dict[str, float | int | str]:
    """The hyperparameters given by the options of :func:`add_hyperparameter_options`."""
    hyper: dict[str, float | int | str] = dict(parse_set(args.set))
    for flag, name in (("l1", "l1"), ("l2", "l2"), ("gamma", "gamma"), ("k_top", "k_top"),
                       ("init", "init")):
        value = getattr(args, flag)
        if value is not None:
            if name in hyper:
                raise InputError(f"hyperparameter {name} given twice (--"
                                 f"{flag.replace('_', '-')} and --set)")
            hyper[name] = value
    return hyper


def train_job(args: argparse.Namespace) -> Any:
    """The :class:`~aensae.experiments.spiked.train_run.TrainJob` of ``aensae train``'s
    options (hyperparameter options gathered by :func:`hyper_from_args`)."""
    from aensae.experiments.spiked.train_run import TrainJob

    return TrainJob(
        arch=args.arch, out=args.out, rho=args.rho, n=args.n, m=args.m, d_sae=args.d_sae,
        k=args.k, lo=args.lo, hi=args.hi, noise_std=args.noise_std, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=args.lr_warmup_steps,
        grad_clip=args.grad_clip, hyper=hyper_from_args(args), seed=args.seed,
        dead_window=args.dead_window, eval_samples=args.eval_samples,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        device=args.device, dtype=args.dtype, progress=args.progress,
        overwrite=args.overwrite, max_memory_gb=args.max_memory)


def _train_main(args: argparse.Namespace) -> int:
    from aensae.experiments.spiked.train_run import run_train

    record = run_train(train_job(args))
    if os.environ.get("RANK", "0") != "0":  # a data-parallel rank other than 0
        return 0
    f = record["final"]
    print(f"{args.arch}: EV {f['explained_variance']:.4f}  L0 {f['l0']:.2f}  "
          f"dead(final window) {record['dead']['final']}  -> {args.out}")
    return 0
