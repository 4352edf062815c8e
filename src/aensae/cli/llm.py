"""``aensae llm ...``: harvest, train and eval (the work is in :mod:`aensae.llm`).

``aensae llm train --cache CACHE --arch ARCH [--arch ARCH ...] --d-sae M --steps N
--batch-size B --out DIR`` trains one SAE per architecture, and per combination of the
``--sweep NAME=V1,V2`` values, all on the same batches in one pass. A hyperparameter
option (--l1, --k-top, --set ...) applies to every --arch that has that hyperparameter;
one that no --arch has is an error. Each SAE is written to DIR/NAME (NAME is the
architecture followed by its swept values, e.g. relu_l1-l1=0.01), with the run in
DIR/run.json; a killed run resumes from DIR/checkpoint.pt when rerun.

``aensae llm eval --sae DIR [--sae DIR ...] --model M --text SRC --tokens N`` splices
each SAE into the model at the hook it was trained on, on the eval split of the text,
and reports per SAE L0, dead fraction, explained variance, MSE, the CE of the clean,
spliced, zero- and mean-ablated passes, ce_loss_score (both baselines), KL and kl_score,
and the reference's defective splice (ce_loss_score_unnormalised_splice); for l1-family
SAEs, exact certified codes on --exact-tokens tokens and the Lipschitz and Hoffman
summaries of the dictionary on --geometry-tokens of them. An SAE trained on another
model or hook is an error unless --force (then a warning).

``aensae llm harvest`` runs a language model on text and caches the activations of one
hook point (:func:`aensae.llm.cache.harvest`). Nothing here imports transformers: the
handlers import :mod:`aensae.llm` when they run, and a missing ``[llm]`` extra is
reported as a one-line error.
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path
from typing import Any

from aensae._dtypes import MODEL_DTYPES
from aensae._io import check_output_dir
from aensae._validation import InputError, check_device, check_int, check_real, user_input
from aensae.cli._options import HelpFormatter, add_command
from aensae.cli.train import (
    ARCH_CHOICES,
    add_hyperparameter_options,
    add_optimiser_options,
    add_run_options,
    check_optimiser_args,
    hyper_from_args,
    parse_set,
)

__all__ = ["llm_group", "register", "sae_specs"]

_HOOKS = ("resid_post", "mlp_out", "attn_out")


def llm_group(top: Any) -> Any:
    """The sub-parsers of ``aensae llm`` (created on the first call)."""
    parser = top.choices.get("llm")
    if parser is None:
        parser = top.add_parser("llm", help="language-model activations (needs the llm extra)",
                                description="Activations from real language models.")
        sub = parser.add_subparsers(dest="llm_command", metavar="LLM_COMMAND")
        sub.required = True
        parser.set_defaults(_llm_sub=sub)
    return parser.get_default("_llm_sub")


def register(top: Any, bench: Any) -> None:
    """Add ``aensae llm harvest``, ``aensae llm train`` and ``aensae llm eval`` (``bench``
    is not used)."""
    p = llm_group(top).add_parser(
        "harvest", help="write a hook point's activations to a sharded, resumable cache",
        description="Run a language model on text and cache the activations of one hook "
                    "point (sharded safetensors + manifest.json; rerun to resume).",
        formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help="alias (smollm2-135m), .gguf file, model folder or hub name")
    p.add_argument("--layer", required=True, type=int, help="block index, 0-based")
    p.add_argument("--hook", default="resid_post", choices=_HOOKS, help="hook point of the block")
    p.add_argument("--text", default="python-docs",
                   help="python-docs, hf:NAME[:CONFIG][:SPLIT], or a file or folder of "
                        ".txt/.md/.jsonl/.parquet")
    p.add_argument("--text-column", default="text", help="column of .jsonl/.parquet/hf text")
    p.add_argument("--tokens", required=True, type=int, help="tokens to cache")
    p.add_argument("--ctx", type=int, default=128, help="tokens per window")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--dtype", default="float32", choices=MODEL_DTYPES,
                   help="dtype of the model and the cached activations")
    p.add_argument("--device", default="auto",
                   help="torch device: auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--revision", default=None, help="hub revision (default: the newest)")
    p.add_argument("--split", default="train", choices=("train", "eval"),
                   help="split of the documents to read")
    p.add_argument("--eval-fraction", type=float, default=0.05,
                   help="share of documents (by hash of their id) in the eval split")
    p.add_argument("--shard-windows", type=int, default=256, help="windows per shard")
    p.add_argument("--shuffle-windows", type=int, default=1024,
                   help="windows in the shuffle buffer of the text stream")
    p.add_argument("--keep-special", action="store_true",
                   help="keep special tokens (BOS/EOS/pad) in the cache")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True,
                   help="start each window with BOS when the tokenizer adds nothing itself "
                        "(the window's first position is an attention sink)")
    p.add_argument("--seed", type=int, default=0, help="seed of the window shuffle")
    p.add_argument("--out", required=True, help="cache folder")  # a str: Path("") is "."
    p.add_argument("--overwrite", action="store_true",
                   help="replace a cache found in --out (the old one stays until the new "
                        "one is complete)")
    _add_max_memory(p, "the harvest")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar")
    p.set_defaults(func=_harvest_main)
    _register_train_eval(top)


def _add_max_memory(p: Any, what: str) -> None:
    p.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                   help=f"refuse, before any work, {what} when its estimated memory "
                        "exceeds this many GiB (absent: the memory available on this "
                        "machine)")


def _check_max_memory(value: float | None) -> None:
    if value is not None:
        with user_input():
            check_real("--max-memory", value, low=0.0, low_inclusive=False)


def _harvest_main(args: argparse.Namespace) -> int:
    try:
        from aensae.llm.cache import HarvestConfig, harvest
    except ImportError as err:
        raise InputError(str(err)) from None
    _check_max_memory(args.max_memory)
    check_device("--device", args.device)
    cfg = HarvestConfig(model=args.model, layer=args.layer, hook=args.hook, text=args.text,
                        text_column=args.text_column, tokens=args.tokens, ctx=args.ctx,
                        batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                        revision=args.revision, split=args.split,
                        eval_fraction=args.eval_fraction, shard_windows=args.shard_windows,
                        shuffle_windows=args.shuffle_windows, keep_special=args.keep_special,
                        prepend_bos=args.prepend_bos, seed=args.seed)
    out = check_output_dir("--out", args.out)  # before the model loads (harvest checks it too)
    man = harvest(cfg, out, progress=args.progress, overwrite=args.overwrite,
                  max_memory=args.max_memory)
    norm = man["normalisation"]
    print(f"{man['tokens']} tokens x {man['d_in']} ({man['model']['name']} {man['hook']} "
          f"L{man['layer']}, {man['split']} split) in {len(man['shards'])} shard(s) -> "
          f"{args.out}; scalar normalisation c = {norm['scalar_constant']:.6g} "
          f"(mean token norm {norm['mean_norm']:.4g})")
    return 0


def _register_train_eval(top: Any) -> None:
    """Add ``aensae llm train`` and ``aensae llm eval``."""
    p = add_command(llm_group(top), "train",
                    help="train SAEs on an activation cache (several in one pass)",
                    doc=__doc__.split("\n\n")[1])
    p.add_argument("--cache", required=True, help="activation cache written by llm harvest")
    p.add_argument("--arch", required=True, action="append", choices=ARCH_CHOICES,
                   help="SAE architecture; repeat to train several on the same batches")
    p.add_argument("--d-sae", required=True, type=int, help="SAE latents (>= 1)")
    p.add_argument("--steps", required=True, type=int, help="optimizer steps (>= 1)")
    p.add_argument("--batch-size", required=True, type=int, help="tokens per step (>= 1)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created; must not be a file)")
    add_optimiser_options(p)
    add_hyperparameter_options(p, "hyperparameters (each applies to the --arch that have it)")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="train one SAE per value (per --arch that has NAME; several "
                        "--sweep give their product), repeatable")
    p.add_argument("--normalisation", default="scalar", choices=("scalar", "per_token", "none"),
                   help="activation normalisation seen by the SAEs (scalar: the cache's "
                        "constant)")
    p.add_argument("--dead-window", type=int, default=None,
                   help="dead-latent window in tokens (>= 1; absent: 10M tokens, or the "
                        "whole run when shorter)")
    p.add_argument("--seed", type=int, default=0, help="seed of the models and the batches")
    add_run_options(p, "SAEs")
    _add_max_memory(p, "training")
    p.set_defaults(func=_train_main)

    e = add_command(llm_group(top), "eval", help="spliced evaluation of SAEs (CE, KL, EV, L0)",
                    doc=__doc__.split("\n\n")[2])
    e.add_argument("--sae", required=True, action="append", metavar="DIR",
                   help="SAE folder (cfg.json + sae.safetensors) or an llm train output "
                        "folder (all its SAEs); repeatable")
    e.add_argument("--model", required=True,
                   help="alias (smollm2-135m), .gguf file, model folder or hub name")
    e.add_argument("--text", default="python-docs",
                   help="python-docs, hf:NAME[:CONFIG][:SPLIT], or a file or folder")
    e.add_argument("--tokens", required=True, type=int, help="eval tokens (data tokens, >= 1)")
    e.add_argument("--layer", type=int, default=None,
                   help="block index (absent: the one the SAEs were trained on)")
    e.add_argument("--hook", default=None, choices=("resid_post", "mlp_out", "attn_out"),
                   help="hook point (absent: the one the SAEs were trained on)")
    e.add_argument("--ctx", type=int, default=128, help="tokens per window")
    e.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    e.add_argument("--text-column", default="text", help="column of .jsonl/.parquet/hf text")
    e.add_argument("--eval-fraction", type=float, default=0.05,
                   help="share of documents in the eval split (as the harvest)")
    e.add_argument("--keep-special", action="store_true",
                   help="score special tokens too (BOS/EOS/pad)")
    e.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True,
                   help="start each window with BOS when the tokenizer adds nothing itself")
    e.add_argument("--seed", type=int, default=0, help="seed of the window shuffle")
    e.add_argument("--dtype", default="float32", choices=MODEL_DTYPES,
                   help="dtype of the model")
    e.add_argument("--device", default="auto",
                   help="torch device: auto (CUDA when present), cpu, cuda, ...")
    e.add_argument("--revision", default=None, help="hub revision (absent: the newest)")
    e.add_argument("--exact-tokens", type=int, default=4096,
                   help="eval tokens on which each l1-family SAE is compared with exact "
                        "certified codes (>= 0; 0: none; at most the eval tokens)")
    e.add_argument("--exact-tol", type=float, default=1e-10,
                   help="certificate tolerance of the exact codes (relative duality gap, > 0)")
    e.add_argument("--geometry-tokens", type=int, default=None,
                   help="exact tokens on which each l1-family SAE's dictionary gets the "
                        "synthetic grid's Lipschitz and Hoffman summaries (>= 0, at most "
                        "--exact-tokens; 0: none; absent: 256, or all exact tokens when fewer)")
    e.add_argument("--force", action="store_true",
                   help="evaluate an SAE trained on another model or hook (a warning, not "
                        "an error)")
    e.add_argument("--json", metavar="PATH", default=None,
                   help="write the results here as JSON (absent: print only)")
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar")
    e.set_defaults(func=_eval_main)


def _parse_sweep(items: list[str]) -> dict[str, list[float | int]]:
    out: dict[str, list[float | int]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise InputError(f"--sweep expects NAME=V1,V2,..., got {item!r}")
        if name in out:
            raise InputError(f"--sweep {name}: given twice")
        parsed = [parse_set([f"{name}={v}"])[name] for v in values.split(",")]
        if len(set(parsed)) != len(parsed):
            raise InputError(f"--sweep {name}: a value is repeated in {values!r}")
        out[name] = parsed
    return out


def sae_specs(args: argparse.Namespace) -> list[Any]:
    """The SAEs of an ``aensae llm train`` command line, validated (InputError naming the
    option otherwise)."""
    from aensae.llm.training import SAESpec, sae_name
    from aensae.saes import ARCHITECTURES

    archs = list(args.arch)
    if len(set(archs)) != len(archs):
        raise InputError(f"--arch: an architecture is repeated in {archs}; use --sweep to "
                         "train one several times")
    fixed = hyper_from_args(args)
    sweep = _parse_sweep(args.sweep)
    for name in [*fixed, *sweep]:
        if name in fixed and name in sweep:
            raise InputError(f"hyperparameter {name} is both fixed and swept (--sweep)")
        if not any(name in ARCHITECTURES[a].HYPER for a in archs):
            raise InputError(f"hyperparameter {name}: no --arch among {', '.join(archs)} "
                             "has it")
    specs = []
    for arch in archs:
        own = ARCHITECTURES[arch].HYPER
        mine = {k: v for k, v in fixed.items() if k in own}
        keys = [k for k in sweep if k in own]
        for values in itertools.product(*(sweep[k] for k in keys)):
            swept = dict(zip(keys, values, strict=True))
            with user_input(f"--arch {arch} hyperparameters: "):
                hyper = ARCHITECTURES[arch].validate_hyper({**mine, **swept})
            specs.append(SAESpec(arch, hyper, sae_name(arch, swept)))
    return specs


def _train_main(args: argparse.Namespace) -> int:
    with user_input():
        check_int("--d-sae", args.d_sae, low=1)
        check_int("--steps", args.steps, low=1)
        check_int("--batch-size", args.batch_size, low=1)
        check_optimiser_args(args)
        if args.dead_window is not None:
            check_int("--dead-window", args.dead_window, low=1)
        check_int("--seed", args.seed, low=0)
        check_int("--checkpoint-every", args.checkpoint_every, low=0)
    _check_max_memory(args.max_memory)
    try:
        from aensae.llm.training import TrainRun, train_on_cache
    except ImportError as err:
        raise InputError(str(err)) from None
    specs = sae_specs(args)
    check_device("--device", args.device)
    out = check_output_dir("--out", args.out)
    run = TrainRun(cache=Path(args.cache), specs=specs, d_sae=args.d_sae, steps=args.steps,
                   batch_size=args.batch_size, out=out, lr=args.lr,
                   lr_warmup_steps=args.lr_warmup_steps, grad_clip=args.grad_clip,
                   dead_window=args.dead_window, normalisation=args.normalisation,
                   seed=args.seed, checkpoint_every=args.checkpoint_every,
                   device=args.device, dtype=args.dtype, progress=args.progress,
                   overwrite=args.overwrite, max_memory=args.max_memory)
    record = train_on_cache(run)

    if os.environ.get("RANK", "0") != "0":  # a data-parallel rank other than 0
        return 0
    for name, r in record["saes"].items():
        print(f"{name}: final loss {r['train_loss_last']:.5g}  dead(final window of "
              f"{record['dead_window_tokens']} tokens) {r['dead']['final']}  -> "
              f"{out / name}")
    return 0


def _eval_main(args: argparse.Namespace) -> int:
    from aensae._io import check_output_file

    with user_input():
        check_int("--tokens", args.tokens, low=1)
        check_int("--ctx", args.ctx, low=2)
        check_int("--batch-size", args.batch_size, low=1)
        check_int("--seed", args.seed, low=0)
        check_int("--exact-tokens", args.exact_tokens, low=0)
        check_real("--exact-tol", args.exact_tol, low=0.0, low_inclusive=False)
        if args.geometry_tokens is not None:
            check_int("--geometry-tokens", args.geometry_tokens, low=0)
        if args.layer is not None:
            check_int("--layer", args.layer, low=0)
    if not 0.0 < args.eval_fraction < 1.0:
        raise InputError(f"--eval-fraction must lie in (0, 1), got {args.eval_fraction!r}")
    if args.geometry_tokens is not None and args.geometry_tokens > args.exact_tokens:
        raise InputError(f"--geometry-tokens must be at most --exact-tokens "
                         f"({args.exact_tokens}): the summaries are taken on exact codes, "
                         f"got {args.geometry_tokens}")
    if args.json is not None:
        check_output_file("--json", args.json)
    try:
        from aensae.llm.eval_run import EvalRun, run_eval
    except ImportError as err:
        raise InputError(str(err)) from None
    check_device("--device", args.device)
    run = EvalRun(
        sae=tuple(args.sae), model=args.model, tokens=args.tokens, text=args.text,
        layer=args.layer, hook=args.hook, ctx=args.ctx, batch_size=args.batch_size,
        text_column=args.text_column, eval_fraction=args.eval_fraction,
        keep_special=args.keep_special, prepend_bos=args.prepend_bos, seed=args.seed,
        dtype=args.dtype, device=args.device, revision=args.revision,
        exact_tokens=args.exact_tokens, exact_tol=args.exact_tol,
        geometry_tokens=args.geometry_tokens, force=args.force, json=args.json,
        progress=args.progress)
    res = run_eval(run)
    print(f"{res['model']['name']} {res['hook']} L{res['layer']}: {res['tokens']} tokens, CE clean "
          f"{res['ce_clean']:.4f} zero {res['ce_zero']:.4f} mean "
          f"{res['ce_mean_ablation']:.4f}")
    for name, r in res["saes"].items():
        print(f"  {name}: L0 {r['l0']:.2f}  dead {r['dead_fraction']:.3f}  EV "
              f"{r['explained_variance']:.4f}  CE {r['ce_spliced']:.4f}  score "
              f"{r['ce_loss_score']:.4f} (mean-abl. {r['ce_loss_score_mean_ablation']:.4f})  "
              f"KL {r['kl_spliced']:.4f}  kl_score {r['kl_score']:.4f}  unnormalised-splice "
              f"score {r['ce_loss_score_unnormalised_splice']:.4f}")
        ex = r.get("exact")
        if ex:
            print(f"    exact codes on {ex['exact_tokens']} tokens ({ex['exact_certified']:.1%} "
                  f"certified): L0 {ex['exact_l0']:.2f} EV {ex['exact_explained_variance']:.4f}"
                  f" | encoder L0 {ex['encoder_l0']:.2f} EV "
                  f"{ex['encoder_explained_variance']:.4f} | amortization gap median "
                  f"{ex['amort_gap_median']:.4g} (relative {ex['amort_rel_median']:.4g}) | "
                  f"support F1 {ex['amort_support_f1']:.3f}")
        if r.get("geometry_tokens", 0) > 0:
            print(f"    geometry on {r['geometry_tokens']} tokens: Lipschitz (median) enet "
                  f"{r['lip_exact_enet_median']:.4g} lasso {r['lip_exact_lasso_median']:.4g} "
                  f"({r['lip_exact_lasso_ninf']} infinite), Hoffman median "
                  f"{r['hoffman_median']:.4g} max {r['hoffman_max']:.4g}")
        elif r.get("geometry_note"):
            print(f"    geometry: {r['geometry_note']}")
    return 0
