"""Figures and report from hand-built tables: every file, byte-identical redraws, verdicts."""

from __future__ import annotations

import pytest
from report_support import SPEED, _rows

from aensae.experiments.plotting import FORMATS
from aensae.experiments.results import write_table
from aensae.experiments.spiked.driver import SPEED_FIRST
from aensae.experiments.spiked.figures import FIGURES, draw_all
from aensae.experiments.spiked.report import matched, write_report


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
    # claim 3 at every rho: better at the three targets of rho 0.9, equal (undecided) at
    # rho 0, where every family has 5 % dead latents
    assert ("verdict (AEN mitigates at competitive reconstruction): supported (better in 3 "
            "of 6 cells; 3 undecided)") in text
    assert "verdict (starvation grows with rho): supported" in text
    assert "1. **The l2 term" in text and "**verdict: supported**" in text
    # equal support F1 everywhere (3 targets x 2 rho): undecided cells, neither verdict
    assert "inconclusive (better in 0, worse in 0 of 6 cells; 6 undecided)" in text
    assert "**Verdict rule:**" in text
    assert "Flagged" not in text  # every EV is positive
    # the same table with AEN worse: the report says the claims are contradicted
    write_table(tmp_path / "results.csv", _rows(aen_dead_hi=0.6, aen_bias=0.5))
    text = write_report(tmp_path).read_text()
    assert "mitigates at competitive reconstruction): contradicted" in text
    assert "verdict (SAE level, encoder codes): contradicted" in text
    # two seeds cannot decide a cell, whatever the difference
    write_table(tmp_path / "results.csv", _rows(aen_dead_hi=0.6, aen_bias=0.5, seeds=(0, 1)))
    text = write_report(tmp_path).read_text()
    assert "mitigates at competitive reconstruction): inconclusive" in text
    assert "undecided (2 seeds)" in text and "contradicted (" not in text


def test_authors_runs_ship_with_the_package() -> None:
    from pathlib import Path

    from aensae.experiments.spiked.figures import AUTHORS_CLASS, authors_runs

    runs = authors_runs()
    assert len(runs) == 570  # the README's count
    assert {r["arch"] for r in runs} == set(AUTHORS_CLASS.values())
    assert {r["rho"] for r in runs} == {0.0, 0.3, 0.5, 0.7, 0.9}
    shared = Path(__file__).resolve().parents[3] / "shared" / "reference" / \
        "authors_spiked_runs.csv"
    if shared.is_file():  # the copy is the reference file, byte for byte
        import aensae.experiments as pkg

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
    assert "relu_l1/tied rho=0.9" in text
    assert "aen/independent rho=0.9 target 16 (L0 0.5-9)" in text
    files = draw_all(tmp_path)
    svg = (tmp_path / "figures" / "fig1_dead_ev_vs_l0.svg").read_text()
    assert "explained variance &lt; 0 (flagged)" in svg or "explained variance < 0" in svg
    assert "unreachable L0 targets" in svg
    assert len(files) == 2 * len(FIGURES)


def test_selection_runs_are_not_drawn(tmp_path) -> None:
    """A ``[selection]`` seed's runs stay off the curves: a family seen only in selection
    rows has no legend entry, and one seen in both keeps its test points only."""
    rows = _rows(aen_dead_hi=0.02, aen_bias=0.97)
    extra = [{**r, "family": "selonly", "arch": "relu_l1", "role": "selection",
              "run_id": r["run_id"] + "-sel"}
             for r in rows if r.get("kind") == "sae" and r["family"] == "relu_l1"]
    write_table(tmp_path / "results.csv", rows + extra)
    draw_all(tmp_path)
    for name in ("fig1_dead_ev_vs_l0", "fig2_recovery_vs_l0", "fig3_amortization_gap"):
        svg = (tmp_path / "figures" / f"{name}.svg").read_text()
        assert "selonly" not in svg
    # the same rows as test runs are drawn (the check above can fail)
    write_table(tmp_path / "results.csv", rows + [{**r, "role": "test"} for r in extra])
    draw_all(tmp_path)
    assert "selonly" in (tmp_path / "figures" / "fig1_dead_ev_vs_l0.svg").read_text()


def test_plain_log_ticks_label_each_tick_with_its_own_digits() -> None:
    """Oracle: the tick positions themselves, written out. A shared precision labelled
    0.05 as "0.1" beside the real 0.1 once the L0 axis reached below 0.1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aensae.experiments.plotting import plain_log_ticks

    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.set_xlim(0.03, 120)
    plain_log_ticks(ax)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    shown = {round(t, 9): lab.get_text() for t, lab in zip(ax.get_xticks(),
                                                          ax.get_xticklabels(), strict=True)
             if lo <= t <= hi}
    plt.close(fig)
    assert shown == {0.05: "0.05", 0.1: "0.1", 0.2: "0.2", 0.5: "0.5", 1.0: "1", 2.0: "2",
                     5.0: "5", 10.0: "10", 20.0: "20", 50.0: "50", 100.0: "100"}
