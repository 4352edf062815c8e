"""``aensae bench ...``: every performance bench's options, in one place.

Each handler checks its options (one-line errors through :func:`aensae.cli.main`) and
calls the bench in :mod:`aensae.benches`, which prints ratios against an anchor run in
the same process. The bench modules are imported here for their docstrings (the help
text); they import numpy, torch and the solvers only when a bench runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aensae._io import atomic_write_json, check_output_file
from aensae._validation import (
    InputError,
    check_device,
    check_int,
    check_real,
    check_rho,
    check_threads,
    user_input,
)
from aensae.benches import geometry, solvers, train
from aensae.cli._options import HelpFormatter, add_command
from aensae.cli.train import ARCH_CHOICES

__all__ = ["register"]

#: Hook points of ``aensae bench harvest`` (those of :data:`aensae.llm.models.HOOKS`).
HOOKS = ("resid_post", "mlp_out", "attn_out")
_SOLVERS_DOC = solvers.__doc__.split("\n\n")[0]

_SETUP_DOC = """Per-call setup of the exact solver on a fresh dictionary against its steady state.

For each signal kind (--tails) and problem (--cases: elastic net with --lam2, lasso,
and the elastic net with AEN-SAE population weights from pilot codes of the timed
signals), lam1 is calibrated on a separate sample so that the exact codes hold about
--l0 non-zeros. Then, passes
interleaved, best of --repeats: a fresh call solve(D, X, ...) that builds everything for
the dictionary (dense codes); the steady state, a second FastSolver.solve on the same
dictionary (dense, and CSR codes); the constructor alone. Setup share = (fresh - steady) /
fresh; init share = constructor / fresh; both again in CPU seconds of the process (all
its threads; less exposed than wall time to other processes on a shared machine, but
they count what idle threads burn while spinning). A fresh call writes its Gram matrix into memory
recycled from the previous solver of the same size (the calibration's, then the last
pass's), as the second and later SAEs of an evaluation do; the first solver of a process
also pays the page faults of that memory. scikit-learn solves the first --sklearn-signals
signals for the speed ratio and an agreement check. Every code is certified by its
duality gap (gap <= tol ||x||^2)."""


def register(top: Any, bench: Any) -> None:
    """Add every ``aensae bench`` subcommand to ``bench`` (``top`` is not used)."""
    p = add_command(bench, "solvers", help="exact solver throughput vs scikit-learn and cvxpy",
                    doc=_SOLVERS_DOC)
    p.add_argument("--quick", action="store_true",
                   help="1,000 signals and smaller anchor subsamples (about a minute)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write the result rows here as JSON (default: print only)")
    p.add_argument("--signals", type=int, default=None,
                   help="signals for the fast solver, >= 1 (default: 4000; 1000 with --quick)")
    p.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.9],
                   help="correlation levels, each in [0, 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of dictionary and signals (>= 0)")
    p.set_defaults(func=_solvers_main)

    q = add_command(bench, "solver-setup",
                    help="exact solver setup on a fresh dictionary vs steady state and sklearn",
                    doc=_SETUP_DOC)
    q.add_argument("--signals", type=int, default=4096, help="signals per call, >= 1")
    q.add_argument("--atoms", type=int, default=4096, help="dictionary atoms (latents) m, >= 2")
    q.add_argument("--d-in", type=int, default=576,
                   help="signal dimension n, >= 2 (576: SmolLM2-135M's residual stream)")
    q.add_argument("--rho", type=float, default=0.0,
                   help="spike weight of the dictionary in [0, 1); 0 gives unit-norm Gaussian "
                        "atoms")
    q.add_argument("--active", type=int, default=32,
                   help="atoms in each signal's generating combination, in [1, atoms]")
    q.add_argument("--tails", choices=solvers.TAILS, nargs="+", default=list(solvers.TAILS),
                   help="signal kinds: light (uniform atom use, exponential magnitudes, Gaussian "
                        "noise) or heavy (Zipf atom use, log-normal magnitudes and norms, "
                        "Student-t noise, as LLM activations)")
    q.add_argument("--cases", choices=solvers.SETUP_CASES, nargs="+",
                   default=list(solvers.SETUP_CASES),
                   help="problems to time")
    q.add_argument("--l0", type=float, default=40.0,
                   help="target mean L0 of the exact codes, in (0, atoms)")
    q.add_argument("--lam2", type=float, default=0.01,
                   help="l2 penalty of the elastic-net and adaptive cases, >= 0")
    q.add_argument("--sklearn-signals", type=int, default=32,
                   help="signals solved by scikit-learn for the speed ratio, >= 0 (0 skips it)")
    q.add_argument("--repeats", type=int, default=3, help="timed passes (best kept), >= 1")
    q.add_argument("--tol", type=float, default=1e-10,
                   help="certificate tolerance: gap <= tol ||x||^2, in (0, 1)")
    q.add_argument("--seed", type=int, default=0, help="seed of dictionary and signals (>= 0)")
    q.add_argument("--json", metavar="PATH", default=None,
                   help="write the result rows here as JSON (default: print only)")
    q.set_defaults(func=_setup_main)

    intro, formulas = train.__doc__.split("\n\n")[1:3]
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
    b.set_defaults(func=_train_main)

    b = add_command(bench, "geometry", help="local Hoffman constants: block vs dense",
                    doc=geometry.__doc__.split("\n\n")[1])
    b.add_argument("--json", default=None, metavar="PATH",
                   help="write the result here as JSON (default: print only)")
    b.add_argument("--samples", type=int, default=10_000, help="active sets timed (>= 1)")
    b.add_argument("--dense", type=int, default=16,
                   help="active sets also computed densely, in [1, samples]")
    b.add_argument("--n", type=int, default=256, help="signal dimension (>= 2)")
    b.add_argument("--m", type=int, default=1024, help="atoms (>= 20)")
    b.add_argument("--rho", type=float, default=0.5, help="spike correlation, in [0, 1)")
    b.add_argument("--lam1", type=float, default=0.5, help="l1 penalty, exact scaling (> 0)")
    b.add_argument("--lam2", type=float, default=0.05, help="l2 penalty, exact scaling (>= 0)")
    b.add_argument("--seed", type=int, default=0, help="seed (>= 0)")
    b.set_defaults(func=_geometry_main)

    b = bench.add_parser("harvest", help="harvest tokens/s vs a bare forward pass",
                         formatter_class=HelpFormatter)
    b.add_argument("--model", default=None,
                   help="model to time (absent: smollm2-135m when installed, else "
                        "tiny-llama, random and offline)")
    b.add_argument("--layer", type=int, default=None,
                   help="block index (absent: 15 for SmolLM2, else the middle block)")
    b.add_argument("--hook", default="resid_post", choices=HOOKS, help="hook point of the block")
    b.add_argument("--tokens", type=int, default=8192, help="tokens per timed harvest")
    b.add_argument("--repeats", type=int, default=3, help="timed repeats")
    b.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    b.add_argument("--ctx", type=int, default=128, help="tokens per window")
    b.add_argument("--text", default="python-docs", help="text source (as llm harvest)")
    b.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (absent: torch's own)")
    b.add_argument("--json", type=Path, default=None,
                   help="write the results here as JSON (absent: print only)")
    b.set_defaults(func=_harvest_main)

    b = add_command(bench, "llm-eval", help="k SAEs spliced together vs k separate evaluations",
                    doc="Seconds of one spliced evaluation of k SAEs over those of k "
                        "separate evaluations, in the same process (ratio < 1 is a saving).")
    b.add_argument("--k", type=int, default=4, help="SAEs (>= 1)")
    b.add_argument("--tokens", type=int, default=4096, help="eval tokens (>= 1)")
    b.add_argument("--model", default=None,
                   help="model (absent: a tiny random Llama, offline)")
    b.add_argument("--d-sae", type=int, default=256, help="latents per SAE (>= 1)")
    b.add_argument("--ctx", type=int, default=64, help="tokens per window (>= 2)")
    b.add_argument("--repeats", type=int, default=5, help="timed repeats (>= 1)")
    b.add_argument("--json", metavar="PATH", default=None,
                   help="write the results here as JSON (absent: print only)")
    b.set_defaults(func=_llm_eval_main)


def _solvers_main(args: argparse.Namespace) -> int:
    with user_input():
        for rho in args.rho:
            check_rho(rho, "--rho")
        if args.signals is not None:
            check_int("--signals", args.signals, low=1)
        check_int("--seed", args.seed, low=0)
    if len(set(args.rho)) != len(args.rho):
        raise InputError(f"--rho: values must not repeat, got {args.rho}")
    if args.json is not None:
        check_output_file("--json", args.json)
    from aensae.benches.solvers import run_solver_bench

    rows = run_solver_bench(rhos=args.rho, quick=args.quick, signals=args.signals,
                            seed=args.seed)
    if args.json is not None:
        from aensae._io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _setup_main(args: argparse.Namespace) -> int:
    with user_input():
        check_int("--signals", args.signals, low=1)
        atoms = check_int("--atoms", args.atoms, low=2)
        check_int("--d-in", args.d_in, low=2)
        check_rho(args.rho, "--rho")
        check_int("--active", args.active, low=1, high=atoms)
        check_real("--l0", args.l0, low=0.0, high=float(atoms), low_inclusive=False,
                   high_inclusive=False)
        check_real("--lam2", args.lam2, low=0.0)
        check_int("--sklearn-signals", args.sklearn_signals, low=0)
        check_int("--repeats", args.repeats, low=1)
        check_real("--tol", args.tol, low=0.0, high=1.0, low_inclusive=False,
                   high_inclusive=False)
        check_int("--seed", args.seed, low=0)
    for flag, values in (("--tails", args.tails), ("--cases", args.cases)):
        if len(set(values)) != len(values):
            raise InputError(f"{flag}: values must not repeat, got {' '.join(values)}")
    if args.json is not None:
        check_output_file("--json", args.json)
    from aensae.benches.solvers import run_setup_bench

    rows = run_setup_bench(
        signals=args.signals, atoms=args.atoms, d_in=args.d_in, rho=args.rho,
        active=args.active, tails=args.tails, cases=args.cases, l0=args.l0, lam2=args.lam2,
        sklearn_signals=args.sklearn_signals, repeats=args.repeats, tol=args.tol,
        seed=args.seed)
    if args.json is not None:
        from aensae._io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _train_main(args: argparse.Namespace) -> int:
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
        from aensae.saes.training.trainer import resolve_device

        if resolve_device(args.device).type != "cuda":
            raise InputError(f"--graph captures CUDA graphs: it needs a CUDA --device, got "
                             f"{args.device!r}")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from aensae.benches.train import bench_train

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


def _write(path: Path | None, record: dict[str, Any]) -> None:
    if path is not None:
        atomic_write_json(path, record)
        print(f"wrote {path}")


def _geometry_main(args: argparse.Namespace) -> int:
    with user_input():
        check_int("--samples", args.samples, low=1)
        check_int("--dense", args.dense, low=1, high=args.samples)
        check_int("--n", args.n, low=2)
        check_int("--m", args.m, low=20)  # active sets of up to 20 atoms
        check_rho(args.rho, "--rho")
        check_real("--lam1", args.lam1, low=0.0, low_inclusive=False)
        check_real("--lam2", args.lam2, low=0.0)
        check_int("--seed", args.seed, low=0)
    if args.json is not None:
        check_output_file("--json", args.json)
    from aensae.benches.geometry import run_geometry_bench

    record = run_geometry_bench(samples=args.samples, dense=args.dense, n=args.n, m=args.m,
                                rho=args.rho, lam1=args.lam1, lam2=args.lam2, seed=args.seed)
    _write(args.json, record)
    return 0


def _harvest_main(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    for name in ("tokens", "repeats", "batch_size", "ctx"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got "
                             f"{getattr(args, name)}")
    try:
        import torch

        from aensae.benches.harvest import bench_harvest
    except ImportError as err:
        raise InputError(str(err)) from None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = bench_harvest(args.model, args.layer, args.hook, args.tokens, args.repeats,
                        args.batch_size, args.ctx, args.text)
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


def _llm_eval_main(args: argparse.Namespace) -> int:
    with user_input():
        check_int("--k", args.k, low=1)
        check_int("--tokens", args.tokens, low=1)
        check_int("--d-sae", args.d_sae, low=1)
        check_int("--ctx", args.ctx, low=2)
        check_int("--repeats", args.repeats, low=1)
    if args.json is not None:
        check_output_file("--json", args.json)
    try:
        from aensae.benches.llm_eval import bench_llm_eval
    except ImportError as err:
        raise InputError(str(err)) from None
    res = bench_llm_eval(args.k, args.tokens, model=args.model, d_sae=args.d_sae,
                         ctx=args.ctx, repeats=args.repeats)
    c = res["config"]
    print(f"{c['model']} L{c['layer']}, {c['tokens']} tokens, {args.k} SAEs of {c['d_sae']}: "
          f"joint {min(res['joint_s']):.2f} s vs {args.k} separate "
          f"{min(res['separate_s']):.2f} s: ratio x{res['ratio']:.3f} (min-based "
          f"x{res['ratio_min']:.3f}; in CPU seconds x{res['ratio_cpu']:.3f}; per repeat "
          + ", ".join(f"{r:.3f}" for r in res["ratios"]) + ")")
    if args.json is not None:
        atomic_write_json(args.json, res)
    return 0
