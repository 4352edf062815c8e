r"""``aensae geometry`` (Lipschitz / Hoffman / support / amortization summary) and
``aensae bench geometry`` (block vs dense local Hoffman constants).

``aensae geometry --rho R`` draws the spiked dictionary (n, m, rho) and ``--samples``
signals with k non-negative true codes U[1, 3], solves the exact elastic net (certified,
``h >= 0``) and the lasso (same ``lam1``, ``lam2 = 0``), and summarises per signal: the
local Lipschitz constants of both maps on their solutions' supports, the local Hoffman
constant of the elastic-net KKT system with its block bounds, support F1 of the exact code
against the truth, and ``F(h*) - F(h_exact)``; with ``--trajectory N`` also the
trajectory-restricted constants of FISTA from zero on N signals. ``aensae geometry --sae
DIR`` does the same on a trained SAE's decoder with its own penalty and weights
(``exact_problem()``; for TopK, BatchTopK and JumpReLU, which have none, ``--lam1`` and
``--lam2``), on held-out signals of the data recorded in ``DIR/metrics.json`` (or
``--rho``), and adds the encoder's local Lipschitz constants, bounds, or jumps, and the
amortization gap ``F(h_enc) - F(h_exact)`` with support F1 of the encoder's codes against
the exact ones. Each quantity is summarised by its median, 95th percentile and max (order
statistics of the sample, ``inverted_cdf``; infinite values are written as null and
counted in ``n_infinite``).

``aensae bench geometry`` times :func:`aensae.theory.local_hoffman` on ``--samples`` active
sets (|A| uniform in [12, 20]) of a spiked dictionary at m = 1024 with non-uniform weights,
against ``1 / sigma_min(M_A)`` from a dense SVD on a subsample, in the same process (with
the default BLAS threads and with one; the faster is the anchor), and reports
``max_rel_error`` and ``speedup`` (dense seconds per sample / block seconds per sample).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from aensae._io import check_output_file
from aensae._validation import (
    InputError,
    check_int,
    check_real,
    check_rho,
    user_input,
)
from aensae.benchmarks._options import add_command

__all__ = ["DEFAULT_LAM1", "default_lam1", "register", "run_geometry", "run_geometry_bench",
           "summary"]

#: Calibrated lam1 per rho for the true dictionary (see :func:`default_lam1`).
DEFAULT_LAM1 = {0.0: 0.5, 0.5: 10.0, 0.9: 20.0}

#: Encoders without a Lipschitz constant (discontinuous): their jumps are reported.
JUMP_ARCHS = ("topk", "batchtopk", "jumprelu")


def register(top: Any, bench: Any) -> None:
    """Add ``aensae geometry`` to ``top`` and ``aensae bench geometry`` to ``bench``."""
    p = add_command(top, "geometry", help="Lipschitz, Hoffman, support and amortization summary",
                    doc=__doc__.split("\n\n")[1])
    p.add_argument("--sae", default=None, metavar="DIR",
                   help="trained SAE folder (sae.safetensors, cfg.json); without it, the "
                        "true dictionary of --rho")
    p.add_argument("--rho", type=float, default=None,
                   help="spike correlation of the true dictionary, in [0, 1) (required "
                        "without --sae; with --sae it replaces the data recorded in "
                        "DIR/metrics.json)")
    p.add_argument("--samples", type=int, default=1000, help="signals (>= 1)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="write the summary here as JSON (default: print only)")
    p.add_argument("--n", type=int, default=256, help="signal dimension d_in (>= 2)")
    p.add_argument("--m", type=int, default=1024, help="true atoms (>= 1)")
    p.add_argument("--k", type=int, default=16, help="non-zeros per true code, in [1, m]")
    p.add_argument("--lam1", type=float, default=None,
                   help="l1 penalty, exact scaling (> 0; default: calibrated per rho so "
                        "exact codes hold about 16-32 non-zeros at the default sizes)")
    p.add_argument("--lam2", type=float, default=0.05,
                   help="l2 penalty, exact scaling (>= 0)")
    p.add_argument("--trajectory", type=int, default=0,
                   help="signals for the FISTA trajectory constants (>= 0; 0 skips them; "
                        "faces with large supports make this slow at high rho)")
    p.add_argument("--trajectory-iter", type=int, default=2000,
                   help="FISTA iterations per trajectory signal (>= 1)")
    p.add_argument("--encoder-samples", type=int, default=256,
                   help="signals for encoder Jacobians, pair/ascent bounds and jumps (>= 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of dictionary and signals (>= 0)")
    p.set_defaults(func=_geometry_main)

    b = add_command(bench, "geometry", help="local Hoffman constants: block vs dense",
                    doc=__doc__.split("\n\n")[2])
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
    b.set_defaults(func=_bench_main)


# ----------------------------------------------------------------------------- helpers
def summary(values: Any) -> dict[str, Any]:
    """Median, 95th percentile and max (sample order statistics) and the infinite count."""
    import numpy as np

    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        return {"median": None, "p95": None, "max": None, "n": 0, "n_infinite": 0}
    if np.isnan(v).any():
        raise ValueError(f"summary: {int(np.isnan(v).sum())} NaN values")

    def f(x: float) -> float | None:
        return float(x) if np.isfinite(x) else None

    return {"median": f(np.quantile(v, 0.5, method="inverted_cdf")),
            "p95": f(np.quantile(v, 0.95, method="inverted_cdf")),
            "max": f(v.max()), "n": int(v.size), "n_infinite": int(np.isinf(v).sum())}


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _write(path: Path | None, record: dict[str, Any]) -> None:
    if path is not None:
        from aensae._io import atomic_write_json

        atomic_write_json(path, record)
        print(f"wrote {path}")


def default_lam1(rho: float) -> float:
    """``lam1`` for the true dictionary (n=256, m=1024, k=16, lam2=0.05) at ``rho``.

    Calibrated so that exact elastic-net codes hold about 16-32 non-zeros (median support
    16, 28 and about 27 at rho = 0, 0.5, 0.9); other rho interpolate ``log lam1`` linearly
    between the calibrated points (and hold the end values outside them).
    """
    import numpy as np

    if rho in DEFAULT_LAM1:
        return DEFAULT_LAM1[rho]
    rhos = sorted(DEFAULT_LAM1)
    return float(np.exp(np.interp(rho, rhos, [np.log(DEFAULT_LAM1[r]) for r in rhos])))


# ----------------------------------------------------------------------------- bench
def run_geometry_bench(
    *, samples: int = 10_000, dense: int = 16, n: int = 256, m: int = 1024, rho: float = 0.5,
    lam1: float = 0.5, lam2: float = 0.05, seed: int = 0,
) -> dict[str, Any]:
    """Block vs dense local Hoffman constants; returns the JSON-ready record."""
    import numpy as np

    from aensae._validation import check_int
    from aensae.synthetic import spiked_dictionary
    from aensae.theory import local_hoffman, local_hoffman_dense

    samples = check_int("samples", samples, low=1)
    dense = check_int("dense", dense, low=1, high=samples)
    D = spiked_dictionary(n, m, rho, seed=seed).D
    rng = np.random.default_rng(seed + 1)
    sizes = rng.integers(12, 21, samples)
    codes = np.zeros((samples, m))
    for b, k in enumerate(sizes):
        codes[b, rng.choice(m, k, replace=False)] = 1.0
    w = rng.uniform(0.5, 2.0, (samples, m))
    G = D.T @ D
    local_hoffman(D, codes[:64], lam1, lam2, w[:64], G=G)  # warm caches outside the timing
    t0 = time.perf_counter()
    res = local_hoffman(D, codes, lam1, lam2, w, G=G)
    t_block = time.perf_counter() - t0
    from threadpoolctl import threadpool_limits

    dense_runs = {}
    for label, limit in (("default threads", None), ("1 BLAS thread", 1)):
        with threadpool_limits(limits=limit):
            t0 = time.perf_counter()
            ref = local_hoffman_dense(D, codes[:dense], lam1, lam2, w[:dense])
            dense_runs[label] = time.perf_counter() - t0
    dense_label = min(dense_runs, key=dense_runs.__getitem__)  # the faster is the anchor
    t_dense = dense_runs[dense_label]
    rel = np.abs(res.value[:dense] - ref) / ref
    per_block, per_dense = t_block / samples, t_dense / dense
    record = {
        "samples": samples, "dense_samples": dense, "n": n, "m": m, "rho": rho,
        "lam1": lam1, "lam2": lam2, "active_size": [int(sizes.min()), int(sizes.max())],
        "weights": "U[0.5, 2] per sample and atom", "seed": seed,
        "block_seconds": t_block, "dense_seconds": t_dense,
        "block_ms_per_sample": 1e3 * per_block, "dense_ms_per_sample": 1e3 * per_dense,
        "dense_anchor": dense_label,
        "dense_ms_per_sample_by_threads": {k: 1e3 * v / dense for k, v in dense_runs.items()},
        "max_rel_error": float(rel.max()), "speedup": per_dense / per_block,
        "newton_iterations": {"median": float(np.median(res.n_iter)),
                              "max": int(res.n_iter.max())},
        "bounds_hold": bool(np.all(res.lower <= res.value * (1 + 1e-12))
                            and np.all(res.value <= res.upper * (1 + 1e-12))),
        "machine": _machine(),
    }
    print(f"local Hoffman, n={n} m={m} rho={rho} lam1={lam1} lam2={lam2}, |A| in "
          f"[{sizes.min()}, {sizes.max()}] | machine: {record['machine']}")
    print(f"block : {samples} samples in {t_block:.2f} s ({1e3 * per_block:.3f} ms/sample), "
          f"Newton steps median {record['newton_iterations']['median']:.0f} max "
          f"{record['newton_iterations']['max']}")
    print(f"dense : {dense} samples in {t_dense:.2f} s ({1e3 * per_dense:.1f} ms/sample, "
          f"{dense_label}; " + ", ".join(f"{k} {1e3 * v / dense:.1f} ms/sample"
                                         for k, v in dense_runs.items()) + ")")
    print(f"max_rel_error = {record['max_rel_error']:.2e}   speedup = {record['speedup']:.0f}x"
          f"   bounds hold: {record['bounds_hold']}")
    return record


def _bench_main(args: argparse.Namespace) -> int:
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
    record = run_geometry_bench(samples=args.samples, dense=args.dense, n=args.n, m=args.m,
                                rho=args.rho, lam1=args.lam1, lam2=args.lam2, seed=args.seed)
    _write(args.json, record)
    return 0


# ----------------------------------------------------------------------------- geometry
def _data_for_sae(folder: Path, args: argparse.Namespace, d_in: int):
    """Held-out signals and true codes of the data the SAE was trained on."""
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    metrics = folder / "metrics.json"
    data = None
    if metrics.is_file() and args.rho is None:
        try:
            data = json.loads(metrics.read_text(encoding="utf-8")).get("config", {}).get("data")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            raise InputError(f"--sae: {metrics} is damaged ({err}); pass --rho (and --m, --k, "
                             "--seed) to describe the SAE's data") from None
    if args.rho is not None or data is None:
        if args.rho is None:
            raise InputError(f"--sae: {metrics} with a 'config.data' record not found: pass --rho "
                             "(and --m, --k, --seed) to describe the SAE's data")
        data = {"kind": "spiked", "rho": args.rho, "n": d_in, "m": args.m, "k": args.k,
                "lo": 1.0, "hi": 3.0, "noise_std": 0.0, "seed": args.seed}
    if data.get("kind") != "spiked" or int(data["n"]) != d_in:
        raise InputError(f"--sae: data record {data!r} is not a spiked dictionary with n = "
                         f"d_in = {d_in}")
    from aensae.benchmarks.train_cmd import EVAL_INDEX

    dic = spiked_dictionary(int(data["n"]), int(data["m"]), float(data["rho"]),
                            seed=int(data["seed"]))
    stream = SyntheticStream(dic.D, int(data["k"]), args.samples, lo=float(data["lo"]),
                             hi=float(data["hi"]), nonneg=True,
                             noise_std=float(data["noise_std"]), seed=int(data["seed"]))
    X, H = stream.batch(EVAL_INDEX)
    return dic, X, H, data


def _exact_block(D, X, lam1, lam2, weights, nonneg, trajectory, out, tol=1e-10,
                 trajectory_iter=2000):
    """Exact elastic net + lasso, local constants, trajectory constants -> ``out``."""
    import numpy as np

    from aensae.solvers import solve
    from aensae.theory import (
        enet_global_bound,
        lipschitz_enet,
        lipschitz_lasso,
        local_hoffman,
        proximal_gradient,
        trajectory_constants,
    )

    en = solve(D, X, lam1, lam2, weights, nonneg, tol)
    la = solve(D, X, lam1, 0.0, weights, nonneg, tol)
    out["certified_enet"] = float(np.mean(en.certified))
    out["certified_lasso"] = float(np.mean(la.certified))
    out["support_size_enet"] = summary(en.support_size)
    out["support_size_lasso"] = summary(la.support_size)
    out["lipschitz_lasso"] = summary(lipschitz_lasso(D, la.codes))
    out["lipschitz_enet"] = summary(lipschitz_enet(D, en.codes, lam2))
    out["lipschitz_enet_bound"] = enet_global_bound(lam2) if lam2 > 0 else None
    if lam1 > 0:
        hof = local_hoffman(D, en.codes, lam1, lam2, weights)
        out["hoffman_local"] = summary(hof.value)
        out["hoffman_local_lower"] = summary(hof.lower)
        out["hoffman_local_upper"] = summary(hof.upper)
    if trajectory > 0 and lam1 > 0:
        t = min(trajectory, X.shape[0])
        wt = None if weights is None else (weights if np.ndim(weights) == 1 else weights[:t])
        tr = proximal_gradient(D, X[:t], lam1, lam2, wt, nonneg, max_iter=trajectory_iter,
                               tol=1e-9)
        tc = trajectory_constants(D, tr, lam1, lam2, wt)
        out["trajectory"] = {
            "signals": t, "method": "fista", "max_iter": trajectory_iter,
            "converged": int(np.sum(tr.n_iter < trajectory_iter)),
            "iterations": summary(tr.n_iter), "faces_visited": summary(tc.n_faces),
            "lipschitz_enet_path_max": summary(tc.lipschitz_path),
            "lipschitz_enet_final": summary(tc.lipschitz_final),
            "hoffman_path_max": summary(tc.hoffman_path),
            "hoffman_final": summary(tc.hoffman_final),
        }
    return en


def check_geometry_args(args: argparse.Namespace) -> tuple[int, float]:
    """Validate ``aensae geometry``'s options; return ``(samples, lam2)``.

    Raises :class:`~aensae._validation.InputError` naming the option: one of ``--rho``
    and ``--sae`` is needed (with ``--sae``, ``--rho`` describes the SAE's data).
    """
    if args.sae is None and args.rho is None:
        raise InputError("pass --rho R (the true spiked dictionary) or --sae DIR (a "
                         "trained SAE)")
    with user_input():
        samples = check_int("--samples", args.samples, low=1)
        lam2 = check_real("--lam2", args.lam2, low=0.0)
        if args.rho is not None:
            check_rho(args.rho, "--rho")
        check_int("--n", args.n, low=2)
        check_int("--m", args.m, low=1)
        check_int("--k", args.k, low=1, high=args.m)
        if args.lam1 is not None:
            check_real("--lam1", args.lam1, low=0.0, low_inclusive=False)
        check_int("--trajectory", args.trajectory, low=0)
        check_int("--trajectory-iter", args.trajectory_iter, low=1)
        check_int("--encoder-samples", args.encoder_samples, low=2)
        check_int("--seed", args.seed, low=0)
    if args.sae is not None:
        if samples < 2:
            raise InputError(f"--samples must be >= 2 with --sae (the encoder's bounds compare "
                             f"pairs of signals), got {samples}")
        if str(args.sae) == "" or not Path(args.sae).is_dir():
            raise InputError(f"--sae {str(args.sae)!r}: no such folder (expected a folder "
                             "written by aensae train)")
        args.sae = Path(args.sae)
    if args.json is not None:
        check_output_file("--json", args.json)
    return samples, lam2


def run_geometry(args: argparse.Namespace) -> dict[str, Any]:
    """Compute the geometry summary for ``--rho`` or ``--sae``; returns the JSON record."""
    import numpy as np

    from aensae.objective import ExactProblem
    from aensae.theory import amortization_gap, exact_vs_truth

    samples, lam2 = check_geometry_args(args)
    t_start = time.perf_counter()
    record: dict[str, Any] = {"samples": samples, "seed": args.seed, "machine": _machine()}
    if args.sae is None:
        rho = float(args.rho)
        from aensae.synthetic import sample_signals, spiked_dictionary

        dic = spiked_dictionary(args.n, args.m, rho, seed=args.seed)
        X, H = sample_signals(dic.D, samples, args.k, seed=args.seed + 1)
        lam1 = default_lam1(rho) if args.lam1 is None else float(args.lam1)
        record.update({"source": {"kind": "spiked", "rho": rho, "n": args.n, "m": args.m,
                                  "k": args.k, "codes": "nonneg U[1, 3]"},
                       "lam1": lam1, "lam2": lam2, "weights": None, "nonneg": True})
        en = _exact_block(dic.D, X, lam1, lam2, None, True, args.trajectory, record,
                          trajectory_iter=args.trajectory_iter)
        prob = ExactProblem(D=dic.D, lam1=lam1, lam2=lam2, nonneg=True)
        rep, _ = exact_vs_truth(prob, X, H)
        record["support_f1"] = summary(rep.support["f1"])
        record["amortization_gap"] = summary(rep.objective_gap)
        record["amortization_gap_definition"] = "F(h_true) - F(h_exact) (no encoder)"
        record["lipschitz_encoder"] = None
        del en
    else:
        import torch

        from aensae.saes import load
        from aensae.theory import (
            ascent_lower_bound,
            encoder_global_bound,
            encoder_jumps,
            encoder_local_lipschitz,
            pair_ratio_lower_bound,
        )

        try:
            model = load(args.sae)
        except (FileNotFoundError, KeyError, ValueError, OSError) as err:
            raise InputError(f"--sae {str(args.sae)!r}: cannot load an SAE there "
                             f"({type(err).__name__}: {err})") from None
        model.eval()
        dic, X, H, data = _data_for_sae(args.sae, args, model.d_in)
        prob = model.exact_problem()
        if prob is None:
            lam1 = default_lam1(float(data["rho"])) if args.lam1 is None else float(args.lam1)
            with torch.no_grad():
                D = model.W_dec.detach().to(torch.float64).cpu().numpy().T.copy()
                off = model.b_dec.detach().to(torch.float64).cpu().numpy().copy()
            prob = ExactProblem(D=D, lam1=lam1, lam2=lam2, nonneg=True, offset=off)
            penalty_source = "--lam1/--lam2 (architecture without an l1 objective)"
        else:
            penalty_source = "sae.exact_problem()"
        record.update({"source": {"kind": "sae", "dir": str(args.sae), "arch": model.arch,
                                  "data": data},
                       "lam1": prob.lam1, "lam2": prob.lam2,
                       "weights": None if prob.weights is None else "sae l1 weights",
                       "nonneg": bool(prob.nonneg), "penalty_source": penalty_source})
        Xc = prob.centred(X)
        _exact_block(np.asarray(prob.D), Xc, prob.lam1, prob.lam2, prob.weights,
                     bool(prob.nonneg), args.trajectory, record,
                     trajectory_iter=args.trajectory_iter)
        dtype = model.W_enc.dtype
        with torch.no_grad():
            codes = model.encode(torch.as_tensor(X, dtype=dtype)).to(torch.float64).numpy()
        rep, _ = amortization_gap(prob, X, codes)
        record["amortization_gap"] = summary(rep.objective_gap)
        record["amortization_gap_definition"] = "F(h_encoder) - F(h_exact)"
        record["support_f1"] = summary(rep.support["f1"])
        record["code_error"] = summary(rep.code_error)
        prob_true = ExactProblem(D=dic.D, lam1=prob.lam1, lam2=prob.lam2, nonneg=True)
        truth, _ = exact_vs_truth(prob_true, X, H)
        record["support_f1_exact_true_dictionary"] = summary(truth.support["f1"])
        ne = min(args.encoder_samples, samples)
        Xe = torch.as_tensor(X[:ne], dtype=dtype)
        Xp = torch.roll(Xe, 1, 0)
        if model.arch in JUMP_ARCHS:
            jumps = encoder_jumps(model, Xe, Xp)
            record["lipschitz_encoder"] = None
            record["encoder_jumps"] = {"pairs": ne, "jump_tol": jumps.jump_tol,
                                       "n_jumps": summary(jumps.n_jumps),
                                       "max_jump": summary(jumps.max_jump)}
        else:
            record["lipschitz_encoder"] = summary(encoder_local_lipschitz(model, Xe))
            record["lipschitz_encoder_global_bound"] = encoder_global_bound(model.W_enc)
            record["lipschitz_encoder_pair_lower"] = float(
                pair_ratio_lower_bound(model, Xe, Xp).max())
            record["lipschitz_encoder_ascent_lower"] = float(
                ascent_lower_bound(model, Xe, seed=args.seed).max())
    record["seconds"] = time.perf_counter() - t_start
    return record


def _fmt(s: Any) -> str:
    if not isinstance(s, dict):
        return "-" if s is None else f"{s:.4g}"
    cells = [("-" if s[k] is None else f"{s[k]:.4g}") for k in ("median", "p95", "max")]
    inf = f" ({s['n_infinite']} inf)" if s.get("n_infinite") else ""
    return f"median {cells[0]:>10}  p95 {cells[1]:>10}  max {cells[2]:>10}{inf}"


def _geometry_main(args: argparse.Namespace) -> int:
    record = run_geometry(args)
    src = record["source"]
    head = (f"spiked rho={src['rho']} n={src['n']} m={src['m']} k={src['k']}"
            if src["kind"] == "spiked" else f"SAE {src['dir']} ({src['arch']})")
    print(f"{head} | lam1={record['lam1']:g} lam2={record['lam2']:g} samples="
          f"{record['samples']} | certified enet {record['certified_enet']:.3f}, lasso "
          f"{record['certified_lasso']:.3f}")
    for key in ("support_size_enet", "support_size_lasso", "lipschitz_lasso", "lipschitz_enet",
                "lipschitz_enet_bound", "hoffman_local", "hoffman_local_lower",
                "hoffman_local_upper", "support_f1", "amortization_gap", "lipschitz_encoder",
                "lipschitz_encoder_global_bound", "lipschitz_encoder_pair_lower",
                "lipschitz_encoder_ascent_lower", "code_error"):
        if key in record:
            print(f"  {key:32s} {_fmt(record[key])}")
    if "trajectory" in record:
        tr = record["trajectory"]
        print(f"  trajectory (FISTA from 0, {tr['signals']} signals, {tr['converged']} "
              f"converged in {tr['max_iter']} iterations):")
        for key in ("faces_visited", "lipschitz_enet_path_max", "lipschitz_enet_final",
                    "hoffman_path_max", "hoffman_final"):
            print(f"    {key:30s} {_fmt(tr[key])}")
    if "encoder_jumps" in record:
        print(f"  encoder jumps: n_jumps {_fmt(record['encoder_jumps']['n_jumps'])}; "
              f"size {_fmt(record['encoder_jumps']['max_jump'])}")
    _write(args.json, record)
    sys.stdout.flush()
    return 0
