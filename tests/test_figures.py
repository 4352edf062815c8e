"""Figures and report from hand-built tables: every file, byte-identical redraws, verdicts."""

from __future__ import annotations

import itertools

import pytest

from aensae.benchmarks.figures import FIGURES, FORMATS, draw_all
from aensae.benchmarks.report import matched, write_report
from aensae.benchmarks.results import write_table
from aensae.benchmarks.runner import SPEED_FIRST

FAMILIES = {"relu_l1": "relu_l1", "elastic_net": "elastic_net", "aen": "aen", "topk": "topk"}
TARGETS = (2.0, 4.0, 8.0)


def _rows(aen_dead_hi: float, aen_bias: float) -> list[dict]:
    """A table whose verdicts are known by construction."""
    rows = []
    for (fam, arch), rho, t, seed in itertools.product(FAMILIES.items(), (0.0, 0.9), TARGETS,
                                                        (0, 1)):
        dead = 0.05 if rho == 0.0 else (aen_dead_hi if fam == "aen" else 0.4)
        rows.append({
            "run_id": f"{fam}-{rho}-{t}-{seed}", "kind": "sae", "family": fam, "arch": arch,
            "rho": rho, "seed": seed, "target_l0": t, "variant": "v0", "config_name": "hand",
            "k": 4, "n": 16, "m": 32, "d_sae": 32, "steps": 30000,
            "l0": t, "explained_variance": 0.9 + 0.01 * t / 8, "dead_median_last": dead,
            "code_bias": aen_bias if fam == "aen" else 0.8, "supp_f1": 0.5,
            "dict_hungarian_mean_cos_deflated": 0.7,
            "dict_chance_hungarian_mean_cos_deflated": 0.2,
            "has_exact_problem": arch != "topk",
            "amort_rel_median": None if arch == "topk" else 0.1 * (1 + rho),
            "lip_encoder_median": None if arch == "topk" else 1.5,
            "jump_size_median": 0.3 if arch == "topk" else None,
            **{f"hoffman_{q}": v * (1 + 5 * rho) for q, v in
               (("q05", 1.0), ("q25", 2.0), ("median", 3.0), ("q75", 4.0), ("q95", 6.0))},
        })
    for rho, arch, frac in itertools.product((0.0, 0.9), ("exact_lasso", "exact_enet"),
                                             (0.1, 0.3)):
        grow = 10.0 if arch == "exact_lasso" else 1.5
        rows.append({
            "run_id": f"exact-{rho}-{arch}-{frac}", "kind": "exact", "family": arch,
            "arch": arch, "rho": rho, "seed": 0, "lam1_fraction": frac, "k": 4,
            "l0": 4.0 / frac * 0.1 + 2, "explained_variance": 0.95, "supp_f1": 0.9,
            "lip_exact_lasso_median": 2.0 * (1 + grow * rho),
            "lip_exact_lasso_q95": 3.0 * (1 + grow * rho),
            "lip_exact_enet_median": 2.0, "lip_exact_enet_q95": 2.5, "lip_exact_enet_max": 3.0,
            "lip_exact_enet_bound": 5.0, "has_exact_problem": True,
            **{f"hoffman_{q}": v for q, v in
               (("q05", 1.0), ("q25", 2.0), ("median", 3.0), ("q75", 4.0), ("q95", 6.0))},
        })
    return rows


SPEED = [{"solver": s, "rho": rho, "n": 256, "m": 1024, "signals": 100,
          "signals_per_s": v * (1 - rho / 2), "ratio_vs_sklearn": v / 600.0,
          "max_rel_gap": 1e-12}
         for (s, v), rho in itertools.product((("aensae.fast", 1800.0), ("sklearn", 600.0)),
                                              (0.0, 0.9))]


@pytest.fixture()
def table_dir(tmp_path):
    write_table(tmp_path / "results.csv", _rows(aen_dead_hi=0.02, aen_bias=0.97))
    write_table(tmp_path / "speed.csv", SPEED, first=SPEED_FIRST, required=())
    return tmp_path


