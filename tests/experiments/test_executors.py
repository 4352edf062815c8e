"""Grids on an executor: submitit jobs and Ray tasks give the serial run's table.

The oracle is the serial run (``--executor local --workers 1``) of the same small grid:
every executor must give its ``results.csv`` row for row (timing columns aside), and a
preempted submitit job must give the models of an uninterrupted training, bit for bit.
submitit runs real jobs through its ``LocalExecutor`` (pickles, job folders, logs); Ray
runs on one local instance with 2 CPUs shared by the module's tests.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aensae import cli
from aensae._validation import InputError, check_threads
from aensae.experiments.config import CONFIG_DIR, tomllib
from aensae.experiments.executors import check_engine, resolve_spec
from aensae.experiments.executors.local import SerialExecutor
from aensae.experiments.results import read_table
from aensae.experiments.spiked import driver as runner
from aensae.experiments.spiked.config import load_config


def _mini_raw() -> dict:
    """tiny, cut to one rho and two families: a calibrated one (relu_l1: a calibration
    task, then its group) and one whose k comes from its target (topk: a group that
    needs no calibration). Four tasks with the exact reference."""
    raw = tomllib.loads((CONFIG_DIR / "tiny.toml").read_text(encoding="utf-8"))
    raw["experiment"]["name"] = "mini"
    raw["data"]["rho"] = [0.0]
    fams = {f["name"]: f for f in raw["family"]}
    relu = dict(fams["relu_l1"], target_l0=[2.0])
    relu.pop("sweep")
    raw["family"] = [relu, dict(fams["topk"], target_l0=[2.0])]
    return raw


def _mini(**executor):
    raw = _mini_raw()
    if executor:
        raw["executor"] = executor
    return load_config(raw)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    runner.reproduce(_mini(), out, progress=False, draw=False, workers=1)
    return out


def _same_table(out: Path, ref: Path) -> None:
    """Row for row equality with the reference table, timing columns aside."""
    cols, rows = read_table(out / "results.csv")
    ref_cols, ref_rows = read_table(ref / "results.csv")
    assert cols == ref_cols
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in ref_rows]
    # relu_l1 at the two run targets around L0 2 (tiny's calibrate.frontier), topk at k = 2
    assert sum(r["kind"] == "sae" for r in rows) == 3
    for got, want in zip(rows, ref_rows, strict=True):
        for col, v in want.items():
            if col.endswith("_seconds"):
                continue
            w = got[col]
            if isinstance(v, float) and isinstance(w, float) and math.isnan(v):
                assert math.isnan(w), col
            else:
                assert w == v, (want["run_id"], col, v, w)


# ----------------------------------------------------------------------------- no engine
def test_base_install_never_imports_the_engines() -> None:
    code = ("import sys, aensae, aensae.cli, aensae.experiments.spiked.driver\n"
            "from aensae.experiments.spiked.config import load_config\n"
            "load_config('tiny')\n"
            "try:\n"
            "    aensae.cli.main(['reproduce', '--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('LOADED', sorted(m for m in ('submitit', 'ray') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--executor" in proc.stdout and "--ray-address" in proc.stdout
    assert proc.stdout.strip().endswith("LOADED []")


def test_missing_engine_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(InputError, match=r"--executor ray: the ray package is not "
                                         r"installed; install the cluster extra: pip install "
                                         r"'aensae\[cluster\]'"):
        check_engine(resolve_spec(kind="ray"))
    assert cli.main(["reproduce", "--config", "tiny", "--out", str(tmp_path / "r"),
                     "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "aensae[cluster]" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--executor", "dask"], "--executor: must be one of local, submitit, ray, got 'dask'"),
    (["--ray-address", "auto"],
     "--ray-address applies to --executor ray, not to --executor (default) 'local'"),
    (["--executor", "submitit", "--ray-address", "auto"],
     "--ray-address applies to --executor ray, not to --executor 'submitit'"),
    (["--slurm-partition", "gpu"], "--slurm-partition applies to --executor submitit"),
    (["--gpus", "1"], "--gpus applies to --executor submitit or ray"),
    (["--workers", "-1"], "--workers must be an integer >= 0"),
    (["--executor", "ray", "--gpus", "-0.5"], "--gpus: must be a number >= 0"),
    (["--executor", "submitit", "--gpus", "0.5"], "submitit requests whole GPUs per job"),
    (["--executor", "submitit", "--slurm-time", "0"], "--slurm-time: must be an integer >= 1"),
    (["--executor", "submitit", "--submitit-cluster", "pbs"],
     "--submitit-cluster: must be 'slurm' or 'local'"),
    (["--executor", "ray", "--ray-address", ""], "--ray-address: must be a Ray cluster"),
])
def test_bad_executor_options_are_one_line_errors_before_work(tmp_path, capsys, argv,
                                                              needle) -> None:
    out = tmp_path / "res"
    assert cli.main(["reproduce", "--config", "tiny", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err, err
    assert not out.exists()


def test_submitit_without_slurm_says_how_to_run_here(tmp_path, capsys) -> None:
    pytest.importorskip("submitit")
    import shutil

    if shutil.which("sbatch"):
        pytest.skip("SLURM is installed here")
    assert cli.main(["reproduce", "--config", "tiny", "--out", str(tmp_path / "r"),
                     "--executor", "submitit"]) == 2
    err = capsys.readouterr().err
    assert "sbatch is not on this machine's PATH" in err and "--submitit-cluster local" in err


def test_executor_table_is_checked_and_not_hashed() -> None:
    plain = _mini()
    table = _mini(kind="ray", gpus=0.25, ray_address="auto")
    assert table.config_hash() == plain.config_hash()  # where tasks run changes no result
    spec = resolve_spec(table.executor)
    assert (spec.kind, spec.gpus, spec.ray_address) == ("ray", 0.25, "auto")
    assert resolve_spec(table.executor, kind="ray", gpus=0.5).gpus == 0.5  # CLI wins
    with pytest.raises(InputError, match=r"config executor.ray_address applies to "
                                         r"--executor ray, not to --executor 'submitit'"):
        resolve_spec(table.executor, kind="submitit")
    for bad, needle in [({"kind": "dask"}, "config executor.kind: must be one of"),
                        ({"nodes": 2}, r"config \[executor\]: unknown key\(s\) nodes"),
                        ({"kind": "ray", "gpus": "one"}, "config executor.gpus: must be")]:
        with pytest.raises(InputError, match=needle):
            _mini(**bad)


def test_threads_of_remote_nodes_are_not_held_to_this_machine() -> None:
    big = 64 * (os.cpu_count() or 1)
    assert check_threads("config experiment.threads", big, here=False) == big
    with pytest.raises(InputError, match=r"in \[1, "):
        check_threads("config experiment.threads", big)
    raw = _mini_raw()
    raw["experiment"]["threads"] = big
    assert load_config(raw).experiment["threads"] == big  # a config for a bigger node loads


# ----------------------------------------------------------------------------- submitit
def _running_controllers() -> list[int]:
    """Live children of this process that are submitit local job controllers."""
    found = []
    for pid in _children(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"submitit.local._local" in cmd and state != "Z":
            found.append(pid)
    return found


def test_submitit_local_jobs_equal_the_serial_run(serial_run, tmp_path, capsys) -> None:
    """Real submitit jobs, two at a time; the driver stops after the first group (its
    running jobs are cancelled), a rerun finishes: the serial table, row for row."""
    pytest.importorskip("submitit")
    spec = resolve_spec(kind="submitit", submitit_cluster="local", slurm_time=30)

    class Stop(Exception):
        pass

    def stop(i: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        runner.reproduce(_mini(), tmp_path, progress=False, draw=False, workers=2,
                         executor=spec, on_group=stop)
    assert "workers: 2 submitit job(s) (local) of 1 thread(s)" in capsys.readouterr().err
    if Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").is_file():
        deadline = time.monotonic() + 30
        while _running_controllers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running_controllers(), "the stopped driver left jobs running"
    first = {p: p.read_bytes() for p in tmp_path.glob("runs/*/metrics.json")}
    assert 0 < len(first) < 3  # of two SAE runs and the exact reference
    runner.reproduce(_mini(), tmp_path, progress=False, draw=False, workers=2,
                     executor=spec)
    assert {p: p.read_bytes() for p in first} == first  # finished runs were not redone
    _same_table(tmp_path, serial_run)
    jobs = sorted(p for p in (tmp_path / "jobs").iterdir() if p.name.isdigit())
    finished = 0
    for job in jobs:  # real jobs: the pickled submission, its logs and (done) its result
        names = {p.name for p in job.iterdir()}
        assert any(n.endswith("_submitted.pkl") for n in names), names
        assert any(n.endswith("_log.err") for n in names), names
        finished += any(n.endswith("_result.pkl") for n in names)
    assert finished >= 4  # calibration, topk group, exact reference, relu group


def test_slurm_jobs_ask_for_the_options(tmp_path, monkeypatch) -> None:
    """The sbatch script of a SLURM job array (no SLURM here: stand-in srun and sbatch
    on the PATH, nothing is submitted) carries partition, account, time, GPUs, the task's
    threads as CPUs, and --workers as the array's parallelism."""
    pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string

    from aensae.experiments.executors.submitit import SubmititExecutor

    for tool in ("srun", "sbatch"):
        (tmp_path / tool).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    grid = _mini(kind="submitit", slurm_partition="gpu", slurm_account="lab", gpus=1)
    spec = resolve_spec(grid.executor, slurm_time=90)
    check_engine(spec)  # sbatch found: no error
    ex = SubmititExecutor(spec, workers=8, threads=4, folder=tmp_path / "jobs", name="mini")
    slurm = ex._get_executor()
    text = _make_sbatch_string(command="true", folder=slurm.folder, map_count=20,
                               **slurm.parameters)
    for line in ("--partition=gpu", "--account=lab", "--time=90", "--gpus-per-node=1",
                 "--cpus-per-task=4", "--array=0-19%8", "--job-name=mini",
                 "--signal=USR2@"):
        assert f"#SBATCH {line}" in text, (line, text)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.is_file() else []


