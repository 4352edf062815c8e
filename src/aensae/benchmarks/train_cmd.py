r"""``aensae train`` (one SAE on the spiked synthetic stream) and ``aensae bench train``.

``aensae train --arch ARCH --out DIR`` draws a spiked dictionary (n, m, rho), trains one
SAE on ``SyntheticStream`` batches and writes ``DIR/sae.safetensors``, ``DIR/cfg.json``
and, last, ``DIR/metrics.json`` (config, seed, aensae version, dead-latent windows,
evaluation metrics against the true dictionary and codes). A folder whose metrics.json
records the same configuration is a finished run and is skipped; a half-finished one
resumes from ``DIR/checkpoint.pt`` when ``DIR/checkpoint_config.json`` records the same
configuration.

``aensae bench train`` times a training step of the paper configuration (n=256, m=1024,
batch 256, aen, float32, CPU) including data generation, against the floor: the same
step's five matrix products alone, measured in the same process::

    ratio_single      = ms_per_step / floor_ms
    ratio_per_model_8 = (ms per step of 8 models trained together) / 8 / floor_ms
    stack_speedup     = (ms per model-step, separate) / (ms per model-step, stacked)
    graph_speedup     = (ms per model-step, stacked eager) / (ms per model-step, CUDA graph)
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aensae._io import atomic_write_json, check_output_dir, check_output_file, check_resumable
from aensae._validation import (
    InputError,
    check_device,
    check_int,
    check_real,
    check_rho,
    check_threads,
    user_input,
)
from aensae.benchmarks._options import add_command

if TYPE_CHECKING:
    from aensae.saes.distributed import World

__all__ = ["add_hyperparameter_options", "add_optimiser_options", "bench_train",
           "check_optimiser_args", "hyper_from_args", "parse_set", "register", "run_train"]

ARCH_CHOICES = ("relu_l1", "elastic_net", "adaptive_lasso", "aen", "topk", "batchtopk",
                "jumprelu")
#: ``--init`` values (:data:`aensae.saes.base.INIT_CHOICES`, kept here to import no torch).
INIT_CHOICES = ("tied", "independent")
#: Batch index of the evaluation set in a stream of its own batch size (never trained on).
EVAL_INDEX = 2**40


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
    """Add ``aensae train`` to ``top`` and ``aensae bench train`` to ``bench``."""
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
    p.set_defaults(func=_train_main)

    intro, formulas = __doc__.split("\n\n")[2:4]
    b = add_command(bench, "train", help="ms per training step vs the matrix-product floor",
                    doc=intro.replace("::", ":") + " "
                    + "; ".join(" ".join(line.split()) for line in formulas.splitlines()) + ".")
    b.add_argument("--json", metavar="PATH", default=None,
                   help="write the results here as JSON (default: print only)")
    b.add_argument("--n", type=int, default=256, help="signal dimension d_in (>= 2)")
    b.add_argument("--m", type=int, default=1024, help="atoms and latents (>= 1)")
    b.add_argument("--batch-size", type=int, default=256, help="signals per step (>= 1)")
    b.add_argument("--k", type=int, default=16, help="non-zeros per true code, in [1, m]")
    b.add_argument("--models", type=int, default=8, help="models trained together (>= 1)")
    b.add_argument("--arch", default="aen", choices=ARCH_CHOICES,
                   help="architecture of the timed models")
    b.add_argument("--stack", action="store_true",
                   help="also time the models on the stacked path (batched products, "
                        "TrainConfig(stack=True)) and report ms per model-step against "
                        "the same models trained separately")
    b.add_argument("--graph", action="store_true",
                   help="with --stack on a CUDA device: also time the stacked step captured "
                        "in a CUDA graph (TrainConfig(graph='auto')) against the same step "
                        "run eagerly")
    b.add_argument("--steps", type=int, default=40, help="timed steps per repeat (>= 1)")
    b.add_argument("--repeats", type=int, default=3, help="timed repeats (>= 1)")
    b.add_argument("--device", default="cpu",
                   help="torch device of models and floor: cpu, cuda, cuda:1, auto (CUDA when "
                        "present)")
    b.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads, in [1, cores] (default: torch's own)")
    b.set_defaults(func=_bench_main)


def add_run_options(p: argparse.ArgumentParser, trained: str) -> None:
    """``--checkpoint-every``, ``--device``, ``--dtype``, ``--progress``, ``--overwrite``
    (``aensae train`` and ``aensae llm train``; ``trained`` names what is trained)."""
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="write a checkpoint every this many steps (>= 0; 0: never)")
    p.add_argument("--device", default="auto",
                   help="torch device: auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"),
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
    check_real("--lr", args.lr, low=0.0, low_inclusive=False)
    check_int("--lr-warmup-steps", args.lr_warmup_steps, low=0)
    if args.grad_clip is not None:
        check_real("--grad-clip", args.grad_clip, low=0.0, low_inclusive=False)


# ----------------------------------------------------------------------------- train
#: The files ``aensae train`` writes as one set (swapped in together when the run ends).
OUTPUT_FILES = ("sae.safetensors", "cfg.json", "metrics.json")
#: The run configuration of ``checkpoint.pt``, beside it while a run is unfinished: a
#: resume must match it (the checkpoint itself records the models and the optimizer, not
#: the data stream).
CHECKPOINT_CONFIG = "checkpoint_config.json"


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


def check_train_args(args: argparse.Namespace) -> tuple[dict[str, float | int], Path]:
    """Validate every option of ``aensae train``; return (hyperparameters, output folder).

    Raises :class:`~aensae._validation.InputError` naming the option. Order: values,
    hyperparameters of ``--arch``, ``--device``, then ``--out`` (nothing is created).
    """
    from aensae.saes import ARCHITECTURES

    if args.arch not in ARCHITECTURES:
        raise InputError(f"--arch: unknown architecture {args.arch!r}; valid architectures: "
                         f"{', '.join(ARCHITECTURES)}")
    with user_input():
        check_rho(args.rho, "--rho")
        check_int("--n", args.n, low=2)  # a spike needs room: in R^1 every atom is +-v
        check_int("--m", args.m, low=1)
        if args.d_sae is not None:
            check_int("--d-sae", args.d_sae, low=1)
        check_int("--k", args.k, low=1, high=args.m)
        check_real("--lo", args.lo, low=0.0, low_inclusive=False)
        check_real("--hi", args.hi)
        if args.hi < args.lo:
            raise InputError(f"--hi must be >= --lo = {args.lo!r}, got {args.hi!r}")
        check_real("--noise-std", args.noise_std, low=0.0)
        check_int("--steps", args.steps, low=1)
        check_int("--batch-size", args.batch_size, low=1)
        check_optimiser_args(args)
        check_int("--seed", args.seed, low=0)
        check_int("--dead-window", args.dead_window, low=1)
        check_int("--eval-samples", args.eval_samples, low=2)
        check_int("--eval-every", args.eval_every, low=0)
        check_int("--checkpoint-every", args.checkpoint_every, low=0)
    hyper = hyper_from_args(args)
    with user_input(f"--arch {args.arch} hyperparameters: "):
        hyper = ARCHITECTURES[args.arch].validate_hyper(hyper)
        d_sae = args.m if args.d_sae is None else args.d_sae
        for key in ("k_top", "aux_k"):  # checked by the model only when it is built
            if hyper.get(key, 0) > d_sae:
                raise ValueError(f"{key} must be <= the latents d_sae={d_sae}, got "
                                 f"{hyper[key]}")
    check_device("--device", args.device)
    return hyper, check_output_dir("--out", args.out)


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, save and evaluate as ``aensae train`` does; return the metrics record.

    Every option is checked before any data is drawn (:func:`check_train_args`). The
    model, its ``cfg.json`` and ``metrics.json`` are written as one set
    (:func:`aensae._io.replace_together`): a run that fails or is redone with
    ``--overwrite`` leaves the previous set as it was until the new one is complete.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the ranks train the model data-parallel
    (:mod:`aensae.saes.distributed`): rank ``r`` of ``W`` draws rows ``[r B/W, (r+1) B/W)``
    of every batch (``--batch-size`` a multiple of ``W``), and rank 0 alone writes files.
    """
    hyper, out = check_train_args(args)

    from aensae.saes.distributed import from_env

    with from_env(args.device) as world:
        return _train(args, hyper, out, world)


