"""The verdict rule (interpolation to the target, seeds, convergence) and the selection
seed, against hand-built rows and hand computations."""

from __future__ import annotations

import math

import pytest

from aensae._validation import InputError
from aensae.experiments.config import Family, variant_id
from aensae.experiments.spiked.config import load_config
from aensae.experiments.spiked.selection import at_target, choose
from aensae.experiments.verdicts import (
    compare,
    ema_start_count,
    ema_start_share,
    seed_values,
    tally_verdict,
)


def _run(fam: str, seed: int, l0: float, value: float, trend: float = 0.0,
         rho: float = 0.9, init: str = "independent", **extra) -> dict:
    return {"kind": "sae", "family": fam, "rho": rho, "seed": seed, "init": init, "l0": l0,
            "m": value, "dead_trend": trend, **extra}


def _m(r: dict) -> float:
    return r["m"]


def test_interpolation_is_linear_in_log_l0_between_the_bracketing_runs() -> None:
    # frontier value = 10 * log2(L0) + 10: exactly linear in log L0
    pts = [(1.0, 10.0), (2.0, 20.0), (4.0, 30.0), (8.0, 40.0)]
    assert at_target(pts, 2.0) == 20.0
    assert math.isclose(at_target(pts, 2.0 * math.sqrt(2.0)), 25.0, rel_tol=1e-12)
    assert math.isclose(at_target(pts, 3.0), 10 * math.log2(3.0) + 10, rel_tol=1e-12)
    assert math.isnan(at_target(pts, 9.0)) and math.isnan(at_target(pts, 0.5))
    # the tightest bracket is used, not the ends
    assert math.isclose(at_target([(1.0, 0.0), (3.9, 5.0), (4.1, 7.0), (16.0, 100.0)], 4.0),
                        5.0 + 2.0 * math.log(4.0 / 3.9) / math.log(4.1 / 3.9), rel_tol=1e-12)
    rows = [_run("a", 0, x, y) for x, y in pts]
    assert math.isclose(seed_values(rows, "a", 0.9, 3.0, "independent", _m)[0][0],
                        10 * math.log2(3.0) + 10, rel_tol=1e-12)


def _frontier(fam: str, seeds, level: float, trend: float = 0.0) -> list[dict]:
    """Each seed: runs at L0 2 and 8 with value level + seed / 100 (constant in L0)."""
    return [_run(fam, s, x, level + s / 100, trend) for s in seeds for x in (2.0, 8.0)]


def test_one_seed_is_undecided_whatever_the_difference() -> None:
    rows = _frontier("aen", [0], 0.1) + _frontier("relu_l1", [0], 0.9)
    cell = compare(rows, "aen", ("relu_l1",), _m, "lower", 0.9, 4.0, "independent", 0.01)
    assert cell["outcome"] == "undecided (1 seed)"
    assert tally_verdict([cell]).startswith("inconclusive")


def test_three_seeds_decide_and_the_mirror_contradicts() -> None:
    rows = _frontier("aen", [1, 2, 3], 0.1) + _frontier("relu_l1", [1, 2, 3], 0.5)
    better = compare(rows, "aen", ("relu_l1",), _m, "lower", 0.9, 4.0, "independent", 0.01)
    assert better["outcome"] == "better" and better["d"] == pytest.approx([0.4] * 3)
    worse = compare(rows, "relu_l1", ("aen",), _m, "lower", 0.9, 4.0, "independent", 0.01)
    assert worse["outcome"] == "worse"
    assert tally_verdict([better]).startswith("supported")
    assert tally_verdict([worse]).startswith("contradicted")
    # a difference inside the seed spread is undecided
    close = _frontier("aen", [1, 2, 3], 0.5) + _frontier("relu_l1", [1, 2, 3], 0.51)
    assert compare(close, "aen", ("relu_l1",), _m, "lower", 0.9, 4.0, "independent",
                   0.01)["outcome"] == "undecided"


