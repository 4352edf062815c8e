"""aensae llm train: several SAEs on one cache in one pass, provenance in cfg.json, the
dead-latent window in tokens, exact resume after an interruption, bad input."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from llm_support import harvest_tiny_cache  # noqa: E402

from aensae import cli  # noqa: E402
from aensae.llm.store import ActivationStore  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory, smol_tokenizer_dir):
    return harvest_tiny_cache(tmp_path_factory, smol_tokenizer_dir)


def _args(cache, out, *extra):
    return ["llm", "train", "--cache", str(cache), "--d-sae", "24", "--steps", "6",
            "--batch-size", "32", "--out", str(out), "--no-progress", *extra]


def test_several_saes_in_one_pass_match_separate_training(cache, tmp_path):
    from aensae.saes import TrainConfig, create, load, train

    out = tmp_path / "run"
    rc = cli.main(_args(cache, out, "--arch", "relu_l1", "--arch", "topk", "--k-top", "4",
                        "--sweep", "l1=0.001,0.01", "--checkpoint-every", "2"))
    assert rc == 0
    names = {"relu_l1-l1=0.001", "relu_l1-l1=0.01", "topk"}
    run = json.loads((out / "run.json").read_text())
    assert set(run["saes"]) == names
    assert run["dead_window_tokens"] == 6 * 32  # the run is shorter than 10M tokens
    assert not (out / "checkpoint.pt").exists()
    store = ActivationStore(cache)
    man = store.manifest
    for name in names:
        cfg = json.loads((out / name / "cfg.json").read_text())
        assert cfg["llm"]["model"] == man["model"]
        assert (cfg["llm"]["hook"], cfg["llm"]["layer"]) == (man["hook"], man["layer"])
        assert cfg["llm"]["normalisation"] == {
            "kind": "scalar", "constant": man["normalisation"]["scalar_constant"]}
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["dead_window_tokens"] == 192 and metrics["tokens"] == 192
    # oracle: each SAE trained alone by the trainer on batches normalised by hand
    c = man["normalisation"]["scalar_constant"]
    raw = store.batch_source(32, seed=0, normalisation="none")
    for name, arch, hyper in (("relu_l1-l1=0.01", "relu_l1", {"l1": 0.01}),
                              ("topk", "topk", {"k_top": 4})):
        alone = create(arch, 16, 24, seed=0, **hyper)
        train(alone, lambda s: (x * c for x in raw(s)),
              TrainConfig(steps=6, seed=0, device="cpu", dead_window=192))
        got = load(out / name)
        for key, value in alone.state_dict().items():
            torch.testing.assert_close(got.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_resume_after_interruption_equals_uninterrupted(cache, tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    flags = ("--arch", "relu_l1", "--arch", "aen", "--checkpoint-every", "2")
    assert cli.main(_args(cache, whole, *flags)) == 0
    real = ActivationStore.batches
    calls = {"n": 0}

    def interrupted(self, *a, **kw):
        calls["n"] += 1
        it = real(self, *a, **kw)

        def cut_after_four():
            for _ in range(4):
                yield next(it)
            raise KeyboardInterrupt

        return it if calls["n"] == 1 else cut_after_four()  # call 1 only validates

    monkeypatch.setattr(ActivationStore, "batches", interrupted)
    assert cli.main(_args(cache, cut, *flags)) == 130
    assert (cut / "checkpoint.pt").is_file() and not (cut / "run.json").exists()
    monkeypatch.setattr(ActivationStore, "batches", real)
    assert cli.main(_args(cache, cut, *flags)) == 0
    from safetensors.torch import load_file

    for name in ("relu_l1", "aen"):
        a = load_file(whole / name / "sae.safetensors")
        b = load_file(cut / name / "sae.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


@pytest.mark.parametrize("extra, needle", [
    (("--arch", "relu_l1", "--k-top", "4"), "k_top"),
    (("--arch", "relu_l1", "--arch", "relu_l1"), "--arch"),
    (("--arch", "relu_l1", "--sweep", "l1"), "--sweep"),
    (("--arch", "relu_l1", "--sweep", "l1=0.1,0.1"), "--sweep l1"),
    (("--arch", "relu_l1", "--l1", "0.1", "--sweep", "l1=0.2"), "l1"),
    (("--arch", "topk", "--k-top", "99"), "k_top"),
    (("--arch", "relu_l1", "--dead-window", "0"), "--dead-window"),
])
def test_bad_input_one_line(cache, tmp_path, capsys, extra, needle):
    assert cli.main(_args(cache, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_missing_cache(tmp_path, capsys):
    assert cli.main(_args(tmp_path / "nope", tmp_path / "o", "--arch", "relu_l1")) == 2
    assert "--cache" in capsys.readouterr().err
