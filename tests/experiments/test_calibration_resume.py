"""A killed calibration unit loses at most the part of one pass since its last checkpoint.

Oracles: an uninterrupted calibration of the same unit (its record, its passes' L0s and
models), and the count of training calls, by hand (none for passes already finished).
"""

from __future__ import annotations

import pytest
import torch

from aensae.experiments.spiked import calibrate as cal
from aensae.experiments.spiked import data as data_module
from aensae.experiments.spiked.config import load_config
from aensae.experiments.spiked.data import data_point
from aensae.saes import load


class _Killed(Exception):
    pass


def _unit(grid):
    fam, hyper, variant = grid.calibration_jobs()[0]  # relu_l1, tied
    return fam, hyper, variant


def test_killed_unit_reads_its_finished_passes_back(tmp_path, monkeypatch) -> None:
    """A unit whose record was never written (killed after its passes) reruns its search
    with every pass read back from the model cache: no training call, the same points."""
    grid = load_config("tiny")
    fam, _, variant = _unit(grid)
    out = tmp_path / "out"
    calls: list[tuple[list[str], object]] = []
    real = data_module.train_models

    def counting(grid_, models, point, steps, ckpt, *, progress):
        calls.append((sorted(models), ckpt))
        return real(grid_, models, point, steps, ckpt, progress=progress)

    monkeypatch.setattr(data_module, "train_models", counting)
    first = cal.calibrate_rho(grid, out, 0.0, only=[(fam.name, variant)])
    assert calls, "the unit trained nothing"
    for _, ckpt in calls:  # every pass checkpointed under groups/, removed once done
        assert ckpt.parent == out / "groups" and ckpt.name.startswith("cal-")
        assert not ckpt.exists()
    cal.calibration_path(out, 0.0, fam.name, variant, grid.scope).unlink()
    calls.clear()
    again = cal.calibrate_rho(grid, out, 0.0, only=[(fam.name, variant)])
    assert calls == []
    assert again[0]["points"] == first[0]["points"]
    assert again[0]["penalties"] == first[0]["penalties"]


def test_killed_pass_resumes_from_its_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    """A pass killed after its checkpoint at step 20 (of 40) resumes there: its L0s and
    cached models equal an uninterrupted pass's, bit for bit."""
    from aensae.saes.training import trainer

    grid = load_config("tiny")
    fam, hyper, _ = _unit(grid)
    jobs = [(fam.arch, {**hyper, fam.sparsity_param: p}) for p in (3e-3, 1e-2)]
    point = data_point(grid, 0.0, 0)
    ref = cal._measure(grid, jobs, point, False, tmp_path / "ref")

    out = tmp_path / "out"
    real_step = trainer._Run.step_all
    steps = [0]

    def killed_at_30(self, X):
        steps[0] += 1
        if steps[0] == 30:
            raise _Killed
        return real_step(self, X)

    monkeypatch.setattr(trainer._Run, "step_all", killed_at_30)
    with pytest.raises(_Killed):
        cal._measure(grid, jobs, point, False, out)
    ckpts = list((out / "groups").glob("cal-*/checkpoint.pt"))
    assert len(ckpts) == 1
    monkeypatch.setattr(trainer._Run, "step_all", real_step)
    steps[0] = 0
    counted = trainer._Run.step_all

    def counting(self, X):
        steps[0] += 1
        return counted(self, X)

    monkeypatch.setattr(trainer._Run, "step_all", counting)
    got = cal._measure(grid, jobs, point, False, out)
    assert steps[0] == 20  # steps 20..39 only
    assert "resuming from its checkpoint" in capsys.readouterr().err
    assert got == ref
    assert not ckpts[0].parent.exists()
    for name in sorted(p.name for p in (tmp_path / "ref" / "models").iterdir()):
        a = load(tmp_path / "ref" / "models" / name)
        b = load(out / "models" / name)
        for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(),
                                    strict=True):
            assert torch.equal(va, vb), k


def test_short_passes_of_a_killed_unit_resume_from_their_final_checkpoints(
        tmp_path, monkeypatch) -> None:
    """Passes shorter than the main runs have no model cache: each keeps its final
    checkpoint until the unit's record is written, so a unit killed before that trains
    no step on its next attempt and ends with the record of an uninterrupted unit; the
    folders are gone afterwards."""
    from importlib import resources

    import tomllib

    from aensae.saes.training import trainer

    raw = tomllib.loads(resources.files("aensae.configs").joinpath("tiny.toml").read_text())
    raw["calibrate"]["steps"] = 20  # of train.steps 40
    grid = load_config(raw)
    fam, _, variant = _unit(grid)
    ref = cal.calibrate_rho(grid, tmp_path / "ref", 0.0, only=[(fam.name, variant)])

    out = tmp_path / "out"
    real_write = cal.atomic_write_json

    def killed_at_the_record(path, obj):
        raise _Killed

    monkeypatch.setattr(cal, "atomic_write_json", killed_at_the_record)
    with pytest.raises(_Killed):
        cal.calibrate_rho(grid, out, 0.0, only=[(fam.name, variant)])
    assert list((out / "groups").glob("cal-*/checkpoint.pt"))
    monkeypatch.setattr(cal, "atomic_write_json", real_write)
    real_step = trainer._Run.step_all
    steps = [0]

    def counting(self, X):
        steps[0] += 1
        return real_step(self, X)

    monkeypatch.setattr(trainer._Run, "step_all", counting)
    again = cal.calibrate_rho(grid, out, 0.0, only=[(fam.name, variant)])
    assert steps[0] == 0
    assert again[0]["points"] == ref[0]["points"]
    assert not list((out / "groups").glob("cal-*"))
