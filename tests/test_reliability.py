"""Nothing lost, nothing silently wrong (issue 26, the grid and ``aensae train`` side).

Each test builds the damaged file, the user's file or the competing process itself and
checks the one-line error (exit status 2) or the correct behaviour, and that nothing a
user wrote is removed. The LLM side is tested in tests/llm and tests/experiments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_support import TINY_TRAIN, one_line_error, tree
from grid_support import micro_config
from report_support import SPEED, _rows

from aensae import cli
from aensae._validation import InputError


def final_error(capsys, *needles: str) -> str:
    """stderr ends with one ``aensae ...: error: ...`` line (after the run's own progress
    lines), with every needle, and holds no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("aensae ") and ": error: " in last, err
    assert sum(": error: " in line for line in err.splitlines()) == 1, err
    for needle in needles:
        assert needle in last, (needle, err)
    return last




def _micro_run(tmp_path: Path, capsys, name: str = "micro") -> tuple[Path, Path]:
    out = tmp_path / "res"
    config = micro_config(tmp_path, name=name)
    assert cli.main(["reproduce", "--config", str(config), "--out", str(out),
                     "--no-progress"]) == 0
    capsys.readouterr()
    return out, config


# ----------------------------------------------------------------------------- user files
def test_figure_redraw_keeps_what_a_user_put_in_figures(tmp_path, capsys) -> None:
    from aensae.experiments.results import write_table
    from aensae.experiments.spiked.driver import SPEED_FIRST

    write_table(tmp_path / "results.csv", _rows(aen_dead_hi=0.02, aen_bias=0.97))
    write_table(tmp_path / "speed.csv", SPEED, first=SPEED_FIRST, required=())
    assert cli.main(["figures", str(tmp_path)]) == 0
    (tmp_path / "figures" / "notes.txt").write_text("my annotations")
    (tmp_path / "figures" / "drafts").mkdir()
    (tmp_path / "figures" / "drafts" / "a.png").write_bytes(b"\x89PNG mine")
    fig1 = (tmp_path / "figures" / "fig1_dead_ev_vs_l0.png").read_bytes()
    capsys.readouterr()
    assert cli.main(["figures", str(tmp_path)]) == 0
    assert (tmp_path / "figures" / "notes.txt").read_text() == "my annotations"
    assert (tmp_path / "figures" / "drafts" / "a.png").read_bytes() == b"\x89PNG mine"
    assert (tmp_path / "figures" / "fig1_dead_ev_vs_l0.png").read_bytes() == fig1
    assert not (tmp_path / ".aensae.lock").exists()  # the lock goes with its holder


def test_overwrite_refuses_a_users_folder_below_the_top(tmp_path, capsys) -> None:
    out, _ = _micro_run(tmp_path, capsys)
    mine = out / "runs" / "my-analysis"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (out / "figures" / "extra.csv").write_text("mine too")
    before = tree(out)
    other = micro_config(tmp_path, name="other")
    assert cli.main(["reproduce", "--config", str(other), "--out", str(out), "--no-progress",
                     "--overwrite"]) == 2
    one_line_error(capsys, "did not write", "figures/extra.csv", "runs/my-analysis/")
    assert tree(out) == before  # refused before anything was removed


