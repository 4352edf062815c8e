"""Encoder Lipschitz constants, bounds and jumps on small hand-built encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aensae.theory import (
    ascent_lower_bound,
    encoder_global_bound,
    encoder_jacobian,
    encoder_jumps,
    encoder_local_lipschitz,
    pair_ratio_lower_bound,
)


class ReluEncoder:
    def __init__(self, n, m, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.randn(n, m, generator=g, dtype=torch.float64) / n**0.5
        self.b_enc = 0.1 * torch.randn(m, generator=g, dtype=torch.float64)
        self.b_dec = 0.1 * torch.randn(n, generator=g, dtype=torch.float64)

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)


class TopKEncoder(ReluEncoder):
    def __init__(self, n, m, k, seed=0):
        super().__init__(n, m, seed)
        self.k = k

    def encode(self, x):
        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)


def _x(B, n, seed=1):
    return torch.randn(B, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_relu_local_constant_is_norm_of_active_columns():
    enc = ReluEncoder(6, 20)
    X = _x(7, 6)
    got = encoder_local_lipschitz(enc, X, chunk=3)
    pre = (X - enc.b_dec) @ enc.W_enc + enc.b_enc
    W = enc.W_enc.numpy()
    for b in range(7):
        A = (pre[b] > 0).numpy()
        assert got[b] == pytest.approx(np.linalg.norm(W[:, A], 2), rel=1e-10)
    assert np.all(got <= encoder_global_bound(enc.W_enc) * (1 + 1e-12))


def test_jacobian_matches_central_differences():
    enc = ReluEncoder(5, 12, seed=3)
    X = _x(4, 5, seed=4)
    J = encoder_jacobian(enc, X).numpy()
    eps = 1e-6
    for j in range(5):
        e = torch.zeros(5, dtype=torch.float64)
        e[j] = eps
        fd = ((enc.encode(X + e) - enc.encode(X - e)) / (2 * eps)).numpy()
        np.testing.assert_allclose(J[:, :, j], fd, atol=1e-6)


def test_pair_and_ascent_bounds_sit_below_the_global_bound():
    enc = ReluEncoder(6, 24, seed=5)
    X = _x(16, 6, seed=6)
    X2 = X + 0.3 * _x(16, 6, seed=7)
    top = encoder_global_bound(enc.W_enc)
    pairs = pair_ratio_lower_bound(enc, X, X2)
    asc = ascent_lower_bound(enc, X, steps=30, seed=0)
    assert np.all(pairs <= top * (1 + 1e-9))
    assert np.all(asc <= top * (1 + 1e-9))
    # Ascent starts from a valid pair, so it can only improve on its first quotient,
    # and the local constant at x is a limit of such quotients.
    assert asc.max() >= 0.5 * encoder_local_lipschitz(enc, X).max()


def test_relu_encoder_has_no_jumps():
    enc = ReluEncoder(4, 10, seed=8)
    X, X2 = _x(5, 4, seed=9), _x(5, 4, seed=10)
    rep = encoder_jumps(enc, X, X2, n_grid=8, n_bisect=30, jump_tol=1e-6)
    assert np.all(rep.n_jumps == 0) and np.all(rep.max_jump == 0)
    assert np.all(np.isnan(rep.t_max))


def test_top1_jump_has_the_closed_form_size_and_place():
    # Two latents with W = I (n = m = 2), no biases, k = 1: along x(t) = (1 - t, t) * 2 the
    # winner switches at t = 1/2, where both pre-activations equal 1, so the code jumps
    # from (1, 0) to (0, 1): size sqrt(2).
    enc = TopKEncoder(2, 2, 1)
    enc.W_enc = torch.eye(2, dtype=torch.float64)
    enc.b_enc = torch.zeros(2, dtype=torch.float64)
    enc.b_dec = torch.zeros(2, dtype=torch.float64)
    X = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    X2 = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    rep = encoder_jumps(enc, X, X2, n_grid=5, n_bisect=40)
    assert rep.n_jumps[0] == 1
    assert rep.max_jump[0] == pytest.approx(np.sqrt(2.0), rel=1e-6)
    assert rep.t_max[0] == pytest.approx(0.5, abs=1e-9)


def test_validation_messages():
    enc = ReluEncoder(3, 4)
    with pytest.raises(ValueError, match="X2 must differ"):
        pair_ratio_lower_bound(enc, _x(2, 3), _x(2, 3))
    with pytest.raises(ValueError, match=r"shape \(B, n\)"):
        encoder_local_lipschitz(enc, torch.zeros(3))
    with pytest.raises(TypeError, match="encode"):
        encoder_local_lipschitz(object(), _x(2, 3))
    with pytest.raises(ValueError, match="W_enc must be 2-D"):
        encoder_global_bound(np.ones(3))
