r"""The fast batched exact solver: working sets, compiled active sets, batched certificate.

For each chunk of signals ``X`` (b, n) it runs

1. **Screening (BLAS-3, float32).** ``C = X D`` scores every atom, ``|c_i| / w_i``
   (``c_i / w_i`` for ``h >= 0``); each signal's working set starts as its top
   ``ws_init`` atoms.
2. **Restricted solves (compiled, float64).** On each working set ``W`` the weighted
   elastic net is solved exactly by a primal active-set method
   (:func:`aensae.solvers._kernels.solve_working_sets`); the codes are solutions of the
   linear system on their support and signs, i.e. already polished.
3. **Certificate (BLAS-3 float32 with a rigorous error bound, float64 where it matters).**
   The residual ``r = x - D_S h_S`` is formed in float64 and ``D^T r`` in float32. Each
   float32 entry is within ``2 gamma_{n+2} ||D_i|| ||r||`` of the exact value
   (``gamma_k = k u / (1 - k u)``, ``u = 2^-24``: the classical dot-product bound, valid
   for any summation order), so an atom whose upper bound stays below the support's exact
   dual scale cannot change the certificate; the few that might are recomputed in float64.
   The duality gap (:mod:`aensae.solvers.certificate`) is then exact up to float64
   rounding, or a rigorous upper bound of it.
4. **Working-set growth.** Signals whose gap exceeds ``tol * ||x||^2`` get their most
   violating atoms (``|D_i^T r| > lam1 w_i``) added and go back to step 2, warm-started.

Every returned code carries its gap; a code that cannot be certified says why
(``SolveResult.status``) and triggers a warning.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from aensae._validation import check_array, check_int, check_real
from aensae.solvers import _kernels as K
from aensae.solvers.certificate import gap_from_stats
from aensae.solvers.problem import validate_dictionary, validate_weights

__all__ = ["FastSolver", "SolveResult", "UncertifiedWarning", "solve", "solve_batches"]

_U32 = 2.0**-24


class UncertifiedWarning(RuntimeWarning):
    """Some codes could not be certified to the requested tolerance."""


@dataclass
class SolveResult:
    r"""Codes of one solve with their certificates.

    Attributes
    ----------
    codes : ndarray (B, m) float64 or scipy.sparse.csr_matrix
        The codes ``h``.
    gap : ndarray (B,)
        Absolute duality gaps, ``gap >= F(h) - F(h*)``.
    certified : ndarray (B,) bool
        ``gap <= tol * ||x||^2``.
    sq_norm : ndarray (B,)
        ``||x||^2``, so that ``rel_gap = gap / ||x||^2`` (0 where ``x = 0``).
    n_iter : ndarray (B,) int
        Active-set iterations (additions plus removals) per signal.
    n_rounds : ndarray (B,) int
        Working-set rounds (certificate evaluations) per signal.
    status : ndarray (B,) object
        ``""`` for certified codes, otherwise the reason it is not certified.
    """

    codes: np.ndarray | sp.csr_matrix
    gap: np.ndarray
    certified: np.ndarray
    sq_norm: np.ndarray
    n_iter: np.ndarray
    n_rounds: np.ndarray
    status: np.ndarray
    lam1: float
    lam2: float
    nonneg: bool
    tol: float
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def support_size(self) -> np.ndarray:
        """Number of non-zeros of each code."""
        if sp.issparse(self.codes):
            return np.diff(self.codes.indptr)
        return np.count_nonzero(self.codes, axis=1)

    @property
    def rel_gap(self) -> np.ndarray:
        """``gap / ||x||^2`` (0 for zero signals, whose gap is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.sq_norm > 0, self.gap / np.where(self.sq_norm > 0,
                                                                  self.sq_norm, 1.0), 0.0)

    @property
    def all_certified(self) -> bool:
        return bool(np.all(self.certified))

    def raise_if_uncertified(self) -> None:
        """Raise ``RuntimeError`` listing the uncertified signals and reasons."""
        if not self.all_certified:
            raise RuntimeError(_uncertified_message(self))


def _uncertified_message(res: SolveResult) -> str:
    bad = np.flatnonzero(~res.certified)
    shown = ", ".join(f"#{i}: {res.status[i]} (rel. gap {res.rel_gap[i]:.2e})" for i in bad[:5])
    more = f" and {bad.size - 5} more" if bad.size > 5 else ""
    return (f"{bad.size} of {res.certified.size} codes are not certified at gap <= "
            f"{res.tol:g} ||x||^2: {shown}{more}")


