r"""``aensae geometry``: parse the options into a
:class:`~aensae.experiments.spiked.geometry.GeometryJob` and run it.

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
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from aensae.cli._options import add_command

__all__ = ["register"]


def register(top: Any, bench: Any) -> None:
    """Add ``aensae geometry`` to ``top`` (``bench`` is not used)."""
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


def _fmt(s: Any) -> str:
    if not isinstance(s, dict):
        return "-" if s is None else f"{s:.4g}"
    cells = [("-" if s[k] is None else f"{s[k]:.4g}") for k in ("median", "p95", "max")]
    inf = f" ({s['n_infinite']} inf)" if s.get("n_infinite") else ""
    return f"median {cells[0]:>10}  p95 {cells[1]:>10}  max {cells[2]:>10}{inf}"


def _geometry_main(args: argparse.Namespace) -> int:
    from aensae.experiments.spiked import geometry

    job = geometry.GeometryJob(
        sae=args.sae, rho=args.rho, samples=args.samples, json=args.json, n=args.n, m=args.m,
        k=args.k, lam1=args.lam1, lam2=args.lam2, trajectory=args.trajectory,
        trajectory_iter=args.trajectory_iter, encoder_samples=args.encoder_samples,
        seed=args.seed)
    record = geometry.run_geometry(job)
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
    if args.json is not None:
        print(f"wrote {args.json}")
    sys.stdout.flush()
    return 0
