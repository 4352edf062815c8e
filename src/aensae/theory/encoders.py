r"""Lipschitz constants and jumps of amortized encoders (duck-typed).

An encoder is anything with ``encode(x)`` mapping a torch tensor ``(B, n)`` to codes
``(B, m)``; this module never imports :mod:`aensae.saes`. Quantities:

- local constant :math:`L(x) = \|J_h(x)\|_2`, the spectral norm of the encoder Jacobian
  (:func:`encoder_local_lipschitz`); for a ReLU encoder
  :math:`h = \mathrm{ReLU}((x - b_{dec}) W_{enc} + b_{enc})` it equals
  :math:`\|W_{enc}[:, A(x)]\|_2` over the active latents ``A(x)``;
- global upper bound :math:`\|W_{enc}\|_2` (:func:`encoder_global_bound`), valid whenever
  the encoder is an affine map with matrix ``W_enc`` followed by an elementwise 1-Lipschitz
  activation (ReLU), since :math:`\|\phi(a) - \phi(a')\| \le \|a - a'\|`;
- empirical lower bounds of the global constant: difference quotients
  :math:`\|h(x) - h(x')\| / \|x - x'\|` on given pairs (:func:`pair_ratio_lower_bound`) and
  the best quotient found by gradient ascent over pairs (:func:`ascent_lower_bound`);
- TopK, BatchTopK and JumpReLU maps are discontinuous, so no finite constant exists; their
  jumps along segments are located and sized instead (:func:`encoder_jumps`).

Batch-coupled encoders (BatchTopK) are evaluated on the batches these functions form (the
points of the current chunk); their per-sample Jacobian is the derivative of the sample's
code with respect to the sample's input with the rest of the batch held fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aensae._validation import check_int, check_real

__all__ = [
    "JumpReport",
    "ascent_lower_bound",
    "encoder_global_bound",
    "encoder_jacobian",
    "encoder_jumps",
    "encoder_local_lipschitz",
    "pair_ratio_lower_bound",
]


def _as_tensor(name: str, X: Any, like: Any = None):
    import torch

    if not isinstance(X, torch.Tensor):
        arr = np.asarray(X)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name} must be a real array or tensor, got dtype {arr.dtype}")
        X = torch.as_tensor(arr)
    if X.ndim != 2:
        raise ValueError(f"{name} must have shape (B, n), got {tuple(X.shape)}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError(f"{name} must be finite")
    if like is not None:
        X = X.to(dtype=like.dtype, device=like.device)
    return X


def _param_like(encoder: Any):
    """A tensor carrying the encoder's dtype/device (its W_enc or first parameter)."""
    w = getattr(encoder, "W_enc", None)
    if w is None and hasattr(encoder, "parameters"):
        w = next(iter(encoder.parameters()), None)
    return w


def _encode(encoder: Any, X):
    if not hasattr(encoder, "encode"):
        raise TypeError(f"encoder must have an encode(x) method, got {type(encoder).__name__}")
    return encoder.encode(X)


def encoder_jacobian(encoder: Any, X: Any):
    r"""Per-sample Jacobians :math:`J_b = \partial h(x_b) / \partial x_b`, shape (B, m, n).

    Computed by forward-mode differentiation, one ``jvp`` of the batched ``encode`` per
    input coordinate (``n`` passes), so encoders need no per-sample functionalisation.
    Returned as a torch tensor in the encoder's dtype.
    """
    import torch
    from torch.func import jvp

    X = _as_tensor("X", X, _param_like(encoder))
    B, n = X.shape
    cols = []
    with torch.no_grad():  # forward-mode only; no graph for the encoder's parameters
        for j in range(n):
            tangent = torch.zeros_like(X)
            tangent[:, j] = 1.0
            _, dh = jvp(lambda z: _encode(encoder, z), (X,), (tangent,))
            cols.append(dh.detach())
    return torch.stack(cols, dim=-1)


def _spectral_norms(J) -> np.ndarray:
    """Spectral norm of each (m, n) slice, via the Gram matrix of its non-zero rows."""
    import torch

    J = J.to(torch.float64)
    row_nz = J.abs().amax(-1) > 0  # (B, m)
    k = int(row_nz.sum(-1).max()) if J.shape[0] else 0
    if k == 0:
        return np.zeros(J.shape[0])
    if k < J.shape[-1]:
        order = torch.argsort(row_nz.to(torch.int8), dim=-1, descending=True, stable=True)[:, :k]
        Jk = torch.gather(J, 1, order[..., None].expand(-1, -1, J.shape[-1]))
        gram = Jk @ Jk.transpose(1, 2)
    else:
        gram = J.transpose(1, 2) @ J
    lam = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0.0)
    return lam.sqrt().cpu().numpy()


