r"""Compiled per-signal kernels of the fast exact solver (numba).

The batched solver in :mod:`aensae.solvers.fast` does the BLAS-3 work (correlations of
all signals with all atoms) in numpy; everything that is small and per-signal lives
here, compiled and run in parallel over signals:

- :func:`solve_working_sets`: an exact primal active-set method for the weighted
  elastic net restricted to each signal's working set ``W``,

      min_{h_W}  1/2 h_W^T Q h_W - c_W^T h_W + lam1 * sum_{j in W} w_j |h_j|   [h >= 0]

  with ``Q = G_WW + lam2 I`` (``G = D^T D``) and ``c_W = D_W^T x``, computed in float64.
  From a point that is optimal on the active set ``A`` it adds the most violating
  coordinate ``k`` (``|g_k| > lam1 w_k``, ``g = Q h - c``) with sign ``-sign(g_k)``,
  solves the sign-fixed system ``Q_AA h_A = c_A - lam1 w_A sigma_A`` through an updated
  Cholesky factor, and if a sign flips on the way moves only to the first zero crossing
  and drops that coordinate (so the objective decreases monotonically). When it stops,
  the KKT conditions hold on ``W`` to rounding: this is also the polish step, the codes
  are exact solutions of the linear system on their final support and signs.
- :func:`residuals`: ``r = x - D_S h_S``, the support part of the dual scaling, and the
  scalars the duality gap needs.
- :func:`exact_correlations`: float64 ``D_j^T r`` for listed (signal, atom) pairs, used
  where the float32 bound cannot decide dual feasibility.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

# numba's OpenMP layer leaves its threads spin-waiting after each parallel region, which on
# a small machine steals cores from the BLAS calls that alternate with these kernels
# (measured 25-35% slower end to end on 2 cores). The work-queue layer sleeps instead.
# An explicit NUMBA_THREADING_LAYER in the environment wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# Reassociation lets LLVM vectorise the float64 dot products (about 4x faster); it only
# changes rounding at the 1e-16 level. Inputs are validated finite, and no kernel relies
# on NaN/inf semantics, so the "no NaN / no inf" flags are not needed and not used.
_FM = {"reassoc", "contract", "arcp"}

# status codes of solve_working_sets
STATUS_OK = 0
STATUS_MAX_ITER = 1
STATUS_RANK = 2  # a violating coordinate was linearly dependent on the active set


@njit(cache=True, inline="always", fastmath=_FM)
def _forward(L, n, b, out):
    # solve L y = b for lower-triangular L[:n, :n]
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= L[i, k] * out[k]
        out[i] = s / L[i, i]


@njit(cache=True, inline="always", fastmath=_FM)
def _backward(L, n, y, out):
    # solve L^T z = y
    for i in range(n - 1, -1, -1):
        s = y[i]
        for k in range(i + 1, n):
            s -= L[k, i] * out[k]
        out[i] = s / L[i, i]


@njit(cache=True, fastmath=_FM)
def _refactor(Q, act, n_act, L):
    """Cholesky of Q[act, act] into L; returns the number of leading columns factorised."""
    for i in range(n_act):
        ai = act[i]
        for j in range(i + 1):
            aj = act[j]
            s = Q[ai, aj]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            if i == j:
                if s <= 0.0:
                    return i
                L[i, i] = np.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
    return n_act


@njit(cache=True, fastmath=_FM)
def _solve_one(Q, c, wl, nonneg, h, excluded, max_iter, rel_tol):
    """Active-set method on one working set. ``h`` is the warm start and the output.

    Returns (iterations, status).
    """
    W = Q.shape[0]
    act = np.empty(W, np.int64)
    sign = np.zeros(W)
    L = np.zeros((W, W))
    rhs = np.empty(W)
    y = np.empty(W)
    hnew = np.empty(W)
    v = np.empty(W)
    zvec = np.empty(W)
    best_g = 0.0
    n_act = 0
    for k in range(W):
        if h[k] != 0.0:
            act[n_act] = k
            sign[k] = 1.0 if h[k] > 0 else -1.0
            n_act += 1
    ok = _refactor(Q, act, n_act, L)
    if ok < n_act:  # warm start on a singular set: start from zero instead
        for k in range(W):
            h[k] = 0.0
            sign[k] = 0.0
        n_act = 0
    scale = 0.0
    for k in range(W):
        scale = max(scale, abs(c[k]), wl[k])
    tol = rel_tol * max(scale, 1e-300)
    status = 0
    it = 0
    need_solve = n_act > 0
    while it < max_iter:
        it += 1
        if need_solve:
            for i in range(n_act):
                a = act[i]
                rhs[i] = c[a] - wl[a] * sign[a]
            _forward(L, n_act, rhs, y)
            _backward(L, n_act, y, hnew)
            # first zero crossing along h -> hnew
            t = 1.0
            blk = -1
            for i in range(n_act):
                a = act[i]
                if sign[a] * hnew[i] <= 0.0:
                    denom = h[a] - hnew[i]
                    ti = h[a] / denom if denom != 0.0 else 0.0
                    if ti < t:
                        t = ti
                        blk = i
            if blk < 0:
                for i in range(n_act):
                    h[act[i]] = hnew[i]
                need_solve = False
            else:
                if t < 0.0:
                    t = 0.0
                keep = 0
                for i in range(n_act):
                    a = act[i]
                    val = h[a] + t * (hnew[i] - h[a])
                    if i == blk or sign[a] * val <= 0.0:
                        h[a] = 0.0
                        sign[a] = 0.0
                    else:
                        h[a] = val
                        act[keep] = a
                        keep += 1
                n_act = keep
                ok = _refactor(Q, act, n_act, L)
                if ok < n_act:
                    status = STATUS_RANK
                    break
                need_solve = n_act > 0
                continue
        # the active set is optimal on itself: look for the most violating coordinate
        best = -1
        best_v = tol
        for k in range(W):
            if sign[k] != 0.0 or excluded[k]:
                continue
            g = -c[k]
            for i in range(n_act):
                a = act[i]
                g += Q[k, a] * h[a]
            if nonneg:
                viol = -g - wl[k]
            else:
                viol = abs(g) - wl[k]
            if viol > best_v:
                best_v = viol
                best = k
                best_g = g
        if best < 0:
            return it, status
        # append `best` to the Cholesky factor
        for i in range(n_act):
            v[i] = Q[act[i], best]
        _forward(L, n_act, v, y)
        d2 = Q[best, best]
        for i in range(n_act):
            d2 -= y[i] * y[i]
        sb = 1.0 if (nonneg or best_g < 0.0) else -1.0
        if d2 <= 1e-10 * Q[best, best]:
            # `best` is (numerically) a combination of the active atoms, Q_A,best = Q_AA z
            # (only possible when lam2 = 0). From this optimal point, moving along the null
            # direction h_best = sb t, h_A -= sb z t leaves the smooth part unchanged and
            # changes the l1 term at rate lam1 (w_best - |sum_a z_a w_a sigma_a|) < 0 (that is
            # the KKT violation), so go until the first active coordinate reaches zero and
            # swap it out for `best`.
            _backward(L, n_act, y, zvec)
            t = np.inf
            blk = -1
            for i in range(n_act):
                a = act[i]
                dz = zvec[i] * sb
                if dz * sign[a] > 0.0:
                    ti = h[a] / dz
                    if ti < t:
                        t = ti
                        blk = i
            if blk < 0:  # no blocking coordinate: cannot happen for a bounded objective
                excluded[best] = True
                status = STATUS_RANK
                continue
            for i in range(n_act):
                h[act[i]] -= zvec[i] * sb * t
            out = act[blk]
            h[out] = 0.0
            sign[out] = 0.0
            act[blk] = best
            h[best] = sb * t
            sign[best] = sb
            ok = _refactor(Q, act, n_act, L)
            if ok < n_act:
                status = STATUS_RANK
                break
            need_solve = True
            continue
        for i in range(n_act):
            L[n_act, i] = y[i]
        L[n_act, n_act] = np.sqrt(d2)
        act[n_act] = best
        sign[best] = sb
        n_act += 1
        need_solve = True
    if it >= max_iter:
        status = STATUS_MAX_ITER
    return it, status


@njit(parallel=True, cache=True, fastmath=_FM)
def solve_working_sets(Dt, G, X, wmat, lam1, lam2, nonneg, ws_idx, ws_len, h_ws, todo,
                       max_iter, rel_tol, iters, status):
    """Solve the restricted problems of the signals listed in ``todo`` (in place).

    ``Dt`` (m, n) is D^T, ``G`` (m, m) = D^T D, ``X`` (B, n), ``wmat`` (1 or B, m) l1 weights,
    ``ws_idx`` (B, Wcap) global atom indices of each working set (first ``ws_len[b]``
    valid), ``h_ws`` (B, Wcap) codes on the working set (warm start and output).
    ``iters`` and ``status`` (B,) receive the iteration count and status code.
    """
    n = X.shape[1]
    per_row_w = wmat.shape[0] > 1
    for t in prange(todo.shape[0]):
        b = todo[t]
        W = ws_len[b]
        wrow = b if per_row_w else 0
        Q = np.empty((W, W))
        c = np.empty(W)
        wl = np.empty(W)
        for i in range(W):
            gi = ws_idx[b, i]
            s = 0.0
            for d in range(n):
                s += Dt[gi, d] * X[b, d]
            c[i] = s
            wl[i] = lam1 * wmat[wrow, gi]
            for j in range(W):
                Q[i, j] = G[gi, ws_idx[b, j]]
            Q[i, i] += lam2
        h = h_ws[b, :W].copy()
        excluded = np.zeros(W, np.bool_)
        it, st = _solve_one(Q, c, wl, nonneg, h, excluded, max_iter, rel_tol)
        for i in range(W):
            h_ws[b, i] = h[i]
        iters[b] += it
        status[b] = st


@njit(parallel=True, cache=True, fastmath=_FM)
def residuals(Dt, X, wmat, lam2, nonneg, ws_idx, ws_len, h_ws, todo, R, stats):
    """Residuals ``r = x - D_S h_S`` and the scalars of the duality gap, for ``todo`` rows.

    ``R`` (len(todo), n) receives r. ``stats`` (len(todo), 5) receives
    ``[r.x, ||r||^2, ||h||^2, sum_j w_j |h_j|, mu_S]`` where
    ``mu_S = max_{j in S} |D_j^T r - lam2 h_j| / w_j`` (for ``nonneg`` the positive part),
    the support's contribution to the dual-infeasibility scale, computed exactly.
    """
    n = X.shape[1]
    per_row_w = wmat.shape[0] > 1
    for t in prange(todo.shape[0]):
        b = todo[t]
        W = ws_len[b]
        wrow = b if per_row_w else 0
        for d in range(n):
            R[t, d] = X[b, d]
        hh = 0.0
        l1 = 0.0
        for i in range(W):
            hv = h_ws[b, i]
            if hv != 0.0:
                gi = ws_idx[b, i]
                hh += hv * hv
                l1 += wmat[wrow, gi] * abs(hv)
                for d in range(n):
                    R[t, d] -= hv * Dt[gi, d]
        rx = 0.0
        rr = 0.0
        for d in range(n):
            rx += R[t, d] * X[b, d]
            rr += R[t, d] * R[t, d]
        mu = 0.0
        for i in range(W):
            hv = h_ws[b, i]
            if hv != 0.0:
                gi = ws_idx[b, i]
                z = 0.0
                for d in range(n):
                    z += Dt[gi, d] * R[t, d]
                z -= lam2 * hv
                val = z if nonneg else abs(z)
                val /= wmat[wrow, gi]
                if val > mu:
                    mu = val
        stats[t, 0] = rx
        stats[t, 1] = rr
        stats[t, 2] = hh
        stats[t, 3] = l1
        stats[t, 4] = mu


@njit(parallel=True, cache=True, fastmath=_FM)
def exact_correlations(Dt, R, rows, cols, out):
    """``out[p] = D_{cols[p]}^T R[rows[p]]`` in float64."""
    n = R.shape[1]
    for p in prange(rows.shape[0]):
        r = rows[p]
        j = cols[p]
        s = 0.0
        for d in range(n):
            s += Dt[j, d] * R[r, d]
        out[p] = s


@njit(parallel=True, cache=True)
def top_k_scores(C, wmat, nonneg, k, out):
    """``out[b]``: indices of the ``k`` largest scores of row ``b`` (any order).

    The score of atom ``j`` is ``|C[b, j]| / w_j`` (``C[b, j] / w_j`` when ``nonneg``).
    A size-``k`` min-heap keeps the running top ``k``: one comparison per entry once the
    heap is full, so a row costs ``O(m + k log k)``.
    """
    m = C.shape[1]
    wstride = 1 if wmat.shape[0] > 1 else 0
    for b in prange(C.shape[0]):
        wrow = b * wstride
        hv = np.empty(k)
        hi = np.empty(k, np.int64)
        size = 0
        for j in range(m):
            c = C[b, j]
            v = (c if nonneg else abs(c)) / wmat[wrow, j]
            if size < k:
                # sift up
                pos = size
                size += 1
                while pos > 0:
                    parent = (pos - 1) // 2
                    if hv[parent] <= v:
                        break
                    hv[pos] = hv[parent]
                    hi[pos] = hi[parent]
                    pos = parent
                hv[pos] = v
                hi[pos] = j
            elif v > hv[0]:
                # replace the root and sift down
                pos = 0
                while True:
                    child = 2 * pos + 1
                    if child >= k:
                        break
                    if child + 1 < k and hv[child + 1] < hv[child]:
                        child += 1
                    if hv[child] >= v:
                        break
                    hv[pos] = hv[child]
                    hi[pos] = hi[child]
                    pos = child
                hv[pos] = v
                hi[pos] = j
        for i in range(k):
            out[b, i] = hi[i]


@njit(parallel=True, cache=True, fastmath=_FM)
def scan_certificate(Z, R, Dt, col_norm, wmat, todo, err_scale, mu_s, lam1, nonneg,
                     ws_idx, ws_len, h_ws, mu_out, viol_idx, viol_val, n_viol):
    """Dual-infeasibility scale and KKT violators from float32 correlations ``Z = R D``.

    For each row ``t`` (signal ``b = todo[t]``) and atom ``j`` outside the support, the
    float32 value gives an upper bound ``ub_j = (|Z_tj| + err_scale[t] ||D_j||) / w_j``
    of ``|D_j^T r| / w_j``. Atoms with ``ub_j`` below ``max(mu_s, 0.999 lam1)`` only
    contribute their bound; the others are recomputed exactly in float64. ``mu_out[t]``
    receives the resulting (rigorous) dual-infeasibility scale; the ``viol_idx.shape[1]``
    most violating atoms outside the working set (exact value above ``lam1``) are
    returned in ``viol_idx``/``viol_val`` with their count in ``n_viol``.
    """
    m = Z.shape[1]
    n = R.shape[1]
    grow = viol_idx.shape[1]
    per_row_w = wmat.shape[0] > 1
    for t in prange(todo.shape[0]):
        b = todo[t]
        wrow = b if per_row_w else 0
        mark = np.zeros(m, np.int8)
        for i in range(ws_len[b]):
            mark[ws_idx[b, i]] = 2 if h_ws[b, i] != 0.0 else 1
        thresh = max(mu_s[t], (1.0 - 1e-3) * lam1)
        e = err_scale[t]
        mu = mu_s[t]
        nv = 0
        for j in range(m):
            if mark[j] == 2:
                continue
            zj = Z[t, j]
            a = max(zj, 0.0) if nonneg else abs(zj)
            wj = wmat[wrow, j]
            ub = (a + e * col_norm[j]) / wj
            if ub <= thresh:
                if ub > mu:
                    mu = ub
                continue
            s = 0.0
            for d in range(n):
                s += Dt[j, d] * R[t, d]
            val = (max(s, 0.0) if nonneg else abs(s)) / wj
            if val > mu:
                mu = val
            if mark[j] == 0 and val > lam1 * (1.0 + 1e-12):
                # insert into the descending top-`grow` list
                if nv < grow:
                    pos = nv
                    nv += 1
                elif val > viol_val[t, grow - 1]:
                    pos = grow - 1
                else:
                    continue
                while pos > 0 and viol_val[t, pos - 1] < val:
                    viol_val[t, pos] = viol_val[t, pos - 1]
                    viol_idx[t, pos] = viol_idx[t, pos - 1]
                    pos -= 1
                viol_val[t, pos] = val
                viol_idx[t, pos] = j
        mu_out[t] = mu
        n_viol[t] = nv
