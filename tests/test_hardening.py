"""Issue 15: every bad input is one line and status 2 before any work; outputs are all or
nothing; names stay inside the output folder; the named configs ship with the package.

Each test names the finding it covers; the command line runs in-process
(``aensae.cli.main``) on tiny sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import TINY_TRAIN, one_line_error, tree
from grid_support import micro_config

from aensae import cli
from aensae.experiments.spiked.config import load_config

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")




@pytest.fixture()
def count_steps(monkeypatch):
    """Counts training steps (any trainer call in this process)."""
    from aensae.saes.training import trainer

    calls = []
    original = trainer._Run.step_all

    def counted(self, X):
        calls.append(self.step)
        return original(self, X)

    monkeypatch.setattr(trainer._Run, "step_all", counted)
    return calls


# ----------------------------------------------------------------------------- tracebacks
@NO_CUDA
def test_train_device_cuda_without_cuda_is_one_line(tmp_path, capsys, count_steps) -> None:
    out = tmp_path / "run"
    assert cli.main(["train", "--arch", "aen", "--device", "cuda", "--out", str(out),
                     *TINY_TRAIN]) == 2
    one_line_error(capsys, "aensae train: error: --device", "'cuda' is not available")
    assert count_steps == [] and not out.exists()


@NO_CUDA
def test_reproduce_device_cuda_without_cuda_is_one_line(tmp_path, capsys, count_steps) -> None:
    out = tmp_path / "res"
    assert cli.main(["reproduce", "--config", str(micro_config(tmp_path)), "--device", "cuda",
                     "--out", str(out), "--no-progress"]) == 2
    one_line_error(capsys, "aensae reproduce: error: --device", "not available")
    assert count_steps == [] and not out.exists()  # no manifest left to lock the folder
    path = micro_config(tmp_path, name="gpu")
    path.write_text(path.read_text().replace('device = "cpu"', 'device = "cuda:0"'))
    assert cli.main(["reproduce", "--config", str(path), "--out", str(out)]) == 2
    one_line_error(capsys, "experiment.device", "not available")
    assert not out.exists()


def test_geometry_without_rho_or_sae_is_one_line(capsys) -> None:
    assert cli.main(["geometry", "--samples", "4"]) == 2
    one_line_error(capsys, "aensae geometry: error:", "--rho", "--sae")


def test_geometry_rho_one_is_one_line(capsys) -> None:
    assert cli.main(["geometry", "--rho", "1.0", "--samples", "4", "--n", "4", "--m",
                     "8", "--k", "1"]) == 2
    one_line_error(capsys, "--rho must lie in [0, 1), got 1.0")


def test_geometry_sae_folder_missing_is_one_line(tmp_path, capsys) -> None:
    assert cli.main(["geometry", "--sae", str(tmp_path / "nope"), "--samples", "4"]) == 2
    one_line_error(capsys, "--sae", "no such folder")


def test_bench_train_models_zero_is_one_line(capsys) -> None:
    assert cli.main(["bench", "train", "--models", "0", "--n", "4", "--m", "8", "--k", "1"]) == 2
    one_line_error(capsys, "aensae bench train: error: --models must lie in [1, inf], got 0")


def test_bench_solvers_rho_above_one_is_one_line(capsys) -> None:
    assert cli.main(["bench", "solvers", "--rho", "1.5"]) == 2
    one_line_error(capsys, "aensae bench solvers: error: --rho must lie in [0, 1), got 1.5")


def test_unexpected_errors_keep_their_traceback(monkeypatch) -> None:
    from aensae.experiments.spiked import geometry as geometry_cmd

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(geometry_cmd, "run_geometry", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["geometry", "--rho", "0.5", "--samples", "4"])


# ----------------------------------------------------------------------------- late checks
@pytest.mark.parametrize("case", ["file", "under_file", "empty", "unwritable"])
def test_train_bad_out_fails_before_the_first_step(case, tmp_path, capsys, count_steps,
                                                   monkeypatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = {"file": str(afile), "under_file": str(afile / "run"), "empty": "",
           "unwritable": str(tmp_path / "ro" / "run")}[case]
    if case == "unwritable":
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        if os.access(tmp_path / "ro", os.W_OK):  # root ignores modes: simulate the refusal
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: False
                                if Path(p) == tmp_path / "ro" else real(p, mode, **kw))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = tree(tmp_path)
    assert cli.main(["train", "--arch", "relu_l1", "--checkpoint-every", "0", "--out", out,
                     *TINY_TRAIN]) == 2
    needle = {"file": "is a file", "under_file": "which is a file", "empty": "empty string",
              "unwritable": "not writable"}[case]
    one_line_error(capsys, "aensae train: error: --out", needle)
    assert count_steps == []  # no training step ran
    assert tree(tmp_path) == before  # nothing written (--out "" no longer means ".")


def test_check_output_dir_creates_nothing(tmp_path) -> None:
    from aensae._io import check_output_dir

    target = tmp_path / "a" / "b"
    assert check_output_dir("--out", target) == target
    assert not (tmp_path / "a").exists()


def test_train_set_is_replaced_together_or_not_at_all(tmp_path, monkeypatch, capsys) -> None:
    from aensae import saes
    from aensae.experiments.spiked.train_run import OUTPUT_FILES

    out = tmp_path / "run"
    assert cli.main(["train", "--arch", "relu_l1", "--out", str(out), *TINY_TRAIN]) == 0
    before = tree(out)
    assert sorted(before) == sorted(OUTPUT_FILES)
    real_save = saes.save

    def save_then_fail(model, folder):
        real_save(model, folder)
        raise OSError("disk full")

    monkeypatch.setattr(saes, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        cli.main(["train", "--arch", "relu_l1", "--seed", "1", "--overwrite", "--out",
                  str(out), *TINY_TRAIN])
    # the old model, cfg.json and metrics.json, byte-identical (the new run's checkpoint
    # stays beside them: its progress is not lost)
    assert {k: v for k, v in tree(out).items() if k in OUTPUT_FILES} == before
    assert not any(p.name.startswith(".aensae-stage") for p in out.iterdir())


def test_replace_together_swaps_a_set_or_keeps_the_old_one(tmp_path) -> None:
    from aensae._io import replace_together

    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "a.png").write_bytes(b"old")
    (tmp_path / "report.md").write_text("old")
    before = tree(tmp_path)
    with pytest.raises(ZeroDivisionError), replace_together(tmp_path, ["figs", "report.md"]) \
            as stage:
        (stage / "figs").mkdir()
        (stage / "figs" / "a.png").write_bytes(b"new")
        raise ZeroDivisionError
    assert tree(tmp_path) == before
    with pytest.raises(RuntimeError, match="report.md not written"), \
            replace_together(tmp_path, ["figs", "report.md"]) as stage:
        (stage / "figs").mkdir()
    assert tree(tmp_path) == before
    with replace_together(tmp_path, ["figs", "report.md"]) as stage:
        (stage / "figs").mkdir()
        (stage / "figs" / "b.png").write_bytes(b"new")
        (stage / "report.md").write_text("new")
    assert tree(tmp_path) == {"figs": None, "figs/b.png": b"new", "report.md": b"new"}


# ----------------------------------------------------------------------------- locked folders
def test_folder_with_only_a_manifest_says_how_to_proceed(tmp_path, capsys) -> None:
    out = tmp_path / "res"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"config_hash": "0123456789",
                                                 "config_name": "other"}))
    argv = ["reproduce", "--config", str(micro_config(tmp_path)), "--out", str(out),
            "--no-progress", "--no-figures"]
    assert cli.main(argv) == 2
    one_line_error(capsys, "holds only the manifest of another config", "--overwrite",
                   "another --out")
    assert cli.main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert (out / "results.csv").is_file()
    assert json.loads((out / "config.json").read_text())["config_name"] == "micro"


def test_reproduce_overwrite_replaces_another_configs_results(tmp_path, capsys) -> None:
    out = tmp_path / "res"
    first = micro_config(tmp_path)
    assert cli.main(["reproduce", "--config", str(first), "--out", str(out),
                     "--no-progress", "--no-figures"]) == 0
    capsys.readouterr()
    other = micro_config(tmp_path, name="other")
    argv = ["reproduce", "--config", str(other), "--out", str(out), "--no-progress",
            "--no-figures"]
    assert cli.main(argv) == 2
    one_line_error(capsys, "holds results of another config", "--overwrite")
    (out / "notes.txt").write_text("mine")  # a file aensae did not write
    before = tree(out)
    assert cli.main([*argv, "--overwrite"]) == 2
    one_line_error(capsys, "did not write (notes.txt)")
    assert tree(out) == before  # refused: nothing removed
    (out / "notes.txt").unlink()
    (out / ".notes.txt.a1b2c3d4.tmp").write_text("x")  # a temporary file of a foreign name
    assert cli.main([*argv, "--overwrite"]) == 2
    one_line_error(capsys, "did not write (.notes.txt.a1b2c3d4.tmp)")
    (out / ".notes.txt.a1b2c3d4.tmp").unlink()
    # what a killed reproduce leaves at the top: an unfinished table write, a staging folder
    (out / ".results.csv.a1b2c3d4.tmp").write_text("run_id,kind\n")
    (out / ".aensae-stage-a1b2c3d4" / "figures").mkdir(parents=True)
    assert cli.main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert json.loads((out / "config.json").read_text())["config_name"] == "other"
    assert {p.name for p in out.iterdir()} == {"config.json", "runs", "results.csv",
                                                 "windows.csv"}
    old_runs = {p.name for p in (out / "runs").iterdir()}
    table = (out / "results.csv").read_text()
    assert all(name.split("-")[-1] in table for name in old_runs)  # the new config's only


# ----------------------------------------------------------------------------- figures
@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """A results folder with figures and report drawn from the hand-built table."""
    from report_support import SPEED, _rows

    from aensae.experiments.results import write_table
    from aensae.experiments.spiked.driver import SPEED_FIRST

    folder = tmp_path_factory.mktemp("drawn")
    write_table(folder / "results.csv", _rows(aen_dead_hi=0.02, aen_bias=0.97))
    write_table(folder / "speed.csv", SPEED, first=SPEED_FIRST, required=())
    assert cli.main(["figures", str(folder)]) == 0
    return folder


def _copy(drawn: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "res"
    shutil.copytree(drawn, folder)
    return folder


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "line"),
    ("drop_column", "missing column(s) explained_variance"),
    ("no_rows", "no rows"),
    ("bad_type", "l0 must be a number or empty, got 'abc'"),
    ("empty", "is empty"),
])
def test_figures_from_a_damaged_table_leave_old_outputs_identical(drawn, tmp_path, capsys,
                                                                  damage, needle) -> None:
    folder = _copy(drawn, tmp_path)
    table = folder / "results.csv"
    lines = table.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    if damage == "truncate":  # a copy cut off in the middle of a row
        text = "".join(lines)
        table.write_text(text[: len(text) * 2 // 3])
    elif damage == "drop_column":
        i = header.index("explained_variance")
        table.write_text("".join(",".join(c for j, c in enumerate(line.rstrip("\n").split(","))
                                          if j != i) + "\n" for line in lines))
    elif damage == "no_rows":
        table.write_text(lines[0])
    elif damage == "bad_type":
        i = header.index("l0")
        cells = lines[1].rstrip("\n").split(",")
        cells[i] = "abc"
        table.write_text(lines[0] + ",".join(cells) + "\n" + "".join(lines[2:]))
    else:
        table.write_text("")
    before = tree(folder)
    assert cli.main(["figures", str(folder)]) == 2
    one_line_error(capsys, "aensae figures: error: results table", needle)
    assert tree(folder) == before


def test_figures_failing_part_way_leave_old_outputs_identical(drawn, tmp_path,
                                                              monkeypatch) -> None:
    from report_support import _rows

    from aensae.experiments.results import write_table
    from aensae.experiments.spiked import figures

    folder = _copy(drawn, tmp_path)
    write_table(folder / "results.csv", _rows(aen_dead_hi=0.6, aen_bias=0.5))  # new numbers
    before = tree(folder)
    name = figures.FIGURES[4]  # figures 1-4 are drawn (differently) before this one fails

    def fail(fig, rows, speed):
        raise RuntimeError("drawing failed")

    monkeypatch.setitem(figures._DRAW, name, (fail, figures._DRAW[name][1]))
    with pytest.raises(RuntimeError, match="drawing failed"):
        cli.main(["figures", str(folder)])
    assert tree(folder) == before


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize("name, family, key", [
    ("../../escape", "topk", "experiment.name"),
    ("ok", "../evil/topk", "name"),
    (".hidden", "topk", "experiment.name"),
    ("ok", "a/b", "name"),
])
def test_names_that_leave_the_output_folder_are_rejected(tmp_path, capsys, monkeypatch,
                                                         name, family, key) -> None:
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    config = micro_config(tmp_path, name=name, family=family)
    before = tree(tmp_path)
    monkeypatch.chdir(cwd)  # results/<name> would resolve to tmp_path/escape
    assert cli.main(["reproduce", "--config", str(config), "--no-progress"]) == 2
    line = one_line_error(capsys, key, "a letter or digit, then letters, digits")
    assert repr(name if key == "experiment.name" else family) in line
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------- packaging
def test_named_configs_are_package_data(tmp_path, monkeypatch) -> None:
    import importlib.resources

    data = importlib.resources.files("aensae") / "configs"
    assert {p.name for p in data.iterdir() if p.name.endswith(".toml")} >= \
        {"claims.toml", "paper.toml", "quick.toml", "tiny.toml"}
    monkeypatch.chdir(tmp_path)  # outside the checkout
    assert load_config("tiny").name == "tiny"


@pytest.mark.slow
def test_wheel_ships_the_named_configs(tmp_path) -> None:
    """The built wheel holds the configs (CI also installs it and runs the tiny grid)."""
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a copy: the build leaves build/ and *.egg-info beside it
    shutil.copytree(root / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
                          capture_output=True, text=True, cwd=tmp_path)
    if proc.returncode != 0:
        pytest.skip(f"no wheel build here: {proc.stderr.strip()[-200:]}")
    wheel, = tmp_path.glob("aensae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("paper", "quick", "tiny"):
        assert f"aensae/configs/{name}.toml" in names


# ----------------------------------------------------------------------------- smaller ones
def test_threads_beyond_the_cores_are_rejected_before_work(tmp_path, capsys,
                                                           count_steps) -> None:
    config = micro_config(tmp_path, threads=100000)
    assert cli.main(["reproduce", "--config", str(config), "--out",
                     str(tmp_path / "res")]) == 2
    one_line_error(capsys, "experiment.threads", f"[1, {os.cpu_count()}]", "100000")
    assert count_steps == [] and not (tmp_path / "res").exists()
    assert cli.main(["bench", "train", "--threads", "100000", "--n", "4", "--m", "8",
                     "--k", "1"]) == 2
    one_line_error(capsys, "--threads")


@pytest.mark.parametrize("flag, value, needle", [
    ("--eval-samples", "0", "--eval-samples must lie in [2, inf], got 0"),
    ("--n", "0", "--n must lie in [2, inf], got 0"),
    ("--steps", "0", "--steps must lie in [1, inf], got 0"),
    ("--k", "9", "--k must lie in [1, 8], got 9"),
])
def test_train_errors_name_the_option(tmp_path, capsys, count_steps, flag, value,
                                      needle) -> None:
    argv = ["train", "--arch", "relu_l1", "--out", str(tmp_path / "r"), *TINY_TRAIN]
    i = argv.index(flag) if flag in argv else None
    if i is None:
        argv += [flag, value]
    else:
        argv[i + 1] = value
    assert cli.main(argv) == 2
    one_line_error(capsys, needle)
    assert count_steps == []


def test_solve_negative_lam1_says_open_interval() -> None:
    from aensae.solvers import solve

    D, X = np.eye(3), np.ones((1, 3))
    for lam1, got in ((-1.0, "-1.0"), (0.0, "0.0")):
        with pytest.raises(ValueError, match=rf"lam1 must lie in \(0, inf\), got {got}"):
            solve(D, X, lam1, 0.1)


def test_bench_train_steps_zero_is_rejected(capsys) -> None:
    assert cli.main(["bench", "train", "--steps", "0", "--n", "4", "--m", "8", "--k", "1"]) == 2
    one_line_error(capsys, "--steps must lie in [1, inf], got 0")
    assert capsys.readouterr().out == ""  # no timings printed


def test_config_without_data_table_is_an_error(tmp_path, capsys) -> None:
    path = micro_config(tmp_path)
    text = path.read_text()
    start, end = text.index("[data]"), text.index("[train]")
    path.write_text(text[:start] + text[end:])
    from aensae._validation import InputError

    with pytest.raises(InputError, match=r"\[data\]: the table is required"):
        load_config(path)
    assert cli.main(["reproduce", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "[data]")


def test_non_utf8_config_names_the_file(tmp_path, capsys) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(micro_config(tmp_path).read_bytes() + "# caf\xe9\n".encode("latin-1"))
    assert cli.main(["reproduce", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, str(path), "not UTF-8")


def test_missing_config_file_is_one_line(tmp_path, capsys) -> None:
    assert cli.main(["reproduce", "--config", str(tmp_path / "nope.toml")]) == 2
    one_line_error(capsys, "--config", "file not found")


def test_train_refuses_a_checkpoint_of_another_configuration(tmp_path, capsys,
                                                             monkeypatch) -> None:
    """A half-finished run of another --rho would have resumed on the wrong data stream."""
    from aensae.saes.training import trainer

    out = tmp_path / "run"
    argv = ["train", "--arch", "relu_l1", "--checkpoint-every", "1", "--out", str(out),
            *TINY_TRAIN]
    original = trainer._Run.step_all

    def interrupted(self, X):
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self, X)

    monkeypatch.setattr(trainer._Run, "step_all", interrupted)
    assert cli.main(argv) == 130
    monkeypatch.setattr(trainer._Run, "step_all", original)
    capsys.readouterr()
    assert (out / "checkpoint.pt").is_file()
    assert cli.main([*argv, "--rho", "0.5"]) == 2
    one_line_error(capsys, "holds a checkpoint of another", "--overwrite")
    assert cli.main(argv) == 0  # the same configuration resumes
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "metrics.json",
                                                     "sae.safetensors"]


def test_grid_k_top_above_the_latents_is_a_config_error(tmp_path) -> None:
    """Found while hardening: the model refused it only when built, after the exact
    reference had been computed."""
    from aensae._validation import InputError

    cfg = {"data": {"n": 4, "m": 8, "k": 1},
           "family": [{"name": "t", "arch": "topk", "hyper": {"k_top": 9}}]}
    with pytest.raises(InputError, match=r"family 't'.k_top: must be <= the latents d_sae=8"):
        load_config(cfg)
