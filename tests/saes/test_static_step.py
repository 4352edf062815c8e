"""The stacked step without host reads (aensae.saes.training.static_step), eager and captured.

Oracles: the eager step is checked against separate training in tests/test_stacked.py;
here a captured run (the CPU stand-in for CUDA graphs, which freezes Python values and
replays kernels as a GPU does) must equal the eager run bit for bit, over phases where
the learning rate warms up, adaptive weights ramp, AuxK switches on and dead-latent
windows close; deferred checks must stop where the eager trainer stops (a clean run of
as many steps is the oracle for the state left behind).
"""

from __future__ import annotations

import pytest
import torch
from test_stacked import CFG, STACKS, M, N, _stack, _stream

from aensae.saes import TrainConfig, create, train
from aensae.saes.topk import TopKSAE
from aensae.saes.training.graphs import EmulatedGraph
from aensae.saes.training.stacked import PATH_GRAPH_EMULATED, PATH_STACKED, StackedJumpReLU

STEPS = 24


def _same(a: dict, b: dict) -> None:
    for name in a:
        for (k, x), y in zip(a[name].state_dict().items(), b[name].state_dict().values(),
                             strict=True):
            assert torch.equal(x, y), f"{name}.{k}"


def _results_equal(ra: dict, rb: dict) -> None:
    for name in ra:
        assert ra[name].train_loss == rb[name].train_loss, name
        assert ra[name].last_terms == rb[name].last_terms, name
        assert ra[name].dead == rb[name].dead, name


@pytest.mark.parametrize("arch", list(STACKS))
def test_captured_steps_equal_eager_steps_bit_for_bit(arch: str) -> None:
    data = _stream(STEPS)
    # lr warmup: the first 5 steps are eager (the learning rate still changes), then
    # every kind of step is captured after two eager ones; reads every 7 steps
    cfg = dict(steps=STEPS, stack=True, lr_warmup_steps=5, sync_every=7, **CFG)
    eager, captured = _stack(arch), _stack(arch)
    re = train(eager, data, TrainConfig(graph="off", **cfg))
    rc = train(captured, data, TrainConfig(graph="emulate", **cfg))
    _same(eager, captured)
    _results_equal(re, rc)
    for name in eager:
        assert re[name].path_steps == {PATH_STACKED: STEPS}
        assert (rc[name].path, rc[name].path_note) == (PATH_GRAPH_EMULATED, "")
        graphed = rc[name].path_steps[PATH_GRAPH_EMULATED]
        assert sum(rc[name].path_steps.values()) == STEPS and graphed >= STEPS - 9
        assert len(re[name].train_loss) == STEPS
    if arch == "topk":  # AuxK switched on during the captured phase
        assert "aux" in rc["topk3"].last_terms and "aux" not in rc["topk2"].last_terms


def test_grad_clipping_in_the_step_equals_separate_clipping_and_captures() -> None:
    data = _stream(12)
    cfg = dict(steps=12, grad_clip=0.05, **CFG)
    alone = {}
    for name, model in _stack("aen").items():
        alone[name] = model
        train({name: model}, data, TrainConfig(**cfg))
    eager, captured = _stack("aen"), _stack("aen")
    train(eager, data, TrainConfig(stack=True, graph="off", **cfg))
    train(captured, data, TrainConfig(stack=True, graph="emulate", **cfg))
    _same(eager, captured)
    for name, model in alone.items():
        for (k, a), b in zip(model.state_dict().items(), eager[name].state_dict().values(),
                             strict=True):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=f"{name}.{k}")


def _poisoned(data: list[torch.Tensor], at: int, value: float, count: int) -> list:
    out = [x.clone() for x in data]
    out[at].view(-1)[:count] = value
    return out


@pytest.mark.parametrize("graph", ["off", "emulate"])
@pytest.mark.parametrize("value, count, message", [
    (float("nan"), 3, r"batch at step 9 holds 3 NaN/inf entries \(shape \(16, 8\)\)"),
    (3e200, 1, r"loss of model 'jumprelu0' \(jumprelu\) is inf at step 9; training "
               r"stopped before the update"),
])
def test_a_bad_step_stops_every_update_and_is_named(graph, value, count, message) -> None:
    data = _stream(16)
    bad = _poisoned(data, 9, value, count)
    cfg = dict(steps=16, stack=True, graph=graph, sync_every=6, **CFG)
    models = {**_stack("jumprelu"), **_stack("topk")}
    with pytest.raises(FloatingPointError, match=message):
        train(models, bad, TrainConfig(**cfg))
    # the oracle: the same models trained on the 9 good batches alone
    clean = {**_stack("jumprelu"), **_stack("topk")}
    train(clean, data[:9], TrainConfig(**{**cfg, "steps": 9}))
    _same(clean, models)


