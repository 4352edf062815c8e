"""``aensae llm harvest`` and ``aensae bench harvest`` (the work is in :mod:`aensae.llm`).

The ``aensae llm`` group is created by :func:`llm_group`, which later LLM commands call
too (it returns the group's sub-parsers, creating them once). Nothing here imports
transformers: the handlers import :mod:`aensae.llm` when they run, and a missing
``[llm]`` extra is reported as a one-line error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aensae.benchmarks._options import HelpFormatter

__all__ = ["llm_group", "register"]

_HOOKS = ("resid_post", "mlp_out", "attn_out")
_DTYPES = ("float32", "float16", "bfloat16")


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
    """Add ``aensae llm harvest`` and ``aensae bench harvest``."""
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
    p.add_argument("--dtype", default="float32", choices=_DTYPES,
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
    p.add_argument("--out", required=True, type=Path, help="cache folder")
    p.add_argument("--overwrite", action="store_true", help="delete a cache found in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar")
    p.set_defaults(func=_harvest_main)

    b = bench.add_parser("harvest", help="harvest tokens/s vs a bare forward pass",
                         formatter_class=HelpFormatter)
    b.add_argument("--model", default=None,
                   help="model to time (absent: smollm2-135m when installed, else "
                        "tiny-llama, random and offline)")
    b.add_argument("--layer", type=int, default=None,
                   help="block index (absent: 15 for SmolLM2, else the middle block)")
    b.add_argument("--hook", default="resid_post", choices=_HOOKS, help="hook point of the block")
    b.add_argument("--tokens", type=int, default=8192, help="tokens per timed harvest")
    b.add_argument("--repeats", type=int, default=3, help="timed repeats")
    b.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    b.add_argument("--ctx", type=int, default=128, help="tokens per window")
    b.add_argument("--text", default="python-docs", help="text source (as llm harvest)")
    b.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (absent: torch's own)")
    b.add_argument("--json", type=Path, default=None,
                   help="write the results here as JSON (absent: print only)")
    b.set_defaults(func=_bench_main)


def _fail(command: str, err: BaseException) -> int:
    print(f"aensae {command}: error: {err}", file=sys.stderr)
    return 2


def _harvest_main(args: argparse.Namespace) -> int:
    try:
        from aensae.llm.cache import HarvestConfig, harvest
    except ImportError as err:
        return _fail("llm harvest", err)
    try:
        cfg = HarvestConfig(model=args.model, layer=args.layer, hook=args.hook, text=args.text,
                            text_column=args.text_column, tokens=args.tokens, ctx=args.ctx,
                            batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                            revision=args.revision, split=args.split,
                            eval_fraction=args.eval_fraction, shard_windows=args.shard_windows,
                            shuffle_windows=args.shuffle_windows, keep_special=args.keep_special,
                            prepend_bos=args.prepend_bos, seed=args.seed)
        man = harvest(cfg, args.out, progress=args.progress, overwrite=args.overwrite)
    except ValueError as err:  # InputError and other bad input
        return _fail("llm harvest", err)
    norm = man["normalisation"]
    print(f"{man['tokens']} tokens x {man['d_in']} ({man['model']['name']} {man['hook']} "
          f"L{man['layer']}, {man['split']} split) in {len(man['shards'])} shard(s) -> "
          f"{args.out}; scalar normalisation c = {norm['scalar_constant']:.6g} "
          f"(mean token norm {norm['mean_norm']:.4g})")
    return 0


def _bench_main(args: argparse.Namespace) -> int:
    try:
        import torch

        from aensae.llm.bench import bench_harvest
    except ImportError as err:
        return _fail("bench harvest", err)
    from aensae._io import atomic_write_json

    if args.threads is not None:
        if args.threads < 1:
            return _fail("bench harvest", ValueError(f"--threads must be >= 1, got "
                                                     f"{args.threads}"))
        torch.set_num_threads(args.threads)
    for name in ("tokens", "repeats", "batch_size", "ctx"):
        if getattr(args, name) < 1:
            return _fail("bench harvest", ValueError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"))
    try:
        res = bench_harvest(args.model, args.layer, args.hook, args.tokens, args.repeats,
                            args.batch_size, args.ctx, args.text)
    except ValueError as err:
        return _fail("bench harvest", err)
    c = res["config"]
    print(f"{c['model']} {c['hook']} L{c['layer']}, {res['tokens_kept']} tokens x "
          f"{args.repeats}: bare forward {res['bare_tokens_per_s']:.0f} tok/s | harvest "
          f"{res['harvest_tokens_per_s']:.0f} tok/s | harvest/bare cost per token "
          f"x{res['ratio']:.3f}, min-based x{res['ratio_min']:.3f} (target <= 1.15; per "
          "repeat " + ", ".join(f"{r:.3f}" for r in res["ratios"]) + f") | without the "
          f"one-time text buffer fill ({res['text_fill_s']:.2f} s): x{res['ratio_steady']:.3f} | "
          f"in CPU seconds x{res['ratio_cpu']:.3f}")
    if args.json is not None:
        atomic_write_json(args.json, res)
    return 0