def test_a_moving_dead_fraction_is_not_converged() -> None:
    rows = _frontier("aen", [1, 2, 3], 0.1, trend=-0.05) + _frontier("relu_l1", [1, 2, 3], 0.5)
    cell = compare(rows, "aen", ("relu_l1",), _m, "lower", 0.9, 4.0, "independent", 0.01)
    assert cell["outcome"] == "not converged"
    # the differences are still shown: 0.5 + s/100 - (0.1 + s/100) = 0.4 on every seed
    assert cell["d"] == pytest.approx([0.4] * 3) and cell["if_settled"] == "better"
    assert tally_verdict([cell]).startswith("inconclusive")
    rows = _frontier("aen", [1, 2, 3], 0.1, trend=0.01) + _frontier("relu_l1", [1, 2, 3], 0.5)
    assert compare(rows, "aen", ("relu_l1",), _m, "lower", 0.9, 4.0, "independent",
                   0.01)["outcome"] == "better"  # a move at the floor still counts as settled


def test_seeds_whose_runs_miss_the_target_do_not_count() -> None:
    rows = _frontier("aen", [1, 2, 3], 0.1) + _frontier("relu_l1", [1, 2], 0.5)
    rows += [_run("relu_l1", 3, x, 0.5) for x in (5.0, 8.0)]  # seed 3 does not bracket 4
    cell = compare(rows, "aen", ("relu_l1",), _m, "lower", 0.9, 4.0, "independent", 0.01)
    assert cell["outcome"] == "undecided (2 seeds)"
    # the selection seed's runs never enter a verdict
    sel = [{**r, "role": "selection"} for r in _frontier("relu_l1", [9], 0.5)]
    assert 9 not in seed_values(rows + sel, "relu_l1", 0.9, 4.0, "independent", _m)


def test_run_targets_straddle_each_target() -> None:
    fam = Family("aen", "aen", {}, {}, (2.0, 4.0, 8.0), (1e-3, 1e-2))
    got = fam.run_targets(math.sqrt(2.0))
    assert got == pytest.approx((math.sqrt(2), 2 * math.sqrt(2), 4 * math.sqrt(2),
                                 8 * math.sqrt(2)), rel=1e-5)
    assert fam.run_targets(1.0) == (2.0, 4.0, 8.0)
    topk = Family("topk", "topk", {}, {}, (2.0, 4.0, 8.0))
    assert topk.run_targets(1.41) == (2.0, 4.0, 8.0)  # k set directly: L0 = k exactly


def _sel_config(**sel) -> dict:
    return {"experiment": {"seeds": [1, 2, 3]}, "data": {"n": 8, "m": 16, "k": 2},
            "selection": {"seed": 0, "target_l0": 2.0, **sel},
            "family": [{"name": "a", "arch": "aen", "target_l0": [2.0],
                        "calibrate_range": [1e-3, 1e-1], "sweep": {"gamma": [0.5, 1.0]}}]}


@pytest.mark.parametrize("patch, match", [
    ({"metric": "loss"}, r"^config selection.metric: unknown metric 'loss'; expected one of "),
    ({"seed": 2}, r"^config selection.seed: 2 is also in experiment.seeds"),
    ({"target_l0": 3.0}, r"^config selection.target_l0: 3 is not among family 'a'"),
    ({"init": "zero"}, r"^config selection.init: must be \"tied\" or \"independent\""),
    ({"bogus": 1}, r"^config \[selection\]: unknown key\(s\) bogus"),
    ({"ablation_targets": [3.0]},
     r"^config selection.ablation_targets: 3 is not among family 'a'"),
    ({"ablation_targets": []}, r"^config selection.ablation_targets: must be a non-empty list"),
    ({"ablation_targets": 2.0}, r"^config selection.ablation_targets: must be a non-empty "),
    ({"ablation_targets": [2.0, 2]}, r"^config selection.ablation_targets: lists a target "),
    ({"ablation_targets": ["2"]}, r"^config selection.ablation_targets\[0\]: must be a "),
])
def test_selection_errors_are_one_line(patch: dict, match: str) -> None:
    with pytest.raises(InputError, match=match) as err:
        load_config(_sel_config(**patch))
    assert "\n" not in str(err.value)


def test_a_selection_needs_three_test_seeds() -> None:
    raw = _sel_config()
    raw["experiment"]["seeds"] = [1, 2]
    with pytest.raises(InputError, match=r"^config experiment.seeds: a config with "
                                         r"\[selection\] needs at least 3 test seeds"):
        load_config(raw)


def test_a_sweep_value_outside_its_range_is_refused() -> None:
    raw = _sel_config()
    raw["family"][0]["sweep"]["beta"] = [0.999, 1.5]
    with pytest.raises(InputError, match="beta"):
        load_config(raw)


