"""aensae.llm.cache: the harvest against direct forward passes, the manifest, resume after
SIGKILL, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from llm_support import save_tiny  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from aensae._validation import InputError  # noqa: E402
from aensae.cli import main  # noqa: E402
from aensae.llm.cache import HarvestConfig, harvest  # noqa: E402
from aensae.llm.models import load_model  # noqa: E402
from aensae.llm.text import WindowStream, open_text  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smol_tokenizer_dir):
    return save_tiny("llama", smol_tokenizer_dir, tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "(", ")", ":", "x", "y", "\n"]
    for i in range(80):
        (folder / f"d{i:03d}.txt").write_text(" ".join(rng.choice(words, 20 + i % 30)))
    return folder


@pytest.fixture(scope="module")
def lm(model_dir):
    return load_model(str(model_dir), device="cpu")


def _cfg(model_dir, text_dir, **kw):
    base = {"model": str(model_dir), "layer": 1, "text": str(text_dir), "tokens": 700,
            "ctx": 16, "batch_size": 4, "shard_windows": 8, "shuffle_windows": 8}
    return HarvestConfig(**{**base, **kw})


def _rows(out, manifest):
    shards = [load_file(out / s["file"]) for s in manifest["shards"]]
    return {k: torch.cat([s[k] for s in shards]) for k in ("activations", "tokens", "positions")}


def _sorted(a, t, p):
    """Rows in a canonical order (by token, position, then activation values)."""
    a = a.double().numpy()
    order = np.lexsort([*a.T[::-1], p.numpy(), t.numpy()])
    return a[order], t.numpy()[order], p.numpy()[order]


def test_harvest_round_trip(tmp_path, model_dir, text_dir, lm):
    cfg = _cfg(model_dir, text_dir)
    man = harvest(cfg, tmp_path / "c", model=lm, progress=False)
    on_disk = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(man))
    assert man["complete"] and man["tokens"] == 700 == sum(man["tokens_per_shard"])
    assert max(man["tokens_per_shard"]) <= 8 * 16 and man["d_in"] == 32
    assert (man["hook"], man["layer"], man["split"], man["ctx"]) == ("resid_post", 1, "train", 16)
    assert man["model"]["fingerprint"] == lm.fingerprint
    for s in man["shards"]:
        assert hashlib.sha256((tmp_path / "c" / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    rows = _rows(tmp_path / "c", man)
    special = set(man["tokenizer"]["special_ids"])
    assert not special & set(rows["tokens"].tolist())
    # oracle: the same windows through the model's full forward, special tokens dropped
    stream = WindowStream(open_text(str(text_dir)), lm.tokenizer, 16, buffer=8, seed=0)
    windows = np.stack(list(stream)[:man["windows"]])
    with torch.no_grad():
        hs = lm.model(input_ids=torch.from_numpy(windows).long(),
                      output_hidden_states=True).hidden_states[2]
    keep = ~np.isin(windows, list(special))
    want_a = hs.reshape(-1, 32)[torch.from_numpy(keep.reshape(-1))][:700]
    want_t = torch.from_numpy(windows[keep])[:700]
    want_p = torch.from_numpy(np.broadcast_to(np.arange(16), windows.shape)[keep])[:700]
    got = _sorted(rows["activations"], rows["tokens"], rows["positions"])
    want = _sorted(want_a, want_t, want_p)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    # rows are shuffled within shards: not in window order
    first = load_file(tmp_path / "c" / man["shards"][0]["file"])["positions"]
    assert not torch.equal(first, torch.sort(first).values)
    # normalisation statistics by hand (float64 over every row)
    x = rows["activations"].double()
    ms = float((x * x).sum(1).mean())
    norm = man["normalisation"]
    assert norm["scalar_constant"] == pytest.approx((32 / ms) ** 0.5, rel=1e-12)
    assert norm["max_norm"] == pytest.approx(float(x.norm(dim=1).max()), rel=1e-12)
    # a second call finds the finished cache and does nothing
    assert harvest(cfg, tmp_path / "c", model=lm, progress=False) == on_disk


def test_keep_special_and_other_hooks(tmp_path, model_dir, text_dir, lm):
    man = harvest(_cfg(model_dir, text_dir, keep_special=True, hook="mlp_out", tokens=300),
                  tmp_path / "k", model=lm, progress=False)
    tokens = _rows(tmp_path / "k", man)["tokens"]
    assert man["special_tokens"] == "kept" and man["tokens"] == 300
    assert set(tokens.tolist()) & set(man["tokenizer"]["special_ids"])


def test_text_runs_out(tmp_path, model_dir, lm, capsys):
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("one two three four five six seven eight " * 10)
    man = harvest(_cfg(model_dir, small, tokens=10_000, eval_fraction=0.01), tmp_path / "s",
                  model=lm, progress=False)
    assert man["complete"] and man["text_exhausted"] and 0 < man["tokens"] < 10_000
    assert "ran out" in capsys.readouterr().err


def _run_cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-m", "aensae", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _content_hash(out):
    man = json.loads((out / "manifest.json").read_text())
    h = hashlib.sha256()
    for s in man["shards"]:
        for k, v in sorted(load_file(out / s["file"]).items()):
            h.update(k.encode() + v.contiguous().view(torch.uint8).numpy().tobytes())
    return man, h.hexdigest()


def test_resume_after_sigkill(tmp_path, model_dir, text_dir):
    args = ["llm", "harvest", "--model", str(model_dir), "--layer", "2", "--text",
            str(text_dir), "--tokens", "2000", "--ctx", "16", "--batch-size", "2",
            "--shard-windows", "2", "--shuffle-windows", "8", "--device", "cpu",
            "--no-progress"]
    full = _run_cli(args + ["--out", str(tmp_path / "full")])
    killed = _run_cli(args + ["--out", str(tmp_path / "killed")])
    man_path = tmp_path / "killed" / "manifest.json"
    deadline = time.monotonic() + 120
    n_done = 0
    while time.monotonic() < deadline:
        if man_path.is_file():
            try:
                n_done = len(json.loads(man_path.read_text())["shards"])
            except (json.JSONDecodeError, KeyError):
                n_done = 0
            if n_done >= 3:
                break
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert full.wait(timeout=180) == 0, full.stderr.read()
    partial = json.loads(man_path.read_text())
    assert not partial["complete"] and 3 <= len(partial["shards"])
    assert partial["tokens"] < 2000
    again = _run_cli(args + ["--out", str(tmp_path / "killed")])
    assert again.wait(timeout=180) == 0, again.stderr.read()
    man_a, hash_a = _content_hash(tmp_path / "full")
    man_b, hash_b = _content_hash(tmp_path / "killed")
    assert man_a["tokens"] == man_b["tokens"] == 2000
    assert man_a["tokens_per_shard"] == man_b["tokens_per_shard"]
    assert hash_a == hash_b
    assert [s["sha256"] for s in man_a["shards"]] == [s["sha256"] for s in man_b["shards"]]
    assert man_a["text"]["sha256"] == man_b["text"]["sha256"]
    assert not list((tmp_path / "killed").glob(".*.tmp"))


def test_bad_input(tmp_path, model_dir, text_dir, lm, capsys):
    with pytest.raises(InputError, match=r"--tokens must be an integer >= 1; got 0"):
        _cfg(model_dir, text_dir, tokens=0)
    with pytest.raises(InputError, match="--hook must be one of"):
        _cfg(model_dir, text_dir, hook="resid_pre")
    with pytest.raises(InputError, match="--split"):
        _cfg(model_dir, text_dir, split="test")
    with pytest.raises(InputError, match="--eval-fraction"):
        _cfg(model_dir, text_dir, eval_fraction=1.0)
    with pytest.raises(InputError, match=r"--layer must lie in \[0, 2\].*got 3"):
        harvest(_cfg(model_dir, text_dir, layer=3), tmp_path / "x", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    with pytest.raises(InputError, match=rf"--text {empty}: no text"):
        harvest(_cfg(model_dir, empty), tmp_path / "y", progress=False)
    harvest(_cfg(model_dir, text_dir, tokens=100), tmp_path / "c", model=lm, progress=False)
    with pytest.raises(InputError, match=r"hook='resid_post', this harvest asks --hook 'mlp_out'"):
        harvest(_cfg(model_dir, text_dir, tokens=100, hook="mlp_out"), tmp_path / "c",
                model=lm, progress=False)
    with pytest.raises(InputError, match=r"holds a cache with model="):
        harvest(_cfg(tmp_path / "other", text_dir, tokens=100), tmp_path / "c",
                progress=False)
    man = harvest(_cfg(model_dir, text_dir, tokens=100, hook="mlp_out"), tmp_path / "c",
                  model=lm, progress=False, overwrite=True)
    assert man["hook"] == "mlp_out"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds other files"):
        harvest(_cfg(model_dir, text_dir), tmp_path / "busy", progress=False)
    # the command line: one line on stderr, exit status 2, before any work
    code = main(["llm", "harvest", "--model", str(model_dir), "--layer", "0", "--tokens", "0",
                 "--out", str(tmp_path / "z")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--tokens must be an integer >= 1" in err
    code = main(["llm", "harvest", "--model", "no-such-alias", "--layer", "0", "--tokens",
                 "5", "--out", str(tmp_path / "z")])
    err = capsys.readouterr().err
    assert code == 2 and "smollm2-135m" in err and err.count("\n") == 1
    assert not (tmp_path / "z").exists()
