"""``aensae bench harvest`` runs end to end on the offline tiny model (no timing asserted)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from aensae.cli import main  # noqa: E402


def test_bench_harvest_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "harvest", "--model", "tiny-llama", "--tokens", "256", "--repeats",
                 "2", "--ctx", "32", "--batch-size", "4", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["tokens_kept"] == 256 and res["tokens_forwarded"] == 256
    assert len(res["ratios"]) == 2 and all(r > 0 for r in res["ratios"])
    assert res["config"]["model"] == "tiny-llama" and res["config"]["layer"] == 2
    assert "harvest/bare cost per token" in capsys.readouterr().out
    assert main(["bench", "harvest", "--tokens", "0"]) == 2
