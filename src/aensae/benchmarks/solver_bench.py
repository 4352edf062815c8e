r"""``aensae bench solvers``: exact-solver throughput against scikit-learn and cvxpy.

At the paper's scale (n=256, m=1024, k=16 non-negative codes U[1,3], no noise) and for
each rho, with lam2 = 0.05 and lam1 chosen per rho so exact codes hold about 16-32
non-zeros (the table ``aensae.benchmarks.geometry_cmd.DEFAULT_LAM1``, shared with
``aensae geometry``), it times in one process:

- the fast batched solver (:func:`aensae.solvers.solve`) on every signal;
- scikit-learn's fastest exact path -- multi-target ``ElasticNet(precompute=True)``,
  ``positive=True``, ``tol`` equal to ours -- on a subsample, both with its default BLAS
  threading and with one BLAS thread (threadpoolctl); the faster is the anchor;
- cvxpy (Clarabel, with polish) on a smaller subsample;

then extrapolates per-signal times (best of three passes where affordable), checks that
the three agree (codes and certified gaps), and prints signals/s, ratios against
scikit-learn and mean support sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

from aensae._io import check_output_file
from aensae._validation import InputError, check_int, check_rho, user_input
from aensae.benchmarks._options import add_command

__all__ = ["register", "run_solver_bench"]


def register(top: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Register ``aensae bench solvers``."""
    p = add_command(bench, "solvers", help="exact solver throughput vs scikit-learn and cvxpy",
                    doc=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1,000 signals and smaller anchor subsamples (about a minute)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write the result rows here as JSON (default: print only)")
    p.add_argument("--signals", type=int, default=None,
                   help="signals for the fast solver, >= 1 (default: 4000; 1000 with --quick)")
    p.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.9],
                   help="correlation levels, each in [0, 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of dictionary and signals (>= 0)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
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
    rows = run_solver_bench(rhos=args.rho, quick=args.quick, signals=args.signals,
                            seed=args.seed)
    if args.json is not None:
        from aensae._io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def run_solver_bench(
    rhos: list[float],
    *,
    quick: bool = False,
    signals: int | None = None,
    seed: int = 0,
    n: int = 256,
    m: int = 1024,
    k: int = 16,
    lam2: float = 0.05,
    tol: float = 1e-10,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """Run the benchmark and print a table; return JSON-ready rows (one per solver, rho).

    Timings are the best of ``repeats`` passes (the anchor at high rho: one pass, since
    a single pass of scikit-learn takes seconds there).
    """
    import math

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    import aensae
    from aensae.benchmarks.geometry_cmd import default_lam1
    from aensae.solvers import FastSolver, solve_cvxpy, solve_sklearn
    from aensae.synthetic import sample_signals, spiked_dictionary

    B = signals if signals is not None else (1000 if quick else 4000)
    n_sk = {True: (200, 100), False: (1000, 200)}[quick]  # (rho small, rho large)
    n_cvx = 3 if quick else 10
    rows: list[dict[str, Any]] = []
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    blas = ", ".join(sorted({f"{i['internal_api']}({i['num_threads']})"
                             for i in threadpool_info()}))
    print(f"aensae {aensae.__version__} | machine: {machine} | BLAS: {blas}")
    print(f"n={n} m={m} k={k} nonneg codes U[1,3], lam2={lam2}, tol={tol:g} (gap <= tol ||x||^2)")
    for rho in rhos:
        lam1 = default_lam1(rho)
        d = spiked_dictionary(n, m, rho, seed=seed)
        X, _ = sample_signals(d.D, B, k, seed=seed + 1)
        base = {"n": n, "m": m, "k": k, "rho": rho, "lam1": lam1, "lam2": lam2, "tol": tol}

        fast = FastSolver(d.D, lam1, lam2, nonneg=True, tol=tol)
        fast.solve(X[: min(64, B)])  # compile / warm caches outside the timing
        t_fast = math.inf
        for _ in range(repeats):  # best of `repeats` full passes, as for the anchor
            t0 = time.perf_counter()
            res = fast.solve(X)
            t_fast = min(t_fast, time.perf_counter() - t0)
        per_fast = t_fast / B

        ns = min(B, n_sk[0] if rho < 0.5 else n_sk[1])
        Xs = X[:ns]
        sk_runs = {}
        sk_repeats = repeats if rho < 0.5 else 1  # at high rho one pass takes seconds
        for label, limit in (("default threads", None), ("1 BLAS thread", 1)):
            best = math.inf
            for _ in range(sk_repeats):
                with threadpool_limits(limits=limit):
                    t0 = time.perf_counter()
                    sk = solve_sklearn(d.D, Xs, lam1, lam2, nonneg=True, tol=tol)
                    best = min(best, time.perf_counter() - t0)
            sk_runs[label] = (best, sk)
        sk_label = min(sk_runs, key=lambda key: sk_runs[key][0])
        t_sk, sk = sk_runs[sk_label]
        per_sk = t_sk / ns

        nc = min(B, n_cvx)
        t0 = time.perf_counter()
        cv = solve_cvxpy(d.D, X[:nc], lam1, lam2, nonneg=True, tol=tol)
        per_cv = (time.perf_counter() - t0) / nc

        diff_sk = float(np.max(np.abs(res.codes[:ns] - sk.codes)))
        diff_cv = float(np.max(np.abs(res.codes[:nc] - cv.codes)))
        entries = [
            ("aensae.fast", B, t_fast, per_fast, res, "measured"),
            (f"sklearn ({sk_label})", ns, per_sk * B, per_sk, sk, f"extrapolated from {ns}"),
            ("cvxpy+clarabel", nc, per_cv * B, per_cv, cv, f"extrapolated from {nc}"),
        ]
        print(f"\nrho={rho}: lam1={lam1:g}; fast vs sklearn max|dh|={diff_sk:.1e}, "
              f"fast vs cvxpy max|dh|={diff_cv:.1e}; sklearn: default threads "
              f"{sk_runs['default threads'][0] / ns * 1e3:.3f} ms/signal, 1 BLAS thread "
              f"{sk_runs['1 BLAS thread'][0] / ns * 1e3:.3f} ms/signal")
        print(f"{'solver':<32}{'signals':>8}{'s/1000':>10}{'signals/s':>12}{'vs sklearn':>12}"
              f"{'mean |S|':>10}{'certified':>11}{'max rel gap':>13}")
        for name, cnt, sec, per, r, note in entries:
            row = dict(base)
            row.update({
                "solver": name,
                "signals": B,
                "measured_signals": cnt,
                "timing": note,
                "seconds": sec,
                "signals_per_s": 1.0 / per,
                "ratio_vs_sklearn": per_sk / per,
                "max_rel_gap": float(np.max(r.rel_gap)),
                "certified_fraction": float(np.mean(r.certified)),
                "mean_support": float(np.mean(r.support_size)),
                "max_abs_diff_vs_fast": 0.0 if r is res else (diff_sk if r is sk else diff_cv),
                "machine": machine,
                "aensae_version": aensae.__version__,
            })
            rows.append(row)
            print(f"{name:<32}{cnt:>8}{per * 1e3:>10.3f}{1.0 / per:>12.0f}"
                  f"{per_sk / per:>12.2f}{row['mean_support']:>10.1f}"
                  f"{row['certified_fraction']:>11.3f}{row['max_rel_gap']:>13.1e}")
        if not res.all_certified:
            print(f"WARNING: {np.sum(~res.certified)} fast-solver codes not certified")
    return rows
