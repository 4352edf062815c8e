"""Metrics restricted to recovered atoms, against hand computations.

Shrinkage and support scores taken after Hungarian alignment mix two failures: a latent
that learned its atom but shrinks or misses its codes, and a latent that never learned
its atom. The ``recovered`` metrics keep only the true atoms whose matched latent has
``|cos| >= RECOVERED_COS``; the values below are worked out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from aensae.metrics import (
    RECOVERED_COS,
    code_bias,
    hungarian_match,
    recovered_atom_recovery,
    true_positive_code_bias,
)
from aensae.saes.evaluate import align_codes

# ----------------------------------------------------------------------------- hand case
# n = 4, true atoms e0, e1, e2. Learned latents: l0 = e1, l1 = -e0, l2 = (e2 + e3)/sqrt 2.
# Matching: t0 <- l1 (cos -1), t1 <- l0 (cos 1), t2 <- l2 (cos 1/sqrt 2 ~ 0.707 < 0.9).
TRUE = np.eye(4)[:, :3]
LEARNED = np.stack([np.eye(4)[1], -np.eye(4)[0], (np.eye(4)[2] + np.eye(4)[3]) / math.sqrt(2)],
                   axis=1)
# true codes (B=3, m_T=3)
R = np.array([[1.0, 2.0, 0.0],
              [0.0, 4.0, 3.0],
              [2.0, 0.0, 1.0]])
# aligned code of t0 = -h[:, l1], of t1 = h[:, l0]:
#   t0: [0.5, 0, 3.0] -> TP ratios 0.5/1 = 0.5 (b0) and 3/2 = 1.5 (b2)
#   t1: [1.0, 0, 0.3] -> TP ratio 1/2 = 0.5 (b0); b1 missed (r=4, h=0); b2 false positive
H_L0 = np.array([1.0, 0.0, 0.3])
H_L1 = np.array([-0.5, 0.0, -3.0])


def _codes(missed_latent: np.ndarray) -> np.ndarray:
    return np.stack([H_L0, H_L1, missed_latent], axis=1)


def _score(missed_latent: np.ndarray) -> tuple[dict[str, float], float]:
    match, cos = hungarian_match(LEARNED, TRUE)
    aligned = align_codes(_codes(missed_latent), LEARNED, TRUE)
    rec = recovered_atom_recovery(aligned[:, :3], R, cos)
    ref = np.zeros_like(aligned)
    ref[:, :3] = R
    return rec, code_bias(aligned, ref)


def test_recovered_cos_is_point_nine():
    assert RECOVERED_COS == 0.9


def test_hungarian_match_hand():
    match, cos = hungarian_match(LEARNED, TRUE)
    assert match.tolist() == [1, 0, 2]
    np.testing.assert_allclose(cos, [-1.0, 1.0, 1 / math.sqrt(2)], atol=1e-15)


def test_hungarian_match_unmatched_true_atom():
    """m_L < m_T: the true atom left over has match -1 and cos 0."""
    match, cos = hungarian_match(TRUE[:, [2]], TRUE)
    assert match.tolist() == [-1, -1, 0]
    np.testing.assert_array_equal(cos, [0.0, 0.0, 1.0])


def test_hand_case_values():
    rec, _ = _score(np.array([0.0, 0.0, 0.0]))
    assert rec["atoms_frac"] == pytest.approx(2 / 3)
    assert rec["n_atoms"] == 2
    # TP entries on {t0, t1}: 0.5, 1.5, 0.5
    assert rec["n_tp"] == 3
    assert rec["code_bias"] == pytest.approx((0.5 + 1.5 + 0.5) / 3)
    # per sample on {t0, t1}: b0 P=R={t0,t1}: (1, 1, 1); b1 P={}, R={t1}: (0, 0, 0);
    # b2 P={t0,t1}, R={t0}: (1/2, 1, 2/3)
    assert rec["supp_precision"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert rec["supp_recall"] == pytest.approx((1 + 0 + 1) / 3)
    assert rec["supp_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_missed_latent_codes_do_not_enter():
    rec_a, bias_a = _score(np.array([0.0, 0.0, 0.0]))
    rec_b, bias_b = _score(np.array([5.0, -7.0, 0.25]))
    assert rec_a == rec_b
    # the old aligned code bias does see the missed latent: b1 (t2: r=3) and b2 (t2: r=1)
    # bias_a = mean(1.5/3 [b0: (0.5 + 1)/(1 + 2)], 0/7, 3/3)
    assert bias_a == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    # bias_b: b1 (0 - 7)/7 = -1, b2 (3 + 0.25)/3
    assert bias_b == pytest.approx((0.5 - 1.0 + 3.25 / 3) / 3)
    assert bias_a != bias_b


def test_threshold_is_inclusive():
    """A match at exactly RECOVERED_COS counts as recovered."""
    cos = np.array([0.9, -0.9, 0.8999])
    rec = recovered_atom_recovery(R, R, cos)
    assert rec["atoms_frac"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- TP bias
def test_half_codes_bias_is_half_and_misses_lower_recall():
    rng = np.random.default_rng(0)
    Rr = np.where(rng.random((20, 6)) < 0.4, rng.uniform(0.5, 2.0, (20, 6)), 0.0)
    Rr[0, :3] = 1.0  # sample 0 keeps a non-empty support after the two misses below
    H = 0.5 * Rr
    H[0, :2] = 0.0  # two misses: out of the bias, into the recall
    bias, n_tp = true_positive_code_bias(H, Rr)
    assert bias == 0.5
    n_ref = int(np.count_nonzero(Rr))
    assert n_tp == n_ref - 2
    rec = recovered_atom_recovery(H, Rr, np.ones(6))
    assert rec["code_bias"] == 0.5 and rec["n_tp"] == n_ref - 2
    assert rec["supp_precision"] == 1.0
    # recall per sample: only sample 0 loses two of its |R_0| entries
    n0 = np.count_nonzero(Rr[0])
    assert rec["supp_recall"] == pytest.approx(1 - (2 / n0) / 20)
    assert rec["supp_recall"] < 1.0


def test_tp_bias_counts_wrong_sign_and_ignores_false_positives():
    R2 = np.array([[2.0, 0.0, -1.0]])
    H2 = np.array([[1.0, 9.0, 0.5]])  # ratios 0.5 and -0.5; 9.0 is a false positive
    bias, n_tp = true_positive_code_bias(H2, R2)
    assert n_tp == 2 and bias == pytest.approx(0.0)


def test_tp_bias_nan_without_true_positive():
    bias, n_tp = true_positive_code_bias(np.zeros((2, 3)), np.ones((2, 3)))
    assert math.isnan(bias) and n_tp == 0


# ----------------------------------------------------------------------------- empty cases
def test_no_recovered_atom():
    rec = recovered_atom_recovery(R, R, np.array([0.1, -0.5, 0.0]))
    assert rec["atoms_frac"] == 0.0 and rec["n_atoms"] == 0 and rec["n_tp"] == 0
    for key in ("code_bias", "supp_precision", "supp_recall", "supp_f1"):
        assert math.isnan(rec[key]), key


def test_shape_errors():
    with pytest.raises(ValueError):
        recovered_atom_recovery(R, R, np.ones(2))
    with pytest.raises(ValueError):
        recovered_atom_recovery(R[:, :2], R, np.ones(3))
    with pytest.raises(ValueError):
        hungarian_match(np.ones((3, 2)), np.ones((4, 2)))