def test_selection_picks_the_fewest_dead_within_the_ev_band() -> None:
    grid = load_config(_sel_config())
    fam = grid.families[0]
    v05, v1 = fam.variants()

    def runs(h: dict, dead: float, ev: float) -> list[dict]:
        return [{"kind": "sae", "family": "a", "rho": 0.0, "seed": 0,
                 "variant": variant_id(h), "l0": x, "dead_median_last": dead,
                 "explained_variance": ev} for x in (1.5, 3.0)]

    # gamma 0.5: fewer dead but EV 0.05 below the best: outside the 0.02 band
    rows = runs(v05, 0.01, 0.80) + runs(v1, 0.20, 0.85)
    got = choose(grid.families, grid.rhos, grid.selection, rows)["choices"][0]
    assert got["hyper"] == {"gamma": 1.0}
    rows = runs(v05, 0.01, 0.84) + runs(v1, 0.20, 0.85)  # inside the band: fewest dead
    got = choose(grid.families, grid.rhos, grid.selection, rows)["choices"][0]
    assert got["hyper"] == {"gamma": 0.5}
    # no run brackets the target: the first variant, and the reason says so
    rows = [{**r, "l0": 5.0} for r in rows]
    got = choose(grid.families, grid.rhos, grid.selection, rows)["choices"][0]
    assert got["hyper"] == {"gamma": 0.5}
    assert got["reason"] == ("no variant's runs bracket L0 2: the first variant of the "
                             "sweep is used (L0 seen: 5, 5, 5, 5)")
    # a family with one variant has nothing to select: the reason says that, not "first"
    raw = _sel_config()
    del raw["family"][0]["sweep"]
    one = load_config(raw)
    rows = [{**r, "variant": variant_id(one.families[0].variants()[0])} for r in rows[:2]]
    got = choose(one.families, one.rhos, one.selection, rows)["choices"][0]
    assert got["reason"] == ("the family's only variant; its runs do not bracket L0 2 "
                             "(L0 seen: 5, 5)")


def test_tiny_grid_with_a_selection_seed_end_to_end(tmp_path) -> None:
    from aensae.experiments.results import read_table
    from aensae.experiments.spiked.driver import reproduce
    from aensae.experiments.spiked.selection import read_selection

    raw = {"experiment": {"name": "tinysel", "seeds": [1, 2, 3], "workers": 1},
           "data": {"n": 8, "m": 16, "k": 2, "rho": [0.9]},
           "train": {"steps": 40, "batch_size": 32, "lr": 1e-2, "dead_window": 320,
                     "dead_last": 3, "progress": False},
           "eval": {"samples": 128, "encoder_samples": 8, "hoffman_samples": 16},
           "calibrate": {"steps": 40, "ladder": 3, "rounds": 1, "tolerance": 1.5,
                         "frontier": 1.3},
           "reference": {"ladder": 3, "fraction_min": 0.05, "fraction_max": 0.5},
           "selection": {"seed": 0, "target_l0": 2.0, "init": "independent"},
           "family": [
               {"name": "relu_l1", "arch": "relu_l1", "target_l0": [2.0],
                "calibrate_range": [1e-3, 1e-1], "sweep": {"init": ["independent", "tied"]}},
               {"name": "aen", "arch": "aen", "target_l0": [2.0],
                "calibrate_range": [1e-3, 1e-1], "hyper": {"l2": 1e-3, "ramp_steps": 4},
                "sweep": {"init": ["independent", "tied"], "gamma": [0.5, 1.0]}}]}
    out = tmp_path / "out"
    reproduce(load_config(raw), out, progress=False)
    sel = read_selection(out)
    chosen = {c["family"]: c["hyper"] for c in sel["choices"]}
    assert set(chosen) == {"relu_l1", "aen"} and chosen["aen"]["gamma"] in (0.5, 1.0)
    _, rows = read_table(out / "results.csv")
    sae = [r for r in rows if r["kind"] == "sae"]
    # the selection seed ran both aen variants with the selection's init only
    sel_rows = [r for r in sae if r["role"] == "selection" and r["family"] == "aen"]
    assert {r["hp_gamma"] for r in sel_rows if r["init"] == "independent"} == {0.5, 1.0}
    # test seeds ran only the chosen variant, with both inits
    test = [r for r in sae if r["role"] == "test" and r["family"] == "aen"]
    assert {r["hp_gamma"] for r in test} == {chosen["aen"]["gamma"]}
    assert {r["init"] for r in test} == {"independent", "tied"}
    assert {int(r["seed"]) for r in test} == {1, 2, 3}
    # the selection seed trains nothing after the selection: no tied run of it
    assert {r["init"] for r in sae if int(r["seed"]) == 0} == {"independent"}
    # the chosen variant's calibration over every target started from the selection's
    # points (run targets 2 / 1.3 and 2 x 1.3 are the scoped ones): nothing new to train
    import json

    for c in sel["choices"]:
        var = variant_id({**c["hyper"], "init": "independent"})
        unit = json.loads((out / "calibration" / f"rho0.9-{c['family']}-{var}.json")
                          .read_text())["record"]
        scoped = json.loads((out / "calibration" / f"rho0.9-{c['family']}-{var}-t2.json")
                            .read_text())["record"]
        assert unit["seeded_from"] == [f"rho0.9-{c['family']}-{var}-t2.json"]
        assert unit["points"] == scoped["points"]
    assert all(r["hp_ema_update"] == "before" and r["hp_warmup_frac"] == 0.2 for r in test)
    assert all(r["hold_steps"] == 8 for r in test)  # floor(0.2 * 40)
    report = (out / "report.md").read_text()
    assert "## Selection" in report and "## Regime of the adaptive runs" in report
    assert (out / "windows.csv").is_file() and (out / "figures" / "fig8_regime.png").is_file()


