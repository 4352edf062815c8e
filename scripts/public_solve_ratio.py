r"""The public exact-solver call against its steady state (issue 25, item 5).

Usage (from the repository root, project venv active)::

    python scripts/public_solve_ratio.py [--signals 4000] [--calls 10]

Setup of the issue: a spiked dictionary ``spiked_dictionary(256, 1024, 0, seed=0).D``,
signals ``X = H D^T`` with 16 non-negative non-zeros per code (``sample_codes``),
``lam1 = 0.5``, ``lam2 = 0.05``, ``nonneg=True``. After a warm-up call on other signals of
the same dictionary, every timed round solves fresh signals twice, in one process:

* ``public``: ``aensae.solvers.solve(D, X, lam1, lam2=lam2, nonneg=True)``, the call a
  user makes (validation, the setup kept from the last call on an equal dictionary, a
  solver object, dense output);
* ``steady``: ``FastSolver(D, lam1, lam2, nonneg=True).solve(X)`` on one solver built
  before the rounds.

It prints the best and median of each and ``public / steady`` (the issue's goal: at most
1.3). Nothing else should run on the machine: other processes' cache and thread traffic
move single calls by tens of percent.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from aensae.solvers import solve
from aensae.solvers.fast import FastSolver
from aensae.synthetic.codes import sample_codes
from aensae.synthetic.dictionaries import spiked_dictionary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--signals", type=int, default=4000, help="signals per call (>= 1)")
    ap.add_argument("--calls", type=int, default=10, help="timed rounds (>= 1)")
    args = ap.parse_args()
    for key in ("signals", "calls"):
        if getattr(args, key) < 1:
            ap.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    n, m, k, lam1, lam2 = 256, 1024, 16, 0.5, 0.05
    D = spiked_dictionary(n, m, 0.0, seed=0).D
    sig = [sample_codes(m, k, args.signals, rng=s) @ D.T for s in range(args.calls + 1)]
    solve(D, sig[0], lam1, lam2=lam2, nonneg=True)  # warm-up: other signals, same D
    solver = FastSolver(D, lam1, lam2, nonneg=True)
    solver.solve(sig[0])
    t: dict[str, list[float]] = {"public": [], "steady": []}
    for X in sig[1:]:
        t0 = time.perf_counter()
        solve(D, X, lam1, lam2=lam2, nonneg=True)
        t["public"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        solver.solve(X)
        t["steady"].append(time.perf_counter() - t0)
    for name, v in t.items():
        print(f"{name:>7}: best {min(v):.4f} s, median {np.median(v):.4f} s "
              f"({args.signals} signals)")
    print(f"public / steady: best {min(t['public']) / min(t['steady']):.3f}, median "
          f"{np.median(t['public']) / np.median(t['steady']):.3f}")


if __name__ == "__main__":
    main()
