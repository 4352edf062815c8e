"""Tests of aensae.synthetic: generators, code samplers, streams and diagnostics.

Oracles are independent of the code under test: closed forms (folded-normal mean of the
coherence, 2x2 inverses written out by hand), scipy's statistical tests, scikit-learn's
elastic net, and plain per-element reference loops.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.linear_model import ElasticNet

from aensae.synthetic import (
    SyntheticStream,
    active_gram_stats,
    block_dictionary,
    coherence,
    dictionary_diagnostics,
    irrepresentable,
    irrepresentable_stats,
    multi_spike_dictionary,
    sample_codes,
    sample_signals,
    sample_supports,
    spiked_dictionary,
)
from aensae.synthetic._seeding import rng_for

FAST = settings(max_examples=25, deadline=None)


def folded_normal_mean(mu: float, sigma: float) -> float:
    """E|mu + sigma Z|, Z standard normal."""
    return sigma * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sigma**2)) + mu * (
        1 - 2 * stats.norm.cdf(-mu / sigma)
    )


def offdiag_abs_cos(A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    """|cosines| between columns (pairs i != j when B is None)."""
    An = A / np.linalg.norm(A, axis=0)
    if B is None:
        C = np.abs(An.T @ An)
        return C[~np.eye(A.shape[1], dtype=bool)]
    Bn = B / np.linalg.norm(B, axis=0)
    return np.abs(An.T @ Bn).ravel()


# ============================================================================ dictionaries
@FAST
@given(
    n=st.integers(2, 12),
    m=st.integers(1, 20),
    rho=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**32),
)
def test_spiked_dictionary_structure(n, m, rho, seed):
    sd = spiked_dictionary(n, m, rho, seed=seed)
    assert sd.D.shape == (n, m) and sd.D.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(sd.D, axis=0), 1.0, atol=1e-12)
    assert sd.shared.shape == (n, 1)
    np.testing.assert_allclose(np.linalg.norm(sd.shared), 1.0, atol=1e-12)
    assert sd.kind == "spiked" and sd.rho == rho and sd.seed == seed
    np.testing.assert_array_equal(sd.groups, np.zeros(m))
    assert not sd.D.flags.writeable and not sd.shared.flags.writeable
    assert (sd.n, sd.m) == (n, m)


def test_spiked_dictionary_component_along_spike():
    # d_i . v = (sqrt(1 - rho) u_i . v + sqrt(rho)) / ||...||: for large n it concentrates
    # at sqrt(rho) with fluctuations O(1/sqrt(n)).
    n, m, rho = 4096, 64, 0.81
    sd = spiked_dictionary(n, m, rho, seed=3)
    along = sd.D.T @ sd.shared[:, 0]
    assert np.all(np.abs(along - 0.9) < 6 / math.sqrt(n))


@pytest.mark.parametrize("rho", [0.0, 0.1, 0.3, 0.5, 0.9, 0.99])
def test_spiked_coherence_near_rho(rho):
    # Oracle: cos(d_i, d_j) ~ rho + sigma Z with sigma^2 = (1-rho)^2 (1 + 2 rho (1-rho)) / n
    # to first order, so E|cos| is the folded-normal mean; for n = 256 this is
    # sqrt(2 / (pi n)) = 0.0499 at rho = 0 and within 0.003 of rho for rho >= 0.3.
    n, m = 256, 1024
    sd = spiked_dictionary(n, m, rho, seed=11)
    coh = coherence(sd)
    sigma = (1 - rho) * math.sqrt((1 + 2 * rho * (1 - rho)) / n)
    assert abs(coh["mean_abs"] - folded_normal_mean(rho, sigma)) < 0.004
    assert abs(coh["mean_abs"] - max(rho, 0.05)) < 0.01
    if rho == 0.0:
        assert abs(coh["mean_abs"] - 0.05) < 0.002


def test_multi_spike_dictionary_groups_and_coherence():
    n, m, rho, s = 128, 400, 0.9, 4
    sd = multi_spike_dictionary(n, m, rho, s, seed=2)
    assert sd.kind == "multi_spike" and sd.shared.shape == (n, s)
    np.testing.assert_allclose(sd.shared.T @ sd.shared, np.eye(s), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(sd.D, axis=0), 1.0, atol=1e-12)
    counts = np.bincount(sd.groups, minlength=s)
    assert counts.sum() == m and counts.max() - counts.min() <= 1
    assert not np.array_equal(sd.groups, np.sort(sd.groups))  # randomly assigned
    g0 = sd.D[:, sd.groups == 0]
    g1 = sd.D[:, sd.groups == 1]
    assert abs(offdiag_abs_cos(g0).mean() - rho) < 0.01
    # across groups only the O(1/sqrt(n)) random parts meet
    assert offdiag_abs_cos(g0, g1).mean() < 3 / math.sqrt(n)


def test_block_dictionary_within_and_between():
    n, m, rho, rb, G = 128, 300, 0.8, 0.3, 3
    sd = block_dictionary(n, m, rho, G, rho_between=rb, seed=5)
    assert sd.kind == "block" and sd.shared.shape == (n, G + 1)
    np.testing.assert_allclose(sd.shared.T @ sd.shared, np.eye(G + 1), atol=1e-12)
    np.testing.assert_array_equal(sd.groups, np.repeat(np.arange(G), m // G))
    b0 = sd.D[:, sd.groups == 0]
    b2 = sd.D[:, sd.groups == 2]
    assert abs(offdiag_abs_cos(b0).mean() - rho) < 0.01
    assert abs(offdiag_abs_cos(b0, b2).mean() - rb) < 0.015


def test_dictionaries_deterministic_by_seed():
    for make in (
        lambda s: spiked_dictionary(16, 32, 0.5, seed=s),
        lambda s: multi_spike_dictionary(16, 32, 0.5, 3, seed=s),
        lambda s: block_dictionary(16, 32, 0.5, 3, rho_between=0.2, seed=s),
    ):
        a, b, c = make(7), make(7), make(8)
        np.testing.assert_array_equal(a.D, b.D)
        np.testing.assert_array_equal(a.shared, b.shared)
        np.testing.assert_array_equal(a.groups, b.groups)
        assert not np.allclose(a.D, c.D)


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda: spiked_dictionary(8, 16, 1.0), "rho"),
        (lambda: spiked_dictionary(8, 16, -0.1), "rho"),
        (lambda: spiked_dictionary(0, 16, 0.5), "n"),
        (lambda: spiked_dictionary(1, 16, 0.3), "n must be >= 2"),
        (lambda: multi_spike_dictionary(1, 16, 0.5, 1), "n must be >= 2"),
        (lambda: spiked_dictionary(8, 0, 0.5), "m"),
        (lambda: spiked_dictionary(8, 16, 0.5, seed=-1), "seed"),
        (lambda: multi_spike_dictionary(8, 16, 0.5, 9), "n_spikes"),
        (lambda: multi_spike_dictionary(8, 16, 0.5, 0), "n_spikes"),
        (lambda: block_dictionary(8, 16, 0.5, 8), "n_blocks"),
        (lambda: block_dictionary(8, 16, 0.5, 2, rho_between=0.6), "rho_between"),
    ],
)
def test_dictionary_bad_inputs(call, param):
    with pytest.raises(ValueError, match=param):
        call()


def test_dictionary_type_errors():
    with pytest.raises(TypeError, match="rho"):
        spiked_dictionary(8, 16, "0.5")
    with pytest.raises(TypeError, match="n"):
        spiked_dictionary(8.0, 16, 0.5)


# ============================================================================ codes
@FAST
@given(
    m=st.integers(1, 40),
    k_frac=st.floats(0.0, 1.0),
    batch=st.integers(1, 30),
    lo=st.floats(0.01, 5.0),
    width=st.floats(0.0, 5.0),
    nonneg=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_sample_codes_exact_k_and_range(m, k_frac, batch, lo, width, nonneg, seed):
    k = max(1, round(k_frac * m))
    hi = lo + width
    H = sample_codes(m, k, batch, lo=lo, hi=hi, nonneg=nonneg, rng=np.random.default_rng(seed))
    assert H.shape == (batch, m) and H.dtype == np.float64
    np.testing.assert_array_equal(np.count_nonzero(H, axis=1), k)
    mags = np.abs(H[H != 0])
    assert np.all(mags >= lo) and np.all(mags <= hi)
    if nonneg:
        assert np.all(H >= 0)


def test_sample_codes_supports_uniform_over_subsets():
    # every 2-subset of 5 atoms equally likely: chi-square against the uniform law
    m, k, batch = 5, 2, 20000
    H = sample_codes(m, k, batch, rng=np.random.default_rng(0))
    subsets = list(itertools.combinations(range(m), k))
    index = {s: j for j, s in enumerate(subsets)}
    counts = np.zeros(len(subsets))
    for row in H != 0:
        counts[index[tuple(np.flatnonzero(row))]] += 1
    assert stats.chisquare(counts).pvalue > 1e-3


def test_sample_supports_marginals_uniform():
    m, k, batch = 50, 7, 4000
    S = sample_supports(m, k, batch, rng=1)
    assert S.shape == (batch, k)
    assert all(len(set(row)) == k for row in S.tolist())
    counts = np.bincount(S.ravel(), minlength=m)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_sample_codes_magnitudes_and_signs_distribution():
    lo, hi = 1.0, 3.0
    H = sample_codes(64, 8, 2000, lo=lo, hi=hi, nonneg=False, rng=np.random.default_rng(4))
    vals = H[H != 0]
    assert stats.kstest(np.abs(vals), stats.uniform(loc=lo, scale=hi - lo).cdf).pvalue > 1e-3
    n_pos = int(np.sum(vals > 0))
    assert stats.binomtest(n_pos, vals.size, 0.5).pvalue > 1e-3


def test_sample_codes_deterministic():
    a = sample_codes(30, 4, 10, nonneg=False, rng=np.random.default_rng(9))
    b = sample_codes(30, 4, 10, nonneg=False, rng=9)
    c = sample_codes(30, 4, 10, nonneg=False, rng=10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "param", "exc"),
    [
        ({"k": 11}, "k", ValueError),
        ({"k": 0}, "k", ValueError),
        ({"m": 0}, "m", ValueError),
        ({"batch": 0}, "batch", ValueError),
        ({"lo": 3.0, "hi": 1.0}, "hi", ValueError),
        ({"lo": -1.0}, "lo", ValueError),
        ({"lo": 0.0}, "lo", ValueError),
        ({"nonneg": 1}, "nonneg", TypeError),
        ({"rng": "seed"}, "rng", TypeError),
        ({"k": 2.0}, "k", TypeError),
    ],
)
def test_sample_codes_bad_inputs(kwargs, param, exc):
    args = {"m": 10, "k": 3, "batch": 4, "rng": 0} | kwargs
    with pytest.raises(exc, match=param):
        sample_codes(**args)


# ============================================================================ streams
@pytest.fixture(scope="module")
def dictionary():
    return spiked_dictionary(24, 60, 0.5, seed=1)


def test_stream_signals_are_codes_times_dictionary(dictionary):
    stream = SyntheticStream(dictionary, k=5, batch_size=32, seed=3)
    X, H = stream.batch(0)
    assert X.shape == (32, 24) and H.shape == (32, 60)
    assert X.dtype == np.float64 and H.dtype == np.float64
    np.testing.assert_array_equal(np.count_nonzero(H, axis=1), 5)
    np.testing.assert_allclose(X, H @ dictionary.D.T, rtol=0, atol=1e-12)


def test_stream_noise_level(dictionary):
    sigma = 0.3
    stream = SyntheticStream(dictionary.D, k=5, batch_size=4000, noise_std=sigma, seed=3)
    X, H = stream.batch(2)
    resid = (X - H @ dictionary.D.T).ravel()
    # sample std of 96,000 normals: relative error ~ 1/sqrt(2N) = 0.0023
    assert abs(resid.std() / sigma - 1) < 0.02
    assert abs(resid.mean()) < 5 * sigma / math.sqrt(resid.size)


def test_stream_random_access_equals_iteration(dictionary):
    stream = SyntheticStream(dictionary, k=4, batch_size=8, nonneg=False, noise_std=0.1, seed=5)
    items = list(stream.numpy_batches(10))
    assert len(items) == 10
    X5, H5 = SyntheticStream(
        dictionary, k=4, batch_size=8, nonneg=False, noise_std=0.1, seed=5
    ).batch(5)
    np.testing.assert_array_equal(items[5][0], X5)
    np.testing.assert_array_equal(items[5][1], H5)
    for j, (X, H) in enumerate(stream.numpy_batches(3, start=4)):
        np.testing.assert_array_equal(X, items[4 + j][0])
        np.testing.assert_array_equal(H, items[4 + j][1])
    endless = stream.numpy_batches()
    for j in range(3):
        np.testing.assert_array_equal(next(endless)[0], items[j][0])
    assert not np.array_equal(items[0][0], items[1][0])


def test_stream_deterministic_by_seed(dictionary):
    a = SyntheticStream(dictionary, k=4, batch_size=8, seed=1).batch(3)
    b = SyntheticStream(dictionary, k=4, batch_size=8, seed=1).batch(3)
    c = SyntheticStream(dictionary, k=4, batch_size=8, seed=2).batch(3)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])


def test_streams_independent_of_dictionary_seed():
    # default_rng([s, 0]) == default_rng(s): the tagged seeding keeps purposes apart
    draws = [
        rng_for("dictionary", 0).random(4),
        rng_for("stream", 0, 0).random(4),
        rng_for("supports", 0).random(4),
        np.random.default_rng(0).random(4),
    ]
    for a, b in itertools.combinations(draws, 2):
        assert not np.allclose(a, b)


def test_stream_torch_agrees_with_numpy(dictionary):
    stream = SyntheticStream(dictionary, k=4, batch_size=8, nonneg=False, noise_std=0.2, seed=7)
    X, H = stream.batch(4)
    Xt, Ht = stream.torch_batch(4, dtype=torch.float64)
    assert Xt.dtype == torch.float64 and Xt.device.type == "cpu"
    np.testing.assert_array_equal(Xt.numpy(), X)
    np.testing.assert_array_equal(Ht.numpy(), H)
    X32, H32 = stream.torch_batch(4)
    assert X32.dtype == torch.float32
    np.testing.assert_array_equal(X32.numpy(), X.astype(np.float32))
    np.testing.assert_array_equal(H32.numpy(), H.astype(np.float32))
    for j, (Xt, Ht) in enumerate(stream.torch_batches(3, start=2, dtype=torch.float64)):
        Xn, Hn = stream.batch(2 + j)
        np.testing.assert_array_equal(Xt.numpy(), Xn)
        np.testing.assert_array_equal(Ht.numpy(), Hn)


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_torch_signal_batches_are_the_batches_signals(dictionary, chunk):
    stream = SyntheticStream(dictionary, k=3, batch_size=6, nonneg=False, noise_std=0.1,
                             seed=5)
    for dtype in (torch.float32, torch.float64):
        got = list(stream.torch_signal_batches(7, start=3, dtype=dtype, chunk=chunk))
        assert len(got) == 7
        for j, Xt in enumerate(got):
            ref, _ = stream.torch_batch(3 + j, dtype=dtype)  # torch's own conversion
            assert Xt.dtype == dtype
            assert torch.equal(Xt, ref)
    assert list(stream.torch_signal_batches(0)) == []
    endless = stream.torch_signal_batches(start=2, chunk=chunk)
    assert torch.equal(next(endless), stream.torch_batch(2)[0])


def test_torch_signal_batches_validate_eagerly(dictionary):
    stream = SyntheticStream(dictionary, k=3, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="chunk must lie in"):
        stream.torch_signal_batches(3, chunk=0)
    with pytest.raises(ValueError, match="start"):
        stream.torch_signal_batches(3, start=-1)
    with pytest.raises(TypeError, match="dtype"):
        stream.torch_signal_batches(3, dtype=torch.int32)


def test_sample_signals_is_stream_batch_zero(dictionary):
    X, H = sample_signals(dictionary, 50, 3, nonneg=False, noise_std=0.05, seed=4)
    Xs, Hs = SyntheticStream(dictionary, 3, 50, nonneg=False, noise_std=0.05, seed=4).batch(0)
    np.testing.assert_array_equal(X, Xs)
    np.testing.assert_array_equal(H, Hs)


def test_stream_bad_inputs(dictionary):
    D = dictionary.D
    with pytest.raises(ValueError, match="k"):
        SyntheticStream(D, k=61, batch_size=4)
    with pytest.raises(ValueError, match="noise_std"):
        SyntheticStream(D, k=2, batch_size=4, noise_std=-0.1)
    with pytest.raises(ValueError, match="batch_size"):
        SyntheticStream(D, k=2, batch_size=0)
    with pytest.raises(ValueError, match="D"):
        SyntheticStream(D[:, 0], k=1, batch_size=4)
    with pytest.raises(ValueError, match="D"):
        SyntheticStream(np.full((3, 4), np.nan), k=1, batch_size=4)
    with pytest.raises(ValueError, match="lo"):
        SyntheticStream(D, k=2, batch_size=4, lo=-1.0, nonneg=True)
    stream = SyntheticStream(D, k=2, batch_size=4)
    with pytest.raises(ValueError, match="i"):
        stream.batch(-1)
    with pytest.raises(ValueError, match="start"):
        stream.numpy_batches(2, start=-1)
    with pytest.raises(TypeError, match="dtype"):
        stream.torch_batch(0, dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype"):
        stream.torch_batches(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="n_samples"):
        sample_signals(D, 0, 2)


# ============================================================================ diagnostics
def test_coherence_hand_example():
    # columns e1, (e1 + e2)/sqrt(2), e2, scaled: |cos| = 1/sqrt2, 0, 1/sqrt2 per pair
    D = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 0.5]])
    coh = coherence(D)
    assert coh["mean_abs"] == pytest.approx(math.sqrt(2) / 3, abs=1e-15)
    assert coh["max_abs"] == pytest.approx(1 / math.sqrt(2), abs=1e-15)


def test_coherence_matches_pairwise_loop():
    D = np.random.default_rng(0).standard_normal((5, 9))
    vals = [
        abs(D[:, i] @ D[:, j]) / (np.linalg.norm(D[:, i]) * np.linalg.norm(D[:, j]))
        for i in range(9)
        for j in range(9)
        if i != j
    ]
    coh = coherence(D)
    assert coh["mean_abs"] == pytest.approx(np.mean(vals), abs=1e-14)
    assert coh["max_abs"] == pytest.approx(np.max(vals), abs=1e-14)


def test_active_gram_two_atoms_closed_form():
    # Gram [[1, c], [c, 1]] + lam2 I has eigenvalues 1 +- c + lam2
    c, lam2 = 0.6, 0.25
    D = np.array([[1.0, c], [0.0, math.sqrt(1 - c * c)]])
    out = active_gram_stats(D, 2, 5, lam2=lam2)
    assert out["min_eig_median"] == pytest.approx(1 - c + lam2, abs=1e-14)
    assert out["cond_max"] == pytest.approx((1 + c + lam2) / (1 - c + lam2), abs=1e-13)
    assert out["k"] == 2 and out["lam2"] == lam2 and out["n_supports"] == 5


def test_active_gram_orthonormal_and_rank_deficient():
    out = active_gram_stats(np.eye(10), 4, 20, lam2=0.5)
    assert out["min_eig_min"] == pytest.approx(1.5) and out["cond_max"] == pytest.approx(1.0)
    D = np.random.default_rng(1).standard_normal((3, 8))
    out = active_gram_stats(D, 5, 10, lam2=0.1)  # k > n: D_S^T D_S has a null space
    assert out["min_eig_max"] == pytest.approx(0.1, abs=1e-12)
    out = active_gram_stats(D, 5, 10)
    assert out["min_eig_max"] == 0.0 and out["cond_min"] == math.inf


def test_active_gram_matches_eigvalsh_full_support():
    D = np.random.default_rng(2).standard_normal((6, 4))
    w = np.linalg.eigvalsh(D.T @ D + 0.3 * np.eye(4))
    out = active_gram_stats(D, 4, 3, lam2=0.3)
    assert out["min_eig_min"] == pytest.approx(w[0], rel=1e-12)
    assert out["cond_median"] == pytest.approx(w[-1] / w[0], rel=1e-10)


# 3-atom example in R^2: d1 = e1, d2 = (0.6, 0.8), d3 = (0, 1); S = {d1, d2}.
# G = [[1, .6], [.6, 1]]; (G + lam2 I)^{-1} (1, 1) = (1, 1) / (1.6 + lam2) by symmetry;
# D_S (1, 1) = (1.6, 0.8), so IC = 0.8 / (1.6 + lam2).
D3 = np.array([[1.0, 0.6, 0.0], [0.0, 0.8, 1.0]])


@pytest.mark.parametrize("lam2", [0.0, 0.36, 2.0])
def test_irrepresentable_three_atom_hand_values(lam2):
    assert irrepresentable(D3, [0, 1], [1, 1], lam2=lam2) == pytest.approx(
        0.8 / (1.6 + lam2), abs=1e-14
    )


def test_irrepresentable_three_atom_mixed_signs_and_other_support():
    # s = (1, -1): (G^{-1} s) = (1, -1) / (1 - .6) = (2.5, -2.5); D_S z = (1, -2); IC = 2
    assert irrepresentable(D3, [0, 1], [1, -1]) == pytest.approx(2.0, abs=1e-13)
    # S = {d3}, s = 1: z = 1, D_S z = (0, 1); correlations with d1, d2: 0 and 0.8
    assert irrepresentable(D3, [2], [1]) == pytest.approx(0.8, abs=1e-15)
    # every atom active: vacuous
    assert irrepresentable(D3, [0, 1, 2], [1, 1, 1], lam2=0.1) == 0.0


def test_irrepresentable_elastic_net_form_and_one_sided():
    # v = s + (lam2 / lam1) h = (1, 1) + 0.5 (2, 2) = (2, 2): twice the sign-only value
    lam1, lam2 = 0.4, 0.2
    val = irrepresentable(D3, [0, 1], [1, 1], lam2=lam2, coef=[2.0, 2.0], lam1=lam1)
    assert val == pytest.approx(2 * 0.8 / (1.6 + lam2), abs=1e-14)
    # d3 -> (0, -1): signed correlation -0.5 (abs 0.5); one-sided form keeps the sign
    D = D3 * np.array([1.0, 1.0, -1.0])
    assert irrepresentable(D, [0, 1], [1, 1]) == pytest.approx(0.5, abs=1e-14)
    assert irrepresentable(D, [0, 1], [1, 1], nonneg=True) == pytest.approx(-0.5, abs=1e-14)


def test_irrepresentable_matches_reference_loop():
    rng = np.random.default_rng(3)
    D = rng.standard_normal((7, 12))
    S, s, lam2 = [1, 4, 9], np.array([1.0, -1.0, 1.0]), 0.3
    DS = D[:, S]
    z = np.linalg.solve(DS.T @ DS + lam2 * np.eye(3), s)
    ref = max(abs(D[:, j] @ DS @ z) for j in range(12) if j not in S)
    assert irrepresentable(D, S, s, lam2=lam2) == pytest.approx(ref, rel=1e-12)


def test_irrepresentable_predicts_elastic_net_support():
    # Noiseless x = D_S h*. If the restricted solution h_S keeps the signs of h*, then
    # IC < 1 means the elastic net selects exactly S and IC > 1 means it does not
    # (scikit-learn's coordinate descent as the independent oracle). Seeded draws cover
    # both outcomes, lasso (lam2 = 0) included.
    n, m, k = 30, 40, 3
    outcomes = {True: 0, False: 0}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        lam2 = 0.0 if seed % 4 == 0 else rng.uniform(0.0, 0.3)
        D = rng.standard_normal((n, m))
        D /= np.linalg.norm(D, axis=0)
        S = np.sort(rng.choice(m, k, replace=False))
        h = rng.uniform(1.0, 2.0, k) * rng.choice([-1.0, 1.0], k)
        x = D[:, S] @ h
        lam1 = rng.uniform(0.05, 0.5) * float(np.max(np.abs(D.T @ x)))
        G = D[:, S].T @ D[:, S]
        h_S = np.linalg.solve(G + lam2 * np.eye(k), G @ h - lam1 * np.sign(h))
        if not np.array_equal(np.sign(h_S), np.sign(h)):
            continue
        ic = irrepresentable(D, S, np.sign(h), lam2=lam2, coef=h, lam1=lam1)
        if abs(ic - 1) < 1e-3:
            continue
        model = ElasticNet(
            alpha=(lam1 + lam2) / n,
            l1_ratio=lam1 / (lam1 + lam2),
            fit_intercept=False,
            tol=1e-14,
            max_iter=100000,
        ).fit(D, x)
        assert np.array_equal(np.flatnonzero(model.coef_), S) == (ic < 1), (seed, ic)
        outcomes[ic < 1] += 1
    assert outcomes[True] >= 5 and outcomes[False] >= 5


def test_irrepresentable_stats_and_bundle():
    out = irrepresentable_stats(np.eye(6), 2, 10)
    assert out["irrep_max"] == 0.0 and out["irrep_frac_holds"] == 1.0
    sd = spiked_dictionary(32, 64, 0.5, seed=0)
    diag = dictionary_diagnostics(sd, 4, lam2=0.1, n_supports=20)
    text = json.dumps(diag, allow_nan=False)
    assert json.loads(text) == diag
    coh = coherence(sd)
    assert diag["coherence_mean_abs"] == coh["mean_abs"]
    for key in ("gram_min_eig_median", "gram_cond_max", "irrep_median", "irrep_frac_holds"):
        assert key in diag
    assert 0.0 <= diag["irrep_frac_holds"] <= 1.0
    assert diag["irrep_min"] <= diag["irrep_median"] <= diag["irrep_max"]
    nonneg = irrepresentable_stats(sd, 4, 20, nonneg=True)
    assert nonneg["nonneg"] is True


def test_diagnostics_bad_inputs():
    with pytest.raises(ValueError, match="zero"):
        coherence(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        coherence(np.ones((3, 1)))
    with pytest.raises(ValueError, match="support"):
        irrepresentable(D3, [0, 3], [1, 1])
    with pytest.raises(ValueError, match="support"):
        irrepresentable(D3, [0, 0], [1, 1])
    with pytest.raises(ValueError, match="signs"):
        irrepresentable(D3, [0, 1], [1, 0.5])
    with pytest.raises(ValueError, match="signs"):
        irrepresentable(D3, [0, 1], [1])
    with pytest.raises(ValueError, match="signs"):
        irrepresentable(D3, [0, 1], [1, -1], nonneg=True)
    with pytest.raises(ValueError, match="lam1"):
        irrepresentable(D3, [0, 1], [1, 1], coef=[1.0, 1.0])
    with pytest.raises(ValueError, match="coef"):
        irrepresentable(D3, [0, 1], [1, 1], coef=[1.0, -1.0], lam1=1.0)
    with pytest.raises(ValueError, match="lam2"):
        irrepresentable(D3, [0, 1], [1, 1], lam2=-1.0)
    with pytest.raises(ValueError, match="singular"):
        irrepresentable(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), [0, 1], [1, 1])
    with pytest.raises(ValueError, match="singular"):
        irrepresentable_stats(np.random.default_rng(0).standard_normal((3, 8)), 5, 4)
    with pytest.raises(ValueError, match="k"):
        active_gram_stats(D3, 4)
    with pytest.raises(ValueError, match="n_supports"):
        irrepresentable_stats(D3, 1, 0)


def test_stream_signals_equal_batch_signals(dictionary):
    for noise_std, nonneg in ((0.0, True), (0.2, False)):
        stream = SyntheticStream(dictionary, k=4, batch_size=8, nonneg=nonneg,
                                 noise_std=noise_std, seed=7)
        for i in (0, 3):
            np.testing.assert_array_equal(stream.signals(i), stream.batch(i)[0])


def test_floyd_supports_match_the_masked_reference():
    # the compiled pick loop against the original masked-array form of Floyd's algorithm
    from aensae.synthetic.codes import _floyd_supports

    def reference(rng, m, k, batch):
        idx = np.empty((batch, k), dtype=np.int64)
        taken = np.zeros((batch, m), dtype=bool)
        rows = np.arange(batch)
        for slot, j in enumerate(range(m - k, m)):
            t = rng.integers(0, j + 1, size=batch)
            pick = np.where(taken[rows, t], j, t)
            taken[rows, pick] = True
            idx[:, slot] = pick
        return idx

    for m, k, batch in ((5, 5, 50), (10, 3, 200), (64, 16, 40), (3, 1, 7)):
        for seed in range(3):
            np.testing.assert_array_equal(
                _floyd_supports(np.random.default_rng(seed), m, k, batch),
                reference(np.random.default_rng(seed), m, k, batch))


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.Philox, np.random.MT19937])
@pytest.mark.parametrize("nonneg", [True, False])
def test_compiled_code_draws_equal_the_numpy_calls(bit_generator, nonneg):
    # the draw order of the determinism contract, written with NumPy calls only
    from aensae.synthetic.codes import draw_sparse_codes

    def reference(rng, m, k, batch, lo, hi):
        draws = np.empty((batch, k), dtype=np.int64)
        for slot, j in enumerate(range(m - k, m)):
            draws[:, slot] = rng.integers(0, j + 1, size=batch)
        idx = np.empty_like(draws)
        for b in range(batch):
            for s in range(k):
                t = draws[b, s]
                idx[b, s] = m - k + s if t in idx[b, :s] else t
        vals = rng.uniform(lo, hi, size=(batch, k))
        if not nonneg:
            vals *= np.where(rng.random((batch, k)) < 0.5, -1.0, 1.0)
        return idx, vals

    for m, k, batch in ((1024, 16, 64), (7, 7, 9), (100, 3, 33)):
        for seed in range(3):
            r1 = np.random.Generator(bit_generator(seed))
            r2 = np.random.Generator(bit_generator(seed))
            idx, vals = draw_sparse_codes(r1, m, k, batch, 0.5, 2.0, nonneg)
            ref_idx, ref_vals = reference(r2, m, k, batch, 0.5, 2.0)
            np.testing.assert_array_equal(idx, ref_idx)
            np.testing.assert_array_equal(vals, ref_vals)
            # the compiled calls advanced the caller's generator exactly as NumPy's would
            np.testing.assert_array_equal(r1.standard_normal(5), r2.standard_normal(5))