class FastSolver:
    r"""Exact certified solver for one dictionary and penalty pair, reusable across batches.

    Solves, per row ``x`` of ``X``::

        min_h  1/2 ||x - D h||^2 + lam1 * sum_i w_i |h_i| + lam2/2 * ||h||^2   [h >= 0]

    Parameters
    ----------
    D : array (n, m)
        Dictionary, atoms as columns.
    lam1 : float > 0
        l1 penalty of the exact objective (0 is ridge regression: use a linear solve).
    lam2 : float >= 0
        l2 penalty.
    nonneg : bool
        Constrain ``h >= 0``.
    tol : float > 0
        Certification tolerance: certified when ``gap <= tol * ||x||^2``.
    batch_size : int
        Signals per chunk; bounds memory (one chunk of float32 correlations, never a dense
        code matrix larger than a chunk when ``output="csr"``).
    ws_init, ws_grow : int
        Initial working-set size and the number of violating atoms added per round.
    max_rounds : int
        Working-set rounds before giving up on a signal.
    max_iter : int, optional
        Active-set iterations per restricted solve (default ``10 * |W| + 100``).
    """

    def __init__(
        self,
        D: Any,
        lam1: float,
        lam2: float = 0.0,
        nonneg: bool = False,
        tol: float = 1e-10,
        *,
        batch_size: int = 2048,
        ws_init: int = 16,
        ws_grow: int = 16,
        max_rounds: int = 50,
        max_iter: int | None = None,
    ) -> None:
        self.D = validate_dictionary(D)
        self.n, self.m = self.D.shape
        self.lam1 = check_real("lam1", lam1, low=0.0)
        if self.lam1 == 0.0:
            raise ValueError(
                "lam1 must be > 0, got 0.0: with lam1 = 0 the problem is ridge regression "
                "(no sparsity) and its augmented-lasso certificate is vacuous; solve "
                "(D^T D + lam2 I) h = D^T x directly instead")
        self.lam2 = check_real("lam2", lam2, low=0.0)
        if not isinstance(nonneg, (bool, np.bool_)):
            raise TypeError(f"nonneg must be a bool, got {nonneg!r}")
        self.nonneg = bool(nonneg)
        self.tol = check_real("tol", tol, low=0.0, low_inclusive=False)
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.ws_init = min(check_int("ws_init", ws_init, low=1), self.m)
        self.ws_grow = check_int("ws_grow", ws_grow, low=1)
        self.max_rounds = check_int("max_rounds", max_rounds, low=1)
        self.max_iter = None if max_iter is None else check_int("max_iter", max_iter, low=1)
        self.Dt = np.ascontiguousarray(self.D.T)
        self.G = self.Dt @ self.D
        self.D32 = self.D.astype(np.float32)
        self.col_norm = np.sqrt(np.einsum("nm,nm->m", self.D, self.D))
        k = self.n + 2
        # rigorous bound factor of float32 dot products (x2 safety margin)
        self._err_factor = 2.0 * k * _U32 / (1.0 - k * _U32)

    # ------------------------------------------------------------------ public
    def solve(self, X: Any, weights: Any = None, output: str = "dense") -> SolveResult:
        """Solve for every row of ``X`` (B, n); ``output`` is ``"dense"`` or ``"csr"``."""
        X = check_array("X", X, ndim=2)
        if X.shape[1] != self.n:
            raise ValueError(f"X must have shape (B, {self.n}) to match D of shape "
                             f"{self.D.shape}, got {X.shape}")
        if output not in ("dense", "csr"):
            raise ValueError(f"output must be 'dense' or 'csr', got {output!r}")
        w = validate_weights(weights, X.shape[0], self.m)
        t0 = time.perf_counter()
        parts = []
        for start in range(0, X.shape[0], self.batch_size):
            stop = min(start + self.batch_size, X.shape[0])
            wc = w if w.shape[0] == 1 else w[start:stop]
            parts.append(self._solve_chunk(X[start:stop], wc))
        res = _assemble(parts, X.shape[0], self.m, output, self)
        res.seconds = time.perf_counter() - t0
        if not res.all_certified:
            warnings.warn(_uncertified_message(res), UncertifiedWarning, stacklevel=2)
        return res

    def solve_batches(
        self, batches: Iterable[Any], weights: Any = None, output: str = "csr"
    ) -> Iterator[SolveResult]:
        """Solve a stream of batches (each (b, n)), yielding one result per batch.

        Holds one batch at a time: with ``output="csr"`` solving a million signals never
        materialises a dense code matrix. ``weights`` must be ``None`` or shared (m,).
        """
        if weights is not None and np.ndim(weights) != 1:
            raise ValueError("weights for solve_batches must be None or of shape (m,), got "
                             f"shape {np.shape(weights)}")
        for batch in batches:
            yield self.solve(batch, weights=weights, output=output)

    # ------------------------------------------------------------------ internals
    def _solve_chunk(self, X: np.ndarray, w: np.ndarray) -> dict:
        B = X.shape[0]
        lam1, lam2, nonneg = self.lam1, self.lam2, self.nonneg
        sq_norm = np.einsum("bn,bn->b", X, X)
        # 1. screening in float32
        C32 = X.astype(np.float32) @ self.D32
        W0 = self.ws_init
        ws0 = np.empty((B, W0), np.int64)
        K.top_k_scores(C32, w, nonneg, W0, ws0)
        del C32
        cap = min(self.m, W0 + 2 * self.ws_grow)
        ws_idx = np.zeros((B, cap), np.int64)
        ws_idx[:, :W0] = ws0
        ws_len = np.full(B, W0, np.int64)
        h_ws = np.zeros((B, cap))
        iters = np.zeros(B, np.int64)
        status = np.zeros(B, np.int64)
        rounds = np.zeros(B, np.int64)
        gap = np.full(B, np.inf)
        certified = np.zeros(B, bool)
        reason = np.full(B, "", dtype=object)
        todo = np.arange(B, dtype=np.int64)
        for _ in range(self.max_rounds):
            max_iter = self.max_iter or 10 * int(ws_len[todo].max()) + 100
            K.solve_working_sets(self.Dt, self.G, X, w, lam1, lam2, nonneg, ws_idx, ws_len,
                                 h_ws, todo, max_iter, 1e-13, iters, status)
            rounds[todo] += 1
            g, n_viol, viol_idx = self._certify(X, w, ws_idx, ws_len, h_ws, todo)
            gap[todo] = g
            ok = g <= self.tol * sq_norm[todo]
            certified[todo] = ok
            bad_local = np.flatnonzero(~ok)
            if bad_local.size == 0:
                break
            # grow the working sets of the uncertified signals by their worst violators
            counts = np.zeros(B, np.int64)
            counts[todo[bad_local]] = n_viol[bad_local]
            need = int((ws_len + counts).max())
            if need > ws_idx.shape[1]:
                new_cap = min(self.m, max(need, 2 * ws_idx.shape[1]))
                ws_idx = np.pad(ws_idx, ((0, 0), (0, new_cap - ws_idx.shape[1])))
                h_ws = np.pad(h_ws, ((0, 0), (0, new_cap - h_ws.shape[1])))
            for t in bad_local:
                b, c = todo[t], n_viol[t]
                ws_idx[b, ws_len[b] : ws_len[b] + c] = viol_idx[t, :c]
            ws_len += counts
            bad = todo[bad_local]
            stuck = counts[bad] == 0
            for b in bad[stuck]:
                reason[b] = _stuck_reason(int(status[b]))
            todo = bad[~stuck]
            if todo.size == 0:
                break
        for b in np.flatnonzero(~certified):
            if not reason[b]:
                reason[b] = (f"not certified after {self.max_rounds} working-set rounds "
                             f"(working set {ws_len[b]} atoms)")
        return {
            "ws_idx": ws_idx, "ws_len": ws_len, "h_ws": h_ws, "gap": gap,
            "certified": certified, "sq_norm": sq_norm, "iters": iters, "rounds": rounds,
            "reason": reason,
        }

    def _certify(self, X, w, ws_idx, ws_len, h_ws, todo):
        """Gaps of the ``todo`` signals and their worst KKT violators outside the working set."""
        T = todo.size
        R = np.empty((T, self.n))
        stats = np.empty((T, 5))
        K.residuals(self.Dt, X, w, self.lam2, self.nonneg, ws_idx, ws_len, h_ws, todo, R, stats)
        rx, rr, hh, l1w, mu_s = stats.T
        Z = R.astype(np.float32) @ self.D32
        err_scale = self._err_factor * np.sqrt(rr)
        mu = np.empty(T)
        viol_idx = np.empty((T, self.ws_grow), np.int64)
        viol_val = np.empty((T, self.ws_grow))
        n_viol = np.empty(T, np.int64)
        K.scan_certificate(Z, R, self.Dt, self.col_norm, w, todo, err_scale,
                           np.ascontiguousarray(mu_s), self.lam1, self.nonneg, ws_idx, ws_len,
                           h_ws, mu, viol_idx, viol_val, n_viol)
        gap = gap_from_stats(rx, rr, hh, l1w, mu, self.lam1, self.lam2)
        return gap, n_viol, viol_idx

