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
