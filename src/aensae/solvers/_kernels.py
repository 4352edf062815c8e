r"""Compiled kernels of the fast exact solver (numba).

- :func:`screen`: the float32 screening product ``C = X D`` by row blocks, one
  single-threaded BLAS call per numba thread.
- :func:`solve_signals`: everything per signal, in parallel over signals: the initial
  working set (top scores of ``C``), working-set rounds, and the certificate of every
  round, with no Python in between.
- :func:`_solve_one`: an exact primal active-set method for the weighted elastic net
  restricted to a working set ``W``,

      min_{h_W}  1/2 h_W^T Q h_W - c_W^T h_W + lam1 * sum_{j in W} w_j |h_j|   [h >= 0]

  with ``Q = G_WW + lam2 I`` (``G = D^T D``) and ``c_W = D_W^T x``, computed in float64.
  From a point that is optimal on the active set ``A`` it adds the most violating
  coordinate ``k`` (``|g_k| > lam1 w_k``, ``g = Q h - c``) with sign ``-sign(g_k)``,
  solves the sign-fixed system ``Q_AA h_A = c_A - lam1 w_A sigma_A`` through an updated
  Cholesky factor, and if a sign flips on the way moves only to the first zero crossing
  and drops that coordinate (so the objective decreases monotonically). When it stops,
  the KKT conditions hold on ``W`` to rounding: this is also the polish step, the codes
  are exact solutions of the linear system on their final support and signs.
- :func:`duality_gap_from_stats`: the duality-gap formula, per signal, the one
  implementation behind :func:`aensae.solvers.certificate.gap_from_stats` too.
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
def _forward(L, dinv, n, b, out):
    # solve L y = b for lower-triangular L[:n, :n]; dinv holds 1 / diag(L), so the serial
    # dependency chain has a multiplication per row instead of a division
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= L[i, k] * out[k]
        out[i] = s * dinv[i]


@njit(cache=True, inline="always", fastmath=_FM)
def _backward(L, dinv, n, y, out):
    # solve L^T z = y by column sweeps: each step is an axpy along a row of L (contiguous)
    for i in range(n):
        out[i] = y[i]
    for i in range(n - 1, -1, -1):
        oi = out[i] * dinv[i]
        out[i] = oi
        for k in range(i):
            out[k] -= L[i, k] * oi


@njit(cache=True, fastmath=_FM)
def _refactor(Q, act, n_act, L, dinv):
    """Cholesky of Q[act, act] into L (``dinv = 1 / diag(L)``); returns the number of
    leading columns factorised."""
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
                dinv[i] = 1.0 / L[i, i]
            else:
                L[i, j] = s * dinv[j]
    return n_act


@njit(cache=True, fastmath=_FM)
def _solve_one(Q, c, wl, nonneg, h, excluded, W, max_iter, rel_tol):
    """Active-set method on the first ``W`` coordinates. ``h`` is the warm start and the output.

    ``Q`` and the vectors may be larger buffers; only their leading ``W`` entries are used.
    Returns (iterations, status).
    """
    act = np.empty(W, np.int64)
    sign = np.zeros(W)
    L = np.zeros((W, W))
    dinv = np.empty(W)
    ys = np.empty(W)  # L^-1 (c_A - wl_A sigma_A); its first ys_n entries are current
    u = np.empty(W)
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
    ok = _refactor(Q, act, n_act, L, dinv)
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
    ys_n = 0
    need_solve = n_act > 0
    while it < max_iter:
        it += 1
        if need_solve:
            # forward substitution, incremental: an appended coordinate adds one row to L
            # and one entry to the right-hand side, so only the new rows are solved
            for i in range(ys_n, n_act):
                a = act[i]
                sv = c[a] - wl[a] * sign[a]
                for k in range(i):
                    sv -= L[i, k] * ys[k]
                ys[i] = sv * dinv[i]
            ys_n = n_act
            _backward(L, dinv, n_act, ys, hnew)
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
                ok = _refactor(Q, act, n_act, L, dinv)
                ys_n = 0
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
            # g_k = (Q h - c)_k as a dense row product: h is zero off the active set, and
            # a contiguous row vectorises where a gather over the active set does not
            g = -c[k]
            for j in range(W):
                g += Q[k, j] * h[j]
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
        _forward(L, dinv, n_act, v, u)
        d2 = Q[best, best]
        for i in range(n_act):
            d2 -= u[i] * u[i]
        sb = 1.0 if (nonneg or best_g < 0.0) else -1.0
        if d2 <= 1e-10 * Q[best, best]:
            # `best` is (numerically) a combination of the active atoms, Q_A,best = Q_AA z
            # (only possible when lam2 = 0). From this optimal point, moving along the null
            # direction h_best = sb t, h_A -= sb z t leaves the smooth part unchanged and
            # changes the l1 term at rate lam1 (w_best - |sum_a z_a w_a sigma_a|) < 0 (that is
            # the KKT violation), so go until the first active coordinate reaches zero and
            # swap it out for `best`.
            _backward(L, dinv, n_act, u, zvec)
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
            ok = _refactor(Q, act, n_act, L, dinv)
            ys_n = 0
            if ok < n_act:
                status = STATUS_RANK
                break
            need_solve = True
            continue
        for i in range(n_act):
            L[n_act, i] = u[i]
        L[n_act, n_act] = np.sqrt(d2)
        dinv[n_act] = 1.0 / L[n_act, n_act]
        act[n_act] = best
        sign[best] = sb
        n_act += 1
        need_solve = True
    if it >= max_iter:
        status = STATUS_MAX_ITER
    return it, status


@njit(parallel=True, cache=True)
def screen(X32, D32, out, n_blocks):
    """``out = X32 @ D32`` (float32), one single-threaded BLAS product per row block.

    Called with BLAS limited to one thread, this spreads the product over numba's threads,
    which sleep when idle, instead of BLAS's own threads, which spin-wait after each call
    and then steal cores from the compiled kernels that follow.
    """
    B = X32.shape[0]
    step = (B + n_blocks - 1) // n_blocks
    for k in prange(n_blocks):
        lo = min(B, k * step)
        hi = min(B, lo + step)
        if hi > lo:
            np.dot(X32[lo:hi], D32, out[lo:hi])


@njit(parallel=True, cache=True)
def fill_upper(T):
    """Copy the lower triangle of the square array ``T`` onto its upper triangle, in place,
    by tiles (the transposed reads stay in cache); ``T`` becomes symmetric."""
    m = T.shape[0]
    tile = 64
    nb = (m + tile - 1) // tile
    for bi in prange(nb):
        r0 = bi * tile
        r1 = min(m, r0 + tile)
        for bj in range(bi, nb):
            c0 = bj * tile
            c1 = min(m, c0 + tile)
            for r in range(r0, r1):
                for c in range(max(c0, r + 1), c1):
                    T[r, c] = T[c, r]


# outcomes of solve_signals, per signal
OUT_CERTIFIED = 0
OUT_STUCK = 1  # gap above tol, yet no KKT violator outside the working set
OUT_MAX_ROUNDS = 2
OUT_NEED_CAP = 3  # the working set outgrew the buffers: enlarge them and call again

_U64 = 2.0**-53


@njit(cache=True)
def duality_gap_from_stats(rx, rr, hh, l1w, mu, lam1, lam2):
    """Duality gap of one signal from its scalars (formula in
    :func:`aensae.solvers.certificate.gap_from_stats`; compiled without fast-math).
    """
    q = rr + lam2 * hh
    primal = 0.5 * q + lam1 * l1w
    s_max = lam1 / mu if mu > 0.0 else np.inf
    s_ray = rx / q if q > 0.0 else 0.0
    s = min(max(s_ray, 0.0), s_max)
    return primal - (s * rx - 0.5 * s * s * q)


@njit(cache=True)
def gap_rows(rx, rr, hh, l1w, mu, lam1, lam2, out):
    """``out[i] = duality_gap_from_stats(rx[i], ..., mu[i], lam1, lam2)``."""
    for i in range(out.shape[0]):
        out[i] = duality_gap_from_stats(rx[i], rr[i], hh[i], l1w[i], mu[i], lam1, lam2)


@njit(cache=True, inline="always")
def _heap_offer(hv, hi, size, k, v, j):
    """Offer ``(v, j)`` to the size-``k`` min-heap ``hv``/``hi`` holding ``size`` entries;
    returns the new size. Once full, one comparison rejects anything below the root."""
    if size < k:
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
    return size


@njit(cache=True, inline="always")
def _top_k_row(C, b, iw, nonneg, k, out, score, hv, hi):
    """``out[:k]``: indices of the ``k`` largest scores ``|C[b, j]| / w_j`` (``C / w`` if
    ``nonneg``; ``iw = 1 / w``), any order. ``score`` (m,), ``hv``, ``hi`` (>= k) are
    scratch.

    The scores are split into about ``4k`` blocks; the ``k``-th largest block maximum ``t``
    is at most the ``k``-th largest score (``k`` distinct blocks reach it), so only scores
    ``>= t`` (typically a few dozen) go through the size-``k`` min-heap. Same result as a
    heap over all scores, without its unpredictable branches on most entries.
    """
    m = C.shape[1]
    for j in range(m):
        cj = C[b, j]
        score[j] = (cj if nonneg else abs(cj)) * iw[j]
    bs = max(1, m // (4 * k))
    size = 0
    for lo in range(0, m, bs):
        top = score[lo]
        for j in range(lo + 1, min(m, lo + bs)):
            top = max(top, score[j])
        size = _heap_offer(hv, hi, size, k, top, lo)
    t = hv[0]
    size = 0
    for j in range(m):
        if score[j] >= t:
            size = _heap_offer(hv, hi, size, k, score[j], j)
    for i in range(k):
        out[i] = hi[i]


@njit(cache=True, inline="always")
def _push_top(vidx, vval, nv, j, val, grow):
    """Insert ``(j, val)`` into the descending list ``vval[:nv]`` capped at ``grow`` entries."""
    if nv < grow:
        pos = nv
        nv += 1
    elif val > vval[grow - 1]:
        pos = grow - 1
    else:
        return nv
    while pos > 0 and vval[pos - 1] < val:
        vval[pos] = vval[pos - 1]
        vidx[pos] = vidx[pos - 1]
        pos -= 1
    vval[pos] = val
    vidx[pos] = j
    return nv


@njit(cache=True, inline="always", fastmath=_FM)
def _add_atom(Dt, G, X, b, wmat, wrow, lam1, lam2, idx, Q, c, wl, i, j):
    """Make global atom ``j`` the ``i``-th working-set entry: c_i = D_j^T x, row/column i of Q."""
    n = X.shape[1]
    idx[i] = j
    s = 0.0
    for d in range(n):
        s += Dt[j, d] * X[b, d]
    c[i] = s
    wl[i] = lam1 * wmat[wrow, j]
    for a in range(i):
        q = G[j, idx[a]]
        Q[i, a] = q
        Q[a, i] = q
    Q[i, i] = G[j, j] + lam2


@njit(cache=True, inline="always", fastmath=_FM)
def _exact_pass(z, r, Dt, iw, cnw, e, mark, mu_s, lam1, nonneg, vidx, vval, grow):
    """Tight dual scale ``mu`` and exact violators (pass 2 of :func:`solve_signals`).

    The support (``mark == 2``) enters through ``mu_s`` alone, its exact float64 value.
    Every other atom whose bound ``ub_j`` stays below ``max(mu_S, (1 - 1e-3) lam1)``
    contributes the bound (it cannot raise ``mu`` past ``lam1``, where the gap starts to
    depend on it); the rest are recomputed as ``D_j^T r`` in float64.
    Returns ``(mu, number of violators written to vidx/vval)``, at most the ``grow``
    largest.
    """
    n = r.shape[0]
    lam1_hi = lam1 * (1.0 + 1e-12)
    thresh = max(mu_s, (1.0 - 1e-3) * lam1)
    mu = mu_s
    nv = 0
    for j in range(z.shape[0]):
        if mark[j] == 2:
            continue
        zj = z[j]
        a = zj if nonneg else abs(zj)
        ub = a * iw[j] + e * cnw[j]
        if ub <= thresh:
            mu = max(mu, ub)
            continue
        s = 0.0
        for d in range(n):
            s += Dt[j, d] * r[d]
        val = (s if nonneg else abs(s)) * iw[j]
        mu = max(mu, val)
        if mark[j] == 0 and val > lam1_hi:
            nv = _push_top(vidx, vval, nv, j, val, grow)
    return mu, nv


@njit(parallel=True, cache=True, fastmath=_FM)
def solve_signals(Dt, G, C32, X, sq_norm, wmat, iw0, cnw0, col_norm, lam1, lam2, nonneg, tol,
                  err32, ws_init, ws_grow, max_rounds, max_iter, rel_tol, ws_idx, ws_len, h_ws,
                  todo, gap, iters, rounds, status, outcome):
    r"""Working-set rounds, each certified, for the signals listed in ``todo`` (in place).

    Inputs: ``Dt`` (m, n) = D^T, ``G`` (m, m) = D^T D (float64), ``C32`` (B, m) the float32
    screening correlations ``X D``, ``X`` (B, n), ``sq_norm`` (B,) = ||x_b||^2 (certified
    means ``gap <= tol ||x||^2``), ``wmat`` (1 or B, m) l1 weights,
    ``col_norm`` (m,) = ||D_j||, ``iw0`` = 1 / w and ``cnw0`` = ||D_j|| / w_j for shared
    weights (ignored for per-row weights), ``err32`` the rigorous relative error factor of
    ``C32`` (``|C32_bj - D_j^T x_b| <= err32 ||D_j|| ||x_b||``).

    State (read as warm start, written back): ``ws_idx`` (B, cap) global atom indices of each
    working set (first ``ws_len[b]`` valid; ``ws_len[b] = 0`` starts from the top
    ``ws_init`` screening scores), ``h_ws`` (B, cap) the codes on it, ``rounds`` and ``iters``
    (cumulative). Outputs: ``gap`` (B,) the duality gap of the final code, ``status`` the
    last active-set status, ``outcome`` one of the ``OUT_*`` codes.

    Each round solves the restricted problem exactly (:func:`_solve_one`), then checks
    every atom without a BLAS call. With ``S`` the support and ``r = x - D_S h_S``,

        D_j^T r = D_j^T x - sum_{a in S} h_a G_{aj}  ~  z_j = C32_bj - sum_{a in S} h_a G_aj,

    a Gram update of ``|S| m`` flops, and ``|z_j - D_j^T r| <= e ||D_j||`` with
    ``e = err32 ||x|| + 2 (n + 2|S| + 12) u64 (2 ||x|| + sum_a |h_a| ||D_a||)`` (the float32
    screening error; the float64 rounding of ``G``, of the update, of ``r`` and of the
    scan's own arithmetic, using ``|z_j| <= ||D_j|| (2 ||x|| + sum_a |h_a| ||D_a||)``). Hence
    ``ub_j = (|z_j| + e ||D_j||) / w_j`` bounds ``|D_j^T r| / w_j`` from above and
    ``lb_j`` from below. The gap evaluated with ``mu = max(mu_S, max_{j not in S} ub_j)``
    is a rigorous upper bound: ``mu_S``, the support's scale, is computed from ``D_j^T r``
    in float64 and never from ``z`` (at the restricted optimum it equals ``lam1``, while
    ``e ||D_j|| / w_j`` exceeds ``lam1`` once ``lam1 < err32 ||x||``: with it in ``mu``,
    ``s = lam1 / mu`` would fall well below 1 and the gap, about
    ``lam1 sum_j w_j |h_j| (1 - s)``, far above tol, on optimal codes). If the gap
    exceeds ``tol ||x||^2`` and some atoms have ``lb_j > lam1`` (certain violators), the
    ``max(ws_grow, |W|)`` largest join
    the working set (so it at most doubles per round) and the next round starts. Otherwise
    every atom whose bound could matter (``ub_j`` above ``max(mu_S, (1 - 1e-3) lam1)``) is
    recomputed as ``D_j^T r`` in float64;
    the certificate and the violators are taken from those exact values, so the reported
    gap is as tight as float64 allows.
    """
    n = X.shape[1]
    m = Dt.shape[0]
    cap = ws_idx.shape[1]
    per_row_w = wmat.shape[0] > 1
    lam1_hi = lam1 * (1.0 + 1e-12)
    for t in prange(todo.shape[0]):
        b = todo[t]
        wrow = b if per_row_w else 0
        if per_row_w:
            iw = np.empty(m)
            cnw = np.empty(m)
            for j in range(m):
                iw[j] = 1.0 / wmat[b, j]
                cnw[j] = col_norm[j] * iw[j]
        else:
            iw = iw0
            cnw = cnw0
        idx = ws_idx[b]
        h = h_ws[b]
        Q = np.empty((cap, cap))
        c = np.empty(cap)
        wl = np.empty(cap)
        r = np.empty(n)
        z = np.empty(m)
        hvk = np.empty(cap)
        hik = np.empty(cap, np.int64)
        W = ws_len[b]
        if W == 0:
            W = min(ws_init, cap)
            _top_k_row(C32, b, iw, nonneg, W, idx, z, hvk, hik)  # z as scratch
            for i in range(W):
                h[i] = 0.0
        for i in range(W):
            _add_atom(Dt, G, X, b, wmat, wrow, lam1, lam2, idx, Q, c, wl, i, idx[i])
        xx = sq_norm[b]
        xnorm = np.sqrt(xx)
        mark = np.zeros(m, np.int8)
        vidx = np.empty(m, np.int64)
        vval = np.empty(m)
        # allocated once per signal at full capacity: numba's parfor pass can hoist an
        # allocation inside the round loop together with a stale size (seen with
        # np.zeros(W) while W grew: reads past the end), so none happens in that loop
        excluded = np.zeros(cap, np.bool_)
        res = OUT_MAX_ROUNDS
        g = np.inf
        rx = rr = hh = l1w = mu = 0.0
        while rounds[b] < max_rounds:
            rounds[b] += 1
            mi = max_iter if max_iter > 0 else 10 * W + 100
            excluded[:W] = False
            it, st = _solve_one(Q, c, wl, nonneg, h, excluded, W, mi, rel_tol)
            iters[b] += it
            status[b] = st
            # residual, gap scalars, and the Gram update z = C32 - G_S^T h_S
            for d in range(n):
                r[d] = X[b, d]
            for j in range(m):
                z[j] = C32[b, j]
            hh = 0.0
            l1w = 0.0
            hsum = 0.0
            n_s = 0
            for i in range(W):
                hv = h[i]
                if hv == 0.0:
                    continue
                gi = idx[i]
                n_s += 1
                hh += hv * hv
                l1w += wmat[wrow, gi] * abs(hv)
                hsum += abs(hv) * col_norm[gi]
                for d in range(n):
                    r[d] -= hv * Dt[gi, d]
                for j in range(m):
                    z[j] -= hv * G[gi, j]
            rx = 0.0
            rr = 0.0
            for d in range(n):
                rx += r[d] * X[b, d]
                rr += r[d] * r[d]
            # the support's exact dual scale, in float64. The scans below skip the support
            # (mark 2): the error bound e ||D_j|| / w_j of its z_j exceeds lam1 itself
            # when lam1 < err32 ||x|| (small lam1, or signals far above the penalty); as
            # a bound in mu it would set s = lam1 / mu well below 1 and the gap to about
            # lam1 sum_j w_j |h_j| (1 - s), far above tol ||x||^2, on optimal codes
            mu_s = 0.0
            for i in range(W):
                gi = idx[i]
                hv = h[i]
                if hv == 0.0:
                    mark[gi] = 1
                    continue
                mark[gi] = 2
                s = 0.0
                for d in range(n):
                    s += Dt[gi, d] * r[d]
                s -= lam2 * hv
                mu_s = max(mu_s, (s if nonneg else abs(s)) * iw[gi])
            e = err32 * xnorm + 2.0 * (n + 2 * n_s + 12) * _U64 * (2.0 * xnorm + hsum)
            # violators this round may add: ws_grow, or as many as the working set holds,
            # so it at most doubles and a support of s atoms takes O(log s) rounds
            grow = max(ws_grow, W)
            # pass 1: rigorous bounds from z, certain violators (lb_j > lam1)
            mu = mu_s
            nv = 0
            for j in range(m):
                if mark[j] == 2:
                    continue  # exact in mu_s
                zj = z[j]
                a = zj if nonneg else abs(zj)
                ej = e * cnw[j]
                ub = a * iw[j] + ej
                mu = max(mu, ub)
                if ub - 2.0 * ej > lam1_hi and mark[j] == 0:
                    nv = _push_top(vidx, vval, nv, j, ub - 2.0 * ej, grow)
            g = duality_gap_from_stats(rx, rr, hh, l1w, mu, lam1, lam2)
            certified = g <= tol * xx
            exact = certified or nv == 0
            if exact:
                # pass 2 (typically once per signal, in its last round): exact float64
                # correlations wherever the bound is within reach of the dual scale, so the
                # reported gap is tight and the violators, if any, are exact
                mu, nv = _exact_pass(z, r, Dt, iw, cnw, e, mark, mu_s, lam1, nonneg, vidx,
                                     vval, grow)
                g = duality_gap_from_stats(rx, rr, hh, l1w, mu, lam1, lam2)
                certified = g <= tol * xx
            last = rounds[b] >= max_rounds
            if last and not exact:
                # out of rounds: report the tight gap of the final code all the same
                mu, _ = _exact_pass(z, r, Dt, iw, cnw, e, mark, mu_s, lam1, nonneg, vidx,
                                    vval, grow)
                g = duality_gap_from_stats(rx, rr, hh, l1w, mu, lam1, lam2)
            for i in range(W):
                mark[idx[i]] = 0
            if certified:
                res = OUT_CERTIFIED
                break
            if nv == 0:
                res = OUT_STUCK
                break
            if last:
                break  # res stays OUT_MAX_ROUNDS
            if W + nv > cap:
                # the caller enlarges the buffers and calls again; this round is redone
                # there from the same state, so it does not count against max_rounds
                rounds[b] -= 1
                res = OUT_NEED_CAP
                break
            for q in range(nv):
                _add_atom(Dt, G, X, b, wmat, wrow, lam1, lam2, idx, Q, c, wl, W + q, vidx[q])
                h[W + q] = 0.0
            W += nv
        ws_len[b] = W
        gap[b] = g
        outcome[b] = res


@njit(parallel=True, cache=True)
def scatter_codes(ws_idx, ws_len, h_ws, out):
    """``out[b, ws_idx[b, i]] = h_ws[b, i]`` for the non-zeros; ``out`` starts at zero."""
    for b in prange(ws_idx.shape[0]):
        for i in range(ws_len[b]):
            v = h_ws[b, i]
            if v != 0.0:
                out[b, ws_idx[b, i]] = v


@njit(cache=True)
def compact_codes(ws_idx, ws_len, h_ws):
    """CSR arrays ``(indptr, indices, data)`` of the codes, column indices sorted per row."""
    B = ws_idx.shape[0]
    indptr = np.zeros(B + 1, np.int64)
    for b in range(B):
        c = 0
        for i in range(ws_len[b]):
            if h_ws[b, i] != 0.0:
                c += 1
        indptr[b + 1] = indptr[b] + c
    indices = np.empty(indptr[B], np.int64)
    data = np.empty(indptr[B])
    for b in range(B):
        p = indptr[b]
        for i in range(ws_len[b]):
            v = h_ws[b, i]
            if v == 0.0:
                continue
            j = ws_idx[b, i]
            q = p  # insertion sort by column within the row
            while q > indptr[b] and indices[q - 1] > j:
                indices[q] = indices[q - 1]
                data[q] = data[q - 1]
                q -= 1
            indices[q] = j
            data[q] = v
            p += 1
    return indptr, indices, data
