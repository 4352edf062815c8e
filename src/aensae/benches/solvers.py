r"""``aensae bench solvers`` and ``aensae bench solver-setup``: exact-solver speed.

``aensae bench solvers``: exact-solver throughput against scikit-learn and cvxpy.

At the paper's scale (n=256, m=1024, k=16 non-negative codes U[1,3], no noise) and for
each rho, with lam2 = 0.05 and lam1 chosen per rho so exact codes hold about 16-32
non-zeros (the table ``aensae.synthetic.penalties.DEFAULT_LAM1``, shared with
``aensae geometry``), it times in one process:

- the fast batched solver (:func:`aensae.solvers.solve`) on every signal;
- scikit-learn's fastest exact path -- multi-target ``ElasticNet(precompute=True)``,
  ``positive=True``, ``tol`` equal to ours -- on a subsample, both with its default BLAS
  threading and with one BLAS thread (threadpoolctl); the faster is the anchor;
- cvxpy (Clarabel, with polish) on a smaller subsample;

then extrapolates per-signal times (best of three passes where affordable), checks that
the three agree (codes and certified gaps), and prints signals/s, ratios against
scikit-learn and mean support sizes.

``aensae bench solver-setup`` (:func:`run_setup_bench`): what a fresh dictionary costs.
Every SAE decoder is a new dictionary, so the per-call setup of :func:`aensae.solvers.solve`
counts; this command separates it from the steady state, in one process, at an SAE's
size (default d_in 576 as SmolLM2-135M's residual stream, 4,096 latents, 4,096 signals).
It uses only the public solver API, so the same file also measures an older checkout.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

__all__ = ["SETUP_CASES", "TAILS", "run_setup_bench", "run_solver_bench", "setup_bench_data"]

SETUP_CASES = ("elastic-net", "lasso", "adaptive")
TAILS = ("light", "heavy")


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
    from aensae.solvers import FastSolver, solve_cvxpy, solve_sklearn
    from aensae.synthetic import sample_signals, spiked_dictionary
    from aensae.synthetic.penalties import default_lam1

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


def setup_bench_data(
    n: int, m: int, B: int, active: int, rho: float, tails: str, seed: int
) -> tuple[Any, Any]:
    r"""Dictionary ``D`` (n, m) and signals ``X`` (B, n) of :func:`run_setup_bench`.

    ``D`` is :func:`aensae.synthetic.spiked_dictionary` (unit-norm atoms; Gaussian at
    ``rho = 0``). Each signal is ``x = sum_{i in S} s_i a_i D_i + eps`` over ``active``
    distinct atoms ``S``, random signs ``s_i``:

    - ``light``: ``S`` uniform, ``a_i = 1 + Exp(1)``, ``eps`` Gaussian;
    - ``heavy``: ``S`` drawn with Zipf probabilities ``p_i ~ 1 / rank_i`` (a few latents
      fire often, most rarely), ``a_i`` log-normal(0, 1), Student-t(3) noise, and the
      whole signal scaled by a log-normal(0, 0.5) factor (token norms vary).

    The noise is scaled to a tenth of the clean signal's norm per signal.
    """
    import numpy as np

    from aensae.synthetic import spiked_dictionary

    D = spiked_dictionary(n, m, rho, seed=seed).D
    rng = np.random.default_rng([seed, TAILS.index(tails) + 1])
    p = None
    if tails == "heavy":
        p = 1.0 / np.arange(1, m + 1)
        p = (p / p.sum())[rng.permutation(m)]
    H = np.zeros((B, m))
    for b in range(B):
        support = rng.choice(m, active, replace=False, p=p)
        mag = (rng.lognormal(0.0, 1.0, active) if tails == "heavy"
               else 1.0 + rng.exponential(1.0, active))
        H[b, support] = mag * rng.choice((-1.0, 1.0), active)
    X = H @ D.T
    noise = rng.standard_t(3, (B, n)) if tails == "heavy" else rng.standard_normal((B, n))
    noise *= 0.1 * np.linalg.norm(X, axis=1, keepdims=True) / np.maximum(
        np.linalg.norm(noise, axis=1, keepdims=True), 1e-300)
    X += noise
    if tails == "heavy":
        X *= rng.lognormal(0.0, 0.5, (B, 1))
    return D, X


def _calibrate_lam1(D: Any, Xc: Any, lam2: float, weights: Any, target: float,
                    tol: float) -> float:
    """lam1 with mean L0 of the exact codes within 10% of ``target`` on ``Xc``: halving
    from the median ``lam_max`` until L0 reaches the target, then bisection on a log scale
    (probes stay near the target: a tiny lam1 gives huge supports, slow to solve)."""
    import warnings

    import numpy as np

    from aensae.solvers import UncertifiedWarning, lam_max, solve

    def l0_at(lam1: float) -> float:
        with warnings.catch_warnings():  # probes only
            warnings.simplefilter("ignore", UncertifiedWarning)
            return float(np.mean(solve(D, Xc, lam1, lam2, weights, tol=tol,
                                       output="csr").support_size))

    hi = float(np.median(lam_max(D, Xc, weights)))
    lo = hi / 2
    for _ in range(40):
        l0 = l0_at(lo)
        if abs(l0 - target) <= 0.1 * target:
            return lo
        if l0 > target:
            break
        hi, lo = lo, lo / 2
    lam1 = lo
    for _ in range(30):
        lam1 = float(np.sqrt(lo * hi))
        l0 = l0_at(lam1)
        if abs(l0 - target) <= 0.1 * target:
            break
        if l0 > target:
            lo = lam1
        else:
            hi = lam1
    return lam1


def _timed(wall: dict[str, float], cpu: dict[str, float], key: str, fn: Any, *args: Any,
           **kwargs: Any) -> Any:
    """Call ``fn``; keep the least wall and process CPU seconds under ``key``."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    cpu[key] = min(cpu[key], time.process_time() - c0)
    wall[key] = min(wall[key], time.perf_counter() - w0)
    return out