def test_resume_equals_the_uninterrupted_captured_run(tmp_path) -> None:
    data = _stream(20)
    cfg = TrainConfig(steps=20, stack=True, graph="emulate", sync_every=4,
                      checkpoint_every=6, **CFG)
    ref = {**_stack("aen"), **_stack("batchtopk")}
    rr = train(ref, data, cfg, checkpoint_dir=tmp_path / "ref")

    def interrupted():
        for i, x in enumerate(data):
            if i == 14:
                raise KeyboardInterrupt
            yield x

    with pytest.raises(KeyboardInterrupt):
        train({**_stack("aen"), **_stack("batchtopk")}, interrupted(), cfg,
              checkpoint_dir=tmp_path / "run")
    resumed = {**_stack("aen"), **_stack("batchtopk")}
    rs = train(resumed, lambda start: iter(data[start:]), cfg, checkpoint_dir=tmp_path / "run")
    _same(ref, resumed)
    _results_equal(rr, rs)
    for name in ref:  # both sessions' steps are counted; the resumed one captured anew
        assert sum(rs[name].path_steps.values()) == 20
        assert rs[name].path_steps[PATH_STACKED] == 2 * 2
        assert rs[name].path == PATH_GRAPH_EMULATED


def _eager_reference(arch: str) -> tuple[list, dict, dict, dict]:
    """Data, config, and the models and results of an eager stacked run of ``arch``."""
    data = _stream(10)
    cfg = dict(steps=10, stack=True, **CFG)
    eager = _stack(arch)
    return data, cfg, eager, train(eager, data, TrainConfig(graph="off", **cfg))


def test_a_step_that_cannot_be_captured_runs_eagerly_and_says_why(monkeypatch) -> None:
    data, cfg, eager, re = _eager_reference("jumprelu")
    original = StackedJumpReLU._forward_backward

    def with_a_host_read(self, x, aux):
        if float(x.abs().sum()) < 0:  # a host read: fine eagerly, refused by capture
            raise AssertionError
        return original(self, x, aux)

    monkeypatch.setattr(StackedJumpReLU, "_forward_backward", with_a_host_read)
    models = _stack("jumprelu")
    rc = train(models, data, TrainConfig(graph="emulate", **cfg))
    _same(eager, models)
    _results_equal(re, rc)
    for r in rc.values():
        assert r.path_steps == {PATH_STACKED: 10}
        assert "graph capture failed" in r.path_note
        assert "reads a device value on the host" in r.path_note


def test_a_replay_that_disagrees_with_the_eager_step_is_dropped(monkeypatch) -> None:
    data, cfg, eager, re = _eager_reference("elastic_net")
    replay = EmulatedGraph.replay

    def lossy(self) -> None:  # a broken capture: drops the step's last operation
        ops, self.ops = self.ops, self.ops[:-1]
        try:
            replay(self)
        finally:
            self.ops = ops

    monkeypatch.setattr(EmulatedGraph, "replay", lossy)
    models = _stack("elastic_net")
    rc = train(models, data, TrainConfig(graph="emulate", **cfg))
    _same(eager, models)  # the eager step's result was kept
    _results_equal(re, rc)
    for r in rc.values():
        assert r.path == PATH_STACKED and "differed from the eager step" in r.path_note


def test_mixed_runs_and_options() -> None:
    class Custom(TopKSAE):  # not stackable: the run keeps host checks every step
        pass

    models = {"c": Custom(N, M), **_stack("topk")}
    res = train(models, [x.float() for x in _stream(3)],
                TrainConfig(steps=3, device="cpu", stack=True, graph="emulate"))
    assert res["c"].path == "separate" and res["topk0"].path == PATH_STACKED
    assert "'c' cannot be stacked" in res["topk0"].path_note
    with pytest.raises(ValueError, match="graph must be one of auto, off, emulate"):
        TrainConfig(steps=1, graph="on")
    with pytest.raises(ValueError, match="sync_every"):
        TrainConfig(steps=1, sync_every=-1)
    one = create("relu_l1", N, M)
    assert train(one, _stream(2), TrainConfig(steps=2, stack=True, dtype="float64",
                                             device="cpu"))["model"].path == PATH_STACKED


def test_grid_train_graph_is_checked_and_kept_out_of_the_hash(tmp_path) -> None:
    from grid_support import micro_config

    from aensae._validation import InputError
    from aensae.experiments.spiked.config import load_config

    text = micro_config(tmp_path).read_text()
    hashes = []
    for graph in ("auto", "off"):
        path = tmp_path / f"{graph}.toml"
        path.write_text(text.replace("progress = false", f'progress = false\ngraph = "{graph}"'))
        grid = load_config(path)
        assert grid.train["graph"] == graph
        hashes.append(grid.config_hash())
    assert hashes[0] == hashes[1] == load_config(micro_config(tmp_path)).config_hash()
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("progress = false", 'progress = false\ngraph = "emulate"'))
    with pytest.raises(InputError, match=r'config train.graph: must be "auto" or "off", '
                                         r"got 'emulate'"):
        load_config(path)


def test_batch_size_changes_recapture_and_stay_equal_to_eager() -> None:
    sizes = [16, 16, 16, 16, 8, 8, 8, 8, 16, 16, 16, 16]
    data = [x[:b] for x, b in zip(_stream(len(sizes)), sizes, strict=True)]
    cfg = dict(steps=len(sizes), stack=True, sync_every=5, **CFG)
    eager, captured = _stack("topk"), _stack("topk")
    re = train(eager, data, TrainConfig(graph="off", **cfg))
    rc = train(captured, data, TrainConfig(graph="emulate", **cfg))
    _same(eager, captured)
    _results_equal(re, rc)
    assert rc["topk0"].path_steps[PATH_GRAPH_EMULATED] >= 4