def encoder_local_lipschitz(encoder: Any, X: Any, chunk: int = 128) -> np.ndarray:
    r"""Local Lipschitz constants :math:`\|J_h(x_b)\|_2` of an encoder, shape (B,).

    Jacobians come from :func:`encoder_jacobian` in chunks of ``chunk`` samples; each
    spectral norm is the square root of the largest eigenvalue of the Gram matrix of the
    Jacobian's non-zero rows (inactive latents contribute zero rows), in float64. At a
    point of non-differentiability the value is that of the one-sided derivative torch
    defines (e.g. ReLU'(0) = 0).
    """
    chunk = check_int("chunk", chunk, low=1)
    X = _as_tensor("X", X, _param_like(encoder))
    out = [_spectral_norms(encoder_jacobian(encoder, X[s:s + chunk]))
           for s in range(0, X.shape[0], chunk)]
    return np.concatenate(out) if out else np.zeros(0)


def encoder_global_bound(W_enc: Any) -> float:
    r"""Global Lipschitz upper bound :math:`\|W_{enc}\|_2` (largest singular value).

    Valid for encoders ``h = phi(x W_enc + c)`` with an elementwise 1-Lipschitz ``phi``
    (ReLU, and the centring ``x - b_dec`` changes nothing). Not a bound for TopK / JumpReLU,
    which are discontinuous (see :func:`encoder_jumps`).
    """
    import torch

    if isinstance(W_enc, torch.Tensor):
        W_enc = W_enc.detach().cpu().to(torch.float64).numpy()
    W = np.asarray(W_enc, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"W_enc must be 2-D [d_in, d_sae], got shape {W.shape}")
    return float(np.linalg.norm(W, 2))


def pair_ratio_lower_bound(encoder: Any, X: Any, X2: Any) -> np.ndarray:
    r"""Difference quotients :math:`\|h(x_b) - h(x'_b)\| / \|x_b - x'_b\|`, shape (B,).

    Each is a lower bound of the encoder's global Lipschitz constant; their maximum is the
    best such bound on the given pairs. Pairs with ``x = x'`` are rejected.
    """
    import torch

    X = _as_tensor("X", X, _param_like(encoder))
    X2 = _as_tensor("X2", X2, X)
    if X.shape != X2.shape:
        raise ValueError(f"X and X2 must have the same shape, got {tuple(X.shape)} "
                         f"and {tuple(X2.shape)}")
    dx = (X - X2).to(torch.float64).norm(dim=-1)
    if bool((dx == 0).any()):
        raise ValueError(f"X2 must differ from X in every row; {int((dx == 0).sum())} "
                         "rows are identical")
    with torch.no_grad():
        dh = (_encode(encoder, X) - _encode(encoder, X2)).to(torch.float64).norm(dim=-1)
    return (dh / dx).cpu().numpy()


def ascent_lower_bound(
    encoder: Any,
    X: Any,
    *,
    radius: float = 1e-2,
    steps: int = 50,
    lr: float = 1e-2,
    seed: int = 0,
) -> np.ndarray:
    r"""Lower bounds of the global constant by gradient ascent over pairs, shape (B,).

    The local constant of a piecewise-linear encoder is piecewise constant in ``x`` (zero
    gradient), so the ascent is on its smooth surrogate, the difference quotient
    :math:`r(x, \delta) = \|h(x + \delta) - h(x)\| / \|\delta\|`, jointly in the base point
    ``x`` (started at the rows of ``X``) and the offset ``delta`` (started at a random
    direction of norm ``radius``), with Adam at learning rate ``lr`` (scaled by the norm
    of each row). Every evaluated quotient is a valid lower bound; the maximum over the
    ``steps + 1`` evaluations is returned per row.
    """
    import torch

    radius = check_real("radius", radius, low=0.0, low_inclusive=False)
    steps = check_int("steps", steps, low=0)
    lr = check_real("lr", lr, low=0.0, low_inclusive=False)
    X = _as_tensor("X", X, _param_like(encoder))
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.randn(X.shape, generator=gen, dtype=torch.float64).to(X)
    delta0 = radius * u / u.norm(dim=-1, keepdim=True)
    x = X.detach().clone().requires_grad_(True)
    delta = delta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x, delta], lr=lr)
    best = torch.zeros(X.shape[0], dtype=torch.float64)
    for it in range(steps + 1):
        ratio = ((_encode(encoder, x + delta) - _encode(encoder, x)).norm(dim=-1)
                 / delta.norm(dim=-1))
        best = torch.maximum(best, torch.nan_to_num(ratio.detach().to(torch.float64), nan=0.0))
        if it == steps:
            break
        # Gradients w.r.t. the inputs only: the encoder's parameters are left untouched.
        x.grad, delta.grad = torch.autograd.grad(-ratio.sum(), [x, delta])
        opt.step()
    return best.cpu().numpy()


