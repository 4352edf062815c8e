"""Tests of aensae.metrics against hand computations and mathematical identities."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aensae.metrics import (
    code_bias,
    dictionary_recovery,
    explained_variance,
    explained_variance_centred,
    l0,
    mse,
    shrinkage,
    support_recovery,
    support_recovery_per_sample,
)
from aensae.synthetic import spiked_dictionary

FAST = settings(max_examples=30, deadline=None)
finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


# ============================================================================ reconstruction
def test_l0_hand():
    H = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    assert l0(H) == 1.0  # (2 + 0 + 1) / 3
    assert l0(np.array([0.0, -1.0, 0.5, 0.0])) == 2.0  # one sample
    assert l0(torch.tensor(H, dtype=torch.float32)) == 1.0


def test_mse_hand():
    X = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert mse(X, np.ones((2, 2))) == 3.5  # (0 + 1 + 4 + 9) / 4


def test_explained_variance_hand():
    # mean (2, 1); sum ||x - mean||^2 = 2 + 2 = 4; residuals (0, -1), (1, 0): sum 2
    X = np.array([[1.0, 0.0], [3.0, 2.0]])
    X_hat = np.array([[1.0, 1.0], [2.0, 2.0]])
    assert explained_variance(X, X_hat) == pytest.approx(0.5, abs=1e-15)
    # centred variant: Var(resid) per dim = (0.25, 0.25), Var(X) per dim = (1, 1)
    assert explained_variance_centred(X, X_hat) == pytest.approx(0.75, abs=1e-15)
    # worse than the mean: x_hat = 0 -> 1 - (1 + 13) / 4
    assert explained_variance(X, np.zeros_like(X)) == pytest.approx(-2.5, abs=1e-15)


@FAST
@given(X=arrays(np.float64, st.tuples(st.integers(2, 8), st.integers(1, 5)), elements=finite))
def test_explained_variance_mean_predictor_and_perfect(X):
    if np.sum((X - X.mean(0)) ** 2) < 1e-6:
        return
    mean_pred = np.broadcast_to(X.mean(0), X.shape)
    assert explained_variance(X, mean_pred) == pytest.approx(0.0, abs=1e-12)
    assert explained_variance(X, X) == 1.0
    assert explained_variance_centred(X, X) == 1.0
    # the centred variant ignores a constant offset of the residual; the metric of record does not
    shifted = X + 1.0
    assert explained_variance_centred(X, shifted) == pytest.approx(1.0, abs=1e-12)
    assert explained_variance(X, shifted) < 1.0


def test_explained_variance_torch_float32_accumulates_in_float64():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 7)).astype(np.float32)
    X_hat = X + 0.1 * rng.standard_normal((50, 7)).astype(np.float32)
    X64, Xh64 = X.astype(np.float64), X_hat.astype(np.float64)
    expected = 1 - np.sum((X64 - Xh64) ** 2) / np.sum((X64 - X64.mean(0)) ** 2)
    got = explained_variance(torch.from_numpy(X), torch.from_numpy(X_hat))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-13)


def test_shrinkage_hand():
    X = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    X_hat = np.array([[0.0, 4.0], [5.0, 5.0], [0.5, 0.0]])
    assert shrinkage(X, X_hat) == pytest.approx((4 / 5 + 0.5) / 2, abs=1e-15)


def test_code_bias_hand():
    ref = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    H = np.array([[1.0, 5.0, 1.0], [3.0, 0.0, 0.0], [1.0, 0.5, 7.0]])
    # sample 0: (+1*1 + -1*1) / 3 = 0; sample 1 skipped; sample 2: (1 + 0.5) / 2 = 0.75
    assert code_bias(H, ref) == pytest.approx(0.375, abs=1e-15)
    assert code_bias(ref, ref) == 1.0
    assert code_bias(0.5 * ref, ref) == pytest.approx(0.5)


def test_reconstruction_bad_inputs():
    X = np.ones((3, 2))
    with pytest.raises(ValueError, match="same shape"):
        mse(X, np.ones((3, 3)))
    with pytest.raises(ValueError, match="zero total variance"):
        explained_variance(X, X)
    with pytest.raises(ValueError, match="zero total variance"):
        explained_variance_centred(X, X)
    with pytest.raises(ValueError, match="non-zero sample"):
        shrinkage(np.zeros((2, 2)), X[:2])
    with pytest.raises(ValueError, match="ref_codes"):
        code_bias(X, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="X_hat"):
        mse(X, np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="codes"):
        l0(np.ones((2, 2, 2)))
    with pytest.raises(TypeError, match="codes"):
        l0(np.array([["a"]], dtype=object))


# ============================================================================ supports
CODES = np.array(
    [[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.05, -1.0, 0.0, 0.0]]
)
REF = np.array(
    [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]
)


def test_support_recovery_per_sample_hand():
    per = support_recovery_per_sample(CODES, REF, threshold=0.1)
    # s0: P={0,2}, R={0,1}; s1: both empty; s2: P empty, R={1}; s3: P={1}=R, wrong sign
    np.testing.assert_allclose(per["precision"], [0.5, 1, 0, 1])
    np.testing.assert_allclose(per["recall"], [0.5, 1, 0, 1])
    np.testing.assert_allclose(per["f1"], [0.5, 1, 0, 1])
    np.testing.assert_allclose(per["jaccard"], [1 / 3, 1, 0, 1])
    np.testing.assert_allclose(per["sign_agreement"], [0.5, 1, 0, 0])
    np.testing.assert_allclose(per["exact"], [0, 1, 0, 1])
    np.testing.assert_allclose(per["n_pred"], [2, 0, 0, 1])
    np.testing.assert_allclose(per["n_ref"], [2, 0, 1, 1])


def test_support_recovery_means_and_threshold():
    out = support_recovery(CODES, REF, threshold=0.1)
    assert out["precision"] == pytest.approx(0.625)
    assert out["jaccard"] == pytest.approx((1 / 3 + 2) / 4)
    assert out["sign_agreement"] == pytest.approx(0.375)
    assert out["exact"] == 0.5 and out["threshold"] == 0.1
    json.dumps(out, allow_nan=False)
    # threshold 0: sample 3 predicts {0, 1}: precision 1/2, recall 1, F1 2/3, Jaccard 1/2
    per = support_recovery_per_sample(CODES, REF)
    assert per["precision"][3] == 0.5 and per["recall"][3] == 1.0
    assert per["f1"][3] == pytest.approx(2 / 3) and per["jaccard"][3] == 0.5


def test_support_recovery_prediction_without_reference():
    per = support_recovery_per_sample(np.array([[1.0, 0.0]]), np.zeros((1, 2)))
    for key in ("precision", "recall", "f1", "jaccard", "exact"):
        assert per[key][0] == 0.0
    assert per["sign_agreement"][0] == 1.0  # vacuous on an empty reference support


@FAST
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 8)),
)
def test_support_recovery_identities(data, shape):
    sparse = st.sampled_from([0.0, 0.0, 1.0, -2.0, 0.5])
    H = data.draw(arrays(np.float64, shape, elements=sparse))
    R = data.draw(arrays(np.float64, shape, elements=sparse))
    per = support_recovery_per_sample(H, R)
    for key in ("precision", "recall", "f1", "jaccard", "sign_agreement", "exact"):
        assert np.all((per[key] >= 0) & (per[key] <= 1))
    p, r, f, j = per["precision"], per["recall"], per["f1"], per["jaccard"]
    both = (p + r) > 0
    np.testing.assert_allclose(f[both], 2 * p[both] * r[both] / (p[both] + r[both]))
    np.testing.assert_allclose(j, f / (2 - f))  # Jaccard = F1 / (2 - F1)
    same = support_recovery(R, R)
    assert same["f1"] == same["jaccard"] == same["sign_agreement"] == same["exact"] == 1.0


def test_support_recovery_torch_and_bad_inputs():
    out = support_recovery(torch.tensor(CODES), torch.tensor(REF), threshold=0.1)
    assert out["precision"] == pytest.approx(0.625)
    with pytest.raises(ValueError, match="threshold"):
        support_recovery(CODES, REF, threshold=-1.0)
    with pytest.raises(ValueError, match="same shape"):
        support_recovery(CODES, REF[:, :3])


# ============================================================================ dictionaries
def test_dictionary_recovery_hand():
    true = np.eye(2)
    # learned atoms (columns): (0.6, 0.8), e1, (0.8, 0.6); |cos| table C (learned x true):
    # [[.6, .8], [1, 0], [.8, .6]]
    learned = np.array([[0.6, 1.0, 0.8], [0.8, 0.0, 0.6]])
    out = dictionary_recovery(learned, true)
    assert out["mmcs_true"] == pytest.approx((1 + 0.8) / 2)
    assert out["mmcs_learned"] == pytest.approx((0.8 + 1 + 0.8) / 3)
    assert out["recovered_090"] == 0.5 and out["recovered_099"] == 0.5
    # best one-to-one: e1 -> e1 (1), (0.6, 0.8) -> e2 (0.8)
    assert out["hungarian_mean_cos"] == pytest.approx(0.9)
    assert out["hungarian_recovered_090"] == 0.5
    assert (out["n"], out["m_learned"], out["m_true"], out["n_shared"]) == (2, 3, 2, 0)
    # fewer learned atoms than true ones: the unmatched true atom counts 0
    one = dictionary_recovery(np.array([[0.6], [0.8]]), true)
    assert one["hungarian_mean_cos"] == pytest.approx(0.8 / 2)
    assert one["mmcs_true"] == pytest.approx((0.6 + 0.8) / 2)


def test_dictionary_recovery_zero_columns_and_scaling():
    out = dictionary_recovery(np.array([[0.0, 5.0], [0.0, 0.0]]), np.eye(2), chance=False)
    assert out["mmcs_true"] == 0.5 and out["mmcs_learned"] == 0.5
    assert not any(key.startswith("chance_") for key in out)


def test_dictionary_recovery_permuted_sign_flipped_is_perfect():
    rng = np.random.default_rng(0)
    true = rng.standard_normal((20, 30))
    perm = rng.permutation(30)
    learned = true[:, perm] * rng.choice([-1.0, 1.0], 30) * rng.uniform(0.5, 2.0, 30)
    out = dictionary_recovery(torch.tensor(learned, dtype=torch.float64), true)
    for key in (
        "mmcs_true",
        "mmcs_learned",
        "recovered_099",
        "hungarian_mean_cos",
        "hungarian_recovered_099",
    ):
        assert out[key] == pytest.approx(1.0, abs=1e-12), key
    assert out["chance_mmcs_true"] < 0.9 and out["chance_hungarian_recovered_090"] == 0.0


def test_spike_trap_exposed_by_hungarian_and_deflation():
    # At rho = 0.9, cos(d_i, v) ~ sqrt(0.9) = 0.949 for every atom: a "dictionary" holding
    # only the spike v beats any honest random dictionary on MMCS.
    sd = spiked_dictionary(256, 1024, 0.9, seed=0)
    v = sd.shared
    only_v = dictionary_recovery(v, sd.D, shared=sd.shared)
    assert only_v["mmcs_true"] == pytest.approx(math.sqrt(0.9), abs=0.01)
    assert only_v["recovered_090"] > 0.95  # max-cosine "recovers" nearly every atom
    assert only_v["mmcs_true"] > only_v["chance_mmcs_true"] + 0.5
    # one-to-one matching: v can stand for a single true atom only
    assert only_v["hungarian_mean_cos"] <= 1 / 1024
    assert only_v["hungarian_recovered_090"] <= 1 / 1024
    # deflated: v lies in the shared span, nothing is left
    assert only_v["mmcs_true_deflated"] == 0.0
    assert only_v["hungarian_mean_cos_deflated"] == 0.0


def test_spike_trap_copies_of_v_need_deflation():
    sd = spiked_dictionary(64, 128, 0.9, seed=1)
    copies = np.repeat(sd.shared, 128, axis=1)
    out = dictionary_recovery(copies, sd.D, shared=sd.shared)
    # Hungarian alone is fooled by copies of v (each copy matches a different atom) ...
    assert out["hungarian_mean_cos"] > 0.9
    # ... deflation is not: every copy projects to zero.
    for key in ("mmcs_true", "recovered_090", "hungarian_mean_cos", "hungarian_recovered_090"):
        assert out[f"{key}_deflated"] == 0.0
    # the true dictionary keeps perfect deflated scores, far above the deflated chance level
    truth = dictionary_recovery(sd.D, sd.D, shared=sd.shared)
    assert truth["hungarian_mean_cos_deflated"] == pytest.approx(1.0, abs=1e-12)
    assert truth["chance_hungarian_mean_cos_deflated"] < 0.5


def test_dictionary_recovery_chance_level_is_a_random_dictionary():
    sd = spiked_dictionary(32, 64, 0.0, seed=2)
    rnd = np.random.default_rng(123).standard_normal((32, 64))
    out = dictionary_recovery(rnd, sd.D, chance_seed=4)
    # two independent random dictionaries of one shape score alike against the truth
    assert abs(out["mmcs_true"] - out["chance_mmcs_true"]) < 0.05
    assert abs(out["hungarian_mean_cos"] - out["chance_hungarian_mean_cos"]) < 0.05
    again = dictionary_recovery(rnd, sd.D, chance_seed=4)
    other = dictionary_recovery(rnd, sd.D, chance_seed=5)
    assert again == out
    assert other["chance_mmcs_true"] != out["chance_mmcs_true"]
    json.dumps(out, allow_nan=False)


def test_dictionary_recovery_bad_inputs():
    true = np.eye(3)
    with pytest.raises(ValueError, match="W_dec.T"):
        dictionary_recovery(np.ones((4, 3)), true)
    with pytest.raises(ValueError, match="orthonormal"):
        dictionary_recovery(true, true, shared=np.array([[1.0], [1.0], [0.0]]))
    with pytest.raises(ValueError, match="shared"):
        dictionary_recovery(true, true, shared=np.eye(3))
    with pytest.raises(ValueError, match="learned"):
        dictionary_recovery(np.ones(3), true)
    with pytest.raises(ValueError, match="chance_seed"):
        dictionary_recovery(true, true, chance_seed=-1)
