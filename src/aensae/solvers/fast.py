r"""The fast batched exact solver: working sets, compiled active sets, per-round certificates.

For each chunk of signals ``X`` (b, n) it runs

1. **Screening (BLAS-3, float32).** ``C = X D`` scores every atom, ``|c_i| / w_i``
   (``c_i / w_i`` for ``h >= 0``); each signal's working set starts as its top
   ``ws_init`` atoms. ``C`` is kept: every later certificate reuses it.
2. **Restricted solves (compiled, float64).** On each working set ``W`` the weighted
   elastic net is solved exactly by a primal active-set method
   (:func:`aensae.solvers._kernels._solve_one`); the codes are solutions of the linear
   system on their support and signs, i.e. already polished.
3. **Certificate without a second product.** With ``S`` the support,
   ``D_j^T r = D_j^T x - sum_{a in S} h_a G_aj``: the float32 ``C`` updated through the
   Gram matrix (``|S| m`` flops instead of ``n m``). ``C``'s rounding error is at most
   ``2 gamma_{n+2} ||D_j|| ||x||`` (``gamma_k = k u / (1 - k u)``, ``u = 2^-24``: the
   classical dot-product bound, valid for any summation order), so every atom outside
   the support gets a rigorous interval for ``|D_j^T r| / w_j``; atoms whose interval
   cannot decide the certificate are recomputed in float64. The support's ``D_j^T r``
   are always computed in float64 (``|S| n`` flops): they equal ``lam1 w_j`` at the
   restricted optimum, and the interval, wider than ``lam1`` itself when
   ``lam1 < 2 gamma_{n+2} ||x||`` (small penalties, signals far above them), would
   make optimal codes look uncertified. The duality gap
   (:mod:`aensae.solvers.certificate`) is then exact up to float64 rounding, or a
   rigorous upper bound of it.
4. **Working-set growth.** A signal whose gap exceeds ``tol * ||x||^2`` gets its most
   violating atoms (``|D_j^T r| > lam1 w_j``) added, at most ``max(ws_grow, |W|)`` of
   them, and steps 2-4 repeat, warm-started, inside the same compiled call
   (:func:`aensae.solvers._kernels.solve_signals`). The working set can double each round,
   so a support of ``s`` atoms is reached in about ``log2(s / ws_init)`` rounds: signals
   far above the penalty (an LLM's outlier tokens, 50 times the median norm, hold
   supports of hundreds of atoms) are certified like the others, where a fixed
   ``ws_grow`` per round would reach at most ``ws_init + max_rounds * ws_grow`` atoms.

Per dictionary (:class:`FastSolver`'s constructor) the setup is ``D^T`` and ``D`` in
float32 and the float64 Gram matrix (:func:`gram`: its lower triangle only, half the
flops of the general product, in row bands on single-threaded BLAS); rows computed
lazily would not save it (at 4,096 atoms every atom enters some working set of 1,000
signals). A float32 Gram matrix would cost a third, but its rigorous error bound grows
with ``sum_a |h_a| ||D_a||``, which on heavy-tailed signals sends most atoms to float64
recomputation (measured 6x slower per signal). The Gram matrix (and each chunk's
screening buffer) is written into memory recycled from a garbage-collected solver of the
same size when there is one (:class:`_Workspace`): first-touch page faults of a fresh
(m, m) array cost as much as the product on a virtual machine.

Every returned code carries its gap; a code that cannot be certified says why
(``SolveResult.status``) and triggers a warning.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp

from aensae._validation import check_array, check_int, check_real
from aensae.solvers import _kernels as K
from aensae.solvers.problem import validate_dictionary, validate_weights

__all__ = ["FastSolver", "SolveResult", "UncertifiedWarning", "release_workspace", "solve",
           "solve_batches"]

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
        Initial working-set size, and the least cap on the violating atoms a round adds
        (the cap is ``max(ws_grow, |W|)``: a round may add as many as the working set
        already holds).
    max_rounds : int
        Working-set rounds before giving up on a signal.
    max_iter : int, optional
        Active-set iterations per restricted solve (default ``10 * |W| + 100``).
    blas_threads : int or None
        BLAS threads for the screening product while solving (default 1; ``None`` leaves
        the BLAS setting alone). The compiled kernel already runs one thread per core over
        signals, and idle BLAS threads spin-wait after each product, taking cores from it.
        With 1, the product is split into row blocks, one single-threaded BLAS call per
        numba thread. On 2 cores (n=256, m=1024, rho=0) the default measured 23-28
        us/signal against 30-36 with ``None``, interleaved in one process.

    Notes
    -----
    The constructor holds the per-dictionary setup (``D^T``, float32 ``D``, the float64
    Gram matrix ``D^T D``, atom norms): build one solver and call :meth:`solve` (or
    :meth:`solve_batches`) on every batch of that dictionary to pay the Gram matrix once.
    The setup is a snapshot of ``D`` at construction: after changing ``D``, build a new
    solver. A new solver of a dictionary equal in shape and every value to the previous
    solver's (the same penalties or not) shares that solver's setup instead of computing
    it again; the last dictionary's setup is kept for that (:func:`release_workspace`
    frees it), so repeated :func:`solve` calls on one dictionary skip the Gram matrix too.

    Examples
    --------
    >>> import numpy as np
    >>> from aensae.solvers import FastSolver, solve
    >>> rng = np.random.default_rng(0)
    >>> D = rng.standard_normal((32, 64))
    >>> solver = FastSolver(D, lam1=0.5, lam2=0.05, nonneg=True)  # Gram matrix built once
    >>> results = [solver.solve(rng.standard_normal((100, 32))) for _ in range(3)]
    >>> all(r.all_certified for r in results)
    True
    >>> X = rng.standard_normal((10, 32))  # identical to the one-shot public call
    >>> bool(np.array_equal(solver.solve(X).codes, solve(D, X, 0.5, 0.05, nonneg=True).codes))
    True
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
        blas_threads: int | None = 1,
    ) -> None:
        self.D = validate_dictionary(D)
        self.n, self.m = self.D.shape
        if check_real("lam1", lam1) == 0.0:
            raise ValueError(
                "lam1 must lie in (0, inf), got 0.0: with lam1 = 0 the problem is ridge "
                "regression (no sparsity) and its augmented-lasso certificate is vacuous; "
                "solve (D^T D + lam2 I) h = D^T x directly instead")
        self.lam1 = check_real("lam1", lam1, low=0.0, low_inclusive=False,
                               high_inclusive=False)
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
        self.blas_threads = (None if blas_threads is None
                             else check_int("blas_threads", blas_threads, low=1))
        # the per-dictionary setup (D^T, float32 D, Gram matrix, atom norms): shared with
        # earlier solvers of an equal dictionary through _SETUP_CACHE, else built here
        blocks = 1 if self.blas_threads is None else 2 * numba.get_num_threads()
        self.Dt, self.D32, self.G, self.col_norm = _SETUP_CACHE.get(self.D, blocks,
                                                                    self.blas_threads)
        k = self.n + 2
        # rigorous bound factor of float32 dot products (x2 safety margin)
        self._err_factor = 2.0 * k * _U32 / (1.0 - k * _U32)

    def __del__(self) -> None:
        # hand the Gram buffer to the next solver, unless something else refers to it:
        # its references here are the instance dict, the local name and getrefcount's
        G = self.__dict__.get("G")
        if G is not None and sys.getrefcount(G) == 3 and _WORKSPACE is not None:
            del self.__dict__["G"]
            _WORKSPACE.give_later(G)

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
        dense = np.zeros((X.shape[0], self.m)) if output == "dense" else None
        with _blas_limit(self.blas_threads):
            for start in range(0, X.shape[0], self.batch_size):
                stop = min(start + self.batch_size, X.shape[0])
                wc = w if w.shape[0] == 1 else w[start:stop]
                part = self._solve_chunk(X[start:stop], wc)
                # keep only the codes' non-zeros of each chunk, never its working sets
                args = part.pop("ws_idx"), part.pop("ws_len"), part.pop("h_ws")
                if dense is not None:
                    K.scatter_codes(*args, dense[start:stop])
                else:
                    part["csr"] = K.compact_codes(*args)
                parts.append(part)
        res = _assemble(parts, X.shape[0], self.m, dense, self)
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
        sq_norm = np.einsum("bn,bn->b", X, X)
        # 1. screening correlations in float32 (one BLAS-3 call); the compiled kernel
        # picks the initial working sets from them and reuses them in every certificate
        C32 = _WORKSPACE.take((B, self.m), np.float32)
        try:
            return self._solve_screened(X, w, sq_norm, C32)
        finally:
            _WORKSPACE.give(C32)

    def _solve_screened(self, X: np.ndarray, w: np.ndarray, sq_norm: np.ndarray,
                        C32: np.ndarray) -> dict:
        B = X.shape[0]
        if self.blas_threads == 1:
            K.screen(X.astype(np.float32), self.D32, C32, numba.get_num_threads())
        else:
            np.matmul(X.astype(np.float32), self.D32, out=C32)
        iw = 1.0 / w[0]
        cnw = self.col_norm * iw
        cap = min(self.m, self.ws_init + 4 * self.ws_grow)
        ws_idx = np.zeros((B, cap), np.int64)
        ws_len = np.zeros(B, np.int64)
        h_ws = np.zeros((B, cap))
        gap = np.full(B, np.inf)
        iters = np.zeros(B, np.int64)
        rounds = np.zeros(B, np.int64)
        status = np.zeros(B, np.int64)
        outcome = np.zeros(B, np.int64)
        todo = np.arange(B, dtype=np.int64)
        while True:
            # 2-4. restricted solves, certificates and working-set growth, per signal
            K.solve_signals(self.Dt, self.G, C32, X, sq_norm, w, iw, cnw, self.col_norm,
                            self.lam1, self.lam2, self.nonneg, self.tol, self._err_factor,
                            self.ws_init, self.ws_grow, self.max_rounds, self.max_iter or 0,
                            1e-13, ws_idx, ws_len, h_ws, todo, gap, iters, rounds, status,
                            outcome)
            todo = todo[outcome[todo] == K.OUT_NEED_CAP]
            if todo.size == 0:
                break
            # a working set outgrew the buffers: enlarge them and continue from the state
            new_cap = min(self.m, 2 * cap)
            ws_idx = np.pad(ws_idx, ((0, 0), (0, new_cap - cap)))
            h_ws = np.pad(h_ws, ((0, 0), (0, new_cap - cap)))
            cap = new_cap
        certified = outcome == K.OUT_CERTIFIED
        reason = np.full(B, "", dtype=object)
        for b in np.flatnonzero(~certified):
            if outcome[b] == K.OUT_STUCK:
                reason[b] = _stuck_reason(int(status[b]))
            else:
                reason[b] = (f"not certified after {self.max_rounds} working-set rounds "
                             f"(working set {ws_len[b]} atoms)")
        return {
            "ws_idx": ws_idx, "ws_len": ws_len, "h_ws": h_ws, "gap": gap,
            "certified": certified, "sq_norm": sq_norm, "iters": iters,
            "rounds": rounds, "reason": reason,
        }


def gram(D: np.ndarray, blocks: int = 1, out: np.ndarray | None = None,
         Dt: np.ndarray | None = None) -> np.ndarray:
    r"""The Gram matrix ``G = D^T D`` (m, m) of ``D`` (n, m), in ``D``'s dtype.

    Only the lower triangle is computed (``m^2 n`` flops, half a general product), then
    mirrored by :func:`aensae.solvers._kernels.fill_upper`: with ``blocks = 1`` one BLAS
    ``syrk`` call (BLAS's own threads); otherwise ``blocks`` row bands of equal triangle
    area, ``G[r0:r1, :r1] = D[:, r0:r1]^T D[:, :r1]``, each one BLAS call, on a pool of
    ``blocks`` Python threads (for single-threaded BLAS: its idle threads would spin-wait
    and take cores from the solver's kernel that follows). ``out``, a C-contiguous (m, m)
    array of ``D``'s dtype, receives the result (its old content is overwritten); ``Dt``,
    if given, is ``D.T`` C-contiguous (the caller's copy, not made again).
    """
    m = D.shape[1]
    if out is not None and (out.shape != (m, m) or out.dtype != D.dtype
                            or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous ({m}, {m}) array of dtype {D.dtype}, "
                         f"got shape {out.shape} dtype {out.dtype}")
    if blocks <= 1 or m < 2 * blocks:
        from scipy.linalg.blas import dsyrk, ssyrk

        syrk = ssyrk if D.dtype == np.float32 else dsyrk
        G = syrk(1.0, np.asfortranarray(D.T), trans=0).T  # lower triangle valid
        if out is not None:
            np.copyto(out, G)
            G = out
    else:
        G = np.empty((m, m), D.dtype) if out is None else out
        Dt = np.ascontiguousarray(D.T) if Dt is None else Dt
        edges = sorted({0, m, *(int(round(m * np.sqrt(k / blocks))) for k in range(1, blocks))})

        def band(k: int) -> None:
            r0, r1 = edges[k], edges[k + 1]
            np.matmul(Dt[r0:r1], D[:, :r1], out=G[r0:r1, :r1])

        list(_pool(blocks).map(band, range(len(edges) - 1)))
    G = np.ascontiguousarray(G)
    K.fill_upper(G)
    return G


class _Workspace:
    """Large scratch arrays kept for reuse (thread-safe): Gram matrices, screening buffers.

    A fresh array costs its first touch: a page fault per page, which on a virtual machine
    made a fresh (m, m) float64 array as slow as the Gram product itself (``aensae bench
    solver-setup``). A :class:`FastSolver` that is garbage collected hands its Gram matrix
    back here, unless anything else still refers to it (a view, a name bound to
    ``solver.G``), and each chunk's screening buffer comes back after the chunk; the next
    request of that shape and dtype takes the array and overwrites it. At most
    ``max_bytes`` are kept (the most recent first); :func:`release_workspace` frees them.
    """

    def __init__(self, max_bytes: int) -> None:
        import collections
        import threading

        self.max_bytes = max_bytes
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        # arrays handed back by __del__, which may run inside a garbage collection
        # triggered while this thread holds the lock: a deque append takes no lock
        self._pending: collections.deque[np.ndarray] = collections.deque()

    def take(self, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
        dtype = np.dtype(dtype)
        with self._lock:
            self._drain()
            for i, buf in enumerate(self._free):
                if buf.shape == shape and buf.dtype == dtype:
                    del self._free[i]
                    return buf
        return np.empty(shape, dtype)

    def give(self, buf: np.ndarray) -> None:
        with self._lock:
            self._drain()
            self._keep(buf)

    def give_later(self, buf: np.ndarray) -> None:
        """``give`` without the lock (safe in ``__del__``); taken in at the next call."""
        self._pending.append(buf)

    def _drain(self) -> None:
        while self._pending:
            self._keep(self._pending.popleft())

    def _keep(self, buf: np.ndarray) -> None:
        if buf.nbytes > self.max_bytes or not buf.flags.owndata:
            return
        self._free.insert(0, buf)  # most recent first; the oldest go over the budget
        total = 0
        for i, b in enumerate(self._free):
            total += b.nbytes
            if total > self.max_bytes:
                del self._free[i:]
                break

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self._free.clear()


_WORKSPACE = _Workspace(1 << 30)


class _SetupCache:
    """The per-dictionary setup of the most recent dictionary, for the next equal one.

    :func:`solve` builds a :class:`FastSolver` per call; a caller solving batch after batch
    on one dictionary would recompute its Gram matrix (the call's whole setup: 15-20 ms
    at n = 256, m = 1,024 on 2 cores) each time. This keeps the last dictionary's
    ``(D^T, float32 D, G, atom norms)`` with a private copy of ``D`` as its key: a
    dictionary is served the entry only if its shape and every value are equal to the
    copy (a comparison of ``n m`` floats, against the ``m^2 n / 2`` flops of the Gram
    matrix), so an array modified in place, or a new array at a recycled address, is
    never served a stale Gram matrix. Equal content gives the same product: the entry
    also records the Gram's row bands (``blocks``), so a hit is bit for bit the matrix
    the constructor would compute. One entry only: a new dictionary replaces it, and its
    Gram buffer goes to :data:`_WORKSPACE` for the new one (unless a live solver still
    holds it), so memory stays what it was without the cache (one Gram matrix, plus the
    ``n m`` copy). :func:`release_workspace` empties it.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._entry: tuple | None = None  # (D copy, blocks, (Dt, D32, G, col_norm))
        self.hits = 0
        self.misses = 0

    def get(self, D: np.ndarray, blocks: int, blas_threads: int | None) -> tuple:
        with self._lock:
            entry = self._entry
            if (entry is not None and entry[1] == blocks and entry[0].shape == D.shape
                    and np.array_equal(entry[0], D)):
                self.hits += 1
                return entry[2]
            self.misses += 1
            del entry  # (a reference to the old entry would keep its Gram buffer held)
            self._evict()
            m = D.shape[1]
            Dt = np.ascontiguousarray(D.T)
            D32 = D.astype(np.float32)
            with _blas_limit(blas_threads):
                G = gram(D, blocks, out=_WORKSPACE.take((m, m)), Dt=Dt)
            col_norm = np.sqrt(np.einsum("nm,nm->m", D, D))
            setup = (Dt, D32, G, col_norm)
            self._entry = (D.copy(), blocks, setup)
            return setup

    def _evict(self) -> None:
        # hand the Gram buffer back unless a live solver still refers to it (its
        # references here: the local name and getrefcount's argument)
        if self._entry is None:
            return
        G = self._entry[2][2]
        self._entry = None
        if sys.getrefcount(G) == 2:
            _WORKSPACE.give(G)

    def forget(self) -> None:
        """Drop the kept setup, its Gram buffer recycled as for a new dictionary."""
        with self._lock:
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._entry = None


_SETUP_CACHE = _SetupCache()


def release_workspace() -> None:
    """Free the Gram buffers kept for reuse by later :class:`FastSolver` instances, and the
    last dictionary's setup kept for the next solver of an equal dictionary."""
    _SETUP_CACHE.clear()
    _WORKSPACE.clear()


_POOL: Any = None


def _pool(workers: int) -> Any:
    """A shared thread pool with at least ``workers`` threads (NumPy's BLAS calls release
    the GIL)."""
    global _POOL
    if _POOL is None or _POOL._max_workers < workers:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aensae-gram")
    return _POOL


_CONTROLLER: Any = None


def _blas_limit(threads: int | None) -> Any:
    """Context limiting BLAS to ``threads`` threads (a no-op context for ``None``)."""
    global _CONTROLLER
    if threads is None:
        return contextlib.nullcontext()
    if _CONTROLLER is None:  # inspecting the loaded libraries once is enough
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=threads, user_api="blas")


def _stuck_reason(status: int) -> str:
    if status == K.STATUS_RANK:
        return ("the working set became rank-deficient (linearly dependent atoms with "
                "lam2 = 0); the gap is still a valid bound")
    if status == K.STATUS_MAX_ITER:
        return "the active-set method reached its iteration cap (cycling near degeneracy)"
    return "no KKT violator left outside the working set, yet the gap exceeds tol"


def _assemble(parts: list[dict], B: int, m: int, dense: np.ndarray | None,
              solver: FastSolver) -> SolveResult:
    if dense is not None:
        codes = dense
    else:
        indptr = [np.zeros(1, np.int64)]
        offset = 0
        for p in parts:
            indptr.append(offset + p["csr"][0][1:])
            offset += int(p["csr"][0][-1])
        codes = sp.csr_matrix(
            (np.concatenate([p["csr"][2] for p in parts]),
             np.concatenate([p["csr"][1] for p in parts]), np.concatenate(indptr)),
            shape=(B, m),
        )

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

    Notes
    -----
    Each call builds a :class:`FastSolver`, whose setup is ``D``'s Gram matrix. The last
    dictionary's setup is kept: a later call on a dictionary equal in shape and every value
    (compared in full, so a dictionary changed in place is never served a stale Gram
    matrix) reuses it, and the call costs what :meth:`FastSolver.solve` costs. To hold the
    setup explicitly (several dictionaries in turn, or no comparison per call), build the
    solver once::

        solver = FastSolver(D, lam1, lam2, nonneg=True)
        for X in batches:
            res = solver.solve(X)  # the same codes as solve(D, X, lam1, lam2, nonneg=True)
    """
    solver = FastSolver(D, lam1, lam2, nonneg, tol, batch_size=batch_size, **options)
    return solver.solve(X, weights=weights, output=output)  # validates X


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

