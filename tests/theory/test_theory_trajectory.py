"""ISTA / FISTA trajectories: codes against scikit-learn, faces and their constants."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import ElasticNet

from aensae.theory import (
    lipschitz_enet,
    local_hoffman,
    proximal_gradient,
    trajectory_constants,
)


def _problem(seed=0, n=20, m=40, B=4):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n, m))
    D /= np.linalg.norm(D, axis=0)
    return D, rng.standard_normal((B, n))


def _sklearn(D, x, lam1, lam2, positive=False):
    n = D.shape[0]
    est = ElasticNet(alpha=(lam1 + lam2) / n, l1_ratio=lam1 / (lam1 + lam2),
                     fit_intercept=False, tol=1e-14, max_iter=200_000, positive=positive)
    return est.fit(D, x).coef_


@pytest.mark.parametrize(("method", "nonneg"), [("fista", False), ("ista", False),
                                                ("fista", True)])
def test_final_codes_match_scikit_learn(method, nonneg):
    D, X = _problem(1)
    lam1, lam2 = 0.25, 0.1
    tr = proximal_gradient(D, X, lam1, lam2, nonneg=nonneg, method=method, max_iter=20_000)
    for b in range(X.shape[0]):
        np.testing.assert_allclose(tr.codes[b], _sklearn(D, X[b], lam1, lam2, nonneg),
                                   atol=1e-8)


def test_faces_are_recorded_in_order_and_end_at_the_solution():
    D, X = _problem(2)
    lam1, lam2 = 0.2, 0.05
    tr = proximal_gradient(D, X, lam1, lam2)
    for b in range(X.shape[0]):
        faces = tr.faces[b]
        assert faces.shape[0] >= 1
        np.testing.assert_array_equal(faces[-1], np.sign(tr.codes[b]))
        assert np.all(np.any(faces[1:] != faces[:-1], axis=1))  # consecutive faces differ
        assert np.all(np.diff(tr.entered[b]) > 0)


def test_constants_of_visited_faces():
    D, X = _problem(3)
    lam1, lam2 = 0.2, 0.05
    w = np.random.default_rng(4).uniform(0.5, 2.0, D.shape[1])
    tr = proximal_gradient(D, X, lam1, lam2, w)
    tc = trajectory_constants(D, tr, lam1, lam2, w)
    for b in range(X.shape[0]):
        faces = tr.faces[b].astype(float)
        np.testing.assert_allclose(tc.lipschitz_faces[b], lipschitz_enet(D, faces, lam2))
        np.testing.assert_allclose(tc.hoffman_faces[b], local_hoffman(D, faces, lam1, lam2,
                                                                      w).value)
        assert tc.lipschitz_path[b] == tc.lipschitz_faces[b].max()
        assert tc.hoffman_final[b] == tc.hoffman_faces[b][-1]
    assert np.all(tc.lipschitz_path >= tc.lipschitz_final)
    assert np.all(tc.hoffman_path >= tc.hoffman_final)


def test_zero_solution_and_validation():
    D, X = _problem(5, B=2)
    tr = proximal_gradient(D, X, 100.0, 0.1)
    assert np.all(tr.codes == 0) and all(f.shape[0] == 0 for f in tr.faces)
    tc = trajectory_constants(D, tr, 100.0, 0.1)
    assert np.all(tc.lipschitz_path == 0) and np.allclose(tc.hoffman_path, 1 / 100.0)
    with pytest.raises(ValueError, match="method"):
        proximal_gradient(D, X, 1.0, method="newton")
    with pytest.raises(ValueError, match="X must have shape"):
        proximal_gradient(D, X[:, :3], 1.0)
