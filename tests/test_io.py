"""Atomic writes: an interrupted write leaves the destination as it was and no debris."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from aensae._io import atomic_write, atomic_write_json, atomic_write_text


def test_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old\n")

    def half_then_interrupt(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write('{"half": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_interrupt)
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_json_with_numpy_values_and_usual_mode(tmp_path):
    path = tmp_path / "sub" / "r.json"
    atomic_write_json(path, {"b": np.float64(0.5), "a": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": [0, 1, 2], "b": 0.5}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')  # sorted keys
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_a_killed_writers_debris_is_removed_and_nothing_else(tmp_path):
    """SIGKILL during an atomic write leaves its temporary file (no handler runs); the
    cleanup takes it, a dead staging folder and, by name, nothing of other writers."""
    import signal
    import subprocess
    import sys

    from aensae._io import remove_partial_files

    path = tmp_path / "metrics.json"
    code = ("import time, sys\n"
            "from aensae._io import atomic_write\n"
            "def slow(tmp):\n"
            "    open(tmp, 'w').write('{\"half\": ')\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(60)\n"
            f"atomic_write({str(path)!r}, slow)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    debris = [p.name for p in tmp_path.iterdir()]
    assert len(debris) == 1 and debris[0].startswith(".metrics.json.")
    assert debris[0].endswith(".tmp") and not path.exists()
    stage = tmp_path / ".aensae-stage-k1ll3d"
    (stage / "figures").mkdir(parents=True)
    keep = [".cfg.json.a1b2c3d4.tmp", ".hidden", "notes.tmp", "metrics.json.tmp",
            "sub/.metrics.json.a1b2c3d4.tmp"]
    for name in keep:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert remove_partial_files(tmp_path, ["metrics.json"]) == 2  # debris + staging folder
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if p.is_file()) == sorted(keep)
    assert remove_partial_files(tmp_path) == 1  # any name: .cfg.json's too, never below
    assert not (tmp_path / ".cfg.json.a1b2c3d4.tmp").exists()
    assert (tmp_path / "sub/.metrics.json.a1b2c3d4.tmp").exists()
    assert remove_partial_files(tmp_path / "absent") == 0