@dataclass(frozen=True)
class JumpReport:
    """Jumps of an encoder along the segments ``x_b -> x'_b``.

    Attributes
    ----------
    n_jumps : array (B,) of int
        Grid intervals whose code change does not vanish under bisection (> ``jump_tol``).
    max_jump : array (B,)
        Largest jump :math:`\\|h(x_{t^+}) - h(x_{t^-})\\|` found (0 when none).
    t_max : array (B,)
        Position ``t`` in [0, 1] of the largest jump (NaN when none).
    jump_tol : float
        Threshold that declared a jump.
    """

    n_jumps: np.ndarray
    max_jump: np.ndarray
    t_max: np.ndarray
    jump_tol: float


def encoder_jumps(
    encoder: Any,
    X: Any,
    X2: Any,
    *,
    n_grid: int = 32,
    n_bisect: int = 40,
    jump_tol: float = 1e-4,
) -> JumpReport:
    r"""Locate and size discontinuities of ``h`` along the segments ``x_b -> x'_b``.

    The segment :math:`x(t) = x + t (x' - x)` is cut into ``n_grid`` equal intervals. Each
    interval is bisected ``n_bisect`` times, keeping the half across which
    :math:`\|h(x(t_r)) - h(x(t_l))\|` is larger. A continuous map with local constant
    ``L`` changes by at most :math:`L \|x' - x\| / (n_{grid} 2^{n_{bisect}})` over the final
    interval, while a jump keeps its size, so an interval is declared to hold a jump when
    its final change exceeds ``jump_tol``; that change is reported as the jump size.
    An interval holding several jumps reports the larger side's.
    """
    import torch

    n_grid = check_int("n_grid", n_grid, low=1)
    n_bisect = check_int("n_bisect", n_bisect, low=0)
    jump_tol = check_real("jump_tol", jump_tol, low=0.0, low_inclusive=False)
    X = _as_tensor("X", X, _param_like(encoder))
    X2 = _as_tensor("X2", X2, X)
    if X.shape != X2.shape:
        raise ValueError(f"X and X2 must have the same shape, got {tuple(X.shape)} "
                         f"and {tuple(X2.shape)}")
    B, n = X.shape
    d = (X2 - X).to(torch.float64)
    x0 = X.to(torch.float64)

    def codes_at(t):  # t (B, G) float64 -> codes (B, G, m) float64
        pts = (x0[:, None, :] + t[..., None] * d[:, None, :]).reshape(-1, n).to(X.dtype)
        with torch.no_grad():
            h = _encode(encoder, pts).to(torch.float64)
        return h.reshape(B, t.shape[1], -1)

    grid = torch.linspace(0.0, 1.0, n_grid + 1, dtype=torch.float64).expand(B, -1)
    hg = codes_at(grid)
    tl, tr = grid[:, :-1].clone(), grid[:, 1:].clone()
    hl, hr = hg[:, :-1], hg[:, 1:]
    for _ in range(n_bisect):
        tm = 0.5 * (tl + tr)
        hm = codes_at(tm)
        left = (hm - hl).norm(dim=-1) >= (hr - hm).norm(dim=-1)
        tr = torch.where(left, tm, tr)
        tl = torch.where(left, tl, tm)
        hr = torch.where(left[..., None], hm, hr)
        hl = torch.where(left[..., None], hl, hm)
    size = (hr - hl).norm(dim=-1)  # (B, G)
    is_jump = size > jump_tol
    n_jumps = is_jump.sum(-1).cpu().numpy()
    sz = torch.where(is_jump, size, torch.zeros_like(size))
    max_jump, arg = sz.max(-1)
    t_at = (0.5 * (tl + tr)).gather(1, arg[:, None])[:, 0]
    t_max = torch.where(max_jump > 0, t_at, torch.full_like(t_at, float("nan")))
    return JumpReport(n_jumps=n_jumps.astype(int), max_jump=max_jump.cpu().numpy(),
                      t_max=t_max.cpu().numpy(), jump_tol=jump_tol)
