"""The bracket search (``calibrate.bracket``): every target bracketed within the ratio by
measured points, which are the calibration seed's runs. Oracles: the synthetic maps'
own definitions (the L0 each penalty gives), recomputed here from the measured calls."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aensae.experiments.calibration import bracket_search
from aensae.experiments.results import read_table
from aensae.experiments.spiked import driver as runner
from aensae.experiments.spiked.config import load_config

# the run targets around 2, 4, 8 with frontier 1.41 (t * 1.41 and 2t / 1.41 merged)
AIMS = [2 / 1.41, math.sqrt(2 * 1.41 * 4 / 1.41), math.sqrt(4 * 1.41 * 8 / 1.41), 8 * 1.41]


def _recorder(fn):
    calls: list[tuple[float, float]] = []

    def measure(ps: list[float]) -> list[float]:
        out = [fn(p) for p in ps]
        calls.extend(zip(ps, out, strict=True))
        return out
    return measure, calls


def _ratio_from_calls(calls, t: float) -> float:
    """The tightest bracket of ``t`` among the measured L0s, written out."""
    below = [v for _, v in calls if 0 < v <= t]
    above = [v for _, v in calls if v >= t]
    return min(above) / max(below) if below and above else math.inf


def test_power_law_is_bracketed_in_one_refinement_pass() -> None:
    """L0 = 0.1 / p: log-log interpolation is exact, so one pass lands every aim it needs
    and each target ends bracketed within 2 (the aims' own spacing)."""
    measure, calls = _recorder(lambda p: 0.1 / p)
    res = bracket_search(measure, (1e-3, 1.0), [2.0, 4.0, 8.0], ladder=2, rounds=3,
                         bracket=3.0, aims=AIMS)
    assert not res["unreachable"]
    assert len(calls) <= 2 + len(AIMS)
    for t in (2.0, 4.0, 8.0):
        assert _ratio_from_calls(calls, t) <= 2.0 + 1e-9
        assert res["brackets"][t] == pytest.approx(_ratio_from_calls(calls, t))
    # the run targets' penalties (for other seeds) are the map's inverse
    for a in AIMS:
        assert res["penalties"][a] == pytest.approx(0.1 / a, rel=1e-9)


def test_map_flat_at_one_end_reports_the_target_beyond_it() -> None:
    """L0 capped at 5 for small penalties: 8 cannot be reached (the range seen is
    recorded, the widening went to the search's end), 2 and 4 are bracketed."""
    measure, calls = _recorder(lambda p: min(5.0, 0.1 / p))
    res = bracket_search(measure, (1e-2, 1.0), [2.0, 4.0, 8.0], ladder=3, rounds=3,
                         bracket=3.0, aims=AIMS)
    assert set(res["unreachable"]) == {8.0}
    assert res["unreachable"][8.0] == pytest.approx([0.1, 5.0])
    assert min(p for p, _ in calls) == pytest.approx(1e-2 * 1e-6)
    for t in (2.0, 4.0):
        assert _ratio_from_calls(calls, t) <= 3.0
    assert 8.0 not in res["brackets"]
    assert AIMS[-1] not in res["penalties"]  # 11.3 lies beyond the cap: no penalty


def test_target_below_the_floor_is_unreachable_and_costs_no_refinement() -> None:
    measure, calls = _recorder(lambda p: max(3.0, 0.1 / p))
    res = bracket_search(measure, (1e-2, 1.0), [2.0, 4.0, 8.0], ladder=2, rounds=3,
                         bracket=3.0, aims=AIMS)
    assert set(res["unreachable"]) == {2.0}
    assert res["unreachable"][2.0] == pytest.approx([3.0, 10.0])
    assert max(p for p, _ in calls) == pytest.approx(1.0 * 1e3)  # widened to the end
    assert _ratio_from_calls(calls, 4.0) <= 3.0 and _ratio_from_calls(calls, 8.0) <= 3.0


def test_cliff_stops_after_its_rounds_with_the_ratio_it_reached() -> None:
    """L0 jumps from 9 to 1 at p = 0.5: no point ever lands between, so the bracket of 4
    stays at 9 after ``rounds`` passes, and is reported as such."""
    measure, calls = _recorder(lambda p: 9.0 if p < 0.5 else 1.0)
    res = bracket_search(measure, (1e-2, 1.0), [4.0], ladder=2, rounds=4, bracket=3.0,
                         aims=[4 / 1.41, 4 * 1.41])
    assert res["brackets"][4.0] == 9.0
    assert len(calls) <= 2 + 4
    below = [p for p, v in calls if v == 9.0]
    above = [p for p, v in calls if v == 1.0]
    assert max(below) < 0.5 <= min(above) and min(above) / max(below) < 2.0


@settings(max_examples=40, deadline=None)
@given(slopes=st.lists(st.floats(0.4, 5.0), min_size=3, max_size=3),
       scale=st.floats(-2.0, 2.0))
def test_continuous_decreasing_maps_end_bracketed_within_the_ratio(slopes, scale) -> None:
    """Any continuous decreasing map (piecewise power law, three pieces) that spans the
    targets inside the search's range: bisection shrinks each bracket until it holds."""
    knots = [-3.0, -1.5, 0.0]  # log p where the slope changes

    def log_l0(lp: float) -> float:
        v, x = scale + 4.0, -6.0  # log L0 at log p = -6
        for k, s in zip(knots + [math.inf], slopes + [slopes[-1]], strict=True):
            seg = min(lp, k) - x
            if seg <= 0:
                break
            v -= s * seg
            x = k
        return v

    measure, calls = _recorder(lambda p: math.exp(log_l0(math.log(p))))
    res = bracket_search(measure, (1e-3, 1.0), [2.0, 4.0, 8.0], ladder=3, rounds=8,
                         bracket=3.0, aims=AIMS)
    for t in (2.0, 4.0, 8.0):
        if t in res["unreachable"]:
            lo, hi = res["unreachable"][t]
            assert not lo <= t <= hi
        else:
            assert _ratio_from_calls(calls, t) <= 3.0


@pytest.mark.parametrize("patch, match", [
    ({"bracket": 1.5}, r"calibrate.bracket: must be >= calibrate.frontier \*\* 2 .*got "
                       r"bracket 1.5, frontier 1.3"),
    ({"bracket": 3.0, "frontier": 1.0}, r"calibrate.bracket: must be >= calibrate.frontier"),
    ({"bracket": 3.0, "steps": 20}, r"calibrate.bracket: needs full-length calibration "
                                    r"passes.*got calibrate.steps 20, train.steps 40"),
    ({"bracket": 0.5}, r"calibrate.bracket: must be > 1"),
    ({"bracket": "wide"}, r"calibrate.bracket: must be a number, got 'wide'"),
])
def test_bracket_option_errors(patch, match) -> None:
    raw = _tiny_raw()
    raw["calibrate"] = {**raw["calibrate"], **patch}
    with pytest.raises(ValueError, match=match):
        load_config(raw)


def test_bracket_with_a_selection_is_refused() -> None:
    raw = _tiny_raw()
    raw["calibrate"] = {**raw["calibrate"], "bracket": 3.0}
    raw["experiment"] = {**raw["experiment"], "seeds": [1, 2, 3]}
    raw["selection"] = {"seed": 0, "target_l0": 2.0, "init": "tied", "metric": "dead_final"}
    with pytest.raises(ValueError, match=r"calibrate.bracket: cannot be used with a "
                                         r"\[selection\]"):
        load_config(raw)


def test_unset_bracket_keeps_the_config_hash() -> None:
    """Configs without the key hash as before it existed (committed runs keep their ids)."""
    grid = load_config("tiny")
    assert "bracket" not in grid.calibrate and "bracket" not in grid.to_dict()["calibrate"]


def _tiny_raw() -> dict:
    from importlib import resources

    import tomllib

    text = resources.files("aensae.configs").joinpath("tiny.toml").read_text()
    return tomllib.loads(text)


def test_bracket_grid_runs_are_the_calibration_points(tmp_path) -> None:
    """tiny with ``bracket``: the calibration seed's calibrated runs are exactly the
    measured points (one row per penalty, trained by the calibration), and every target
    the record calls bracketed is bracketed by those rows' L0s with the recorded ratio."""
    import json

    raw = _tiny_raw()
    raw["calibrate"] = {**raw["calibrate"], "bracket": 2.0, "rounds": 2}
    grid = load_config(raw)
    out = tmp_path / "out"
    runner.reproduce(grid, out, progress=False, draw=False)
    _, rows = read_table(out / "results.csv")
    sae = [r for r in rows if r["kind"] == "sae"]
    for path in sorted((out / "calibration").glob("*.json")):
        rec = json.loads(path.read_text())["record"]
        mine = [r for r in sae if r["family"] == rec["family"] and r["rho"] == rec["rho"]
                and r["variant"] == rec["variant"]]
        assert sorted(r["calibrated_value"] for r in mine) == sorted(
            {p for p, _ in rec["points"]})
        assert all(r["trained_in"] == "calibration" and r["target_l0"] is None
                   for r in mine)
        measured = {p: v for p, v in rec["points"]}
        for r in mine:  # the row's L0 is the one the search measured
            assert r["l0"] == pytest.approx(measured[r["calibrated_value"]], rel=1e-12)
        for t, ratio in rec["brackets"].items():
            pts = [[0.0, r["l0"]] for r in mine]
            got = _ratio_from_calls(pts, float(t))
            assert (ratio is None and got == math.inf) or got == pytest.approx(ratio)
    topk = [r for r in sae if r["family"] == "topk"]
    assert topk and all(r["target_l0"] is not None for r in topk)


def test_progress_counts_no_model_steps_for_runs_the_calibration_trained(tmp_path) -> None:
    """A calibration-trained run whose folder is gone is taken from the model cache: its
    group task trains nothing, so the progress bar's model-steps leave it out; without
    the cached model it costs the full run again (hand count: ``train.steps``)."""
    import shutil

    from aensae.experiments.executors.local import SerialExecutor
    from aensae.experiments.spiked.calibrate import calibrate
    from aensae.experiments.spiked.data import CACHE_DIR, run_cache_key
    from aensae.experiments.spiked.tasks import run_folder

    raw = _tiny_raw()
    raw["calibrate"] = {**raw["calibrate"], "bracket": 2.0, "rounds": 2}
    grid = load_config(raw)
    out = tmp_path / "out"
    runner.reproduce(grid, out, progress=False, draw=False)
    calib = calibrate(grid, out, keep=None, strict=True)
    specs = runner.calibrated_runs(grid, calib, seeds=grid.seeds, keep=None)
    spec = next(s for s in specs if s.calibrated and s.target_l0 is None)
    shutil.rmtree(run_folder(out, grid, spec))

    def cost() -> list[int]:
        return runner._plan_groups(grid, out, [spec], calib, False, SerialExecutor())[1]

    assert runner._in_cache(grid, out, spec)
    assert cost() == [0]
    shutil.rmtree(out / CACHE_DIR / run_cache_key(grid, spec))
    assert cost() == [grid.train["steps"]]
