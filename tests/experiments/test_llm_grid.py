"""The LLM grid (`aensae reproduce` with a `[data] kind = "llm"` config), end to end on a
tiny random Llama and a tiny text: the table's schema against hand computations, figures,
report, resume after an interruption, extra eval columns passed through, and the paper
configs failing cleanly where the hub cannot be reached."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from llm_support import save_tiny  # noqa: E402

from aensae import cli  # noqa: E402
from aensae._validation import InputError  # noqa: E402
from aensae.experiments.llm import driver as llm_grid  # noqa: E402
from aensae.experiments.llm.config import load_llm_config  # noqa: E402
from aensae.experiments.llm.figures import LLM_FIGURES  # noqa: E402
from aensae.experiments.results import read_table  # noqa: E402

TARGETS = [3.0, 8.0]
OUTLIER_FACTOR = 1.2


def _config(model, corpus, name="tiny-llm", **eval_over):
    return {
        "experiment": {"name": name, "seed": 0, "device": "cpu", "threads": 1},
        "data": {"kind": "llm", "model": str(model), "layer": 1, "text": str(corpus),
                 "tokens": 1200, "ctx": 16, "batch_size": 8, "eval_fraction": 0.3,
                 "shard_windows": 20, "shuffle_windows": 8},
        "train": {"d_sae": 40, "steps": 60, "batch_size": 64, "lr": 1e-2,
                  "checkpoint_every": 20},
        "eval": {"tokens": 192, "batch_size": 8, "exact_tokens": 64, "group_size": 3,
                 **eval_over},
        "calibrate": {"ladder": 2, "rounds": 1, "tolerance": 1.5},
        "family": [
            {"name": "relu_l1", "arch": "relu_l1", "target_l0": TARGETS,
             "calibrate_range": [1e-3, 3e-2]},
            {"name": "aen", "arch": "aen", "target_l0": TARGETS,
             "calibrate_range": [1e-3, 3e-2],
             "hyper": {"l2": 1e-3, "warmup_steps": 5, "ramp_steps": 10}},
            {"name": "topk", "arch": "topk", "target_l0": TARGETS},
            {"name": "batchtopk", "arch": "batchtopk", "target_l0": TARGETS},
            {"name": "jumprelu", "arch": "jumprelu", "target_l0": TARGETS,
             "calibrate_range": [1e-3, 1e-1], "hyper": {"init_threshold": 0.5}},
        ],
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smol_tokenizer_dir):
    root = tmp_path_factory.mktemp("llmgrid")
    model = save_tiny("llama", smol_tokenizer_dir, root / "model", d=32)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(60):
        words = " ".join(f"w{(i * 7 + j) % 23}" for j in range(12 + i % 9))
        (corpus / f"{i:02d}.md").write_text(f"# section {i}\n{words}\n" * (2 + i % 3))
    return root, model, corpus


@pytest.fixture(scope="module")
def finished(setup):
    root, model, corpus = setup
    # outliers at 1.2 x the median norm: a few percent of this random model's tokens, so
    # that leaving them out is exercised (at 10 x, the default, there are none here)
    cfg = load_llm_config(_config(model, corpus, outlier_factor=OUTLIER_FACTOR))
    out = root / "run"
    torch.set_num_threads(1)
    table = llm_grid.reproduce_llm(cfg, out, progress=False)
    return cfg, out, table


def _no_timing(rows):
    """Rows without their timing columns; NaN as a marker, so equal tables compare equal
    (the geometry columns of SAEs without an exact problem are NaN)."""
    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v
             for k, v in r.items() if "seconds" not in k} for r in rows]


def test_table_schema_and_numbers(finished) -> None:
    cfg, out, table = finished
    cols, rows = read_table(table)
    assert set(llm_grid.LLM_REQUIRED_COLUMNS) <= set(cols)
    llm_grid.check_llm_table(table)
    # one row per (family, target): a run, or an unreachable target
    assert sorted((r["family"], r["target_l0"]) for r in rows) == sorted(
        (f, t) for f in ("relu_l1", "aen", "topk", "batchtopk", "jumprelu") for t in TARGETS)
    sae = [r for r in rows if r["kind"] == "sae"]
    assert sae and all(r["kind"] in ("sae", "unreachable") for r in rows)
    for r in sae:
        # the CE-loss scores from the CE columns, by hand
        assert r["ce_loss_score"] == pytest.approx(
            (r["ce_zero"] - r["ce_spliced"]) / (r["ce_zero"] - r["ce_clean"]), rel=1e-9)
        # the reference's defective splice replaces every token: every token's baseline
        base = r["ce_mean_ablation_all_tokens"]
        assert r["ce_loss_score_unnormalised_splice_mean_ablation"] == pytest.approx(
            (base - r["ce_unnormalised_splice"]) / (base - r["ce_clean"]), rel=1e-9)
        # the headline numbers are those without the outliers; both ways are reported
        for key in ("l0", "explained_variance", "mse", "ce_spliced", "kl_spliced",
                    "ce_loss_score", "ce_zero", "ce_mean_ablation"):
            assert r[key] == r[f"{key}_outliers_excluded"]
            assert isinstance(r[f"{key}_all_tokens"], float)
        assert r["ce_loss_score_all_tokens"] == pytest.approx(
            (r["ce_zero_all_tokens"] - r["ce_spliced_all_tokens"])
            / (r["ce_zero_all_tokens"] - r["ce_clean"]), rel=1e-9)
        assert r["l0_ratio"] == pytest.approx(r["l0"] / r["target_l0"])
        assert r["l0_matched"] == ("yes" if 1 / 1.5 <= r["l0_ratio"] <= 1.5 else "no")
        if r["arch"] in ("topk",):
            assert r["hp_k_top"] == r["target_l0"] and r["l0"] <= r["target_l0"] + 1e-9
        # exact codes exist for the l1 family only
        assert (r["amort_rel_median"] is not None) == (r["arch"] in ("relu_l1", "aen"))
    # L0 by hand: the SAE's codes of the eval-cache activations, normalised by hand with
    # the train cache's constant (the eval tokens are the eval cache's tokens)
    from safetensors.torch import load_file

    from aensae.saes import load

    man = json.loads((out / "cache" / "manifest.json").read_text())
    c = man["normalisation"]["scalar_constant"]
    X = torch.cat([load_file(out / "eval-cache" / s["file"])["activations"]
                   for s in json.loads((out / "eval-cache" / "manifest.json").read_text())
                   ["shards"]])
    assert len(X) == 192
    d_in = X.shape[1]
    train_x = torch.cat([load_file(out / "cache" / s["file"])["activations"].double()
                         for s in man["shards"]])
    assert c == pytest.approx(math.sqrt(d_in / float((train_x ** 2).sum() / man["tokens"])),
                              rel=1e-9)
    # the outliers by hand: norm above 1.2 x the median norm of the training cache; the
    # SAEs are trained, normalised and measured without them
    norms = torch.linalg.vector_norm(train_x, dim=1)
    threshold = OUTLIER_FACTOR * float(np.median(norms.numpy()))
    out_mask = norms > threshold
    n_out = int(out_mask.sum())
    assert 0 < n_out < len(norms) / 10
    c_kept = math.sqrt(d_in / float((train_x[~out_mask] ** 2).sum() / (~out_mask).sum()))
    kept_eval = torch.linalg.vector_norm(X.double(), dim=1) <= threshold
    for r in sae:
        assert r["cache_outlier_tokens"] == n_out and r["train_excluded_tokens"] == n_out
        assert r["exclude_outliers"] is True
        assert r["outlier_threshold"] == pytest.approx(threshold, rel=1e-12)
        assert r["normalisation_constant"] == pytest.approx(c_kept, rel=1e-9)
        # the eval windows hold the eval cache's 192 tokens and the rest of the last window
        extra = r["eval_tokens"] - 192
        assert 0 <= r["eval_excluded_tokens"] - int((~kept_eval).sum()) <= extra
        assert r["eval_tokens_measured"] == r["eval_tokens"] - r["eval_excluded_tokens"]
        folder = out / "passes" / f"pass-{int(r['pass'])}" / r["sae"]
        model = load(folder).eval()
        with torch.no_grad():
            h = model.encode(X[kept_eval] * c_kept)
        assert float((h != 0).sum(1).double().mean()) == pytest.approx(r["l0"], rel=0.05)
        # the dead-latent windows: a tenth of the run each, as the tracker counted them
        dead = json.loads((folder / "metrics.json").read_text())["dead"]
        assert r["dead_window_tokens"] == 64 * 6 and r["dead_windows"] == 10
        assert [float(v) for v in str(r["dead_fractions"]).split(";")] == pytest.approx(
            dead["fractions"], abs=1e-6)
        assert str(r["dead_window_ends"]) == ";".join(str(64 * 6 * i) for i in range(1, 11))
        assert r["dead_final"] == dead["fractions"][-1]
        if r["arch"] == "aen":  # full strength after the hold (5 + 20 % of 60) and ramp
            steps = 5 + math.floor((r.get("hp_warmup_frac") or 0.0) * 60) + 10
            assert r["hold_ramp_tokens"] == 64 * steps
            assert r["dead_post_ramp_windows"] == sum(384 * i >= 64 * steps for i in range(10))
            if dead.get("regime"):
                assert isinstance(r["regime_w_max_frac_final"], float)
        else:
            assert r["hold_ramp_tokens"] is None and r["dead_post_ramp_windows"] == 10


def test_figures_and_report(finished) -> None:
    _, out, _ = finished
    for name in LLM_FIGURES:
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000
    report = (out / "report.md").read_text()
    for heading in ("## Setting", "## Results per SAE", "## Matched sparsity",
                    "## Beside the authors' published Pythia-70M runs",
                    "### What differs between the two settings",
                    "## The size of the splice defect", "## Residual-stream outliers",
                    "## Dead latents over training", "EV all | EV excl."):
        assert heading in report
    assert "AdaptiveElasticNetSAE" in report  # their classes, from the shipped table
    # redraw from the table alone: byte-identical figures and report
    before = {p.name: p.read_bytes() for p in (out / "figures").iterdir()}
    report_before = (out / "report.md").read_bytes()
    assert cli.main(["figures", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in (out / "figures").iterdir()} == before
    assert (out / "report.md").read_bytes() == report_before


class _Kill(Exception):
    pass


def test_resume_after_interruptions_equals_uninterrupted(setup, finished, monkeypatch
                                                         ) -> None:
    root, model, corpus = setup
    cfg, _, table = finished
    out = root / "killed"
    calls: list[str] = []
    import aensae.llm.training as training  # imported by the phase when it runs

    real = training.train_on_cache

    def counting(run):
        calls.append(run.out.name)
        return real(run)

    monkeypatch.setattr(training, "train_on_cache", counting)

    def kill_at(phase):
        def on_phase(name):
            if name == phase:
                raise _Kill(name)
        return on_phase

    with pytest.raises(_Kill):
        llm_grid.reproduce_llm(cfg, out, progress=False, on_phase=kill_at("pass-1"))
    assert calls == ["pass-0", "pass-1"]
    stamp = {p: (out / "passes" / p / "run.json").stat().st_mtime_ns
             for p in ("pass-0", "pass-1")}
    calls.clear()
    with pytest.raises(_Kill):
        llm_grid.reproduce_llm(cfg, out, progress=False, on_phase=kill_at("eval-0"))
    assert "pass-0" not in calls and "pass-1" not in calls  # finished passes skipped
    assert {p: (out / "passes" / p / "run.json").stat().st_mtime_ns for p in stamp} == stamp
    group0 = (out / "evals" / "group-0.json").stat().st_mtime_ns
    assert not (out / "results.csv").exists()
    calls.clear()
    llm_grid.reproduce_llm(cfg, out, progress=False)
    assert calls == []  # every pass was finished
    assert (out / "evals" / "group-0.json").stat().st_mtime_ns == group0
    assert _no_timing(read_table(out / "results.csv")[1]) == _no_timing(read_table(table)[1])


def test_extra_eval_keys_become_columns(setup, finished, monkeypatch) -> None:
    root, _, _ = setup
    cfg, out0, _ = finished
    out = root / "extra"
    shutil.copytree(out0, out)
    shutil.rmtree(out / "evals")
    import aensae.llm.splice as splice

    real = splice.evaluate_saes

    def with_geometry(*args, **kwargs):
        res = real(*args, **kwargs)
        for i, r in enumerate(res["saes"].values()):
            r["lipschitz"] = {"lip_decoder_median": 1.0 + i, "flag": True}
            r["hoffman_median"] = 2.0 * i
        return res

    monkeypatch.setattr(splice, "evaluate_saes", with_geometry)
    llm_grid.reproduce_llm(cfg, out, progress=False)
    cols, rows = read_table(out / "results.csv")
    assert "lip_decoder_median" in cols and "hoffman_median" in cols and "flag" not in cols
    assert all(isinstance(r["lip_decoder_median"], float) for r in rows if r["kind"] == "sae")
    assert "`lip_decoder_median`" in (out / "report.md").read_text()


@pytest.mark.parametrize("damage, message", [
    (None, None),
    ("kind", " line 3: kind must be one of sae, unreachable, got 'oops'"),
    ("number", " line 2: ce_loss_score must be a number or empty, got 'high'"),
    ("column", ": missing column(s) kl_score"),
    ("rows", ": no rows"),
])
def test_llm_table_check_on_the_committed_table(tmp_path, damage, message) -> None:
    # the committed llm-quick table passes; each damage is one InputError naming the line
    source = Path(__file__).resolve().parents[2] / "figures" / "llm-quick" / "results.csv"
    with open(source, newline="") as fh:
        reader = csv.DictReader(fh)
        cols, rows = list(reader.fieldnames or []), list(reader)
    if damage == "kind":
        rows[1]["kind"] = "oops"
    elif damage == "number":
        rows[0]["ce_loss_score"] = "high"
    elif damage == "column":
        cols.remove("kl_score")
    elif damage == "rows":
        rows = []
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    if message is None:
        assert len(llm_grid.check_llm_table(path)) == len(rows)
        return
    with pytest.raises(InputError) as err:
        llm_grid.check_llm_table(path)
    assert str(err.value) == f"results table {path}{message}"


def test_flatten_prefixes_only_repeated_keys() -> None:
    rec = {"l0": 3, "path": "x", "ok": True, "exact": {"exact_l0": 2.0, "l0": 1.0},
           "geo": {"h": np.float64(0.5)}, "none": None}
    assert llm_grid._flatten(rec) == {"l0": 3.0, "exact_l0": 2.0, "exact.l0": 1.0, "h": 0.5}


@pytest.mark.parametrize("name, model", [("llm-pythia70m", "EleutherAI/pythia-70m-deduped"),
                                         ("llm-llama3.1-8b", "meta-llama/Llama-3.1-8B")])
def test_paper_configs_stop_with_one_line_without_the_hub(name, model, tmp_path, capsys
                                                          ) -> None:
    out = tmp_path / "out"
    assert cli.main(["reproduce", "--config", name, "--out", str(out),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert model in err[0] and "cannot be fetched" in err[0]
    assert not out.exists()  # nothing written before the check


@pytest.mark.parametrize("table, key, value, message", [
    ("data", "exclude_outliers", "yes", "must be true or false, got 'yes'"),
    ("data", "exclude_outliers", 1, "must be true or false, got 1"),
    ("eval", "outlier_factor", 1, "must be > 1, got 1"),
    ("eval", "outlier_factor", 0.5, "must be > 1, got 0.5"),
    ("eval", "outlier_factor", "10", "must be a number, got '10'"),
    ("eval", "rare_rate", 0, "must be > 0, got 0"),
    ("train", "dead_window", 63, "must lie between one batch (train.batch_size 64 tokens) "
     "and the whole run (train.steps x train.batch_size = 3840 tokens), got 63"),
    ("train", "dead_window", 3841, "must lie between one batch (train.batch_size 64 "
     "tokens) and the whole run (train.steps x train.batch_size = 3840 tokens), got 3841"),
])
def test_bad_starvation_options_are_one_line_errors(setup, tmp_path, capsys, table, key,
                                                    value, message) -> None:
    """The outlier option, the rare rate and the dead window: one line naming the key,
    the value and what was expected, before any work (nothing is written)."""
    _, model, corpus = setup
    raw = _config(model, corpus)
    raw[table][key] = value
    with pytest.raises(InputError) as err:
        load_llm_config(raw)
    assert str(err.value) == f"config {table}.{key}: {message}"
    out = tmp_path / "o"
    path = tmp_path / "c.toml"
    tables: dict = {"data": {"kind": "llm", "model": "smollm2-135m"},
                    "train": {"steps": 60, "batch_size": 64}, "eval": {}}
    tables[table][key] = value
    path.write_text("".join(f"[{t}]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                 for k, v in kv.items())
                            for t, kv in tables.items())
                    + '[[family]]\nname = "t"\narch = "topk"\ntarget_l0 = [4.0]\n')
    assert cli.main(["reproduce", "--config", str(path), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"config {table}.{key}: {message}" in lines[0], lines
    assert not out.exists()


def test_the_default_dead_window_is_a_tenth_of_the_run(setup) -> None:
    _, model, corpus = setup
    cfg = load_llm_config(_config(model, corpus))
    assert cfg.dead_window == 64 * 6  # 60 steps: windows of 6 steps of 64 tokens
    raw = _config(model, corpus)
    raw["train"]["steps"] = 61  # rounded up to whole batches: 7 steps
    assert load_llm_config(raw).dead_window == 64 * 7
    raw["train"]["dead_window"] = 640
    assert load_llm_config(raw).dead_window == 640


def test_bad_llm_configs_are_one_line_errors(setup, tmp_path, capsys) -> None:
    _, model, corpus = setup
    raw = _config(model, corpus)
    raw["train"]["stepz"] = 3
    with pytest.raises(InputError, match=r"\[train\].*stepz"):
        load_llm_config(raw)
    raw = _config(model, corpus)
    del raw["family"][2]["target_l0"]
    raw["family"][2]["hyper"] = {"k_top": 4}
    with pytest.raises(InputError, match="target_l0 is required"):
        load_llm_config(raw)
    path = tmp_path / "c.toml"
    path.write_text('[data]\nkind = "llm"\nmodel = "smollm2-135m"\n[[family]]\nname = "t"\n'
                    'arch = "topk"\ntarget_l0 = [4.0]\n')
    assert cli.main(["reproduce", "--config", str(path), "--workers", "2",
                     "--out", str(tmp_path / "o")]) == 2
    assert "--workers" in capsys.readouterr().err
    for option in (["--executor", "ray"], ["--gpus", "0.5"]):
        assert cli.main(["reproduce", "--config", str(path), *option,
                         "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert option[0] in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "o").exists()


def test_overwrite_refuses_user_files_at_any_depth(setup, finished, capsys) -> None:
    """``--overwrite`` clears only what the grid wrote, at every depth: a user's folder
    inside ``passes/`` or a file in a cache is refused before anything is removed; a lock
    file is aensae's own."""
    root, _, _ = setup
    cfg, out0, _ = finished
    out = root / "user-files"
    shutil.copytree(out0, out)
    (out / "passes" / "mine").mkdir()
    (out / "passes" / "mine" / "notes.txt").write_text("keep me")
    (out / "cache" / "README").write_text("mine too")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    other = load_llm_config({**_config(*setup[1:]), "experiment": {
        "name": "other", "seed": 1, "device": "cpu", "threads": 1}})
    with pytest.raises(InputError, match=r"passes/mine/.*cache/README|cache/README.*passes/mine/"):
        llm_grid.reproduce_llm(other, out, progress=False, overwrite=True)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_the_grid_verifies_its_caches(setup, finished) -> None:
    """A shard of the grid's cache overwritten with finite garbage is refused when a
    training pass opens the cache, naming the shard and the command that rebuilds it."""
    root, _, _ = setup
    cfg, out0, _ = finished
    out = root / "garbage"
    shutil.copytree(out0, out)
    shard = out / "cache" / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:start + 64] = bytes(range(64))
    shard.write_bytes(bytes(data))
    (out / "passes" / "pass-0" / "l0.json").unlink()  # pass 0 opens the cache again
    with pytest.raises(InputError, match=r"cache .*shard-00000\.safetensors does not match "
                                         r"the SHA-256.*aensae llm harvest .*--overwrite"):
        llm_grid.reproduce_llm(cfg, out, progress=False)