def test_a_selection_scope_keeps_the_run_targets_around_the_primary_target() -> None:
    import dataclasses

    raw = _sel_config()
    raw["calibrate"] = {"frontier": 1.41}
    raw["family"][0]["target_l0"] = [2.0, 4.0, 8.0]
    raw["family"].append({"name": "k", "arch": "topk", "target_l0": [2.0, 4.0, 8.0]})
    raw["family"].append({"name": "t", "arch": "relu_l1", "target_l0": [2.0, 4.0, 8.0],
                          "calibrate_range": [1e-3, 1e-1], "sweep": {"init": ["tied"]}})
    raw["selection"]["target_l0"] = 4.0
    grid = load_config(raw)
    aen, topk, tied_only = grid.families
    # a family running no variant with the selection's init: its own init is primary
    assert grid.targets(tied_only, {"init": "tied"}) == (2.0, 4.0, 8.0)
    assert len(grid.run_targets(aen)) == 4 and grid.run_targets(topk) == (2.0, 4.0, 8.0)
    scoped = dataclasses.replace(grid, scope=4.0)
    lo, hi = scoped.run_targets(aen)
    # merged points: sqrt(2 x 1.41 x 4 / 1.41) = sqrt(8) and sqrt(4 x 1.41 x 8 / 1.41)
    assert lo == pytest.approx(math.sqrt(8), rel=1e-6)
    assert hi == pytest.approx(math.sqrt(32), rel=1e-6)
    assert scoped.run_targets(topk) == (4.0,)
    assert scoped.config_hash() == grid.config_hash()  # where the runs stop is not a result


def test_ablation_targets_restrict_the_other_init_only() -> None:
    raw = _sel_config(ablation_targets=[4.0])
    raw["calibrate"] = {"frontier": 1.41}
    raw["family"][0]["target_l0"] = [2.0, 4.0, 8.0]
    raw["family"][0]["sweep"] = {"init": ["independent", "tied"]}
    raw["family"].append({"name": "k", "arch": "topk", "target_l0": [2.0, 4.0, 8.0],
                          "sweep": {"init": ["independent", "tied"]}})
    raw["family"].append({"name": "t", "arch": "relu_l1", "target_l0": [2.0, 4.0, 8.0],
                          "calibrate_range": [1e-3, 1e-1], "sweep": {"init": ["tied"]}})
    raw["selection"]["target_l0"] = 4.0
    grid = load_config(raw)
    aen, topk, tied_only = grid.families
    # a family running no variant with the selection's init: its own init is primary
    assert grid.targets(tied_only, {"init": "tied"}) == (2.0, 4.0, 8.0)
    ind, tied = {"init": "independent"}, {"init": "tied"}
    assert len(grid.run_targets(aen, ind)) == 4
    assert grid.run_targets(aen, tied) == pytest.approx((4 / 1.41, 4 * 1.41), rel=1e-6)
    assert grid.run_targets(topk, ind) == (2.0, 4.0, 8.0)
    assert grid.run_targets(topk, tied) == (4.0,)
    assert grid.targets(aen, tied) == (4.0,) and grid.targets(aen, ind) == (2.0, 4.0, 8.0)
    pen = {(f.name, v, 0.0): {t: 0.01 for t in grid.run_targets(f, h)}
           for f, h, v in grid.calibration_jobs()}
    runs = grid.runs(pen, seeds=[1])
    count = {i: sum(r.hyper["init"] == i and r.family == "a" for r in runs)
             for i in ("independent", "tied")}
    assert count == {"independent": 4, "tied": 2}
    # absent, the key is left out of the config (older configs keep their hash)
    assert "ablation_targets" not in load_config(_sel_config()).to_dict()["selection"]


