r"""Trajectory-restricted constants: the faces an ISTA / FISTA run visits from zero.

Proximal gradient on :math:`F(h) = f(h) + \lambda_1 \sum_i w_i |h_i|`, with the smooth part
:math:`f(h) = \tfrac12\|x - Dh\|^2 + \tfrac{\lambda_2}2\|h\|^2`, gradient
:math:`\nabla f(h) = D^T(Dh - x) + \lambda_2 h` and Lipschitz constant
:math:`L = \sigma_{\max}(D)^2 + \lambda_2`:

    ISTA :  h_{t+1} = prox(h_t - grad f(h_t) / L)
    FISTA:  h_{t+1} = prox(y_t - grad f(y_t) / L),
            y_{t+1} = h_{t+1} + (tau_t - 1) / tau_{t+1} (h_{t+1} - h_t),
            tau_{t+1} = (1 + sqrt(1 + 4 tau_t^2)) / 2,  tau_0 = 1,  h_0 = y_0 = 0,

where ``prox`` soft-thresholds coordinate ``i`` at ``lam1 w_i / L`` (and clips at 0 when
``nonneg``). A *face* is the signed support ``(A, sign(h_A))`` of an iterate ``h_t``. The
run records every face entered; for each, the local Lipschitz constant of the exact map
on that support (:func:`aensae.theory.lipschitz.lipschitz_enet`) and the local Hoffman
constant of its KKT matrix (:func:`aensae.theory.hoffman.local_hoffman`). The largest of
these over the path is the constant that governs the run; the final face's is the one at
the solution. The empty face of ``h_0 = 0`` is not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from aensae._validation import check_array, check_int, check_real
from aensae.solvers.problem import validate_weights
from aensae.theory.hoffman import local_hoffman
from aensae.theory.lipschitz import lipschitz_enet

__all__ = ["Trajectory", "TrajectoryConstants", "proximal_gradient", "trajectory_constants"]


@dataclass(frozen=True)
class Trajectory:
    """Faces visited by one proximal-gradient run per signal.

    Attributes
    ----------
    codes : array (B, m)
        Last iterates.
    n_iter : array (B,)
        Iterations run per signal (stopping rule in :func:`proximal_gradient`).
    faces : list of B arrays (F_b, m)
        Signed supports ``sign(h_t)`` of the faces entered, in visiting order.
    entered : list of B arrays (F_b,)
        Iteration at which each face was entered.
    """

    codes: np.ndarray
    n_iter: np.ndarray
    faces: list[np.ndarray]
    entered: list[np.ndarray]


def _check(D, X, lam1, lam2, weights):
    D = check_array("D", D, ndim=2)
    X = check_array("X", X, ndim=2, shape=(None, D.shape[0]))
    lam1 = check_real("lam1", lam1, low=0.0)
    lam2 = check_real("lam2", lam2, low=0.0)
    m = D.shape[1]
    w = validate_weights(weights, X.shape[0], m)
    return D, X, lam1, lam2, w


def proximal_gradient(
    D: np.ndarray,
    X: np.ndarray,
    lam1: float,
    lam2: float = 0.0,
    weights: np.ndarray | None = None,
    nonneg: bool = False,
    *,
    method: str = "fista",
    max_iter: int = 5000,
    tol: float = 1e-12,
) -> Trajectory:
    r"""Run ISTA or FISTA from zero on a batch and record the faces each signal visits.

    Parameters
    ----------
    D : array (n, m)
    X : array (B, n)
    lam1, lam2 : float >= 0
    weights : array (m,) or (B, m), optional
    nonneg : bool
    method : {"ista", "fista"}
    max_iter : int
    tol : float
        A signal stops once ``||h_{t+1} - h_t|| <= tol * max(||h_{t+1}||, 1)``.

    Returns
    -------
    Trajectory
    """
    D, X, lam1, lam2, w = _check(D, X, lam1, lam2, weights)
    if method not in ("ista", "fista"):
        raise ValueError(f"method must be 'ista' or 'fista', got {method!r}")
    max_iter = check_int("max_iter", max_iter, low=1)
    tol = check_real("tol", tol, low=0.0)
    B, m = X.shape[0], D.shape[1]
    L = np.linalg.norm(D, 2) ** 2 + lam2
    thr = lam1 * w / L
    DtX = X @ D
    G = D.T @ D
    h = np.zeros((B, m))
    y = h.copy()
    tau = np.ones(B)
    sign_prev = np.zeros((B, m), dtype=np.int8)
    faces: list[list[np.ndarray]] = [[] for _ in range(B)]
    entered: list[list[int]] = [[] for _ in range(B)]
    n_iter = np.zeros(B, dtype=int)
    live = np.arange(B)
    with threadpool_limits(1 if B <= 64 else None):  # small products: threads only contend
        _iterate(D, G, DtX, thr, lam2, L, nonneg, method, max_iter, tol, h, y, tau, sign_prev,
                 faces, entered, n_iter, live)
    return Trajectory(
        codes=h, n_iter=n_iter,
        faces=[np.array(f, dtype=np.int8).reshape(-1, m) for f in faces],
        entered=[np.array(e, dtype=int) for e in entered],
    )


def _iterate(D, G, DtX, thr, lam2, L, nonneg, method, max_iter, tol, h, y, tau, sign_prev,
             faces, entered, n_iter, live):
    for t in range(1, max_iter + 1):
        yl = y[live]
        z = yl - (yl @ G - DtX[live] + lam2 * yl) / L
        th = thr[live] if thr.shape[0] > 1 else thr
        h_new = np.sign(z) * np.maximum(np.abs(z) - th, 0.0)
        if nonneg:
            h_new = np.maximum(h_new, 0.0)
        if method == "fista":
            tau_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * tau[live] ** 2))
            y[live] = h_new + ((tau[live] - 1.0) / tau_new)[:, None] * (h_new - h[live])
            tau[live] = tau_new
        else:
            y[live] = h_new
        step = np.linalg.norm(h_new - h[live], axis=1)
        h[live] = h_new
        n_iter[live] = t
        sgn = np.sign(h_new).astype(np.int8)
        changed = np.any(sgn != sign_prev[live], axis=1)
        for r in np.flatnonzero(changed):
            b = live[r]
            faces[b].append(sgn[r].copy())
            entered[b].append(t)
        sign_prev[live] = sgn
        done = step <= tol * np.maximum(np.linalg.norm(h_new, axis=1), 1.0)
        live = live[~done]
        if live.size == 0:
            break


@dataclass(frozen=True)
class TrajectoryConstants:
    """Local constants along each path and at its end, per signal (arrays (B,)).

    ``*_path`` is the maximum over the faces visited; ``*_final`` the value on the last
    face; ``n_faces`` the number of faces entered. Lists hold the per-face values.
    """

    lipschitz_path: np.ndarray
    lipschitz_final: np.ndarray
    hoffman_path: np.ndarray
    hoffman_final: np.ndarray
    n_faces: np.ndarray
    lipschitz_faces: list[np.ndarray]
    hoffman_faces: list[np.ndarray]


def trajectory_constants(
    D: np.ndarray,
    trajectory: Trajectory,
    lam1: float,
    lam2: float = 0.0,
    weights: np.ndarray | None = None,
) -> TrajectoryConstants:
    """Lipschitz and Hoffman constants of every face a :class:`Trajectory` visited.

    All faces of all signals are evaluated in one batch each, every distinct support once
    (see the module docstring).
    ``weights`` must match those of the run ((m,) or (B, m)). Signals that never left the
    zero face get 0 for the Lipschitz constants and the constant of the empty face
    (``max_j 1/(lam1 w_j)``) for Hoffman.
    """
    D = check_array("D", D, ndim=2)
    B, m = trajectory.codes.shape
    counts = np.array([f.shape[0] for f in trajectory.faces], dtype=int)
    owner = np.repeat(np.arange(B), counts)
    signs = np.concatenate([*trajectory.faces, np.zeros((B, m), dtype=np.int8)]).astype(float)
    owner = np.concatenate([owner, np.arange(B)])  # trailing empty face per signal
    if weights is not None:
        w = check_array("weights", weights, ndim=(1, 2))
        w = w[owner] if w.ndim == 2 else w
    else:
        w = None
    # Both constants depend on the support only (and Hoffman on the weights): evaluate each
    # distinct (support, weight row) once.
    key = signs != 0
    if w is not None and np.ndim(w) == 2:
        key = np.hstack([key, w])
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    w_u = w[first] if w is not None and np.ndim(w) == 2 else w
    lip = lipschitz_enet(D, signs[first], lam2)[inverse]
    hof = local_hoffman(D, signs[first], lam1, lam2, w_u).value[inverse]
    splits = np.cumsum(counts)[:-1]
    n_all = counts.sum()
    lip_faces = np.split(lip[:n_all], splits)
    hof_faces = np.split(hof[:n_all], splits)
    lip_empty, hof_empty = lip[n_all:], hof[n_all:]
    path_l = np.array([f.max() if f.size else e for f, e in zip(lip_faces, lip_empty,
                                                                  strict=True)])
    path_h = np.array([f.max() if f.size else e for f, e in zip(hof_faces, hof_empty,
                                                                  strict=True)])
    fin_l = np.array([f[-1] if f.size else e for f, e in zip(lip_faces, lip_empty, strict=True)])
    fin_h = np.array([f[-1] if f.size else e for f, e in zip(hof_faces, hof_empty, strict=True)])
    return TrajectoryConstants(lipschitz_path=path_l, lipschitz_final=fin_l,
                               hoffman_path=path_h, hoffman_final=fin_h, n_faces=counts,
                               lipschitz_faces=lip_faces, hoffman_faces=hof_faces)
