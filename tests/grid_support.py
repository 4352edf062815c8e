"""A micro grid config shared by the tests of bad input (test_hardening, test_cli_fuzz)."""

from __future__ import annotations

from pathlib import Path

MICRO = """\
[experiment]
name = "{name}"
threads = {threads}
device = "cpu"
[data]
n = 4
m = 8
k = 1
rho = [0.0]
[train]
steps = 2
batch_size = 8
dead_window = 16
dead_last = 1
checkpoint_every = 1
progress = false
[eval]
samples = 8
encoder_samples = 2
hoffman_samples = 2
[reference]
ladder = 2
[[family]]
name = "{family}"
arch = "topk"
target_l0 = [1.0]
"""


def micro_config(folder: Path, name: str = "micro", family: str = "topk",
                 threads: int = 1) -> Path:
    """A grid that runs end to end in about a second (two steps, one TopK run)."""
    path = folder / f"{name.replace('/', '_')}.toml"
    path.write_text(MICRO.format(name=name, family=family, threads=threads))
    return path