def test_every_figure_written_with_speed_table(table_dir) -> None:
    files = draw_all(table_dir)
    assert sorted(p.name for p in files) == sorted(f"{n}.{e}" for n in FIGURES for e in FORMATS)
    assert all(p.stat().st_size > 1000 for p in files)
    svg = (table_dir / "figures" / "fig6_solver_speed.svg").read_text()
    assert "aensae.fast" in svg and "signals / s" in svg  # drawn from speed.csv
    assert "<dc:date>" not in svg  # no timestamp: redraws are byte-identical


def test_matched_interpolates_in_log_l0() -> None:
    rows = [{"kind": "sae", "family": "f", "rho": 0.0, "target_l0": t, "run_id": str(t),
             "l0": l0, "x": x} for t, l0, x in ((1, 2.0, 0.0), (2, 8.0, 1.0))]
    # oracle: halfway in log between 2 and 8 is 4
    assert matched(rows, "f", 0.0, "x", 4.0) == pytest.approx(0.5)
    assert matched(rows, "f", 0.0, "x", 2.0) == pytest.approx(0.0)
    assert matched(rows, "f", 0.0, "x", 16.0) != matched(rows, "f", 0.0, "x", 16.0)  # NaN


def test_report_verdicts_follow_the_data(tmp_path) -> None:
    write_table(tmp_path / "results.csv", _rows(aen_dead_hi=0.02, aen_bias=0.97))
    text = write_report(tmp_path).read_text()
    assert "verdict (AEN mitigates at competitive reconstruction): supported" in text
    assert "verdict (starvation grows with rho): supported" in text
    assert "1. **The l2 term" in text and "**verdict: supported**" in text
    # equal support F1 everywhere (3 targets x 2 rho): undecided cells, neither verdict
    assert "inconclusive (better in 0, worse in 0, undecided in 6 of 6 cells)" in text
    assert "**Verdict rule for matched comparisons:**" in text
    assert "Flagged" not in text  # every EV is positive
    # the same table with AEN worse: the report says the claims are contradicted
    write_table(tmp_path / "results.csv", _rows(aen_dead_hi=0.6, aen_bias=0.5))
    text = write_report(tmp_path).read_text()
    assert "mitigates at competitive reconstruction): contradicted" in text
    assert text.count("**verdict: contradicted**") >= 1


def test_authors_runs_ship_with_the_package() -> None:
    from pathlib import Path

    from aensae.benchmarks.figures import AUTHORS_CLASS, authors_runs

    runs = authors_runs()
    assert len(runs) == 570  # the README's count
    assert {r["arch"] for r in runs} == set(AUTHORS_CLASS.values())
    assert {r["rho"] for r in runs} == {0.0, 0.3, 0.5, 0.7, 0.9}
    shared = Path(__file__).resolve().parents[2] / "shared" / "reference" / \
        "authors_spiked_runs.csv"
    if shared.is_file():  # the copy is the reference file, byte for byte
        import aensae.benchmarks as pkg

        copy = Path(pkg.__file__).parent / "data" / "authors_spiked_runs.csv"
        assert copy.read_bytes() == shared.read_bytes()


def test_negative_ev_and_unreachable_targets_are_flagged(tmp_path) -> None:
    rows = _rows(aen_dead_hi=0.02, aen_bias=0.97)
    for r in rows:
        if r["family"] == "relu_l1" and r["rho"] == 0.9 and r["target_l0"] == 2.0:
            r["explained_variance"] = -0.3
    rows.append({"run_id": "unreachable-aen-v0-rho0.9-t16", "kind": "unreachable",
                 "family": "aen", "arch": "aen", "init": "independent", "rho": 0.9,
                 "seed": 0, "target_l0": 16.0, "l0_seen_min": 0.5, "l0_seen_max": 9.0})
    write_table(tmp_path / "results.csv", rows)
    text = write_report(tmp_path).read_text()
    assert "**Flagged: explained variance below 0**" in text
    assert "relu_l1/tied rho=0.9 target 2" in text
    assert "aen/independent rho=0.9 target 16 (L0 0.5-9)" in text
    files = draw_all(tmp_path)
    svg = (tmp_path / "figures" / "fig1_dead_ev_vs_l0.svg").read_text()
    assert "explained variance &lt; 0 (flagged)" in svg or "explained variance < 0" in svg
    assert "unreachable L0 targets" in svg
    assert len(files) == 2 * len(FIGURES)