@pytest.mark.parametrize("key, value, message", [
    ("seeds", [], r"experiment\.seeds: must be a non-empty list"),
    ("seeds", [1, 2, 3], r"experiment\.seeds: must include the calibration seed"),
    ("seeds", [0, 1, 1], r"experiment\.seeds: must not repeat"),
    ("seeds", [0, -1], r"experiment\.seeds\[1\]"),
    ("seeds", [0, 1], r"experiment\.seeds: must list at least 3 seeds"),
    ("seeds", [0], r"experiment\.seeds: must list at least 3 seeds"),
    ("seeds", [0, 1, 2], r"calibrate\.frontier: must be set"),
])
def test_bad_seed_options_are_one_line_errors(setup, key, value, message) -> None:
    _, model, corpus = setup
    raw = _config(model, corpus)
    raw["experiment"][key] = value
    with pytest.raises(InputError, match=message) as err:
        load_llm_config(raw)
    assert len(str(err.value).splitlines()) == 1
    raw = _config(model, corpus)
    raw["calibrate"]["frontier"] = 1.0
    with pytest.raises(InputError, match=r"calibrate\.frontier"):
        load_llm_config(raw)


def test_absent_seed_options_keep_the_hash(setup) -> None:
    _, model, corpus = setup
    plain = load_llm_config(_config(model, corpus))
    raw = _config(model, corpus)
    raw["experiment"]["seeds"] = [0, 1, 2]
    raw["calibrate"]["frontier"] = 1.5
    several = load_llm_config(raw)
    assert plain.seeds == [0] and plain.frontier == 1.0
    assert several.seeds == [0, 1, 2] and several.frontier == 1.5
    assert plain.config_hash() != several.config_hash()
    # a config written before the options existed: the same normalised dict without them
    d = json.loads(json.dumps(plain.to_dict()))
    del d["experiment"]["seeds"], d["calibrate"]["frontier"]
    for key in ("threads", "max_memory_gb"):
        d["experiment"].pop(key)
    d["train"].pop("checkpoint_every")
    from aensae.experiments.config import canonical_hash
    assert plain.config_hash() == canonical_hash(d)


