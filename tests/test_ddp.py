"""Data-parallel training (``torchrun ... -m aensae train`` / ``llm train``): 2 ranks with
gloo on the CPU, each reading half of every batch, against 1 process on the whole batches.

Each rank is a spawned process given torchrun's environment variables (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT on a free port), so the commands set up the process
group themselves, as under torchrun. The oracle is the single-process command itself,
unchanged by this feature (its own tests check it against hand computations and
autograd): the 2-rank run, interrupted after a checkpoint and resumed, must end with the
same weights and buffers (float64, to rounding) and the same dead-latent record. The
ranks' data slices are checked against the full batches directly.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aensae import cli
from aensae.saes import load

RANKS = 2
CUT = 5  # the interrupted runs stop before step 5, after the checkpoint of step 4
STACKED = "<stacked train()>"  # a job that is no command line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, jobs: list[tuple[list[str], bool, int, int]]) -> None:
    """One rank, as torchrun starts it (its environment variables): run each command line
    ``argv`` (cut before step ``CUT`` when ``cut``) on its own port; a wrong exit code
    raises, which makes ``spawn`` stop the other rank and fail the test."""
    torch.set_num_threads(1)
    from aensae.saes.training import trainer

    original = trainer._Run.step_all

    def interrupted(self, X):
        if self.step == CUT:
            raise KeyboardInterrupt
        return original(self, X)

    for argv, cut, expected, port in jobs:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(RANKS),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        trainer._Run.step_all = interrupted if cut else original
        if argv[0] == STACKED:  # train() itself, the stacked path; rank 0 saves the states
            from aensae.saes.training.distributed import from_env

            with from_env("cpu") as world:
                states = _stacked_run(world.rows(32), world)
            if rank == 0:
                torch.save(states, argv[1])
            continue
        code = cli.main(argv)  # initialises the process group from the environment
        assert code == expected, (rank, argv, code)
    trainer._Run.step_all = original


def _run_ranks(jobs: list[tuple[list[str], bool, int]]) -> None:
    """Run ``(argv, cut, expected exit code)`` jobs on ``RANKS`` spawned processes."""
    import torch.multiprocessing as mp

    ports = [(*job, _free_port()) for job in jobs]
    ranks = mp.spawn(_worker, args=(ports,), nprocs=RANKS, join=False)
    deadline = time.monotonic() + 900  # a hang (a rank waiting on one that left) fails
    while not ranks.join(timeout=2):  # raises when a rank fails
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the ranks did not finish within 900 s")


def _max_abs_diff(a: Path, b: Path) -> float:
    """Largest |difference| over every parameter and buffer of two saved SAEs."""
    ma, mb = load(a).state_dict(), load(b).state_dict()
    assert ma.keys() == mb.keys()
    return max(float((ma[k].double() - mb[k].double()).abs().max()) for k in ma)


# ----------------------------------------------------------------------------- aensae train
SYNTH = ["--n", "12", "--m", "24", "--k", "2", "--steps", "8", "--batch-size", "32",
         "--eval-samples", "256", "--dead-window", "64", "--checkpoint-every", "4",
         "--noise-std", "0.05", "--lr", "0.01", "--dtype", "float64", "--device", "cpu",
         "--no-progress"]
#: architecture -> its options: the adaptive weights leave the hold at step 2, AuxK is on
#: with latents counted dead after 64 samples, BatchTopK keeps 3 per sample on average
SYNTH_ARCHS = {
    "relu_l1": ["--l1", "0.01"],
    "aen": ["--l1", "0.01", "--l2", "0.001", "--set", "warmup_steps=2", "--set",
            "ramp_steps=3", "--set", "beta=0.5"],
    "topk": ["--k-top", "3", "--set", "aux_k=4", "--set", "dead_samples=64"],
    "batchtopk": ["--k-top", "3", "--set", "threshold_beta=0.5"],
    "jumprelu": ["--set", "l0=0.01"],
}


def _synth_argv(arch: str, out: Path) -> list[str]:
    return ["train", "--arch", arch, *SYNTH_ARCHS[arch], "--out", str(out), *SYNTH]


@pytest.fixture(scope="module")
def synthetic_ranks(tmp_path_factory) -> Path:
    """The 2-rank runs of the synthetic tests, in one spawn: per architecture an
    ``aensae train`` interrupted after the checkpoint of step 4 and resumed (``ddp/ARCH``),
    one left interrupted (``cut``), and the stacked ``train()`` (``stacked.pt``)."""
    tmp = tmp_path_factory.mktemp("ranks")
    jobs = []
    for arch in SYNTH_ARCHS:
        out = tmp / "ddp" / arch
        jobs += [(_synth_argv(arch, out), True, 130), (_synth_argv(arch, out), False, 0)]
    jobs.append((_synth_argv("relu_l1", tmp / "cut"), True, 130))
    jobs.append(([STACKED, str(tmp / "stacked.pt")], False, 0))
    _run_ranks(jobs)
    return tmp


def test_train_two_ranks_equal_one_process(synthetic_ranks, tmp_path, capsys):
    argv, ranks = _synth_argv, synthetic_ranks
    diffs = {}
    for arch in SYNTH_ARCHS:
        one, two = tmp_path / "one" / arch, ranks / "ddp" / arch
        assert cli.main(argv(arch, one)) == 0
        assert sorted(p.name for p in two.iterdir()) == ["cfg.json", "metrics.json",
                                                         "sae.safetensors"]
        diffs[arch] = _max_abs_diff(one, two)
        r1 = json.loads((one / "metrics.json").read_text())
        r2 = json.loads((two / "metrics.json").read_text())
        assert (r1["world_size"], r2["world_size"]) == (1, RANKS)
        # dead fractions exactly; the adaptive regime's quantiles to rounding (the ranks'
        # statistics are reduced, so the EMA is equal to rounding, not bit for bit)
        assert ({k: v for k, v in r2["dead"].items() if k != "regime"}
                == {k: v for k, v in r1["dead"].items() if k != "regime"})
        assert len(r1["dead"]["fractions"]) == 4
        for a, b in zip(r2["dead"]["regime"], r1["dead"]["regime"], strict=True):
            assert a.keys() == b.keys()
            assert [a[k] for k in a] == pytest.approx([b[k] for k in a], rel=1e-9, abs=1e-12)
        for key in ("l0", "mse", "explained_variance"):
            assert r2["final"][key] == pytest.approx(r1["final"][key], rel=1e-9, abs=1e-12)
        for key in ("train_loss_first", "train_loss_last"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-9)
        assert r2["last_terms"].keys() == r1["last_terms"].keys()
        if arch == "topk":  # AuxK was on in the last step: some latents were dead
            assert "aux" in r1["last_terms"]
    with capsys.disabled():
        print(f"\naensae train, max |2 ranks - 1 process| over weights and buffers, "
              f"float64: {diffs}")
    assert max(diffs.values()) < 1e-10, diffs
    # the buffers that hold batch statistics moved away from their initial values
    assert float(load(ranks / "ddp" / "batchtopk").threshold) > 0
    assert int(load(ranks / "ddp" / "aen").step) == 8

    # a 2-rank checkpoint is not resumed by 1 process: one line naming the ranks
    capsys.readouterr()
    assert cli.main(argv("relu_l1", ranks / "cut")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "2 data-parallel rank(s)" in err, err


def test_stream_rows_are_the_batch_rows():
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    stream = SyntheticStream(spiked_dictionary(8, 16, 0.5, seed=1), k=3, batch_size=10,
                             noise_std=0.1, seed=2)
    for i in (0, 7):
        full = stream.signals(i)
        parts = [stream.signals(i, rows) for rows in ((0, 5), (5, 10))]
        assert np.array_equal(np.concatenate(parts), full)
        assert np.array_equal(stream.signals(i, (3, 4)), full[3:4])
    halves = [list(stream.torch_signal_batches(3, start=1, rows=r, dtype=torch.float64))
              for r in ((0, 5), (5, 10))]
    for j, (a, b) in enumerate(zip(*halves, strict=True)):
        assert torch.equal(torch.cat([a, b]), torch.from_numpy(stream.signals(1 + j)))
    with pytest.raises(ValueError, match="rows"):
        stream.signals(0, (5, 11))


# ----------------------------------------------------------------------------- train()
def _stacked_models() -> dict:
    from aensae.saes import create

    specs = [("aen", {"warmup_steps": 2, "ramp_steps": 3}), ("relu_l1", {}),
             ("elastic_net", {}), ("topk", {"k_top": 3})]
    return {f"m{i}": create(arch, 12, 24, seed=i, dtype=torch.float64, **hyper)
            for i, (arch, hyper) in enumerate(specs)}


def _stacked_run(rows, world=None) -> dict:
    """Four models trained together by ``train()``, the ReLU family stacked."""
    from aensae.saes import TrainConfig, train
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    stream = SyntheticStream(spiked_dictionary(12, 24, 0.5, seed=0), 2, 32, seed=0,
                             noise_std=0.05)
    models = _stacked_models()
    train(models, lambda start: stream.torch_signal_batches(8 - start, start=start, rows=rows,
                                                            dtype=torch.float64),
          TrainConfig(steps=8, device="cpu", dtype="float64", stack=True, lr=0.01,
                      dead_window=64), world=world)
    return {k: m.state_dict() for k, m in models.items()}


def test_stacked_training_two_ranks_equal_one_process(synthetic_ranks):
    two, one = torch.load(synthetic_ranks / "stacked.pt"), _stacked_run(None)
    for name, state in one.items():
        for key, value in state.items():
            torch.testing.assert_close(two[name][key], value, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- llm train
@pytest.fixture(scope="module")
def cache(tmp_path_factory, smol_tokenizer_dir):
    pytest.importorskip("transformers")
    from llm_support import harvest_tiny_cache

    return harvest_tiny_cache(tmp_path_factory, smol_tokenizer_dir)


def test_store_rows_are_the_batch_rows(cache):
    from aensae.llm.store import ActivationStore

    store = ActivationStore(cache)
    kw = {"normalisation": "per_token", "dtype": "float64", "buffer_tokens": 100}
    n = 2 * store.n_tokens // 48  # two epochs: batches straddle buffers and epochs
    full = itertools.islice(store.batches(48, seed=3, start=1, **kw), n)
    parts = [store.batches(48, seed=3, start=1, rows=r, **kw) for r in ((0, 16), (16, 48))]
    for x, a, b in zip(full, *parts, strict=False):  # the parts are endless
        assert a.shape == (16, store.d_in) and torch.equal(torch.cat([a, b]), x)
    with pytest.raises(ValueError, match="rows"):
        store.batches(48, rows=(10, 10))


def test_llm_train_two_ranks_equal_one_process(cache, tmp_path, capsys):
    # The tiny cache repeats tokens, so its batches hold identical rows: BatchTopK meets
    # ties at its threshold, and must keep exactly k B entries (any of the tied ones: for
    # identical rows every choice gives the same gradients) to match one process.
    archs = ["relu_l1", "aen", "topk", "batchtopk", "jumprelu"]
    flags = [f"--arch={a}" for a in archs] + [
        "--k-top", "4", "--set", "aux_k=4", "--set", "dead_samples=64", "--set",
        "warmup_steps=2", "--set", "ramp_steps=3", "--l1", "0.01"]

    def argv(out: Path) -> list[str]:
        return ["llm", "train", "--cache", str(cache), "--d-sae", "24", "--steps", "8",
                "--batch-size", "32", "--dead-window", "64", "--checkpoint-every", "4",
                "--dtype", "float64", "--device", "cpu", "--lr", "0.01", "--out", str(out),
                "--no-progress", *flags]

    two, one = tmp_path / "ddp", tmp_path / "one"
    _run_ranks([(argv(two), True, 130), (argv(two), False, 0)])
    assert cli.main(argv(one)) == 0
    r1 = json.loads((one / "run.json").read_text())
    r2 = json.loads((two / "run.json").read_text())
    assert (r1["world_size"], r2["world_size"]) == (1, RANKS)
    assert sorted(r2["saes"]) == sorted(archs)
    diffs = {}
    for name in archs:
        diffs[name] = _max_abs_diff(one / name, two / name)
        assert r2["saes"][name]["dead"] == r1["saes"][name]["dead"]
        assert r2["saes"][name]["train_loss_last"] == pytest.approx(
            r1["saes"][name]["train_loss_last"], rel=1e-9)
    with capsys.disabled():
        print(f"\naensae llm train, max |2 ranks - 1 process| over weights and buffers, "
              f"float64: {diffs}")
    assert max(diffs.values()) < 1e-10, diffs


# ----------------------------------------------------------------------------- bad input
def test_rows_split_the_batch_and_refuse_unequal_shares():
    from aensae._validation import InputError
    from aensae.saes.training.distributed import World

    cpu = torch.device("cpu")
    assert [World(r, 4, r, cpu).rows(32) for r in range(4)] == [(0, 8), (8, 16), (16, 24),
                                                                (24, 32)]
    with pytest.raises(InputError, match="--batch-size 32 must be a multiple of the number "
                                         "of ranks 3"):
        World(1, 3, 1, cpu).rows(32)


@pytest.mark.parametrize("env, needle", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "2"}, "RANK=2 must be < WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "0"}, "MASTER_ADDR is not set"),
])
def test_torchrun_environment_errors_are_one_line(tmp_path, capsys, monkeypatch, env, needle):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "o"
    assert cli.main(["train", "--arch", "relu_l1", "--out", str(out), *SYNTH]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not out.exists()


def test_every_option_has_a_spelling_torchrun_passes_on():
    """torchrun parses the whole command line with abbreviations allowed: an option of
    ``aensae train`` / ``llm train`` that is a prefix of one of torchrun's own options is
    an error (several) or silently taken by torchrun (one). Each needs a spelling that is
    no such prefix."""
    import argparse

    from torch.distributed.run import get_args_parser

    theirs = [o for a in get_args_parser()._actions for o in a.option_strings]
    sub = next(a for a in cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    llm = next(a for a in sub.choices["llm"]._actions
               if isinstance(a, argparse._SubParsersAction))
    for command in (sub.choices["train"], llm.choices["train"]):
        for action in command._actions:
            if "--help" in action.option_strings:
                continue
            passed_on = [o for o in action.option_strings
                         if not any(t.startswith(o) for t in theirs)]
            assert passed_on, (command.prog, action.option_strings)
