"""``aensae geometry`` and ``aensae bench geometry`` end to end at small sizes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aensae.cli import main
from aensae.theory.summaries import summary


def test_summary_order_statistics_and_infinities():
    s = summary(np.arange(1.0, 101.0))
    assert (s["median"], s["p95"], s["max"], s["n"]) == (50.0, 95.0, 100.0, 100)
    s = summary([1.0, math.inf, 2.0])
    assert s["max"] is None and s["n_infinite"] == 1 and s["median"] == 2.0
    with pytest.raises(ValueError, match="NaN"):
        summary([1.0, math.nan])


def test_bench_geometry_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "geometry", "--samples", "60", "--dense", "3", "--n", "16",
                 "--m", "48", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["max_rel_error"] < 1e-8
    assert rec["speedup"] > 0 and rec["bounds_hold"]
    assert "speedup" in capsys.readouterr().out


def test_geometry_true_dictionary_json(tmp_path):
    out = tmp_path / "g.json"
    assert main(["geometry", "--rho", "0.5", "--samples", "40", "--n", "16", "--m", "32",
                 "--k", "2", "--lam1", "0.1", "--trajectory", "3", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["lam1"] == 0.1 and rec["lam2"] == 0.05 and rec["samples"] == 40
    for key in ("lipschitz_lasso", "lipschitz_enet", "hoffman_local", "hoffman_local_lower",
                "hoffman_local_upper", "support_f1", "amortization_gap"):
        assert set(rec[key]) >= {"median", "p95", "max"}, key
    assert rec["lipschitz_enet"]["max"] <= rec["lipschitz_enet_bound"] * (1 + 1e-12)
    assert rec["hoffman_local_lower"]["max"] <= rec["hoffman_local_upper"]["max"]
    assert rec["amortization_gap"]["median"] >= 0.0  # the truth is not optimal for F
    assert rec["lipschitz_encoder"] is None and rec["trajectory"]["signals"] == 3


@pytest.mark.parametrize("arch", ["relu_l1", "topk"])
def test_geometry_of_a_saved_sae(tmp_path, arch):
    from aensae.saes import create, save

    hyper = {"k_top": 4} if arch == "topk" else {}
    model = create(arch, 16, 32, seed=0, **hyper)
    folder = save(model, tmp_path / arch)
    out = tmp_path / "g.json"
    assert main(["geometry", "--sae", str(folder), "--rho", "0.3", "--m", "32", "--k", "2",
                 "--samples", "24", "--encoder-samples", "8", "--trajectory", "0",
                 "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["source"]["arch"] == arch
    assert set(rec["amortization_gap"]) >= {"median", "p95", "max"}
    assert rec["amortization_gap"]["median"] >= -1e-9  # exact codes are optimal
    if arch == "topk":
        assert rec["lipschitz_encoder"] is None and "encoder_jumps" in rec
        assert "--lam1" in rec["penalty_source"]
    else:
        enc = rec["lipschitz_encoder"]
        assert enc["max"] <= rec["lipschitz_encoder_global_bound"] * (1 + 1e-6)
        assert rec["lipschitz_encoder_pair_lower"] <= rec["lipschitz_encoder_global_bound"]


def test_geometry_needs_a_source(capsys):
    assert main(["geometry", "--samples", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rho" in err and "--sae" in err


def test_default_lam1_calibration_points_and_log_interpolation():
    from aensae.synthetic.penalties import DEFAULT_LAM1, default_lam1

    for rho, lam1 in DEFAULT_LAM1.items():
        assert default_lam1(rho) == pytest.approx(lam1)
    assert default_lam1(0.25) == pytest.approx(math.sqrt(0.5 * 10.0))
    assert default_lam1(0.95) == pytest.approx(DEFAULT_LAM1[0.9])