SEED_TARGET = 4.0
FRONTIER = 1.5


@pytest.fixture(scope="module")
def seeded(setup):
    """Three seeds, runs on either side of one target: the verdict grid's shape."""
    root, model, corpus = setup
    raw = _config(model, corpus, name="tiny-seeds")
    raw["experiment"]["seeds"] = [0, 1, 2]
    raw["calibrate"]["frontier"] = FRONTIER
    raw["family"] = [
        {"name": "relu_l1", "arch": "relu_l1", "target_l0": [SEED_TARGET],
         "calibrate_range": [1e-3, 3e-2]},
        {"name": "aen", "arch": "aen", "target_l0": [SEED_TARGET],
         "calibrate_range": [1e-3, 3e-2],
         "hyper": {"l2": 1e-3, "warmup_steps": 5, "ramp_steps": 10}},
        {"name": "topk", "arch": "topk", "target_l0": [SEED_TARGET]},
    ]
    cfg = load_llm_config(raw)
    out = root / "seeds"
    torch.set_num_threads(1)
    table = llm_grid.reproduce_llm(cfg, out, progress=False)
    return cfg, out, table


def test_every_seed_trains_the_calibrated_runs_on_either_side(seeded) -> None:
    cfg, out, table = seeded
    rows = [r for r in read_table(table)[1] if r["kind"] == "sae"]
    lo, hi = SEED_TARGET / FRONTIER, SEED_TARGET * FRONTIER
    for fam in ("relu_l1", "aen"):
        mine = [r for r in rows if r["family"] == fam]
        assert sorted({r["seed"] for r in mine}) == [0.0, 1.0, 2.0]
        assert sorted({r["target_l0"] for r in mine}) == pytest.approx([lo, hi])
        for t in (lo, hi):
            at = [r for r in mine if r["target_l0"] == pytest.approx(t)]
            assert len(at) == 3  # one run per seed
            assert len({r["calibrated_value"] for r in at}) == 1  # the calibration's penalty
            # seeds 1 and 2 trained in passes of their own, on their own batches
            others = [r for r in at if r["seed"] != 0]
            assert all(r["sae"].endswith(f"-seed{r['seed']:.0f}") for r in others)
            assert len({r["pass"] for r in at}) == 3
            assert len({round(r["l0"], 9) for r in at}) == 3  # different runs
    topk = [r for r in rows if r["family"] == "topk"]
    assert sorted(r["seed"] for r in topk) == [0.0, 1.0, 2.0]
    assert all(r["l0"] == SEED_TARGET for r in topk)
    for r in rows:
        run = json.loads((out / "passes" / f"pass-{r['pass']:.0f}" / r["sae"] / "cfg.json")
                         .read_text())
        assert run.get("seed", run.get("train", {}).get("seed")) == r["seed"]
    assert len({r["run_id"] for r in rows}) == len(rows)