def run_setup_bench(
    *,
    signals: int = 4096,
    atoms: int = 4096,
    d_in: int = 576,
    rho: float = 0.0,
    active: int = 32,
    tails: list[str] | tuple[str, ...] = TAILS,
    cases: list[str] | tuple[str, ...] = SETUP_CASES,
    l0: float = 40.0,
    lam2: float = 0.01,
    sklearn_signals: int = 32,
    repeats: int = 3,
    tol: float = 1e-10,
    seed: int = 0,
    calibration_signals: int = 256,
) -> list[dict[str, Any]]:
    """Time the fast solver's setup against its steady state; print a table, return rows.

    Per row (one signal kind and problem): ``t_init`` the constructor alone, ``t_fresh``
    a whole :func:`aensae.solvers.solve` call on the dictionary (dense codes), ``t_steady``
    and ``t_steady_csr`` a second :meth:`FastSolver.solve` on it (dense / CSR codes), each
    the best of ``repeats`` interleaved passes; ``setup_share = (t_fresh - t_steady) /
    t_fresh`` (``init_share = t_init / t_fresh``: the constructor's part, less exposed to
    timing noise than a difference); the same four in CPU seconds of the process
    (``cpu_*``, each the least of its passes) with ``setup_share_cpu`` and
    ``init_share_cpu``; scikit-learn's time per signal on the first
    ``sklearn_signals`` signals, ``ratio_vs_sklearn`` = its time per signal over the
    fresh call's, and the largest code difference and certified fractions of both.
    """
    import math
    import warnings

    import numpy as np
    from threadpoolctl import threadpool_info

    import aensae
    from aensae.solvers import (
        FastSolver,
        UncertifiedWarning,
        population_weights_from_codes,
        solve,
        solve_sklearn,
    )
    from aensae.solvers.fast import _SETUP_CACHE

    n, m, B = d_in, atoms, signals
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    blas = ", ".join(sorted({f"{i['internal_api']}({i['num_threads']})"
                             for i in threadpool_info()}))
    print(f"aensae {aensae.__version__} | machine: {machine} | BLAS: {blas}")
    print(f"n={n} m={m} signals={B} active={active} rho={rho} target L0={l0:g} lam2={lam2:g} "
          f"tol={tol:g} (gap <= tol ||x||^2); best of {repeats} interleaved passes")
    # compile the kernels outside every timing
    D0, X0 = setup_bench_data(8, 16, 8, 2, 0.0, "light", seed)
    solve(D0, X0, 0.01, lam2, tol=tol)
    solve(D0, X0, 0.01, lam2, np.ones((8, 16)), tol=tol, output="csr")
    if sklearn_signals > 0:  # and import scikit-learn outside its timing
        solve_sklearn(D0, X0, 0.01, lam2, tol=tol)
    header = (f"{'tails':<7}{'case':<13}{'lam1':>9}{'L0':>7}{'init s':>8}{'fresh':>8}"
              f"{'steady':>8}{'csr':>8}{'setup%':>8}{'init%':>7}{'cpu:setup%':>11}"
              f"{'init%':>7}{'sklearn':>9}{'vs skl':>8}{'max|dh|':>9}{'cert':>6}"
              f"{'max rel gap':>12}")
    rows: list[dict[str, Any]] = []
    for kind in tails:
        D, Xall = setup_bench_data(n, m, B + calibration_signals, active, rho, kind, seed)
        X, Xc = Xall[:B], Xall[B:]
        print(f"\n{kind} tails (times in s per 1,000 signals; init in s per call)")
        print(header)
        lam1_en = None
        for case in cases:
            l2 = 0.0 if case == "lasso" else lam2
            weights = None
            if case == "adaptive":
                if lam1_en is None:
                    lam1_en = _calibrate_lam1(D, Xc, lam2, None, l0, tol)
                # the SAE's weights reflect its whole data stream: pilot codes of the
                # timed signals (the calibration sample alone would overfit 256 signals)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UncertifiedWarning)
                    weights = population_weights_from_codes(
                        solve(D, X, lam1_en, lam2, tol=tol).codes)
            lam1 = _calibrate_lam1(D, Xc, l2, weights, l0, tol)
            if case == "elastic-net":
                lam1_en = lam1
            t = {"init": math.inf, "fresh": math.inf, "steady": math.inf, "csr": math.inf}
            c = dict(t)  # the same in CPU seconds of this process (all its threads)
            solver = FastSolver(D, lam1, l2, tol=tol)
            res = None
            for _ in range(repeats):
                # a fresh dictionary each time (every SAE decoder is one): the setup kept
                # for an equal dictionary is dropped, its Gram buffer recycled as usual
                _SETUP_CACHE.forget()
                res = _timed(t, c, "fresh", solve, D, X, lam1, l2, weights, tol=tol)
                _timed(t, c, "steady", solver.solve, X, weights)
                _timed(t, c, "csr", solver.solve, X, weights, output="csr")
                _SETUP_CACHE.forget()
                _timed(t, c, "init", FastSolver, D, lam1, l2, tol=tol)
            ns = min(B, sklearn_signals)
            sk_per = diff = sk_cert = None
            if ns > 0:
                t0 = time.perf_counter()
                sk = solve_sklearn(D, X[:ns], lam1, l2, weights, tol=tol)
                sk_per = (time.perf_counter() - t0) / ns
                diff = float(np.max(np.abs(res.codes[:ns] - sk.codes)))
                sk_cert = float(np.mean(sk.certified))
            share = (t["fresh"] - t["steady"]) / t["fresh"]
            row = {
                "tails": kind, "case": case, "n": n, "m": m, "signals": B, "active": active,
                "rho": rho, "lam1": lam1, "lam2": l2, "tol": tol, "seed": seed,
                "weights": "population (AEN-SAE)" if weights is not None else "ones",
                "mean_l0": float(np.mean(res.support_size)),
                "certified_fraction": float(np.mean(res.certified)),
                "max_rel_gap": float(np.max(res.rel_gap)),
                "mean_rounds": float(np.mean(res.n_rounds)),
                "t_init": t["init"], "t_fresh": t["fresh"], "t_steady": t["steady"],
                "t_steady_csr": t["csr"], "setup_share": share,
                "init_share": t["init"] / t["fresh"],
                "cpu_init": c["init"], "cpu_fresh": c["fresh"], "cpu_steady": c["steady"],
                "cpu_steady_csr": c["csr"],
                "setup_share_cpu": (c["fresh"] - c["steady"]) / c["fresh"],
                "init_share_cpu": c["init"] / c["fresh"],
                "s_per_1000_fresh": 1000 * t["fresh"] / B,
                "s_per_1000_steady": 1000 * t["steady"] / B,
                "sklearn_signals": ns,
                "sklearn_s_per_1000": None if sk_per is None else 1000 * sk_per,
                "ratio_vs_sklearn": None if sk_per is None else sk_per * B / t["fresh"],
                "max_abs_diff_vs_sklearn": diff,
                "sklearn_certified_fraction": sk_cert,
                "machine": machine, "blas": blas, "aensae_version": aensae.__version__,
            }
            rows.append(row)
            skl = "-" if sk_per is None else f"{1000 * sk_per:.2f}"
            ratio = "-" if sk_per is None else f"{row['ratio_vs_sklearn']:.1f}"
            dh = "-" if diff is None else f"{diff:.1e}"
            print(f"{kind:<7}{case:<13}{lam1:>9.4g}{row['mean_l0']:>7.1f}{t['init']:>8.3f}"
                  f"{row['s_per_1000_fresh']:>8.3f}{row['s_per_1000_steady']:>8.3f}"
                  f"{1000 * t['csr'] / B:>8.3f}{100 * share:>7.1f}%"
                  f"{100 * t['init'] / t['fresh']:>6.1f}%"
                  f"{100 * row['setup_share_cpu']:>10.1f}%{100 * row['init_share_cpu']:>6.1f}%"
                  f"{skl:>9}{ratio:>8}"
                  f"{dh:>9}{row['certified_fraction']:>6.2f}{row['max_rel_gap']:>12.1e}")
            if not res.all_certified:
                print(f"WARNING: {np.sum(~res.certified)} fast-solver codes not certified")
    return rows