def test_preempted_submitit_job_resumes_from_its_checkpoint(tmp_path) -> None:
    """A job signalled as SLURM signals a preemption is requeued and resumes from the
    group checkpoint; its model equals an uninterrupted training's, bit for bit."""
    pytest.importorskip("submitit")
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").is_file():
        pytest.skip("needs /proc to find the job's task process")
    from aensae.experiments.executors.submitit import SubmititExecutor

    raw = _mini_raw()
    raw["family"] = [raw["family"][1]]  # topk: one group, no calibration
    raw["train"].update(steps=1000, checkpoint_every=20)
    grid = load_config(raw)
    specs = grid.runs(runner._no_penalties(grid))

    def plan(out: Path):
        return runner._plan_groups(grid, out, specs, None, False, SerialExecutor())[0]

    ref = tmp_path / "ref"
    runner._call(*plan(ref)[0])  # the uninterrupted training, in this process

    out = tmp_path / "out"
    spec = resolve_spec(kind="submitit", submitit_cluster="local", slurm_time=30)
    ex = SubmititExecutor(spec, workers=1, threads=1, folder=out / "jobs")
    job, = ex.submit(runner._call, plan(out))
    try:
        ckpt = list(out.glob("groups/*/checkpoint.pt"))
        deadline = time.monotonic() + 120
        while not ckpt and time.monotonic() < deadline and not job.done():
            time.sleep(0.01)
            ckpt = list(out.glob("groups/*/checkpoint.pt"))
        assert ckpt, "no group checkpoint appeared"
        task, = _children(int(job.job_id))
        os.kill(task, signal.SIGUSR2)  # what SLURM sends before preempting a job
        assert next(ex.wait([job])) == (0, "group")
    finally:
        ex.close()
    log = (job.stderr() or "") + (job.stdout() or "")
    assert "this job is preempted" in log and "Requeued job" in log, log
    assert "requeued, the task resumes from its checkpoints" in log
    assert "resuming from its checkpoint" in log, log
    rid = specs[0].run_id(grid)
    got, want = out / "runs" / rid, ref / "runs" / rid
    assert (got / "sae.safetensors").read_bytes() == (want / "sae.safetensors").read_bytes()
    m_got = json.loads((got / "metrics.json").read_text())
    m_want = json.loads((want / "metrics.json").read_text())
    assert _untimed(m_got) == _untimed(m_want)