def test_seeded_verdicts_read_each_seed_at_the_target(seeded) -> None:
    from aensae.experiments.llm.verdicts import verdict_cells

    _, out, table = seeded
    rows = read_table(table)[1]
    cells = verdict_cells(rows, [SEED_TARGET])
    assert {(c["metric"], c["base"]) for c in cells} == {
        (m, b) for m in ("dead_final", "ce_loss_score", "kl_spliced")
        for b in ("relu_l1", "topk")}
    # each seed's value, by the interpolation written out: linear in log L0 between its
    # two runs, when they bracket the target
    for c in cells:
        expect = []
        for s in (0.0, 1.0, 2.0):
            pts = sorted((r["l0"], r[c["metric"]]) for r in rows if r["kind"] == "sae"
                         and r["family"] == "aen" and r["seed"] == s)
            (l1, v1), (l2, v2) = pts
            if l1 <= SEED_TARGET <= l2 and l1 < l2:
                w = (math.log(SEED_TARGET) - math.log(l1)) / (math.log(l2) - math.log(l1))
                expect.append(v1 + w * (v2 - v1))
        if c["outcome"].startswith("undecided (") and "seed" in c["outcome"]:
            assert sorted(c["a"]) == pytest.approx(sorted(expect))
        else:
            assert len(expect) == 3 and sorted(c["a"]) == pytest.approx(sorted(expect))
        if c["base"] == "topk":  # L0 = k = the target: the run's own value
            got = sorted(r[c["metric"]] for r in rows if r["kind"] == "sae"
                         and r["family"] == "topk")
            assert sorted(c["b"]) == pytest.approx(got)
    report = (out / "report.md").read_text()
    assert "## Verdicts at the target L0" in report
    assert "| seeds | 0, 1, 2 (calibration seed 0) |" in report
    assert "aen vs relu_l1, dead fraction" in report


def test_a_seeded_grid_resumes_without_training(seeded, monkeypatch) -> None:
    cfg, out, table = seeded
    import aensae.llm.training as training

    def refuse(run):
        raise AssertionError(f"trained {run.out.name} again")

    monkeypatch.setattr(training, "train_on_cache", refuse)
    before = _no_timing(read_table(table)[1])
    llm_grid.reproduce_llm(cfg, out, progress=False)
    assert _no_timing(read_table(table)[1]) == before
