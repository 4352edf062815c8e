"""Fuzz test of the command line: argv drawn from each command's options (valid, boundary
and invalid values), run in-process on tiny sizes. The ``llm`` commands run on a tiny
random Llama saved as a model folder (no download), its cache and SAEs; ``llm harvest``
also meets a finished cache in ``--out``, which a refused command must leave as it was.

For every example: the exit status is 0 or 2 (argparse's usage errors exit 2 through
``SystemExit``); a status-2 exit prints no traceback; nothing is written outside the
given output (the whole scratch tree is compared before and after, with the working
folder inside it); a status-0 run wrote the files its command promises. Any other
exception escapes ``aensae.cli.main`` and fails the test with its traceback.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from grid_support import MICRO
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from aensae import cli
from aensae.cli.train import ARCH_CHOICES
from aensae.experiments.spiked.figures import FIGURES
from aensae.experiments.spiked.train_run import OUTPUT_FILES

BASE = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


def fuzz(examples: int) -> settings:
    """Bounded, reproducible (derandomized) runs without a per-example deadline."""
    return settings(BASE, max_examples=examples)

OUT_KINDS = ("new", "relative", "file", "under_file", "empty")
#: Output locations as drawn: usable ones twice as often as each bad one.
OUT_DRAWS = ("new", "new", "relative", "relative", "file", "under_file", "empty")


def opt(flag: str, values: list[str | None]) -> st.SearchStrategy[list[str]]:
    """``[flag, value]`` or nothing (``None``: the option left out)."""
    return st.sampled_from(values).map(lambda v: [] if v is None else [flag, v])


Spec = dict[str, tuple[list[str | None], list[str]]]


def options(data: st.DataObject, spec: Spec) -> list[str]:
    """Options of ``spec`` (flag -> (valid values, invalid values); ``None``: left out).

    Half the examples draw only valid values (boundaries included), a quarter make one
    option invalid, a quarter mix both freely, so that runs which do work are common.
    """
    mode = data.draw(st.sampled_from(["valid", "valid", "one_bad", "mixed"]), "mode")
    bad = data.draw(st.sampled_from(sorted(spec)), "bad option") if mode == "one_bad" else None
    argv: list[str] = []
    for flag, (good, wrong) in spec.items():
        pool = wrong if flag == bad else [*good, *wrong] if mode == "mixed" else good
        value = data.draw(st.sampled_from(pool), flag)
        if value is not None:
            argv += [flag, value]
    return argv


class Scratch:
    """A fresh folder per example: ``cwd/`` (the working folder), ``afile``, outputs."""

    def __init__(self, base: Path) -> None:
        self.root = Path(tempfile.mkdtemp(dir=base))
        self.cwd = self.root / "cwd"
        self.cwd.mkdir()
        (self.root / "afile").write_text("not a folder")

    def out(self, kind: str, name: str = "out") -> tuple[str, Path | None]:
        """(argument, the path it names) for an output location of ``kind``."""
        return {"new": (str(self.root / name / "x"), self.root / name / "x"),
                "relative": (name, self.cwd / name),
                "file": (str(self.root / "afile"), self.root / "afile"),
                "under_file": (str(self.root / "afile" / name), self.root / "afile" / name),
                "empty": ("", None)}[kind]

    def tree(self) -> dict[str, bytes | None]:
        return {str(p.relative_to(self.root)): (None if p.is_dir() else p.read_bytes())
                for p in sorted(self.root.rglob("*"))}

    def run(self, argv: list[str], outs: list[Path | None]) -> tuple[int, str]:
        """Run ``aensae argv`` in ``cwd``; check status, stderr and writes; return both."""
        before = self.tree()
        here = os.getcwd()
        os.chdir(self.cwd)
        err = io.StringIO()
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(err):
                try:
                    status = cli.main(argv)
                except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
                    status = exc.code
        finally:
            os.chdir(here)
        text = err.getvalue()
        event(f"{' '.join(argv[:2] if argv[0] == 'bench' else argv[:1])}: status {status}")
        if os.environ.get("AENSAE_FUZZ_SHOW"):
            event(text.strip().splitlines()[-1][:90] if status == 2 else "ok")
        assert status in (0, 2), (argv, status, text)
        if status == 2:
            assert "Traceback" not in text, (argv, text)
            assert text.strip(), (argv, "status 2 without a message")
        after = self.tree()
        allowed = [str(p.relative_to(self.root)) for p in outs
                   if p is not None and p.is_relative_to(self.root)]
        changed = {k for k in set(before) | set(after) if before.get(k, 0) != after.get(k, 0)}
        outside = sorted(k for k in changed
                         if not any(k == a or k.startswith(a + os.sep) or a.startswith(k + os.sep)
                                    for a in allowed))
        assert not outside, (argv, status, outside)
        return status, text

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def saes(tmp_path_factory) -> dict[str, Path]:
    """Two tiny trained SAEs (one with an exact problem, one without) for ``--sae``."""
    folder = tmp_path_factory.mktemp("fuzz_saes")
    made = {}
    for arch in ("relu_l1", "topk"):
        out = folder / arch
        argv = ["train", "--arch", arch, "--out", str(out), "--n", "4", "--m", "8", "--k",
                "1", "--steps", "3", "--batch-size", "8", "--eval-samples", "8",
                "--dead-window", "8", "--no-progress"]
        if arch == "topk":
            argv += ["--k-top", "2"]
        with redirect_stdout(io.StringIO()):
            assert cli.main(argv) == 0
        made[arch] = out
    return made


# ----------------------------------------------------------------------------- train
@fuzz(80)
@given(data=st.data())
def test_fuzz_train(tmp_path, data) -> None:
    s = Scratch(tmp_path)
    try:
        out_kind = data.draw(st.sampled_from(OUT_DRAWS), "out")
        out_arg, out_path = s.out(out_kind)
        arch = data.draw(st.sampled_from(ARCH_CHOICES), "arch")
        argv = ["train", "--arch", arch, "--out", out_arg, "--no-progress"]
        argv += options(data, {
            "--n": (["2", "4"], ["0", "1", "x"]), "--m": (["4", "8"], ["0", "-1"]),
            "--k": (["1", "4"], ["0", "9"]), "--d-sae": ([None, "4", "6"], ["0"]),
            "--steps": (["1", "2", "3"], ["0", "-1"]), "--batch-size": (["1", "4"], ["0"]),
            "--eval-samples": (["2", "8"], ["0", "1"]),
            "--dead-window": (["1", "8"], ["0"]),
            "--checkpoint-every": ([None, "0", "1", "2"], ["-1"]),
            "--eval-every": ([None, "0", "1"], ["-1"]),
            "--lr": ([None, "0.01"], ["0", "-1", "nan", "inf"]),
            "--lr-warmup-steps": ([None, "0", "2"], ["-1"]),
            "--grad-clip": ([None, "1"], ["0", "-inf"]),
            "--rho": ([None, "0", "0.5", "0.99"], ["-0.1", "1"]),
            "--lo": ([None, "0.5"], ["0", "-1"]), "--hi": ([None, "3"], ["0.1"]),
            "--noise-std": ([None, "0", "0.1"], ["-1"]),
            "--device": ([None, "cpu", "auto"], ["cuda:7", "", "bogus", "mps"]),
            "--dtype": ([None, "float64"], ["float16"]),
            "--seed": ([None, "0", "3"], ["-1"]),
            "--set": ([None], ["bogus=1", "x", "gamma=y", "=1", "aux_k=100"]),
            "--k-top": ((["1", "2"] if "topk" in arch else [None]), ["0", "100"]),
        })
        if data.draw(st.booleans(), "overwrite"):
            argv.append("--overwrite")
        status, _ = s.run(argv, [out_path])
        if status == 0:
            assert sorted(p.name for p in out_path.iterdir()) == sorted(OUTPUT_FILES)
    finally:
        s.close()


# ----------------------------------------------------------------------------- geometry
@fuzz(60)
@given(data=st.data())
def test_fuzz_geometry(tmp_path, saes, data) -> None:
    s = Scratch(tmp_path)
    try:
        source = data.draw(st.sampled_from(["rho", "relu_l1", "topk", "both", "neither",
                                            "missing", "file"]), "source")
        argv = ["geometry"]
        if source in ("relu_l1", "topk"):
            argv += ["--sae", str(saes[source])]
        elif source == "both":
            argv += ["--sae", str(saes["relu_l1"])]
        elif source == "missing":
            argv += ["--sae", str(s.root / "nope")]
        elif source == "file":
            argv += ["--sae", str(s.root / "afile")]
        if source in ("rho", "both") or data.draw(st.booleans(), "rho given"):
            argv += ["--rho", data.draw(st.sampled_from(["-0.5", "0", "0.5", "1.0"]), "rho")]
        json_kind = data.draw(st.sampled_from((None, *OUT_DRAWS)), "json")
        json_arg, json_path = s.out(json_kind, "g.json") if json_kind else (None, None)
        if json_kind:
            argv += ["--json", json_arg]
        argv += options(data, {
            "--samples": (["1", "3"], ["0"]), "--n": (["2", "4"], ["1"]),
            "--m": (["4", "8"], ["0"]), "--k": (["1", "4"], ["0", "9"]),
            "--lam1": ([None, "0.5"], ["0", "-1"]), "--lam2": ([None, "0", "0.05"], ["-1"]),
            "--trajectory": ([None, "0", "2"], ["-1"]),
            "--trajectory-iter": ([None, "5"], ["0"]),
            "--encoder-samples": ([None, "2", "3"], ["1"]), "--seed": ([None, "1"], ["-1"]),
        })
        status, _ = s.run(argv, [json_path])
        if status == 0 and json_path is not None:
            assert json_path.is_file()
    finally:
        s.close()


# ----------------------------------------------------------------------------- bench
@fuzz(30)
@given(data=st.data())
def test_fuzz_bench_train(tmp_path, data) -> None:
    s = Scratch(tmp_path)
    try:
        argv = ["bench", "train"]
        json_kind = data.draw(st.sampled_from((None, *OUT_DRAWS)), "json")
        json_arg, json_path = s.out(json_kind, "b.json") if json_kind else (None, None)
        if json_kind:
            argv += ["--json", json_arg]
        argv += options(data, {
            "--n": (["2", "4"], ["1"]), "--m": (["4", "8"], ["0"]),
            "--batch-size": (["1", "4"], ["0"]), "--k": (["1", "4"], ["0", "9"]),
            "--models": (["1", "2"], ["0"]), "--steps": (["1", "2"], ["0"]),
            "--repeats": (["1"], ["0"]), "--threads": ([None, "1"], ["0", "100000"]),
            "--arch": ([None, "aen", "jumprelu", "batchtopk"], ["nope"]),
        })
        if data.draw(st.booleans(), "--stack"):
            argv.append("--stack")
        if data.draw(st.booleans(), "--graph"):  # refused here: no CUDA (or no --stack)
            argv.append("--graph")
        status, _ = s.run(argv, [json_path])
        if status == 0 and json_path is not None:
            assert json_path.is_file()
    finally:
        s.close()


@fuzz(30)
@given(data=st.data())
def test_fuzz_bench_geometry(tmp_path, data) -> None:
    s = Scratch(tmp_path)
    try:
        argv = ["bench", "geometry"]
        json_kind = data.draw(st.sampled_from((None, *OUT_DRAWS)), "json")
        json_arg, json_path = s.out(json_kind, "b.json") if json_kind else (None, None)
        if json_kind:
            argv += ["--json", json_arg]
        argv += options(data, {
            "--samples": (["2", "4"], ["0"]), "--dense": (["1", "2"], ["0", "9"]),
            "--n": (["2", "4"], ["1"]), "--m": (["20", "24"], ["8"]),
            "--rho": ([None, "0", "0.9"], ["-1", "1"]), "--lam1": ([None, "0.5"], ["0", "-1"]),
            "--lam2": ([None, "0", "0.05"], ["-1"]), "--seed": ([None, "2"], ["-1"]),
        })
        status, _ = s.run(argv, [json_path])
        if status == 0 and json_path is not None:
            assert json_path.is_file()
    finally:
        s.close()


@fuzz(10)
@given(data=st.data())
def test_fuzz_bench_solvers(tmp_path, data) -> None:
    s = Scratch(tmp_path)
    try:
        argv = ["bench", "solvers", "--quick"]
        json_kind = data.draw(st.sampled_from((None, "new", "file", "empty")), "json")
        json_arg, json_path = s.out(json_kind, "s.json") if json_kind else (None, None)
        if json_kind:
            argv += ["--json", json_arg]
        argv += ["--rho", *data.draw(st.sampled_from([["0"], ["0"], ["1.5"], ["-0.1"],
                                                      ["0", "0"], ["nan"]]), "rho")]
        argv += ["--signals", data.draw(st.sampled_from(["1", "2", "0", "-2"]), "signals")]
        argv += data.draw(opt("--seed", [None, "-1", "0"]), "seed")
        status, _ = s.run(argv, [json_path])
        if status == 0 and json_path is not None:
            assert json_path.is_file()
    finally:
        s.close()


# ----------------------------------------------------------------------------- reproduce
CONFIGS = {
    "valid": MICRO.format(name="micro", threads=1, family="topk"),
    "no_data": MICRO.format(name="micro", threads=1, family="topk").replace(
        "[data]\nn = 4\nm = 8\nk = 1\nrho = [0.0]\n", ""),
    "bad_name": MICRO.format(name="../up", threads=1, family="topk"),
    "bad_family": MICRO.format(name="micro", threads=1, family="a/b"),
    "threads": MICRO.format(name="micro", threads=100000, family="topk"),
    "bad_toml": "[experiment\n",
}


@fuzz(30)
@given(data=st.data())
def test_fuzz_reproduce(tmp_path, data) -> None:
    s = Scratch(tmp_path)
    try:
        # as options(): half the examples valid throughout, the others with one bad part
        bad = data.draw(st.sampled_from([None, None, "config", "device", "out"]), "bad part")
        kind = data.draw(st.sampled_from(
            [k for k in (*CONFIGS, "latin1", "missing", "named", "empty") if k != "valid"]
            if bad == "config" else ["valid"]), "config")
        path = s.root / "grid.toml"
        if kind in CONFIGS:
            path.write_text(CONFIGS[kind])
            config = str(path)
        elif kind == "latin1":
            path.write_bytes(CONFIGS["valid"].encode() + "# caf\xe9\n".encode("latin-1"))
            config = str(path)
        else:
            config = {"missing": str(s.root / "none.toml"), "named": "nosuchname",
                      "empty": ""}[kind]
        out_kind = data.draw(st.sampled_from(("file", "under_file", "empty") if bad == "out"
                                             else (None, "new", "relative")), "out")
        argv = ["reproduce", "--config", config, "--no-progress"]
        if out_kind is None:
            out_path = s.cwd / "results" / "micro"  # the default: results/<name>
        else:
            out_arg, out_path = s.out(out_kind)
            argv += ["--out", out_arg]
        argv += data.draw(opt("--device", ["cuda", "bogus", "", "cuda:3"] if bad == "device"
                              else [None, "cpu", "auto"]), "device")
        figures = data.draw(st.booleans(), "figures")
        if not figures:
            argv.append("--no-figures")
        if data.draw(st.booleans(), "overwrite"):
            argv.append("--overwrite")
        status, _ = s.run(argv, [out_path])
        if status == 0:
            assert (out_path / "results.csv").is_file()
            if figures:
                assert (out_path / "report.md").is_file()
                assert {p.stem for p in (out_path / "figures").glob("*.png")} == set(FIGURES)
    finally:
        s.close()


@fuzz(20)
@given(data=st.data())
def test_fuzz_figures(tmp_path, data) -> None:
    from report_support import _rows

    from aensae.experiments.results import write_table

    s = Scratch(tmp_path)
    try:
        kind = data.draw(st.sampled_from(["valid", "valid", "truncated", "header_only",
                                          "missing_dir", "file", "empty_arg", "no_table"]),
                         "table")
        folder = s.root / "res"
        if kind in ("valid", "truncated", "header_only", "no_table"):
            folder.mkdir()
            if data.draw(st.booleans(), "old outputs"):  # a previous drawing to replace
                (folder / "figures").mkdir()
                (folder / "figures" / "fig1_dead_ev_vs_l0.png").write_bytes(b"old")
                (folder / "report.md").write_text("old")
        if kind in ("valid", "truncated", "header_only"):
            dead = data.draw(st.sampled_from([0.02, 0.6]), "aen dead fraction")
            write_table(folder / "results.csv", _rows(aen_dead_hi=dead, aen_bias=0.97))
            text = (folder / "results.csv").read_text()
            if kind == "truncated":
                (folder / "results.csv").write_text(text[: len(text) // 2])
            elif kind == "header_only":
                (folder / "results.csv").write_text(text.splitlines()[0] + "\n")
        arg = {"file": str(s.root / "afile"), "empty_arg": ""}.get(kind, str(folder))
        status, _ = s.run(["figures", arg], [folder])
        if status == 0:
            assert (folder / "report.md").is_file()
            assert {p.stem for p in (folder / "figures").glob("*.png")} == set(FIGURES)
    finally:
        s.close()


# ----------------------------------------------------------------------------- llm
@pytest.fixture(scope="module")
def llm_env(tmp_path_factory, smol_tokenizer_dir) -> dict[str, Path]:
    """A tiny random Llama folder (2 blocks, d 16, 512 positions: no download), a corpus,
    a 300-token cache of block 1, and an ``llm train`` output of two SAEs on it."""
    pytest.importorskip("transformers")
    from llm_support import save_tiny

    from aensae.llm.cache import HarvestConfig, harvest
    from aensae.llm.models import load_model

    root = tmp_path_factory.mktemp("fuzz_llm")
    model = save_tiny("llama", smol_tokenizer_dir, root / "model", d=16, layers=2)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(24):
        (corpus / f"{i:02d}.md").write_text(f"# note {i}\n" + f"word{i % 5} and text " * 10)
    cache = root / "cache"
    harvest(HarvestConfig(model=str(model), layer=1, text=str(corpus), tokens=300, ctx=16,
                          batch_size=4, shard_windows=8, shuffle_windows=4,
                          eval_fraction=0.3, device="cpu"),
            cache, model=load_model(str(model), device="cpu"), progress=False)
    saes = root / "saes"
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert cli.main(["llm", "train", "--cache", str(cache), "--arch", "relu_l1",
                         "--arch", "topk", "--k-top", "2", "--d-sae", "8", "--steps", "2",
                         "--batch-size", "16", "--device", "cpu", "--no-progress",
                         "--out", str(saes)]) == 0
    return {"root": root, "model": model, "corpus": corpus, "cache": cache, "saes": saes}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@fuzz(25)
@given(data=st.data())
def test_fuzz_llm_harvest(tmp_path, llm_env, data) -> None:
    s = Scratch(tmp_path)
    try:
        out_kind = data.draw(st.sampled_from((*OUT_DRAWS, "existing", "existing")), "out")
        if out_kind == "existing":  # a finished cache in --out: it must never be lost
            out_path = s.root / "cache"
            shutil.copytree(llm_env["cache"], out_path)
            out_arg = str(out_path)
            before = _files(out_path)
        else:
            out_arg, out_path = s.out(out_kind)
        argv = ["llm", "harvest", "--out", out_arg, "--no-progress"]
        argv += options(data, {
            "--model": ([str(llm_env["model"])], ["no-such-alias", str(s.root / "afile"), ""]),
            "--layer": (["1", "0"], ["2", "-1", "x"]),
            "--text": ([str(llm_env["corpus"])], [str(s.root / "nope"), str(s.root / "afile"),
                                                  ""]),
            "--tokens": (["300", "40"], ["0", "-3"]),
            "--ctx": (["16", "8"], ["1", "100000"]),
            "--batch-size": (["4", "2"], ["0"]),
            "--shard-windows": (["8", "3"], ["0"]),
            "--shuffle-windows": (["4", None], ["0"]),
            "--eval-fraction": (["0.3", None], ["0", "1.5"]),
            "--hook": ([None, "mlp_out"], ["resid_pre"]),
            "--split": ([None, "eval"], ["test"]),
            "--device": (["cpu", None], ["cuda:7", "bogus", ""]),
            "--max-memory": ([None, "4"], ["0", "1e-9", "nan"]),
            "--seed": ([None, "1"], ["-1"]),
        })
        if data.draw(st.booleans(), "overwrite"):
            argv.append("--overwrite")
        status, _ = s.run(argv, [out_path])
        if status == 0:
            man = json.loads((out_path / "manifest.json").read_text())
            assert man["complete"] and 0 < man["tokens"] <= int(argv[argv.index("--tokens") + 1]
                                                                if "--tokens" in argv else 300)
            assert sorted(p.name for p in out_path.iterdir()) == sorted(
                ["manifest.json", *(r["file"] for r in man["shards"])])
        elif out_kind == "existing":
            assert _files(out_path) == before  # nothing lost
    finally:
        s.close()


@fuzz(40)
@given(data=st.data())
def test_fuzz_llm_train(tmp_path, llm_env, data) -> None:
    s = Scratch(tmp_path)
    try:
        cache_kind = data.draw(st.sampled_from(["good"] * 5 + ["missing", "file", "damaged",
                                                             "manifest"]), "cache")
        cache = llm_env["cache"]
        if cache_kind in ("damaged", "manifest"):  # a copy, damaged
            cache = s.root / "cache"
            shutil.copytree(llm_env["cache"], cache)
            if cache_kind == "damaged":
                shard = cache / "shard-00000.safetensors"
                shard.write_bytes(shard.read_bytes()[:100])
            else:
                (cache / "manifest.json").write_text("[]")
        elif cache_kind != "good":
            cache = {"missing": s.root / "nope", "file": s.root / "afile"}[cache_kind]
        out_kind = data.draw(st.sampled_from(OUT_DRAWS), "out")
        out_arg, out_path = s.out(out_kind)
        arch = data.draw(st.sampled_from(ARCH_CHOICES), "arch")
        argv = ["llm", "train", "--cache", str(cache), "--arch", arch, "--out", out_arg,
                "--no-progress"]
        argv += options(data, {
            "--d-sae": (["8", "4"], ["0", "1000000000000"]),
            "--steps": (["1", "2"], ["0", "-1"]),
            "--batch-size": (["16", "8"], ["0", "301", "100000"]),
            "--lr": ([None, "0.01"], ["0", "nan", "inf"]),
            "--normalisation": ([None, "per_token", "none"], ["l2"]),
            "--dead-window": ([None, "8"], ["0"]),
            "--checkpoint-every": ([None, "0", "1"], ["-1"]),
            "--device": ([None, "cpu"], ["cuda:7", "bogus"]),
            "--dtype": ([None, "float64"], ["float16"]),
            "--seed": ([None, "2"], ["-1"]),
            "--max-memory": ([None, "4"], ["0", "1e-9", "inf"]),
            "--sweep": ([None], ["l1", "bogus=1,2", "=1"]),
            "--k-top": ((["2"] if "topk" in arch else [None]), ["0", "100"]),
        })
        if data.draw(st.booleans(), "overwrite"):
            argv.append("--overwrite")
        before = _files(llm_env["cache"])
        status, _ = s.run(argv, [out_path])
        assert _files(llm_env["cache"]) == before  # reading a cache never changes it
        if status == 0:
            assert (out_path / "run.json").is_file() and (out_path / arch / "cfg.json").is_file()
            assert not any(p.name.startswith(".") for p in out_path.iterdir())  # lock gone
    finally:
        s.close()


@fuzz(40)
@given(data=st.data())
def test_fuzz_llm_eval(tmp_path, llm_env, data) -> None:
    s = Scratch(tmp_path)
    try:
        sae_kind = data.draw(st.sampled_from(["run", "run", "one", "one", "one", "missing",
                                              "file", "damaged", "nan"]), "sae")
        sae = {"run": llm_env["saes"], "one": llm_env["saes"] / "topk",
               "missing": s.root / "nope", "file": s.root / "afile"}.get(sae_kind)
        if sae is None:  # a damaged copy
            sae = s.root / "sae"
            shutil.copytree(llm_env["saes"] / "relu_l1", sae)
            cfg = json.loads((sae / "cfg.json").read_text())
            if sae_kind == "damaged":
                cfg["llm"].pop("normalisation")
            else:
                cfg["llm"]["normalisation"]["constant"] = float("nan")
            (sae / "cfg.json").write_text(json.dumps(cfg))
        argv = ["llm", "eval", "--sae", str(sae), "--no-progress"]
        json_kind = data.draw(st.sampled_from((None, None, *OUT_DRAWS)), "json")
        json_arg, json_path = s.out(json_kind, "e.json") if json_kind else (None, None)
        if json_kind:
            argv += ["--json", json_arg]
        argv += options(data, {
            "--model": ([str(llm_env["model"])], ["no-such-alias", str(s.root / "afile")]),
            "--text": ([str(llm_env["corpus"])], [str(s.root / "nope")]),
            "--tokens": (["30", "12"], ["0", "-1"]),
            "--ctx": (["16", "8"], ["1", "100000"]),
            "--batch-size": ([None, "2"], ["0"]),
            "--eval-fraction": (["0.3"], ["0", "1", "1e-12"]),
            "--layer": ([None, "1"], ["2", "-1"]),
            "--hook": ([None, "resid_post"], ["mlp_out"]),
            "--exact-tokens": (["0", "6"], ["-1"]),
            "--geometry-tokens": ([None, "0"], ["-1", "99999"]),
            "--device": (["cpu"], ["cuda:7", "bogus"]),
            "--dtype": ([None, "float32"], ["float64"]),
        })
        if data.draw(st.booleans(), "force"):
            argv.append("--force")
        status, _ = s.run(argv, [json_path])
        if status == 0 and json_path is not None:
            res = json.loads(json_path.read_text())
            for r in res["saes"].values():
                for key in ("l0", "explained_variance", "ce_spliced", "ce_loss_score",
                            "kl_spliced"):
                    assert math.isfinite(r[key]), (key, r[key])
    finally:
        s.close()
