"""Nothing lost, nothing silently wrong (issue 26, the LLM side): every damaged file, bad
input or second writer below ends in one line and exit status 2 through ``aensae.cli.main``,
or in correct behaviour, and no cache, SAE or user file is lost on the way. Each damage is
built here, on tiny caches of a tiny random Llama.

1. ``llm harvest --overwrite`` with bad input (found before or after the model loads, or
   mid-harvest) leaves the old cache byte-identical;
2. one writer per folder: a second ``llm harvest`` / ``llm train`` / ``reproduce`` on a
   held folder gets one line naming the holder; lock files are never cleared as foreign;
3. shards verified against their SHA-256 and read back with checks (truncated, missing,
   swapped, garbage), damaged manifests, checkpoints, SAE configs, SAELens shapes;
4. no exit 0 with non-finite weights, constants or metrics;
5. memory estimated before any allocation (``--max-memory``);
6. checks before the model loads, errors naming the ``cfg.json`` key or SAELens field;
7. ``aensae figures`` on an LLM folder with a damaged manifest; the alias's message;
8. a batch larger than the cache.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from llm_support import save_tiny  # noqa: E402

from aensae import cli  # noqa: E402
from aensae._io import LOCK_FILE  # noqa: E402
from aensae._validation import InputError  # noqa: E402

LAYER = 1


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory, smol_tokenizer_dir):
    """A tiny Llama folder (3 blocks, d 32, 512 positions), a corpus, a cache of 600
    tokens in 5 shards written by ``llm harvest``, and one SAE trained on it."""
    root = tmp_path_factory.mktemp("integrity")
    model = save_tiny("llama", smol_tokenizer_dir, root / "model", d=32)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"{i:02d}.md").write_text(f"# part {i}\n" + f"word{i % 7} more text " * 12)
    cache = root / "cache"
    assert cli.main(_harvest_args(model, corpus, cache)) == 0
    saes = root / "saes"
    assert cli.main(_train_args(cache, saes)) == 0
    return {"root": root, "model": model, "corpus": corpus, "cache": cache, "saes": saes}


def _harvest_args(model, corpus, out, *extra):
    return ["llm", "harvest", "--model", str(model), "--layer", str(LAYER), "--text",
            str(corpus), "--tokens", "600", "--ctx", "16", "--batch-size", "4",
            "--shard-windows", "8", "--shuffle-windows", "8", "--eval-fraction", "0.3",
            "--device", "cpu", "--no-progress", "--out", str(out), *extra]


def _train_args(cache, out, *extra):
    return ["llm", "train", "--cache", str(cache), "--arch", "relu_l1", "--d-sae", "16",
            "--steps", "3", "--batch-size", "32", "--device", "cpu", "--no-progress",
            "--out", str(out), *extra]


def _eval_args(env, sae, *extra):
    return ["llm", "eval", "--sae", str(sae), "--model", str(env["model"]), "--text",
            str(env["corpus"]), "--eval-fraction", "0.3", "--ctx", "16", "--tokens", "60",
            "--exact-tokens", "0", "--device", "cpu", "--no-progress", *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _one_line_error(capsys, rc, command="llm"):
    """The command's stderr: exit 2, one line, ``aensae <command ...>: error: ...``, no
    traceback."""
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"aensae {command}"), lines[0]
    return lines[0]


def _fails(capsys, args, command="llm"):
    """Run ``aensae args`` (stderr cleared first); expect :func:`_one_line_error`."""
    capsys.readouterr()
    return _one_line_error(capsys, cli.main(args), command)


def _copy_cache(env, tmp_path, name="c"):
    out = tmp_path / name
    shutil.copytree(env["cache"], out)
    return out


@pytest.fixture()
def no_model_load(monkeypatch):
    """Make any model load fail loudly: the checks under test must come first."""
    import aensae.llm.cache as cache
    import aensae.llm.eval_run as eval_run

    def refuse(*a, **kw):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(cache, "load_model", refuse)
    monkeypatch.setattr(eval_run, "load_model", refuse)


# ----------------------------------------------------------------------------- 1. overwrite
@pytest.mark.parametrize("bad, needle", [
    (("--layer", "99"), "--layer"),
    (("--text", "MISSING"), "--text"),
    (("--ctx", "100000"), "--ctx 100000"),
    (("--hook", "mlp_out", "--tokens", "0"), "--tokens"),
])
def test_overwrite_with_bad_input_keeps_the_cache(env, tmp_path, capsys, no_model_load,
                                                   bad, needle):
    cache = _copy_cache(env, tmp_path)
    before = _snapshot(cache)
    args = _harvest_args(env["model"], env["corpus"], cache, "--overwrite")
    bad = [str(tmp_path / "missing") if b == "MISSING" else b for b in bad]
    for i in range(0, len(bad), 2):  # the later value of a repeated option wins
        args += bad[i:i + 2]
    line = _fails(capsys, args, "llm harvest")
    assert needle in line
    assert _snapshot(cache) == before


def test_overwrite_failing_after_the_model_loads_keeps_the_cache(env, tmp_path, monkeypatch):
    """A layer found bad only by the loaded model, a text with no full window (found
    mid-harvest) and a Ctrl-C mid-harvest: the old cache stays byte-identical; the next
    --overwrite replaces it whole."""
    from aensae.llm import cache as cache_mod
    from aensae.llm.cache import HarvestConfig, harvest
    from aensae.llm.models import load_model

    cache = _copy_cache(env, tmp_path)
    before = _snapshot(cache)
    lm = load_model(str(env["model"]), device="cpu")
    base = {"model": str(env["model"]), "layer": LAYER, "text": str(env["corpus"]),
            "tokens": 600, "ctx": 16, "batch_size": 4, "shard_windows": 8,
            "shuffle_windows": 8, "eval_fraction": 0.3, "device": "cpu"}
    with pytest.raises(InputError, match="--layer"):
        harvest(HarvestConfig(**{**base, "layer": 7}), cache, model=lm, progress=False,
                overwrite=True)
    assert _snapshot(cache) == before
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.txt").write_text("one two")
    with pytest.raises(InputError, match="fewer than one window"):
        harvest(HarvestConfig(**{**base, "text": str(short), "eval_fraction": 0.01}), cache,
                model=lm, progress=False, overwrite=True)
    assert _snapshot(cache) == before
    real = cache_mod._write_shard
    calls = {"n": 0}

    def interrupted(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(cache_mod, "_write_shard", interrupted)
    other = HarvestConfig(**{**base, "hook": "mlp_out"})
    with pytest.raises(KeyboardInterrupt):
        harvest(other, cache, model=lm, progress=False, overwrite=True)
    assert {k: v for k, v in _snapshot(cache).items()
            if not k.startswith(".aensae-overwrite")} == before
    monkeypatch.setattr(cache_mod, "_write_shard", real)
    man = harvest(other, cache, model=lm, progress=False, overwrite=True)  # resumes, swaps
    assert man["hook"] == "mlp_out" and man["complete"] and man["tokens"] == 600
    names = sorted(p.name for p in cache.iterdir())
    assert names == sorted(["manifest.json", *(s["file"] for s in man["shards"])])
    from aensae.llm.store import ActivationStore

    ActivationStore(cache)  # every shard matches the new manifest


def test_harvest_out_checked_before_the_model_loads(env, tmp_path, capsys, no_model_load):
    (tmp_path / "afile").write_text("x")
    capsys.readouterr()
    rc = cli.main(_harvest_args(env["model"], env["corpus"], tmp_path / "afile" / "c"))
    assert "--out" in _one_line_error(capsys, rc, "llm harvest")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    capsys.readouterr()
    rc = cli.main(_harvest_args(env["model"], env["corpus"], tmp_path / "busy", "--overwrite"))
    assert "holds other files" in _one_line_error(capsys, rc, "llm harvest")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- 2. one writer
def _hold(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock until its stdin closes."""
    code = ("import sys\nfrom aensae._io import folder_lock\n"
            "with folder_lock('--out', sys.argv[1]):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def _llm_config(env, tmp_path, **experiment):
    path = tmp_path / "grid.toml"
    extra = "".join(f"{k} = {v}\n" for k, v in experiment.items())
    path.write_text(
        f'[experiment]\nname = "tiny"\ndevice = "cpu"\nthreads = 1\n{extra}'
        f'[data]\nkind = "llm"\nmodel = "{env["model"]}"\nlayer = {LAYER}\n'
        f'text = "{env["corpus"]}"\ntokens = 400\nctx = 16\nbatch_size = 4\n'
        f'eval_fraction = 0.3\nshard_windows = 8\nshuffle_windows = 8\n'
        '[train]\nd_sae = 16\nsteps = 3\nbatch_size = 32\n'
        '[eval]\ntokens = 64\nexact_tokens = 0\n'
        '[[family]]\nname = "topk"\narch = "topk"\ntarget_l0 = [2.0]\n')
    return path


@pytest.mark.parametrize("command", ["harvest", "train", "reproduce"])
def test_second_writer_gets_one_line_naming_the_holder(env, tmp_path, capsys, command):
    out = tmp_path / "out"
    if command == "harvest":
        out = _copy_cache(env, tmp_path)
        args = _harvest_args(env["model"], env["corpus"], out, "--overwrite")
        before = _snapshot(out)
    elif command == "train":
        args = _train_args(env["cache"], out)
    else:
        args = ["reproduce", "--config", str(_llm_config(env, tmp_path)), "--out", str(out),
                "--no-progress"]
    out.mkdir(exist_ok=True)
    holder = _hold(out)
    try:
        capsys.readouterr()
        rc = cli.main(args)
        line = _one_line_error(capsys, rc, "reproduce" if command == "reproduce" else "llm")
        assert "in use by another aensae process" in line and f"pid {holder.pid}" in line
        assert (out / LOCK_FILE).is_file()  # the holder's lock file is left alone
        if command == "harvest":
            assert {k: v for k, v in _snapshot(out).items() if k != LOCK_FILE} == before
        else:
            assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        _release(holder)
    assert not (out / LOCK_FILE).exists()


def test_lock_files_are_aensaes_own(env, tmp_path, capsys):
    """A lock file a crashed run left is taken over, never counted as a foreign file nor
    removed as a cache's; a finished command leaves none; ``reproduce --overwrite`` does
    not clear a folder whose cache another process holds."""
    cache = _copy_cache(env, tmp_path)
    (cache / LOCK_FILE).write_text("pid 1 on nowhere (crashed)")
    assert cli.main(_harvest_args(env["model"], env["corpus"], cache, "--overwrite",
                                  "--hook", "attn_out")) == 0
    assert not (cache / LOCK_FILE).exists()
    assert json.loads((cache / "manifest.json").read_text())["hook"] == "attn_out"
    saes = tmp_path / "saes"
    assert cli.main(_train_args(env["cache"], saes)) == 0
    assert not (saes / LOCK_FILE).exists()
    # an LLM output folder whose cache another process is writing: --overwrite refuses
    out = tmp_path / "grid"
    (out / "cache").mkdir(parents=True)
    shutil.copytree(env["cache"], out / "cache", dirs_exist_ok=True)
    (out / "config.json").write_text(json.dumps({"kind": "llm", "config_hash": "other",
                                                 "config_name": "other"}))
    before = _snapshot(out)
    holder = _hold(out / "cache")
    try:
        line = _fails(capsys, ["reproduce", "--config", str(_llm_config(env, tmp_path)),
                               "--out", str(out), "--overwrite", "--no-progress"],
                      "reproduce")
        assert f"pid {holder.pid}" in line
        assert {k: v for k, v in _snapshot(out).items() if LOCK_FILE not in k} == before
    finally:
        _release(holder)


# ----------------------------------------------------------------------------- 3. integrity
def _damage_shard(cache: Path, how: str) -> str:
    """Damage the cache's shards; return the file an error must name."""
    a, b = cache / "shard-00001.safetensors", cache / "shard-00002.safetensors"
    data = bytearray(a.read_bytes())
    if how == "finite_garbage":  # same size, valid header, other finite numbers
        start = 8 + int.from_bytes(data[:8], "little")
        data[start:start + 256] = bytes(range(64)) * 4
        a.write_bytes(bytes(data))
    elif how == "truncated":
        a.write_bytes(bytes(data[:len(data) // 2]))
    elif how == "garbage_header":
        a.write_bytes(b"\xff" * 8 + bytes(data[8:]))
    elif how == "missing":
        a.unlink()
    elif how == "swapped":
        tmp = cache / "t"
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
    return a.name


@pytest.mark.parametrize("how", ["finite_garbage", "truncated", "garbage_header", "missing",
                                 "swapped"])
def test_damaged_shards_are_refused_naming_the_shard(env, tmp_path, capsys, how):
    cache = _copy_cache(env, tmp_path)
    name = _damage_shard(cache, how)
    line = _fails(capsys, _train_args(cache, tmp_path / "o"), "llm train")
    assert name in line and "aensae llm harvest --model" in line and "--overwrite" in line
    assert f"--out {cache}" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("how", ["truncated", "garbage_header"])
def test_shards_read_without_verification_are_still_checked(env, tmp_path, how):
    from aensae.llm.store import ActivationStore

    cache = _copy_cache(env, tmp_path)
    name = _damage_shard(cache, how)
    store = ActivationStore(cache, verify=False)
    with pytest.raises(InputError, match=f"{name} is damaged"):
        store.shard(1)
    with pytest.raises(InputError, match=name):
        store.verify()


@pytest.mark.parametrize("damage, needle", [
    (lambda m: m.pop("complete"), "no complete"),
    (lambda m: m.pop("shards"), "no shards"),
    (lambda m: m.update(shards={"0": 1}), "shards is a dict"),
    (lambda m: m["shards"].pop(), "tokens"),
    ("list", "a JSON list"),
    ("text", "JSONDecodeError"),
])
def test_damaged_manifest_is_one_line(env, tmp_path, capsys, damage, needle):
    cache = _copy_cache(env, tmp_path)
    path = cache / "manifest.json"
    man = json.loads(path.read_text())
    if damage == "list":
        path.write_text(json.dumps([man]))
    elif damage == "text":
        path.write_text(path.read_text()[:100])
    else:
        damage(man)
        path.write_text(json.dumps(man))
    for args, command in ((_train_args(cache, tmp_path / "o"), "llm train"),
                          (_harvest_args(env["model"], env["corpus"], cache), "llm harvest")):
        line = _fails(capsys, args, command)
        assert "manifest.json is damaged" in line and needle in line, line


def test_garbage_checkpoint_in_llm_train(env, tmp_path, capsys, monkeypatch):
    from aensae.llm.store import ActivationStore

    out = tmp_path / "o"
    real = ActivationStore.batches
    calls = {"n": 0}

    def interrupted(self, *a, **kw):
        calls["n"] += 1
        it = real(self, *a, **kw)

        def cut():
            yield next(it)
            yield next(it)
            raise KeyboardInterrupt

        return it if calls["n"] == 1 else cut()

    monkeypatch.setattr(ActivationStore, "batches", interrupted)
    args = _train_args(env["cache"], out, "--checkpoint-every", "1")
    assert cli.main(args) == 130
    monkeypatch.setattr(ActivationStore, "batches", real)
    assert (out / "checkpoint.pt").is_file()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint at all" * 10)
    capsys.readouterr()
    line = _fails(capsys, args, "llm train")
    assert "checkpoint.pt" in line and "damaged" in line


def _sae_copy(env, tmp_path) -> Path:
    folder = tmp_path / "sae"
    shutil.copytree(env["saes"] / "relu_l1", folder)
    return folder


def _edit_cfg(folder: Path, edit) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    edit(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c["llm"].pop("normalisation"), "llm.normalisation"),
    (lambda c: c["llm"].pop("hook"), "llm.hook"),
    (lambda c: c["llm"].update(hook="resid_pre"), "llm.hook 'resid_pre'"),
    (lambda c: c["llm"].update(layer="two"), "llm.layer"),
    (lambda c: c["llm"]["normalisation"].update(kind="l2"), "llm.normalisation.kind"),
    (lambda c: c.update(llm=[1]), "llm is a list"),
])
def test_sae_cfg_damage_is_one_line_naming_the_key(env, tmp_path, capsys, no_model_load,
                                                    edit, needle):
    folder = _sae_copy(env, tmp_path)
    _edit_cfg(folder, edit)
    line = _fails(capsys, _eval_args(env, folder), "llm eval")
    assert needle in line and "cfg.json" in line, line


def _write_saelens(folder, tensors, cfg):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _saelens_tensors(d_in=32, d_sae=24):
    g = torch.Generator().manual_seed(0)
    return {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in,
            generator=g), "b_enc": torch.zeros(d_sae), "b_dec": torch.zeros(d_in)}


@pytest.mark.parametrize("name, shape", [("b_enc", (23,)), ("b_dec", (31,)),
                                         ("b_enc", (24, 1))])
def test_saelens_wrong_shapes_found_before_the_model_loads(env, tmp_path, capsys,
                                                            no_model_load, name, shape):
    t = _saelens_tensors()
    t[name] = torch.zeros(shape)
    folder = tmp_path / "sl"
    _write_saelens(folder, t, {"architecture": "standard",
                               "hook_name": f"blocks.{LAYER}.hook_resid_post"})
    line = _fails(capsys, _eval_args(env, folder), "llm eval")
    assert name in line and str(tuple(shape)) in line, line


# ----------------------------------------------------------------------------- 4. non-finite
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_refused_on_load(env, tmp_path, capsys, no_model_load, value):
    from safetensors.torch import load_file, save_file

    folder = _sae_copy(env, tmp_path)
    t = load_file(folder / "sae.safetensors")
    t["W_dec"][3, 5] = value
    save_file(t, str(folder / "sae.safetensors"), metadata={"arch": "relu_l1"})
    line = _fails(capsys, _eval_args(env, folder), "llm eval")
    assert "W_dec" in line and "NaN or inf" in line, line
    t = _saelens_tensors()
    t["b_enc"][0] = value
    sl = tmp_path / "sl"
    _write_saelens(sl, t, {"architecture": "standard"})
    line = _fails(capsys, _eval_args(env, sl), "llm eval")
    assert "b_enc" in line and "NaN or inf" in line, line


@pytest.mark.parametrize("constant", [1e300, float("nan"), float("inf"), -2.0, 0.0, 1e-30,
                                      "two", None])
def test_absurd_normalisation_constant_refused_on_load(env, tmp_path, capsys, no_model_load,
                                                       constant):
    folder = _sae_copy(env, tmp_path)
    _edit_cfg(folder, lambda c: c["llm"]["normalisation"].update(constant=constant))
    line = _fails(capsys, _eval_args(env, folder), "llm eval")
    assert "llm.normalisation.constant" in line and "[1e-08, 1e+08]" in line or \
        "must be a number" in line, line


def test_absurd_constant_in_a_cache_manifest(env, tmp_path, capsys):
    cache = _copy_cache(env, tmp_path)
    man = json.loads((cache / "manifest.json").read_text())
    man["normalisation"]["scalar_constant"] = 1e300
    (cache / "manifest.json").write_text(json.dumps(man))
    line = _fails(capsys, _train_args(cache, tmp_path / "o"), "llm train")
    assert "normalisation.scalar_constant" in line and "1e+300" in line


def test_a_non_finite_metric_is_an_error_naming_its_source(env, tmp_path, capsys):
    """Finite weights whose reconstruction overflows float32: the spliced pass gives
    non-finite numbers, and the error names the SAE and the metric, not exit 0."""
    from safetensors.torch import load_file, save_file

    folder = _sae_copy(env, tmp_path)
    t = load_file(folder / "sae.safetensors")
    t["W_dec"] = torch.full_like(t["W_dec"], 3e38)
    t["b_enc"] = torch.full_like(t["b_enc"], 10.0)  # every latent fires
    save_file(t, str(folder / "sae.safetensors"), metadata={"arch": "relu_l1"})
    line = _fails(capsys, _eval_args(env, folder), "llm eval")
    assert f"--sae {folder}" in line and "non-finite" in line and " is " in line, line


# ----------------------------------------------------------------------------- 5. sizes
def test_harvest_sizes_checked_before_any_allocation(env, tmp_path, capsys, no_model_load):
    out = tmp_path / "c"
    t0 = time.perf_counter()

    def harvest(*extra):
        return _fails(capsys, _harvest_args(env["model"], env["corpus"], out, *extra),
                      "llm harvest")

    line = harvest("--ctx", "100000")
    assert "--ctx 100000" in line and "512 positions" in line
    line = harvest("--ctx", "512", "--batch-size", "1000000")
    assert "needs about" in line and "memory available" in line and "--max-memory" in line
    assert "the limit --max-memory 0.0001" in harvest("--max-memory", "0.0001")
    for bad in ("0", "-1", "nan", "inf"):
        assert "--max-memory" in harvest("--max-memory", bad)
    assert time.perf_counter() - t0 < 60 and not out.exists()


def test_train_sizes_checked_before_any_allocation(env, tmp_path, capsys, monkeypatch):
    import aensae.saes

    def refuse(*a, **kw):
        raise AssertionError("an SAE was created before its size was checked")

    monkeypatch.setattr(aensae.saes, "create", refuse)
    out = tmp_path / "o"
    args = _train_args(env["cache"], out)
    args[args.index("--d-sae") + 1] = "1000000000"
    line = _fails(capsys, args, "llm train")
    assert "--d-sae 1000000000" in line and "needs about" in line and "GiB" in line
    line = _fails(capsys, _train_args(env["cache"], out, "--max-memory",
                                                        "1e-6"), "llm train")
    assert "--max-memory" in line
    assert not out.exists()


def test_grid_sizes_checked_before_any_work(env, tmp_path, capsys):
    out = tmp_path / "grid"
    capsys.readouterr()
    rc = cli.main(["reproduce", "--config", str(_llm_config(env, tmp_path,
                                                            max_memory_gb=1e-6)),
                   "--out", str(out), "--no-progress"])
    line = _one_line_error(capsys, rc, "reproduce")
    assert "config experiment.max_memory_gb" in line and not out.exists()


# ----------------------------------------------------------------------------- 6. order
def test_eval_checks_before_the_model_loads(env, tmp_path, capsys, no_model_load):
    sae = env["saes"] / "relu_l1"
    args = _eval_args(env, sae)
    cases = [
        (["--text", str(tmp_path / "nope")], "--text"),
        (["--eval-fraction", "1e-12"], "no text in the eval split"),
        (["--ctx", "1000"], "--ctx 1000"),
        (["--layer", "5"], "--layer must lie in [0, 2]"),
    ]
    for extra, needle in cases:
        line = _fails(capsys, [*args, *extra], "llm eval")
        assert line.startswith("aensae llm eval: error: ") and needle in line, line
    wide = tmp_path / "wide"
    _write_saelens(wide, _saelens_tensors(d_in=48), {"architecture": "standard",
                                                      "hook_name": "blocks.1.hook_resid_post"})
    line = _fails(capsys, _eval_args(env, wide), "llm eval")
    assert "d_in 48" in line and "width 32" in line


def test_a_bad_layer_is_reported_where_it_was_read(env, tmp_path, capsys, no_model_load):
    folder = _sae_copy(env, tmp_path)
    _edit_cfg(folder, lambda c: c["llm"].update(layer=40))
    line = _fails(capsys, _eval_args(env, folder), "llm eval")
    assert "llm.layer" in line and str(folder / "cfg.json") in line and "40" in line
    assert "--layer must" not in line
    sl = tmp_path / "sl"
    _write_saelens(sl, _saelens_tensors(), {"architecture": "standard",
                                            "hook_name": "blocks.40.hook_resid_post"})
    line = _fails(capsys, _eval_args(env, sl), "llm eval")
    assert "hook_name 'blocks.40.hook_resid_post'" in line and "--layer must" not in line


# ----------------------------------------------------------------------------- 7. messages
def test_figures_on_an_llm_folder_with_a_damaged_manifest(tmp_path, capsys):
    from aensae.experiments.llm.figures import LLM_FIGURES

    committed = Path(__file__).resolve().parents[2] / "figures" / "llm-quick"
    folder = tmp_path / "res"
    folder.mkdir()
    shutil.copy(committed / "results.csv", folder / "results.csv")
    (folder / "config.json").write_text('{"kind": "llm", "conf')  # truncated
    (folder / "figures").mkdir()
    (folder / "figures" / "notes.txt").write_text("mine")  # a user's file stays
    assert cli.main(["figures", str(folder)]) == 0
    assert {p.stem for p in (folder / "figures").glob("*.png")} == set(LLM_FIGURES)
    assert (folder / "figures" / "notes.txt").read_text() == "mine"
    capsys.readouterr()
    (folder / "results.csv").write_text("a,b\n1,2\n")  # neither grid's table
    line = _fails(capsys, ["figures", str(folder)], "figures")
    assert "config.json is damaged" in line


def test_alias_message_says_what_is_missing(tmp_path, monkeypatch):
    """A package that holds the file but whose own imports fail still serves the file
    (transformers reads it alone); a missing package is named as missing."""
    from aensae.llm import models

    pkg = tmp_path / "site" / "fake_alias_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import no_such_dependency_xyz\n")
    (pkg / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(models.ALIASES, "fake-alias", ("fake_alias_pkg", "model.gguf"))
    source = models.resolve_model("fake-alias")
    assert source.kind == "alias" and source.path == str(pkg / "model.gguf")
    assert "fake_alias_pkg" not in sys.modules
    monkeypatch.setitem(models.ALIASES, "gone-alias", ("gone_alias_pkg_xyz", "m.gguf"))
    with pytest.raises(InputError, match="gone-alias-pkg-xyz, which is not installed"):
        models.resolve_model("gone-alias")
    monkeypatch.setitem(models.ALIASES, "empty-alias", ("fake_alias_pkg", "other.gguf"))
    with pytest.raises(InputError, match="is installed .* but holds no file other.gguf"):
        models.resolve_model("empty-alias")


# ----------------------------------------------------------------------------- 8. batch
def test_batch_larger_than_the_cache_is_refused(env, tmp_path, capsys):
    from aensae.llm.store import ActivationStore

    store = ActivationStore(env["cache"])
    n = store.n_tokens
    args = _train_args(env["cache"], tmp_path / "o")
    args[args.index("--batch-size") + 1] = str(n + 1)
    line = _fails(capsys, args, "llm train")
    assert f"--batch-size {n + 1}" in line and f"{n} tokens" in line
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError, match="twice"):
        store.batches(n + 1)
    args[args.index("--batch-size") + 1] = str(n)  # the whole cache: every token once
    assert cli.main(args) == 0
    assert math.isfinite(json.loads((tmp_path / "o" / "run.json").read_text())
                         ["saes"]["relu_l1"]["train_loss_last"])
