"""``aensae train`` and ``aensae bench train`` on tiny sizes."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from aensae.cli import train as train_cmd
from aensae.saes import load


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aensae")
    top = parser.add_subparsers(dest="command")
    bench = top.add_parser("bench").add_subparsers(dest="bench")
    train_cmd.register(top, bench)
    return parser


def _run(argv: list[str]) -> int:
    from aensae import cli

    return cli.main(argv)


TINY = ["--n", "12", "--m", "24", "--k", "2", "--steps", "30", "--batch-size", "32",
        "--eval-samples", "256", "--dead-window", "320", "--checkpoint-every", "10",
        "--no-progress"]


def test_cli_registers_with_the_main_parser() -> None:
    from aensae import cli
    from aensae.saes import ARCHITECTURES

    assert "aensae.cli.train" in cli.COMMAND_MODULES
    assert train_cmd.ARCH_CHOICES == tuple(ARCHITECTURES)


def test_parse_set() -> None:
    assert train_cmd.parse_set(["a=1", "b=0.5", "c=1e-3"]) == {"a": 1, "b": 0.5, "c": 1e-3}
    assert isinstance(train_cmd.parse_set(["a=1"])["a"], int)
    with pytest.raises(ValueError, match="--set b: value must be a number, got 'x'"):
        train_cmd.parse_set(["b=x"])


def test_train_writes_model_cfg_and_metrics(tmp_path, capsys) -> None:
    out = tmp_path / "aen"
    argv = ["train", "--arch", "aen", "--rho", "0.5", "--l1", "0.002", "--set",
            "warmup_steps=5", "--set", "ramp_steps=10", "--seed", "3", "--out", str(out), *TINY]
    assert _run(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "metrics.json",
                                                     "sae.safetensors"]
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["seed"] == 3 and "aensae_version" in rec
    assert rec["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # not "auto"
    assert rec["path"] == "separate"
    assert rec["config"]["data"]["rho"] == 0.5
    assert rec["config"]["hyper"]["warmup_steps"] == 5 and rec["config"]["hyper"]["l1"] == 0.002
    assert rec["dead"]["window_samples"] == 320 and len(rec["dead"]["fractions"]) == 3
    final = rec["final"]
    for key in ("l0", "mse", "explained_variance", "explained_variance_centred", "shrinkage",
                "dictionary", "support", "code_bias"):
        assert key in final
    assert "hungarian_mean_cos_deflated" in final["dictionary"]
    model = load(out)
    assert model.arch == "aen" and int(model.step) == 30
    # a finished run is skipped and its record returned unchanged
    before = (out / "metrics.json").read_text()
    assert _run(argv) == 0
    assert (out / "metrics.json").read_text() == before
    assert "skipped" in capsys.readouterr().err


def test_train_resumes_a_half_finished_run(tmp_path, monkeypatch) -> None:
    from aensae.saes.training import trainer

    base = ["train", "--arch", "aen", "--set", "warmup_steps=5", "--out"]
    ref, half = tmp_path / "ref", tmp_path / "half"
    assert _run([*base, str(ref), *TINY]) == 0

    original = trainer._Run.step_all

    def interrupted(self, X):
        if self.step == 23:
            raise KeyboardInterrupt
        return original(self, X)

    monkeypatch.setattr(trainer._Run, "step_all", interrupted)
    assert _run([*base, str(half), *TINY]) == 130  # Ctrl-C: one line, status 130
    assert sorted(p.name for p in half.iterdir()) == ["checkpoint.pt",
                                                      "checkpoint_config.json"]
    monkeypatch.setattr(trainer._Run, "step_all", original)
    # a process killed outright would also leave a checkpoint write and a staging folder
    (half / ".checkpoint.pt.k1ll3d00.tmp").write_bytes(b"half")
    (half / ".aensae-stage-k1ll3d00").mkdir()
    assert _run([*base, str(half), *TINY]) == 0
    assert not (half / "checkpoint.pt").exists()
    assert sorted(p.name for p in half.iterdir()) == ["cfg.json", "metrics.json",
                                                      "sae.safetensors"]
    a, b = load(ref), load(half)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    ra = json.loads((ref / "metrics.json").read_text())
    rb = json.loads((half / "metrics.json").read_text())
    assert ra["final"] == rb["final"] and ra["dead"] == rb["dead"]


def test_unknown_hyperparameter_lists_valid_ones(tmp_path, capsys) -> None:
    assert _run(["train", "--arch", "topk", "--l1", "0.1", "--out", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err
    assert "unknown hyperparameter(s) l1" in err and "k_top" in err
    assert _run(["train", "--arch", "aen", "--set", "bogus=1", "--out", str(tmp_path),
                 *TINY]) == 2
    assert "bogus" in capsys.readouterr().err
    assert _run(["train", "--arch", "aen", "--set", "gamma", "--out", str(tmp_path),
                 *TINY]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_init_choices_match_the_models_and_are_recorded(tmp_path, capsys) -> None:
    from aensae.saes.base import INIT_CHOICES

    assert train_cmd.INIT_CHOICES == INIT_CHOICES
    out = tmp_path / "ind"
    assert _run(["train", "--arch", "relu_l1", "--init", "independent", "--out", str(out),
                 *TINY]) == 0
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["init"] == "independent" and rec["config"]["hyper"]["init"] == "independent"
    assert json.loads((out / "cfg.json").read_text())["hyper"]["init"] == "independent"
    with pytest.raises(SystemExit):
        _run(["train", "--arch", "aen", "--init", "xavier", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert "--init" in err and "tied" in err and "independent" in err


def test_unknown_architecture_lists_valid_ones(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        _run(["train", "--arch", "nope", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "relu_l1" in err and "jumprelu" in err


def test_bench_train_json_fields(tmp_path) -> None:
    path = tmp_path / "bench.json"
    assert _run(["bench", "train", "--n", "16", "--m", "32", "--batch-size", "16", "--k", "2",
                 "--models", "2", "--steps", "2", "--repeats", "1", "--json", str(path)]) == 0
    rec = json.loads(path.read_text())
    for key in ("ms_per_step", "floor_ms", "ratio_single", "ratio_per_model_8", "data_ms",
                "data_ms_single", "adam_ratio_single", "adam_ratio_per_model_8"):
        assert rec[key] > 0
    assert rec["config"]["models"] == 2 and "aensae_version" in rec and rec["block_steps"] == 8


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk"])
def test_bench_train_stack_reports_ms_per_model_step(tmp_path, capsys, arch: str) -> None:
    path = tmp_path / "bench.json"
    assert _run(["bench", "train", "--n", "16", "--m", "32", "--batch-size", "16", "--k", "2",
                 "--models", "3", "--steps", "2", "--repeats", "1", "--arch", arch,
                 "--stack", "--device", "cpu", "--json", str(path)]) == 0
    rec = json.loads(path.read_text())
    assert rec["config"]["arch"] == arch and rec["config"]["stack"] is True
    assert rec["config"]["device"] == "cpu" and rec["machine"]["gpu"] is None
    assert rec["stack_path"] == "stacked-eager"
    for key in ("ms_per_model_step_separate", "ms_per_model_step_stacked"):
        assert 0 < rec[key]["min"] <= rec[key]["median"] <= rec[key]["max"]
    lo, hi = rec["stack_speedup_range"]
    assert 0 < lo <= rec["stack_speedup"] <= hi
    assert "ms per model-step" in capsys.readouterr().out


def test_bench_train_without_stack_has_no_stacked_fields(tmp_path) -> None:
    path = tmp_path / "bench.json"
    assert _run(["bench", "train", "--n", "16", "--m", "32", "--batch-size", "16", "--k", "2",
                 "--models", "2", "--steps", "1", "--repeats", "1", "--json", str(path)]) == 0
    rec = json.loads(path.read_text())
    assert "stack_speedup" not in rec and rec["config"]["stack"] is False


def test_bench_train_topk_needs_room_for_its_k(capsys) -> None:
    assert _run(["bench", "train", "--arch", "topk", "--m", "8", "--n", "4", "--k", "1"]) == 2
    assert "--m must be >= 16 with --arch topk" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="needs cuda:7 to be absent")
def test_bench_train_absent_device_is_one_line(capsys) -> None:
    assert _run(["bench", "train", "--device", "cuda:7", "--n", "4", "--m", "8",
                 "--k", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aensae bench train: error: --device") and "\n" not in err


def test_bench_train_graph_needs_stack_and_cuda(capsys) -> None:
    assert _run(["bench", "train", "--graph", "--n", "4", "--m", "8", "--k", "1"]) == 2
    assert "--graph times the stacked step: it needs --stack" in capsys.readouterr().err
    assert _run(["bench", "train", "--graph", "--stack", "--device", "cpu", "--n", "4",
                 "--m", "8", "--k", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("aensae bench train: error: --graph captures CUDA graphs: it needs a CUDA "
                   "--device, got 'cpu'")
