"""The one objective: scalings, values and adaptive weights against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aensae.objective import (
    adaptive_weights,
    blend_weights,
    exact_objective,
    exact_to_sae,
    penalty,
    population_weights,
    ramp_factor,
    sae_loss,
    sae_to_exact,
    torch_population_weights,
    update_ema,
)


def test_scaling_hand_values():
    assert sae_to_exact(0.01, 0.001, 256) == pytest.approx((1.28, 0.256))
    assert exact_to_sae(1.28, 0.256, 256) == pytest.approx((0.01, 0.001))


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 4),
    n=st.integers(1, 6),
    m=st.integers(1, 7),
    l1=st.floats(0, 1),
    l2=st.floats(0, 1),
    seed=st.integers(0, 10_000),
)
def test_sae_loss_times_n_over_2_is_the_exact_objective(B, n, m, l1, l2, seed):
    """Per sample, L * n/2 = F with lam1 = n l1/2, lam2 = n l2 (DESIGN.md)."""
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n, m))
    H = rng.standard_normal((B, m))
    w = rng.uniform(0.1, 3.0, m)
    X = rng.standard_normal((B, n))
    lam1, lam2 = sae_to_exact(l1, l2, n)
    # loss of the batch is the mean of the per-sample losses; build it sample by sample
    for b in range(B):
        x, h = X[b : b + 1], H[b : b + 1]
        L = sae_loss(x, h @ D.T, h, l1, l2, w)
        F = 0.5 * np.sum((x - h @ D.T) ** 2) + lam1 * np.sum(w * np.abs(h)) \
            + 0.5 * lam2 * np.sum(h**2)
        assert L * n / 2 == pytest.approx(F, rel=1e-12, abs=1e-12)
        assert exact_objective(D, x, h, lam1, lam2, w)[0] == pytest.approx(F, rel=1e-12)


def test_values_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    D, X, H = rng.standard_normal((5, 8)), rng.standard_normal((3, 5)), rng.standard_normal((3, 8))
    w = rng.uniform(0.5, 2, 8)
    a = exact_objective(D, X, H, 0.7, 0.2, w)
    b = exact_objective(*(torch.from_numpy(v) for v in (D, X, H)), 0.7, 0.2, torch.from_numpy(w))
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-14)
    np.testing.assert_allclose(penalty(H, 0.7, 0.2, w),
                               0.7 * np.abs(H) @ w + 0.1 * np.sum(H**2, 1), rtol=1e-14)


def test_adaptive_weights_hand():
    h = np.array([0.0, 1.0, -3.0])
    np.testing.assert_allclose(adaptive_weights(h, gamma=2.0, eps=0.5),
                               [1 / 0.25, 1 / 2.25, 1 / 12.25])
    with pytest.raises(ValueError, match="eps"):
        adaptive_weights(h, eps=0.0)


def test_population_weights_hand():
    ema = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    # top_p = 0.4 of 5 latents -> ceil(2) = 2 largest: ref = (2 + 4) / 2 = 3
    w = population_weights(ema, gamma=1.0, top_p=0.4, w_min=0.1, w_max=5.0)
    np.testing.assert_allclose(w, [5.0, 5.0, 3.0, 1.5, 0.75])
    w2 = population_weights(ema, gamma=0.5, top_p=0.4, w_min=0.9, w_max=10.0)
    np.testing.assert_allclose(w2, [10.0, math.sqrt(6), math.sqrt(3), math.sqrt(1.5), 0.9])
    wt = population_weights(torch.tensor(ema), gamma=1.0, top_p=0.4, w_min=0.1, w_max=5.0)
    np.testing.assert_allclose(wt.numpy(), w)


def _population_weights_written_out(ema, gamma, k, w_min, w_max):
    """The torch formula with every guard spelled out (no shortcuts)."""
    ref = torch.topk(ema, k, dim=-1).values.mean(-1, keepdim=True)
    ratio = torch.where(ema > 0, ref / ema.clamp_min(torch.finfo(ema.dtype).tiny),
                        torch.where(ref > 0, torch.full_like(ema, math.inf),
                                    torch.zeros_like(ema)))
    return (ratio ** gamma).clamp(w_min, w_max)


@settings(max_examples=80, deadline=None)
@given(
    m=st.integers(1, 40),
    special=st.sampled_from(["none", "zero", "subnormal", "all_zero", "tiny"]),
    gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    top_p=st.sampled_from([0.01, 0.05, 0.3, 1.0]),
    double=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_torch_population_weights_bit_identical_to_the_written_out_formula(
        m, special, gamma, top_p, double, seed):
    """The training step's shortcuts (no guards when every EMA entry is normal, no power
    at gamma 1) give the formula's values bit for bit, also with zero, subnormal and
    all-zero EMAs, where the guards act."""
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    ema = torch.rand(m, generator=gen, dtype=dtype) * 3.0
    tiny = torch.finfo(dtype).tiny
    if special == "zero":
        ema[seed % m] = 0.0
    elif special == "subnormal":
        ema[seed % m] = tiny / 4
    elif special == "all_zero":
        ema.zero_()
    elif special == "tiny":
        ema[seed % m] = tiny
    k = max(1, int(top_p * m))
    got = torch_population_weights(ema, gamma, k, 0.1, 10.0)
    want = _population_weights_written_out(ema, gamma, k, 0.1, 10.0)
    assert got.dtype == dtype
    assert torch.equal(got, want)
    # and the public call, which validates first, gives the same tensor
    assert torch.equal(population_weights(ema, gamma=gamma, top_p=top_p, w_min=0.1,
                                          w_max=10.0), want)


def test_population_weights_bad_input():
    with pytest.raises(ValueError, match="top_p"):
        population_weights(np.ones(3), top_p=0.0)
    with pytest.raises(ValueError, match="w_max"):
        population_weights(np.ones(3), w_min=2.0, w_max=1.0)


def test_ramp_and_blend():
    assert ramp_factor(0, 10, 20) == 0.0
    assert ramp_factor(9, 10, 20) == 0.0
    assert ramp_factor(10, 10, 20) == 0.0
    assert ramp_factor(20, 10, 20) == 0.5
    assert ramp_factor(30, 10, 20) == 1.0
    assert ramp_factor(99, 10, 20) == 1.0
    assert ramp_factor(5, 5, 0) == 1.0
    np.testing.assert_allclose(blend_weights(np.array([3.0, 0.5]), 0.5), [2.0, 0.75])
    assert update_ema(1.0, 3.0, 0.75) == pytest.approx(1.5)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_negative_or_nonfinite_penalties_rejected(bad):
    with pytest.raises(ValueError, match="l1"):
        sae_to_exact(bad, 0.0, 4)
    with pytest.raises(ValueError, match="lam2"):
        exact_to_sae(0.1, bad, 4)