def test_calibration_seeds_only_from_the_selection_unit(tmp_path) -> None:
    """The chosen variant's calibration over every target starts from its scoped
    selection unit alone, never from a unit of another config (a tied unit written
    before ``ablation_targets``), so a resumed run gives what a fresh one gives."""
    import dataclasses
    import json

    from aensae.experiments.calibration import new_state
    from aensae.experiments.spiked import calibrate

    def grid_of(**sel):
        raw = _sel_config(**sel)
        raw["calibrate"] = {"frontier": 1.41, "steps": 200}
        raw["train"] = {"steps": 200}
        raw["family"][0]["target_l0"] = [2.0, 4.0, 8.0]
        raw["family"][0]["sweep"] = {"init": ["independent", "tied"]}
        raw["selection"]["target_l0"] = 4.0
        raw["selection"]["init"] = "independent"
        return load_config(raw)

    def save(path, grid, fam, hyper, points):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"hash": calibrate._identity(grid, 0.0, fam, hyper),
                                    "record": {"targets": list(grid.run_targets(fam, hyper)),
                                               "points": points}}))

    before, after = grid_of(), grid_of(ablation_targets=[4.0])
    jobs = {h["init"]: (f, h, v) for f, h, v in after.calibration_jobs()}
    fam, tied, tv = jobs["tied"]
    save(calibrate.calibration_path(tmp_path, 0.0, fam.name, tv), before, fam, tied,
         [[0.002, 9.0], [0.01, 3.5]])
    state = new_state((1e-3, 1e-1), list(after.run_targets(fam, tied)))
    assert calibrate._seed_points(after, tmp_path, 0.0, fam, tied, tv, state) == []
    assert state["points"] == []
    # the independent unit starts from the scoped one (scope 4 = the selection's target)
    fam, ind, iv = jobs["independent"]
    scoped = calibrate.calibration_path(tmp_path, 0.0, fam.name, iv, 4.0)
    save(scoped, dataclasses.replace(after, scope=4.0), fam, ind, [[0.01, 3.5], [0.02, 2.1]])
    state = new_state((1e-3, 1e-1), list(after.run_targets(fam, ind)))
    used = calibrate._seed_points(after, tmp_path, 0.0, fam, ind, iv, state)
    assert used == [scoped.name] and state["points"] == [[0.01, 3.5], [0.02, 2.1]]
    # a scoped unit of other data (n = 9) is another calibration
    other = dataclasses.replace(after, data={**after.data, "n": 9})
    state = new_state((1e-3, 1e-1), list(other.run_targets(fam, ind)))
    assert calibrate._seed_points(other, tmp_path, 0.0, fam, ind, iv, state) == []


def _llm(fam: str, arch: str, seed: int, l0: float, dead: float, ce: float, kl: float,
         trend: float = 0.0, pinned: float | None = None) -> dict:
    """An LLM grid row: no rho."""
    r = {"kind": "sae", "family": fam, "arch": arch, "seed": seed, "init": "independent",
         "l0": l0, "target_l0": l0, "dead_final": dead, "ce_loss_score": ce,
         "kl_spliced": kl, "dead_trend": trend}
    if pinned is not None:
        r["regime_w_max_frac_final"] = pinned
    return r