def _train(args: argparse.Namespace, hyper: dict[str, Any], out: Path,
           world: World | None) -> dict[str, Any]:
    """:func:`run_train` after the checks, on one process (``world=None``) or a rank."""
    import torch

    from aensae import __version__
    from aensae._io import replace_together
    from aensae.saes import TrainConfig, create, save, train
    from aensae.saes.evaluate import evaluate
    from aensae.saes.trainer import CHECKPOINT_FILE
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    d_sae = args.m if args.d_sae is None else args.d_sae
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    cfg = TrainConfig(steps=args.steps, lr=args.lr, lr_warmup_steps=args.lr_warmup_steps,
                      grad_clip=args.grad_clip, dead_window=args.dead_window,
                      eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                      device=args.device, dtype=args.dtype, seed=args.seed,
                      progress=args.progress)
    run_config = {
        "arch": args.arch, "hyper": hyper, "d_sae": d_sae,
        "data": {"kind": "spiked", "rho": args.rho, "n": args.n, "m": args.m, "k": args.k,
                 "lo": args.lo, "hi": args.hi, "noise_std": args.noise_std,
                 "batch_size": args.batch_size, "seed": args.seed,
                 "eval_samples": args.eval_samples, "eval_index": EVAL_INDEX},
        "train": {k: v for k, v in cfg.to_dict().items() if k != "progress"},
    }
    rows = None if world is None else world.rows(args.batch_size)  # this rank's share
    main = world is None or world.is_main
    done = check_resumable(out, "metrics.json", run_config, args.overwrite, CHECKPOINT_FILE,
                           CHECKPOINT_CONFIG)
    if world is not None:
        world.barrier()  # every rank has looked at --out before rank 0 writes there
    if done is not None:
        return done
    ckpt, ckpt_config = out / CHECKPOINT_FILE, out / CHECKPOINT_CONFIG

    model = create(args.arch, args.n, d_sae, seed=args.seed, dtype=dtype, **hyper)
    dic = spiked_dictionary(args.n, args.m, args.rho, seed=args.seed)
    common = {"lo": args.lo, "hi": args.hi, "nonneg": True, "noise_std": args.noise_std}
    stream = SyntheticStream(dic.D, args.k, args.batch_size, seed=args.seed, **common)
    X_eval, H_eval = SyntheticStream(dic.D, args.k, args.eval_samples, seed=args.seed,
                                     **common).torch_batch(EVAL_INDEX, dtype=torch.float64)

    def data(start: int):
        # only X is needed for training: no true codes, batches generated a chunk at a time
        return stream.torch_signal_batches(args.steps - start, start=start, dtype=dtype,
                                           rows=rows)

    def eval_fn(m):
        return evaluate(m, X_eval, H_eval, D_true=dic.D, shared=dic.shared)

    t0 = time.perf_counter()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if args.checkpoint_every:
            atomic_write_json(ckpt_config, run_config)  # what a resume must match
    results = train(model, data, cfg, eval_fn=eval_fn, checkpoint_dir=out,
                    resume=not args.overwrite, world=world)
    res = results["model"]
    final = res.evals[-1] if res.evals else eval_fn(model)
    record = {
        "config": run_config,
        "seed": args.seed,
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


def _train_main(args: argparse.Namespace) -> int:
    record = run_train(args)
    if os.environ.get("RANK", "0") != "0":  # a data-parallel rank other than 0
        return 0
    f = record["final"]
    print(f"{args.arch}: EV {f['explained_variance']:.4f}  L0 {f['l0']:.2f}  "
          f"dead(final window) {record['dead']['final']}  -> {args.out}")
    return 0


# ----------------------------------------------------------------------------- bench
def bench_train(n: int = 256, m: int = 1024, batch_size: int = 256, k: int = 16,
                n_models: int = 8, steps: int = 40, repeats: int = 3, *,
                arch: str = "aen", stack: bool = False, device: str = "cpu",
                graph: bool = False) -> dict[str, Any]:
    """Measure ms per training step (with data generation) against the GEMM floor.

    A step is what ``aensae train`` does per batch: the signals of batch ``i`` of the
    synthetic stream (float64 numpy, converted to float32 torch; generated 8 batches at a
    time by :meth:`~aensae.synthetic.SyntheticStream.torch_signal_batches`), then for each
    model the hand-derived forward/backward, Adam, decoder projection, EMA update and
    dead-latent tracking. The timed steps fall in the AEN's cold-start hold
    (``warmup_steps`` = 1000 by default), where the l1 weights are exactly 1 and the
    population weights are not computed (about 0.1-0.2 ms per model afterwards). The
    floor is the step's five matrix products alone: ``(B,n)x(n,m)``, ``(B,m)x(m,n)``,
    ``(m,B)x(B,n)``, ``(B,n)x(n,m)`` and ``(n,B)x(B,m)``.

    Timed in blocks of 8 consecutive steps (one chunk of data generation each, so the
    per-step time is amortized over a chunk, never a step that skipped it),
    ``repeats * steps / 8`` blocks each: one model, ``n_models`` models trained together
    with the default configuration (``ratio_per_model_8``) and, with ``stack``, with
    batched products (``TrainConfig(stack=True)``, ``*_stacked``; ``stack_speedup`` is
    the median over blocks of the separate block's time over the stacked block's, timed
    one after the other, ``stack_speedup_range`` their smallest and largest, and
    ``ms_per_model_step*`` give median, min and max per model-step); with ``graph``
    (CUDA only) the stacked models once more, their step replayed from a CUDA graph
    (``*_graph``, ``graph_speedup`` over the stacked eager step, ``graph_path_steps``
    the steps each path took, ``graph_note`` why a graph was not used, if so). The models
    are
    ``arch`` with default hyperparameters and seeds ``0 .. n_models - 1`` (the l1 models
    therefore in their cold start, see above). ``device`` places models and floor (the
    data are drawn on the CPU, as in training; on CUDA every timer reading waits for
    the device). Each block is paired with the floor timed
    right before and right after it; a ratio is the block's time per step (per model) over
    the mean of its two floors, and the reported ratios are medians over all blocks.
    Pairing keeps the ratios meaningful on a shared machine, where a slow period inflates
    both. The minimum over all calls is reported too (``*_min``). ``data_ms`` is the data
    time per batch within a chunk, ``data_ms_single`` one batch generated alone (both
    right after a floor).

    ``adam_ratio_single`` and ``adam_ratio_per_model_8`` are the Adam update alone, per
    model, over the floor, timed between two floors like a block (so with the caches a
    step leaves it). It is memory-bound: per parameter it reads the weight, gradient and
    both moments and writes three of them, 7 float32 values (14.7 MB per paper-size model),
    and eight models' state does not fit a typical last-level cache. That traffic is
    Adam's own, so this share of a step's excess over the floor stays whatever else in
    the step is made faster.
    """
    import platform

    import torch

    from aensae import __version__
    from aensae.saes import TrainConfig, create
    from aensae.saes.trainer import _Run
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    torch.manual_seed(0)
    stream = SyntheticStream(spiked_dictionary(n, m, 0.0, seed=0).D, k, batch_size, seed=0)
    from aensae.saes.trainer import resolve_device

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    cfg = TrainConfig(steps=10**9, device=str(dev), dtype="float32")
    if graph and not (stack and cuda):
        raise ValueError(f"graph timing needs stack=True and a CUDA device, got stack={stack}, "
                         f"device {dev}")
    single = _Run({"m0": create(arch, n, m, seed=0)}, cfg)
    multi = _Run({f"m{i}": create(arch, n, m, seed=i) for i in range(n_models)}, cfg)

    def stacked_run(mode: str) -> Any:
        return _Run({f"m{i}": create(arch, n, m, seed=i) for i in range(n_models)},
                    TrainConfig(steps=10**9, device=str(dev), dtype="float32", stack=True,
                                graph=mode))

    stacked = stacked_run("off") if stack else None
    graphed = stacked_run("auto") if graph else None
    x = next(stream.torch_signal_batches(1)).to(dev)
    W_enc, W_dec = single.models["m0"].W_enc.detach(), single.models["m0"].W_dec.detach()
    h = torch.relu(x @ W_enc)
    g = torch.randn(batch_size, n).to(dev)

    def floor_step() -> None:
        torch.mm(x, W_enc)
        torch.mm(h, W_dec)
        torch.mm(h.t(), g)
        torch.mm(g, W_dec.t())
        torch.mm(x.t(), h)

    # Data as aensae train draws it: signals only, generated a chunk of batches at a time;
    # each run has its own iterator, and runs are timed in blocks of one chunk, so every
    # block pays for exactly one chunk of data generation (an amortized, not a best-case,
    # per-step cost).
    block = 8

    def data_source() -> Any:
        return stream.torch_signal_batches(start=0, dtype=torch.float32, chunk=block)

    def timed(fn: Any) -> float:
        if cuda:
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(dev)
        return 1e3 * (time.perf_counter() - t)

    def block_of(run: Any) -> Any:
        it = data_source()

        def steps_of_block() -> None:
            for _ in range(block):
                run.step_all(next(it))
        return steps_of_block

    runs = {"single": block_of(single), "multi": block_of(multi)}
    if stack:
        runs["multi_stacked"] = block_of(stacked)
    if graph:
        runs["multi_graph"] = block_of(graphed)
    adam_runs = {"single": single, "multi": multi}
    floor_step()
    for fn in runs.values():  # warm-up: allocator, thread pool, optimizer state
        fn()
    # Interleaved: every timed block is paired with the floor measured right before and
    # right after it, so that a slow period of a shared machine inflates both alike.
    floors: list[float] = []
    times: dict[str, list[float]] = {k: [] for k in runs}
    ratios: dict[str, list[float]] = {k: [] for k in runs}
    datas: list[float] = []
    datas_single: list[float] = []
    adam_ratios: dict[str, list[float]] = {k: [] for k in adam_runs}
    per_model = {"single": 1, "multi": n_models, "multi_stacked": n_models,
                 "multi_graph": n_models}
    for _ in range(max(1, repeats * steps // block)):
        before = timed(floor_step)
        floors.append(before)
        datas.append(timed(lambda: list(itertools.islice(data_source(), block))) / block)
        floor_step()
        datas_single.append(timed(lambda: next(stream.torch_signal_batches(1, start=10**6))))
        before = timed(floor_step)
        for key, fn in runs.items():
            t = timed(fn) / block
            after = timed(floor_step)
            floors.append(after)
            times[key].append(t)
            ratios[key].append(t / per_model[key] / (0.5 * (before + after)))
            before = after
        for key, run in adam_runs.items():  # the update alone, on the last step's gradients
            t = timed(lambda run=run: run.adam.step(run.cfg.lr_at(run.step)))
            after = timed(floor_step)
            floors.append(after)
            adam_ratios[key].append(t / per_model[key] / (0.5 * (before + after)))
            before = after
    med = statistics.median

    def model_step(key: str) -> dict[str, float]:
        ts = [t / per_model[key] for t in times[key]]
        return {"median": med(ts), "min": min(ts), "max": max(ts)}

    stacked_keys: dict[str, Any] = {}
    if stack:
        speedups = [a / b for a, b in zip(times["multi"], times["multi_stacked"], strict=True)]
        stacked_keys = {
            "ms_per_step_8_stacked": med(times["multi_stacked"]),
            "ratio_per_model_8_stacked": med(ratios["multi_stacked"]),
            "ms_per_model_step_stacked": model_step("multi_stacked"),
            "stack_speedup": med(speedups),
            "stack_speedup_range": [min(speedups), max(speedups)],
            "stack_path": stacked.paths["m0"] if stacked is not None else None,
        }
    if graph:
        assert graphed is not None and graphed.static is not None
        speedups = [a / b for a, b in zip(times["multi_stacked"], times["multi_graph"],
                                          strict=True)]
        stacked_keys.update({
            "ms_per_step_8_graph": med(times["multi_graph"]),
            "ratio_per_model_8_graph": med(ratios["multi_graph"]),
            "ms_per_model_step_graph": model_step("multi_graph"),
            "graph_speedup": med(speedups),
            "graph_speedup_range": [min(speedups), max(speedups)],
            "graph_path_steps": dict(graphed.static.path_steps),
            "graph_note": graphed.static.note,
        })
    return {
        "ms_per_step": med(times["single"]),
        "floor_ms": med(floors),
        "ratio_single": med(ratios["single"]),
        "ms_per_step_8": med(times["multi"]),
        "ratio_per_model_8": med(ratios["multi"]),
        "ms_per_model_step_single": model_step("single"),
        "ms_per_model_step_separate": model_step("multi"),
        **stacked_keys,
        "adam_ratio_single": med(adam_ratios["single"]),
        "adam_ratio_per_model_8": med(adam_ratios["multi"]),
        "data_ms": med(datas),
        "data_ms_single": med(datas_single),
        "block_steps": block,
        "min_ms": {"floor": min(floors), "data": min(datas),
                   **{k: min(v) for k, v in times.items()}},
        "ratio_single_min": min(times["single"]) / min(floors),
        "ratio_per_model_8_min": min(times["multi"]) / n_models / min(floors),
        "load_average": os.getloadavg(),
        "config": {"n": n, "m": m, "batch_size": batch_size, "k": k, "arch": arch,
                   "dtype": "float32", "device": str(dev), "models": n_models, "steps": steps,
                   "repeats": repeats, "stack": stack, "graph": graph},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(dev) if cuda else None,
                    "torch": torch.__version__},
        "aensae_version": __version__,
    }


def _bench_main(args: argparse.Namespace) -> int:
    with user_input():
        check_int("--n", args.n, low=2)
        check_int("--m", args.m, low=1)
        check_int("--batch-size", args.batch_size, low=1)
        check_int("--k", args.k, low=1, high=args.m)
        check_int("--models", args.models, low=1)
        check_int("--steps", args.steps, low=1)
        check_int("--repeats", args.repeats, low=1)
        if args.graph and not args.stack:
            raise InputError("--graph times the stacked step: it needs --stack")
        if args.arch in ("topk", "batchtopk") and args.m < 16:
            raise InputError(f"--m must be >= 16 with --arch {args.arch} (its default "
                             f"k_top is 16 latents per signal), got {args.m}")
    if args.threads is not None:
        check_threads("--threads", args.threads, allow_zero=False)
    check_device("--device", args.device)
    if args.json is not None:
        check_output_file("--json", args.json)

    import torch

    if args.graph:
        from aensae.saes.trainer import resolve_device

        if resolve_device(args.device).type != "cuda":
            raise InputError(f"--graph captures CUDA graphs: it needs a CUDA --device, got "
                             f"{args.device!r}")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = bench_train(args.n, args.m, args.batch_size, args.k, args.models, args.steps,
                      args.repeats, arch=args.arch, stack=args.stack, device=args.device,
                      graph=args.graph)
    print(f"floor {res['floor_ms']:.2f} ms | one model {res['ms_per_step']:.2f} ms/step "
          f"(x{res['ratio_single']:.3f}, min-based x{res['ratio_single_min']:.3f}) | "
          f"{args.models} models {res['ms_per_step_8']:.2f} ms/step "
          f"(x{res['ratio_per_model_8']:.3f} per model, min-based "
          f"x{res['ratio_per_model_8_min']:.3f}) | data {res['data_ms']:.2f} ms/batch "
          f"in chunks of {res['block_steps']} ({res['data_ms_single']:.2f} alone) | "
          f"Adam alone x{res['adam_ratio_single']:.3f}, "
          f"x{res['adam_ratio_per_model_8']:.3f} per model of {args.models}")
    if args.stack:
        sep, st = res["ms_per_model_step_separate"], res["ms_per_model_step_stacked"]
        lo, hi = res["stack_speedup_range"]
        print(f"{args.arch} x{args.models}, ms per model-step (median [min, max] over blocks): "
              f"separate {sep['median']:.3f} [{sep['min']:.3f}, {sep['max']:.3f}] | stacked "
              f"{st['median']:.3f} [{st['min']:.3f}, {st['max']:.3f}] | speed-up of "
              f"stacking x{res['stack_speedup']:.3f} [{lo:.3f}, {hi:.3f}] "
              f"(x{res['ratio_per_model_8_stacked']:.3f} of the floor per model; path "
              f"{res['stack_path']})")
    if args.graph:
        gr = res["ms_per_model_step_graph"]
        lo, hi = res["graph_speedup_range"]
        print(f"{args.arch} x{args.models}, CUDA graph {gr['median']:.3f} [{gr['min']:.3f}, "
              f"{gr['max']:.3f}] ms per model-step | speed-up over the eager stacked step "
              f"x{res['graph_speedup']:.3f} [{lo:.3f}, {hi:.3f}] | steps by path "
              f"{res['graph_path_steps']}" + (f" | {res['graph_note']}"
                                              if res["graph_note"] else ""))
    if args.json is not None:
        atomic_write_json(args.json, res)
    return 0