def _stuck_reason(status: int) -> str:
    if status == K.STATUS_RANK:
        return ("the working set became rank-deficient (linearly dependent atoms with "
                "lam2 = 0); the gap is still a valid bound")
    if status == K.STATUS_MAX_ITER:
        return "the active-set method reached its iteration cap (cycling near degeneracy)"
    return "no KKT violator left outside the working set, yet the gap exceeds tol"


def _assemble(parts: list[dict], B: int, m: int, output: str, solver: FastSolver) -> SolveResult:
    indptr = [np.zeros(1, np.int64)]
    indices, data = [], []
    offset = 0
    for p in parts:
        h, idx = p["h_ws"], p["ws_idx"]
        nz_r, nz_c = np.nonzero(h)
        cols = idx[nz_r, nz_c]
        vals = h[nz_r, nz_c]
        # sort each row's entries by atom index
        order = np.lexsort((cols, nz_r))
        counts = np.bincount(nz_r, minlength=h.shape[0])
        indptr.append(offset + np.cumsum(counts))
        offset += int(counts.sum())
        indices.append(cols[order])
        data.append(vals[order])
    csr = sp.csr_matrix(
        (np.concatenate(data) if data else np.zeros(0),
         np.concatenate(indices) if indices else np.zeros(0, np.int64),
         np.concatenate(indptr)),
        shape=(B, m),
    )
    codes = csr.toarray() if output == "dense" else csr

    def cat(key):
        return np.concatenate([p[key] for p in parts])

    certified = cat("certified")
    reason = cat("reason")
    reason[certified] = ""
    return SolveResult(
        codes=codes, gap=cat("gap"), certified=certified, sq_norm=cat("sq_norm"),
        n_iter=cat("iters"), n_rounds=cat("rounds"), status=reason, lam1=solver.lam1,
        lam2=solver.lam2, nonneg=solver.nonneg, tol=solver.tol,
    )