def test_llm_cells_against_a_hand_computation() -> None:
    from aensae.experiments.llm.verdicts import (
        pinned_runs,
        start_set_runs,
        verdict_cells,
        verdict_targets,
    )

    # aen: each seed s has runs at L0 20 and 50 with dead 0.10 + s/100 and 0.04 + s/100;
    # at L0 32 the interpolation weight is w = ln(32/20) / ln(50/20)
    w = math.log(32 / 20) / math.log(50 / 20)
    rows = []
    for s in (0, 1, 2):
        rows += [_llm("aen", "aen", s, 20.0, 0.10 + s / 100, 0.90, 0.50, pinned=0.2),
                 _llm("aen", "aen", s, 50.0, 0.04 + s / 100, 0.96, 0.20, pinned=0.7),
                 _llm("topk", "topk", s, 32.0, 0.30 + s / 1000, 0.95, 0.30),
                 _llm("relu_l1", "relu_l1", s, 25.0, 0.02, 0.90, 0.40)]
    # relu_l1 only on one side of 32 for every seed: no value, the cells are undecided
    cells = verdict_cells(rows, [32.0])
    by = {(c["metric"], c["base"]): c for c in cells}
    dead = by[("dead_final", "topk")]
    aen_at = [0.10 + s / 100 + w * (0.04 - 0.10) for s in (0, 1, 2)]
    assert dead["a"] == pytest.approx(aen_at, rel=1e-12)
    assert dead["b"] == pytest.approx([0.30, 0.301, 0.302])
    assert dead["d"] == pytest.approx([0.30 + s / 1000 - a
                                       for s, a in zip((0, 1, 2), aen_at, strict=True)])
    assert dead["outcome"] == "better"
    kl = by[("kl_spliced", "topk")]  # 0.5 + w * (0.2 - 0.5) = 0.347 > 0.30, by 0.047
    assert kl["a"] == pytest.approx([0.5 - 0.3 * w] * 3)
    assert kl["outcome"] == "worse"
    ce = by[("ce_loss_score", "topk")]  # 0.90 + 0.06 w = 0.931 against 0.95: worse
    assert ce["outcome"] == "worse"
    assert by[("dead_final", "relu_l1")]["outcome"] == "undecided (0 seeds)"
    # a run that still moves makes its cell not converged
    moving = [dict(r, dead_trend=0.05) if r["family"] == "topk" and r["seed"] == 1 else r
              for r in rows]
    assert {c["outcome"] for c in verdict_cells(moving, [32.0])
            if c["base"] == "topk"} == {"not converged"}
    assert pinned_runs(rows, "aen", "independent") == (3, 6)
    # the LLM table's regime columns carry the "regime_" prefix: 0.999^2000 = 0.1352 is
    # more than half of 0.235 (seed 0) and less than half of 0.30 (the others)
    for r in rows:
        if r["family"] == "aen":
            r.update(hp_beta=0.999, steps=2000.0,
                     regime_ema_q95_final=0.235 if r["seed"] == 0 else 0.30)
    assert 0.999 ** 2000 / 0.235 > 0.5 > 0.999 ** 2000 / 0.30
    assert start_set_runs(rows, "aen", "independent") == (2, 6)
    assert verdict_targets(rows, {"family": [{"target_l0": [32.0]}, {"target_l0": [8]}]}) \
        == [8.0, 32.0]


def test_ema_start_share_is_the_residue_of_the_start_over_the_active_ema() -> None:
    # the start 1 decays to beta^T: with beta 0.9999 after 30,000 steps that is
    # exp(30000 ln 0.9999) = 0.04979; an active latents' EMA of 0.0672 is 74 % of it
    row = {"hp_beta": 0.9999, "steps": 30000, "ema_q50_final": 0.0557, "ema_q95_final": 0.0672}
    assert ema_start_share(row) == pytest.approx(math.exp(30000 * math.log(0.9999)) / 0.0672)
    assert ema_start_share(row) == pytest.approx(0.7408, abs=1e-4)
    # beta 0.999 after 10,000 steps leaves 4.5e-5: nothing, though the median latent is dead
    fast = {"hp_beta": 0.999, "steps": 10000, "ema_q50_final": 4.5e-5, "ema_q95_final": 0.02}
    assert ema_start_share(fast) == pytest.approx(0.999 ** 10000 / 0.02)
    no_ema = {"hp_beta": math.nan, "steps": 30000, "ema_q95_final": math.nan}  # as read
    assert math.isnan(ema_start_share(no_ema))
    assert ema_start_count([row, fast, no_ema]) == (1, 2)