def _untimed(record):
    """A JSON record without its timing fields (``*seconds``), at any depth."""
    if isinstance(record, dict):
        return {k: _untimed(v) for k, v in record.items() if not k.endswith("seconds")}
    if isinstance(record, list):
        return [_untimed(v) for v in record]
    return record


# ----------------------------------------------------------------------------- ray
@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs, and 1 GPU declared (no device is touched:
    the grid trains on the CPU) so that fractional GPU requests are scheduled."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
             object_store_memory=80 * 1024 ** 2, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_tasks_equal_the_serial_run_after_an_interruption(serial_run, tmp_path, capsys,
                                                              local_ray) -> None:
    """Ray tasks with half a GPU each; stopped after the first group (the driver's
    interruption cancels the tasks in flight), rerun by another driver that joins the
    running cluster through its address: the serial table, row for row."""
    grid = _mini(kind="ray", gpus=0.5)  # the [executor] table alone picks Ray

    class Stop(Exception):
        pass

    def stop(i: int) -> None:
        raise Stop

    with pytest.raises(Stop):  # workers 0: as many tasks as the cluster's CPUs hold
        runner.reproduce(grid, tmp_path, progress=False, draw=False, on_group=stop,
                         workers=0)
    assert "workers: 2 Ray task(s) of 1 thread(s)" in capsys.readouterr().err
    assert local_ray.is_initialized()  # a Ray the caller started is left running
    first = {p: p.read_bytes() for p in tmp_path.glob("runs/*/metrics.json")}
    assert 0 < len(first) < 3  # of two SAE runs and the exact reference
    address = local_ray.get_runtime_context().gcs_address
    code = ("import sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from test_executors import _mini\n"
            "from aensae.experiments.spiked import driver as runner\n"
            "from aensae.experiments.executors import resolve_spec\n"
            f"spec = resolve_spec(kind='ray', gpus=0.5, ray_address={address!r})\n"
            f"runner.reproduce(_mini(), {str(tmp_path)!r}, progress=False, draw=False, "
            "workers=0, executor=spec)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "workers: 2 Ray task(s) of 1 thread(s)" in proc.stderr
    assert local_ray.is_initialized() and local_ray.cluster_resources()["CPU"] == 2
    assert {p: p.read_bytes() for p in first} == first  # finished runs were not redone
    _same_table(tmp_path, serial_run)
    assert not list(tmp_path.rglob("*.tmp"))


def test_ray_requests_beyond_the_cluster_are_refused_before_work(tmp_path, local_ray
                                                                 ) -> None:
    raw = _mini_raw()
    raw["experiment"]["threads"] = 3  # more than the 2 CPUs of the local Ray
    with pytest.raises(InputError, match="3 CPUs per task, but the largest node of the Ray "
                                         "cluster has 2"):
        runner.reproduce(load_config(raw), tmp_path / "a", executor=resolve_spec(kind="ray"))
    with pytest.raises(InputError, match=r"--gpus: 2 GPUs per task, but the largest node"):
        runner.reproduce(_mini(), tmp_path / "b", executor=resolve_spec(kind="ray", gpus=2))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert local_ray.is_initialized()
