r"""``aensae bench geometry``: block vs dense local Hoffman constants.

``aensae bench geometry`` times :func:`aensae.theory.local_hoffman` on ``--samples`` active
sets (|A| uniform in [12, 20]) of a spiked dictionary at m = 1024 with non-uniform weights,
against ``1 / sigma_min(M_A)`` from a dense SVD on a subsample, in the same process (with
the default BLAS threads and with one; the faster is the anchor), and reports
``max_rel_error`` and ``speedup`` (dense seconds per sample / block seconds per sample).
"""

from __future__ import annotations

import time
from typing import Any

from aensae.benches import machine

__all__ = ["run_geometry_bench"]


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
        "machine": machine(),
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
