"""End to end: ``evaluate_sae`` reports the recovered-atom metrics (``rec_*``) and the same
metrics on the exact codes of the SAE's own decoder (``exact_*``).

The exact-code columns are checked against an independent computation in the test: a
Hungarian matching on ``|cos|`` by :func:`scipy.optimize.linear_sum_assignment`, sign
flips, and support F1 / code bias counted with numpy.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from aensae.experiments.spiked.evaluation import evaluate_sae
from aensae.saes import TrainConfig, create, train
from aensae.synthetic import SyntheticStream, spiked_dictionary

N, M, K = 8, 12, 2
EXACT_KEYS = ("exact_rec_code_bias", "exact_rec_supp_f1", "exact_rec_supp_precision",
              "exact_rec_supp_recall", "exact_rec_n_tp", "exact_code_bias", "exact_supp_f1")
UNIT_KEYS = ("rec_atoms_frac", "rec_supp_precision", "rec_supp_recall", "rec_supp_f1")


def _point(samples: int = 256) -> SimpleNamespace:
    dic = spiked_dictionary(N, M, 0.0, seed=0)
    X, H = SyntheticStream(dic.D, K, samples, seed=0).batch(2**40)
    stream = SyntheticStream(dic.D, K, 64, seed=0)
    return SimpleNamespace(dictionary=dic, X_eval=X, H_eval=H, stream=stream)


@pytest.fixture(scope="module")
def trained():
    point = _point()
    model = create("relu_l1", N, M, seed=0, l1=0.1)
    train(model, lambda s: point.stream.torch_signal_batches(600 - s, start=s),
          TrainConfig(steps=600, lr=1e-2, device="cpu", dtype="float64", dead_window=640))
    row = evaluate_sae(model, point, encoder_samples=8, hoffman_samples=4, tol=1e-9)
    return model, point, row


def _hand_alignment(learned: np.ndarray, true: np.ndarray):
    Ln = learned / np.linalg.norm(learned, axis=0)
    Tn = true / np.linalg.norm(true, axis=0)
    C = Ln.T @ Tn
    rows, cols = linear_sum_assignment(-np.abs(C))
    match = np.full(true.shape[1], -1)
    cos = np.zeros(true.shape[1])
    match[cols] = rows
    cos[cols] = C[rows, cols]
    return match, cos


def _hand_scores(codes: np.ndarray, H: np.ndarray, match: np.ndarray, cos: np.ndarray):
    """(rec_f1, rec_bias, rec_n_tp, all_f1) counted with loops over samples."""
    m_t = H.shape[1]
    A = np.zeros((codes.shape[0], m_t))
    for j in range(m_t):
        if match[j] >= 0:
            A[:, j] = np.sign(cos[j]) * codes[:, match[j]]
    extra = np.setdiff1d(np.arange(codes.shape[1]), match[match >= 0])
    J = np.flatnonzero(np.abs(cos) >= 0.9)
    f1s, ratios, f1_all = [], [], []
    for b in range(H.shape[0]):
        p, r = set(J[A[b, J] != 0]), set(J[H[b, J] != 0])
        f1s.append(1.0 if not p and not r else 2 * len(p & r) / (len(p) + len(r)))
        ratios += [A[b, j] / H[b, j] for j in p & r]
        n_fp_extra = int(np.count_nonzero(codes[b, extra]))
        pa, ra = set(np.flatnonzero(A[b])), set(np.flatnonzero(H[b]))
        denom = len(pa) + n_fp_extra + len(ra)
        f1_all.append(1.0 if denom == 0 else 2 * len(pa & ra) / denom)
    bias = float(np.mean(ratios)) if ratios else math.nan
    return float(np.mean(f1s)), bias, len(ratios), float(np.mean(f1_all))


def test_relu_l1_reports_recovered_metrics(trained):
    model, point, row = trained
    for key in UNIT_KEYS + ("exact_rec_supp_f1", "exact_supp_f1"):
        assert 0.0 <= row[key] <= 1.0, (key, row[key])
    for key in ("rec_code_bias", "rec_n_tp") + EXACT_KEYS:
        assert key in row
    assert row["rec_atoms_frac"] == pytest.approx(row["dict_hungarian_recovered_090"])
    assert row["rec_atoms_frac"] >= 0.5  # 600 steps on rho = 0 learn most atoms
    assert row["rec_n_tp"] > 0 and math.isfinite(row["rec_code_bias"])
    # old columns untouched
    for key in ("code_bias", "supp_f1", "supp_precision", "supp_recall", "amort_support_f1"):
        assert key in row


def test_exact_columns_match_hand_computation(trained):
    from aensae.theory import amortization_gap

    model, point, row = trained
    prob = model.exact_problem()
    _, exact = amortization_gap(prob, point.X_eval, _encode(model, point.X_eval), tol=1e-9)
    learned = model.W_dec.detach().double().numpy().T
    match, cos = _hand_alignment(learned, point.dictionary.D)
    assert row["rec_atoms_frac"] == pytest.approx(np.mean(np.abs(cos) >= 0.9))
    f1, bias, n_tp, f1_all = _hand_scores(exact, point.H_eval, match, cos)
    assert row["exact_rec_supp_f1"] == pytest.approx(f1, abs=1e-12)
    assert row["exact_rec_n_tp"] == n_tp
    assert row["exact_rec_code_bias"] == pytest.approx(bias, rel=1e-9, nan_ok=True)
    assert row["exact_supp_f1"] == pytest.approx(f1_all, abs=1e-12)
    # and the encoder's own recovered F1, by the same hand count
    f1_enc, bias_enc, n_tp_enc, f1_all_enc = _hand_scores(
        _encode(model, point.X_eval), point.H_eval, match, cos)
    assert row["rec_supp_f1"] == pytest.approx(f1_enc, abs=1e-12)
    assert row["rec_n_tp"] == n_tp_enc
    assert row["rec_code_bias"] == pytest.approx(bias_enc, rel=1e-9, nan_ok=True)
    assert row["supp_f1"] == pytest.approx(f1_all_enc, abs=1e-12)


def _encode(model, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode(torch.as_tensor(X, dtype=model.W_enc.dtype)).double().numpy()


def test_no_exact_problem_no_exact_columns():
    point = _point(64)
    model = create("topk", N, M, seed=0, k_top=2)
    row = evaluate_sae(model, point, encoder_samples=4, hoffman_samples=2, tol=1e-9)
    assert row["has_exact_problem"] is False
    for key in EXACT_KEYS:
        assert key not in row
    assert 0.0 <= row["rec_atoms_frac"] <= 1.0
    assert "rec_code_bias" in row and "rec_n_tp" in row
    for key in UNIT_KEYS[1:]:  # NaN when no atom is recovered
        v = row[key]
        assert math.isnan(v) if row["rec_atoms_frac"] == 0 else 0.0 <= v <= 1.0
