"""Local Lipschitz constants of the exact map against dense linear algebra and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aensae.theory import (
    enet_global_bound,
    lipschitz_enet,
    lipschitz_lasso,
    support_singular_values,
)


def _dict(n, m, seed):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n, m))
    return D / np.linalg.norm(D, axis=0)


def _codes(m, sizes, seed):
    rng = np.random.default_rng(seed)
    H = np.zeros((len(sizes), m))
    for b, k in enumerate(sizes):
        H[b, rng.choice(m, k, replace=False)] = rng.choice([-1.0, 1.0], k) * rng.uniform(1, 2, k)
    return H


def test_enet_constant_equals_dense_jacobian_norm():
    n, m = 12, 30
    D = _dict(n, m, 0)
    H = _codes(m, [0, 1, 3, 5, 5, 8, 12, 15], 1)
    lam2 = 0.07
    got = lipschitz_enet(D, H, lam2)
    for b in range(H.shape[0]):
        S = np.flatnonzero(H[b])
        if S.size == 0:
            assert got[b] == 0.0
            continue
        DS = D[:, S]
        J = np.linalg.inv(DS.T @ DS + lam2 * np.eye(S.size)) @ DS.T
        assert got[b] == pytest.approx(np.linalg.norm(J, 2), rel=1e-10)
        assert got[b] <= enet_global_bound(lam2) * (1 + 1e-12)


def test_lasso_constant_is_inverse_smallest_singular_value_and_inf_when_rank_deficient():
    n, m = 6, 20
    D = _dict(n, m, 2)
    H = _codes(m, [2, 4, 6, 7], 3)
    D2 = D.copy()
    D2[:, 19] = D2[:, 18]  # duplicated atom: rank deficient support
    H2 = np.zeros((1, m))
    H2[0, [18, 19]] = 1.0
    got = lipschitz_lasso(D, H)
    for b in range(3):
        S = np.flatnonzero(H[b])
        assert got[b] == pytest.approx(np.linalg.norm(np.linalg.pinv(D[:, S]), 2), rel=1e-9)
    assert got[3] == math.inf  # |S| = 7 > n = 6
    assert lipschitz_lasso(D2, H2)[0] == math.inf
    assert np.array_equal(lipschitz_enet(D, H, 0.0), got)


def test_support_singular_values_match_numpy_and_threshold():
    D = _dict(8, 16, 4)
    H = _codes(16, [3, 5], 5)
    H[0, np.flatnonzero(H[0])[0]] = 1e-9
    sv = support_singular_values(D, H, tol=1e-6)
    S0 = np.flatnonzero(np.abs(H[0]) > 1e-6)
    assert sv[0].shape == (2,)
    np.testing.assert_allclose(sv[0], np.linalg.svd(D[:, S0], compute_uv=False), rtol=1e-12)


def test_equicorrelated_closed_form():
    # Gram = rho 11^T + (1 - rho) I on the support: singular values sqrt(1 - rho) (k - 1
    # times) and sqrt(1 + (k - 1) rho).
    rho, k, lam2 = 0.8, 4, 0.05
    n, m = 10, 6
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, m + 1)))
    D = math.sqrt(rho) * Q[:, [0]] + math.sqrt(1 - rho) * Q[:, 1:]
    H = np.zeros((1, m))
    H[0, :k] = 1.0
    s = np.array([math.sqrt(1 - rho), math.sqrt(1 + (k - 1) * rho)])
    assert lipschitz_lasso(D, H)[0] == pytest.approx(1 / math.sqrt(1 - rho), rel=1e-12)
    assert lipschitz_enet(D, H, lam2)[0] == pytest.approx(np.max(s / (s**2 + lam2)), rel=1e-12)


def test_global_bound_and_validation():
    assert enet_global_bound(0.25) == 1.0
    assert enet_global_bound(0.0) == math.inf
    with pytest.raises(ValueError, match="lam2"):
        lipschitz_enet(_dict(3, 4, 0), np.ones((1, 4)), -1.0)
    with pytest.raises(ValueError, match="codes must have shape"):
        lipschitz_lasso(_dict(3, 4, 0), np.ones((1, 5)))
