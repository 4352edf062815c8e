r"""The work of ``aensae geometry``: Lipschitz / Hoffman / support / amortization summary.

For ``rho`` it draws the spiked dictionary (n, m, rho) and ``samples`` signals with k
non-negative true codes U[1, 3], solves the exact elastic net (certified, ``h >= 0``) and
the lasso (same ``lam1``, ``lam2 = 0``), and summarises per signal: the local Lipschitz
constants of both maps on their solutions' supports, the local Hoffman constant of the
elastic-net KKT system with its block bounds, support F1 of the exact code against the
truth, and ``F(h*) - F(h_exact)``; with ``trajectory = N`` also the trajectory-restricted
constants of FISTA from zero on N signals. For ``sae`` (a folder) it does the same on a
trained SAE's decoder with its own penalty and weights (``exact_problem()``; for TopK,
BatchTopK and JumpReLU, which have none, ``lam1`` and ``lam2``), on held-out signals of
the data recorded in ``sae/metrics.json`` (or ``rho``), and adds the encoder's local
Lipschitz constants, bounds, or jumps, and the amortization gap ``F(h_enc) - F(h_exact)``
with support F1 of the encoder's codes against the exact ones. Each quantity is
summarised by :func:`aensae.theory.summaries.summary`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aensae._io import atomic_write_json, check_output_file
from aensae._validation import InputError, check_int, check_real, check_rho, user_input
from aensae.benches import machine
from aensae.experiments.spiked.data import EVAL_INDEX
from aensae.experiments.spiked.evaluation import JUMP_ARCHS
from aensae.synthetic.penalties import default_lam1
from aensae.theory.summaries import summary

__all__ = ["GeometryJob", "check_geometry_job", "run_geometry"]


@dataclass(frozen=True)
class GeometryJob:
    """One ``aensae geometry`` summary; the defaults are the command's. ``lam1`` None:
    :func:`~aensae.synthetic.penalties.default_lam1` of rho; ``json``: where the record
    is written (None: nowhere)."""

    sae: str | Path | None = None
    rho: float | None = None
    samples: int = 1000
    json: str | Path | None = None
    n: int = 256
    m: int = 1024
    k: int = 16
    lam1: float | None = None
    lam2: float = 0.05
    trajectory: int = 0
    trajectory_iter: int = 2000
    encoder_samples: int = 256
    seed: int = 0


def _data_for_sae(folder: Path, job: GeometryJob, d_in: int):
    """Held-out signals and true codes of the data the SAE was trained on."""
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    metrics = folder / "metrics.json"
    data = None
    if metrics.is_file() and job.rho is None:
        try:
            data = json.loads(metrics.read_text(encoding="utf-8")).get("config", {}).get("data")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            raise InputError(f"--sae: {metrics} is damaged ({err}); pass --rho (and --m, --k, "
                             "--seed) to describe the SAE's data") from None
    if job.rho is not None or data is None:
        if job.rho is None:
            raise InputError(f"--sae: {metrics} with a 'config.data' record not found: pass --rho "
                             "(and --m, --k, --seed) to describe the SAE's data")
        data = {"kind": "spiked", "rho": job.rho, "n": d_in, "m": job.m, "k": job.k,
                "lo": 1.0, "hi": 3.0, "noise_std": 0.0, "seed": job.seed}
    if data.get("kind") != "spiked" or int(data["n"]) != d_in:
        raise InputError(f"--sae: data record {data!r} is not a spiked dictionary with n = "
                         f"d_in = {d_in}")
    dic = spiked_dictionary(int(data["n"]), int(data["m"]), float(data["rho"]),
                            seed=int(data["seed"]))
    stream = SyntheticStream(dic.D, int(data["k"]), job.samples, lo=float(data["lo"]),
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


def check_geometry_job(job: GeometryJob) -> tuple[int, float]:
    """Validate ``job``; return ``(samples, lam2)``.

    Raises :class:`~aensae._validation.InputError` naming the field as the option of
    ``aensae geometry`` that sets it: one of ``rho`` and ``sae`` is needed (with ``sae``,
    ``rho`` describes the SAE's data).
    """
    if job.sae is None and job.rho is None:
        raise InputError("pass --rho R (the true spiked dictionary) or --sae DIR (a "
                         "trained SAE)")
    with user_input():
        samples = check_int("--samples", job.samples, low=1)
        lam2 = check_real("--lam2", job.lam2, low=0.0)
        if job.rho is not None:
            check_rho(job.rho, "--rho")
        check_int("--n", job.n, low=2)
        check_int("--m", job.m, low=1)
        check_int("--k", job.k, low=1, high=job.m)
        if job.lam1 is not None:
            check_real("--lam1", job.lam1, low=0.0, low_inclusive=False)
        check_int("--trajectory", job.trajectory, low=0)
        check_int("--trajectory-iter", job.trajectory_iter, low=1)
        check_int("--encoder-samples", job.encoder_samples, low=2)
        check_int("--seed", job.seed, low=0)
    if job.sae is not None:
        if samples < 2:
            raise InputError(f"--samples must be >= 2 with --sae (the encoder's bounds compare "
                             f"pairs of signals), got {samples}")
        if str(job.sae) == "" or not Path(job.sae).is_dir():
            raise InputError(f"--sae {str(job.sae)!r}: no such folder (expected a folder "
                             "written by aensae train)")
    if job.json is not None:
        check_output_file("--json", job.json)
    return samples, lam2


def run_geometry(job: GeometryJob) -> dict[str, Any]:
    """Compute the geometry summary for ``job.rho`` or ``job.sae``; return the record.

    The record is written to ``job.json`` (atomically) when that is set.
    """
    import numpy as np

    from aensae.objective import ExactProblem
    from aensae.theory import amortization_gap, exact_vs_truth

    samples, lam2 = check_geometry_job(job)
    t_start = time.perf_counter()
    record: dict[str, Any] = {"samples": samples, "seed": job.seed, "machine": machine()}
    if job.sae is None:
        rho = float(job.rho)
        from aensae.synthetic import sample_signals, spiked_dictionary

        dic = spiked_dictionary(job.n, job.m, rho, seed=job.seed)
        X, H = sample_signals(dic.D, samples, job.k, seed=job.seed + 1)
        lam1 = default_lam1(rho) if job.lam1 is None else float(job.lam1)
        record.update({"source": {"kind": "spiked", "rho": rho, "n": job.n, "m": job.m,
                                  "k": job.k, "codes": "nonneg U[1, 3]"},
                       "lam1": lam1, "lam2": lam2, "weights": None, "nonneg": True})
        en = _exact_block(dic.D, X, lam1, lam2, None, True, job.trajectory, record,
                          trajectory_iter=job.trajectory_iter)
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
            model = load(Path(job.sae))
        except (FileNotFoundError, KeyError, ValueError, OSError) as err:
            raise InputError(f"--sae {str(job.sae)!r}: cannot load an SAE there "
                             f"({type(err).__name__}: {err})") from None
        model.eval()
        dic, X, H, data = _data_for_sae(Path(job.sae), job, model.d_in)
        prob = model.exact_problem()
        if prob is None:
            lam1 = default_lam1(float(data["rho"])) if job.lam1 is None else float(job.lam1)
            with torch.no_grad():
                D = model.W_dec.detach().to(torch.float64).cpu().numpy().T.copy()
                off = model.b_dec.detach().to(torch.float64).cpu().numpy().copy()
            prob = ExactProblem(D=D, lam1=lam1, lam2=lam2, nonneg=True, offset=off)
            penalty_source = "--lam1/--lam2 (architecture without an l1 objective)"
        else:
            penalty_source = "sae.exact_problem()"
        record.update({"source": {"kind": "sae", "dir": str(Path(job.sae)), "arch": model.arch,
                                  "data": data},
                       "lam1": prob.lam1, "lam2": prob.lam2,
                       "weights": None if prob.weights is None else "sae l1 weights",
                       "nonneg": bool(prob.nonneg), "penalty_source": penalty_source})
        Xc = prob.centred(X)
        _exact_block(np.asarray(prob.D), Xc, prob.lam1, prob.lam2, prob.weights,
                     bool(prob.nonneg), job.trajectory, record,
                     trajectory_iter=job.trajectory_iter)
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
        ne = min(job.encoder_samples, samples)
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
                ascent_lower_bound(model, Xe, seed=job.seed).max())
    record["seconds"] = time.perf_counter() - t_start
    if job.json is not None:
        atomic_write_json(job.json, record)
    return record