def solve(
    D: Any,
    X: Any,
    lam1: float,
    lam2: float = 0.0,
    weights: Any = None,
    nonneg: bool = False,
    tol: float = 1e-10,
    *,
    output: str = "dense",
    batch_size: int = 2048,
    **options: Any,
) -> SolveResult:
    r"""Exact, certified weighted elastic-net codes for every row of ``X``.

    Solves ``min_h 1/2||x - D h||^2 + lam1 sum_i w_i |h_i| + lam2/2 ||h||^2`` (optionally
    ``h >= 0``) for each row ``x`` of ``X`` with the batched working-set method of
    :class:`FastSolver`, and certifies each code by its duality gap.

    Parameters
    ----------
    D : array (n, m)
        Dictionary, atoms as columns.
    X : array (B, n)
        Signals.
    lam1 : float > 0
        l1 penalty (0 is rejected: ridge regression has no sparse code to certify).
    lam2 : float >= 0
        l2 penalty.
    weights : array (m,) or (B, m), optional
        Positive l1 weights; ``None`` means ones.
    nonneg : bool
        Constrain ``h >= 0``.
    tol : float
        Certified when ``gap <= tol * ||x||^2``.
    output : {"dense", "csr"}
        Dense (B, m) float64 codes or a scipy CSR matrix (no dense matrix is built).
    batch_size : int
        Signals per chunk.
    **options
        ``ws_init``, ``ws_grow``, ``max_rounds``, ``max_iter`` of :class:`FastSolver`.

    Returns
    -------
    SolveResult
        ``.codes``, ``.gap``, ``.certified``, iteration counts and per-signal status.
        Uncertified codes raise an :class:`UncertifiedWarning` naming them and why.
    """
    solver = FastSolver(D, lam1, lam2, nonneg, tol, batch_size=batch_size, **options)
    X = check_array("X", X, ndim=2)
    return solver.solve(X, weights=weights, output=output)


def solve_batches(
    D: Any,
    batches: Iterable[Any],
    lam1: float,
    lam2: float = 0.0,
    weights: Any = None,
    nonneg: bool = False,
    tol: float = 1e-10,
    *,
    output: str = "csr",
    **options: Any,
) -> Iterator[SolveResult]:
    """Streaming form of :func:`solve`: one :class:`SolveResult` per input batch."""
    solver = FastSolver(D, lam1, lam2, nonneg, tol, **options)
    yield from solver.solve_batches(batches, weights=weights, output=output)