def test_overwrite_clears_the_grids_own_files_at_every_depth(tmp_path, capsys) -> None:
    out, _ = _micro_run(tmp_path, capsys)
    run = next((out / "runs").iterdir())
    (run / ".metrics.json.a1b2c3d4.tmp").write_text("{")  # a killed write of a known file
    other = micro_config(tmp_path, name="other")
    assert cli.main(["reproduce", "--config", str(other), "--out", str(out), "--no-progress",
                     "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["config_name"] == "other"


# ----------------------------------------------------------------------------- one writer
_HOLD = """
import sys, time
from aensae._io import folder_lock
with folder_lock("--out", sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys) -> None:
    out = tmp_path / "res"
    holder = _holder(out)
    try:
        config = micro_config(tmp_path)
        assert cli.main(["reproduce", "--config", str(config), "--out", str(out),
                         "--no-progress"]) == 2
        one_line_error(capsys, "--out", "in use by another aensae process",
                       f"pid {holder.pid}")
        assert cli.main(["train", "--arch", "relu_l1", "--out", str(out), *TINY_TRAIN]) == 2
        one_line_error(capsys, "in use by another aensae process")
        assert sorted(p.name for p in out.iterdir()) == [".aensae.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # killed outright: its lock file stays, its lock does not; the next run takes it over
    assert (out / ".aensae.lock").exists()
    assert cli.main(["reproduce", "--config", str(micro_config(tmp_path)), "--out", str(out),
                     "--no-progress", "--no-figures"]) == 0
    assert not (out / ".aensae.lock").exists()


def test_two_reproduce_started_together_one_finishes_one_is_refused(tmp_path) -> None:
    """Two real ``aensae reproduce`` processes on one folder: never a traceback."""
    out = tmp_path / "res"
    config = micro_config(tmp_path)
    argv = [sys.executable, "-m", "aensae", "reproduce", "--config", str(config), "--out",
            str(out), "--workers", "1", "--no-progress", "--no-figures"]
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all("Traceback" not in err for _, err in results), results
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        assert any("in use by another aensae process" in err for _, err in results)
    assert (out / "results.csv").is_file()


# ----------------------------------------------------------------------------- damaged files
def test_truncated_metrics_of_a_finished_run_is_one_line(tmp_path, capsys) -> None:
    out, config = _micro_run(tmp_path, capsys)
    metrics = next((out / "runs").glob("topk-*/metrics.json"))
    metrics.write_bytes(metrics.read_bytes()[:40])
    assert cli.main(["reproduce", "--config", str(config), "--out", str(out),
                     "--no-progress"]) == 2
    final_error(capsys, str(metrics), "is damaged", "delete that run folder")


@pytest.mark.parametrize("content", [b"garbage" * 50, b"", None])
def test_garbage_checkpoint_is_one_line(tmp_path, capsys, content) -> None:
    out = tmp_path / "run"
    argv = ["train", "--arch", "relu_l1", "--out", str(out), *TINY_TRAIN]
    assert cli.main([*argv, "--steps", "2"]) == 0  # nothing to resume from: a fresh folder
    capsys.readouterr()
    # a checkpoint of this configuration, then damaged: resume must refuse it in one line
    config = json.loads((out / "metrics.json").read_text())["config"]
    (out / "metrics.json").unlink()
    (out / "checkpoint_config.json").write_text(json.dumps(config))
    if content is None:
        torch.save([1, 2, 3], out / "checkpoint.pt")  # a torch file, not a checkpoint
    else:
        (out / "checkpoint.pt").write_bytes(content)
    assert cli.main([*argv, "--steps", "2"]) == 2
    one_line_error(capsys, "checkpoint", "checkpoint.pt", "damaged")


def test_group_checkpoint_damaged_is_one_line(tmp_path) -> None:
    from aensae.saes import TrainConfig, create, train

    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="checkpoint .*checkpoint.pt is damaged"):
        train({"a": create("relu_l1", 4, 8, seed=0)}, [torch.randn(4, 4) for _ in range(3)],
              TrainConfig(steps=3, checkpoint_every=1), checkpoint_dir=tmp_path)
    torch.save({"step": 1}, tmp_path / "checkpoint.pt")  # readable, but not complete
    with pytest.raises(InputError, match="not a complete aensae checkpoint"):
        train({"a": create("relu_l1", 4, 8, seed=0)}, [torch.randn(4, 4) for _ in range(3)],
              TrainConfig(steps=3, checkpoint_every=1), checkpoint_dir=tmp_path)


@pytest.mark.parametrize("damage", ["nan", "truncated", "shape", "cfg"])
def test_a_damaged_sae_is_refused_on_load(tmp_path, damage) -> None:
    from safetensors.torch import load_file, save_file

    from aensae.saes import create, load, save

    folder = save(create("relu_l1", 4, 8, seed=0), tmp_path / "sae")
    weights = folder / "sae.safetensors"
    tensors = load_file(str(weights))
    if damage == "nan":
        tensors["W_enc"][0, 0] = float("nan")
        save_file(tensors, str(weights))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:50])
    elif damage == "shape":
        tensors["b_enc"] = torch.zeros(3)
        save_file(tensors, str(weights))
    else:
        (folder / "cfg.json").write_text('{"arch": "relu_l1"')
    needle = {"nan": "hold NaN or inf", "truncated": "is damaged", "shape": "does not hold",
              "cfg": "cfg.json is damaged"}[damage]
    with pytest.raises(InputError, match=needle):
        load(folder)


# ----------------------------------------------------------------------------- sizes
def test_a_grid_too_large_for_memory_is_refused_before_any_allocation(tmp_path,
                                                                      capsys) -> None:
    config = micro_config(tmp_path)
    config.write_text(config.read_text().replace("m = 8\n", "m = 10000000\n"))
    t0 = time.perf_counter()
    assert cli.main(["reproduce", "--config", str(config), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 2
    one_line_error(capsys, "config data.m", "GiB", "experiment.max_memory_gb")
    assert time.perf_counter() - t0 < 30  # refused from the config, nothing was built
    assert not (tmp_path / "o").exists()
    config = micro_config(tmp_path, name="samples")
    config.write_text(config.read_text().replace("samples = 8\n", "samples = 1000000000\n"))
    assert cli.main(["reproduce", "--config", str(config), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 2
    one_line_error(capsys, "config eval.samples", "GiB")
    small = micro_config(tmp_path, name="small")
    small.write_text(small.read_text().replace('device = "cpu"\n',
                                               'device = "cpu"\nmax_memory_gb = 1e-6\n'))
    assert cli.main(["reproduce", "--config", str(small), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 2
    one_line_error(capsys, "more than the limit config experiment.max_memory_gb 1e-06")


def test_a_train_too_large_for_memory_is_refused(tmp_path, capsys) -> None:
    argv = ["train", "--arch", "relu_l1", "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli.main([*argv, "--n", "100000", "--m", "1000000"]) == 2
    one_line_error(capsys, "GiB", "--max-memory")
    assert cli.main([*argv, *TINY_TRAIN[:6], "--max-memory", "1e-9"]) == 2
    one_line_error(capsys, "more than the limit --max-memory 1e-09")
    assert cli.main([*argv, "--max-memory", "0"]) == 2
    one_line_error(capsys, "--max-memory")
    assert not (tmp_path / "o").exists()


def test_the_memory_limit_is_not_part_of_the_config_hash(tmp_path) -> None:
    from aensae.experiments.spiked.config import load_config

    text = micro_config(tmp_path).read_text()
    limited = text.replace('device = "cpu"\n', 'device = "cpu"\nmax_memory_gb = 8\n')
    assert limited != text
    assert load_config(_toml(tmp_path, "a", limited)).config_hash() == \
        load_config(_toml(tmp_path, "b", text)).config_hash()


def _toml(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_more_local_workers_than_cores_is_one_line(tmp_path, capsys) -> None:
    from aensae.experiments.threads import available_cores

    config = micro_config(tmp_path)
    assert cli.main(["reproduce", "--config", str(config), "--out", str(tmp_path / "o"),
                     "--no-progress", "--workers", str(available_cores() + 1)]) == 2
    one_line_error(capsys, "--workers must be at most", f"got {available_cores() + 1}")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- Ctrl-C
@pytest.mark.skipif(os.name != "posix", reason="process groups and SIGINT")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG: Linux")
def test_a_killed_driver_takes_its_workers_with_it(tmp_path) -> None:
    """SIGKILL to the driver alone (no handler can run): its worker processes, busy with
    training, exit too instead of going on writing into the output folder."""
    config = micro_config(tmp_path)
    config.write_text(config.read_text().replace("steps = 2\n", "steps = 40000\n"))
    argv = [sys.executable, "-m", "aensae", "reproduce", "--config", str(config), "--out",
            str(tmp_path / "o"), "--workers", "2", "--no-progress", "--no-figures"]
    proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(workers) < 2:
        out = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "spawn_main"],
                             capture_output=True, text=True).stdout.split()
        workers = out
        time.sleep(0.2)
    assert len(workers) == 2, "the workers did not start"
    time.sleep(2.0)  # past their start-up: training
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for _ in range(100):
        alive = [w for w in workers if subprocess.run(["kill", "-0", w],
                                                       capture_output=True).returncode == 0]
        if not alive:
            break
        time.sleep(0.1)
    assert alive == [], f"workers {alive} outlived their driver"


def test_ctrl_c_while_workers_start_is_one_line_and_stops_them(tmp_path) -> None:
    """SIGINT to the whole process group (what a terminal sends) while the worker
    processes are being spawned: one line from the driver, exit 130, no worker traceback,
    and no worker left running."""
    config = micro_config(tmp_path)
    config.write_text(config.read_text().replace("steps = 2\n", "steps = 4000\n"))
    argv = [sys.executable, "-m", "aensae", "reproduce", "--config", str(config), "--out",
            str(tmp_path / "o"), "--workers", "2", "--no-progress", "--no-figures"]
    # SIGINT as a terminal's driver gets it: a harness started in the background (a
    # non-interactive shell's `cmd &`) hands its children SIGINT ignored, and Python keeps
    # an inherited SIG_IGN
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if line.startswith("workers:") or not line:
            break
    while time.monotonic() < deadline:  # the first spawned child: workers are starting up
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        if children or proc.poll() is not None:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    err = "".join(lines) + proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted"), err
    for _ in range(100):  # the terminated workers (and multiprocessing's helper) are gone
        left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
        if not left.stdout.strip():
            break
        time.sleep(0.1)
    assert left.stdout.strip() == "", left.stdout
