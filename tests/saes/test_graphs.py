"""The CPU stand-in for CUDA graphs (aensae.saes.training.graphs.EmulatedGraph) against CUDA's
rules.

Oracle: the semantics CUDA graphs document (torch.cuda.graphs): a replay reruns the
captured kernels on the same tensors, with every Python value frozen at capture; capture
itself runs nothing; host reads and data-dependent shapes are refused. Each test computes
the expected result by hand (or by calling the function eagerly) and checks the replay.
"""

from __future__ import annotations

import pytest
import torch

from aensae.saes.training.graphs import EmulatedGraph, GraphCaptureError, capture


def test_replay_reruns_the_kernels_on_the_same_tensors() -> None:
    w = torch.tensor([1.0, 2.0, 3.0])
    x = torch.zeros(3)
    out = torch.zeros(())

    def step() -> None:
        h = (x * w).relu_()  # an intermediate, recomputed at every replay
        w.sub_(0.5 * h)  # in place on a tensor that exists before the capture
        torch.sum(h, 0, out=out)  # results go into buffers

    graph = EmulatedGraph(step)
    assert torch.equal(w, torch.tensor([1.0, 2.0, 3.0]))  # capture ran nothing
    ref_w = w.clone()
    for i in range(4):
        x.copy_(torch.tensor([1.0, -1.0, 0.5]) * (i + 1))  # a new batch into the input
        graph.replay()
        h = (x * ref_w).relu()
        ref_w -= 0.5 * h
        assert torch.equal(w, ref_w)
        assert torch.equal(out, h.sum())


def test_views_and_out_arguments_alias_as_at_capture() -> None:
    stacked = torch.zeros(2, 3)
    rows = [stacked[0], stacked[1]]  # views, as a stacked group re-seats parameters

    def step() -> None:
        rows[1].add_(1.0)
        torch.mul(stacked[1], 2.0, out=rows[0])

    graph = EmulatedGraph(step)
    graph.replay()
    graph.replay()
    assert torch.equal(stacked, torch.tensor([[4.0] * 3, [2.0] * 3]))


def test_python_values_freeze_at_capture() -> None:
    # why the trainer's step keeps every step-dependent value on the device
    counter = {"t": 0}
    x = torch.zeros(())

    def step() -> None:
        counter["t"] += 1
        x.add_(counter["t"])

    graph = EmulatedGraph(step)
    assert counter["t"] == 1
    for _ in range(3):
        graph.replay()
    assert counter["t"] == 1  # Python ran once, at capture
    assert float(x) == 3.0  # every replay added the captured 1


def test_fused_adam_with_found_inf_replays_like_eager_steps() -> None:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    q = torch.nn.Parameter(p.detach().clone())
    opt_p = torch.optim.Adam([p], lr=1e-2, fused=True, capturable=True)
    opt_q = torch.optim.Adam([q], lr=1e-2, fused=True)
    grads = [torch.randn(4, 3) for _ in range(6)]
    flags = [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    found_inf = torch.zeros((), dtype=torch.float32)
    p.grad = torch.zeros(4, 3)
    opt_p.found_inf = found_inf
    opt_p.step()  # the state exists before the capture, as after the trainer's warm-up
    q.grad = torch.zeros(4, 3)
    opt_q.step()
    graph = capture(opt_p.step, "emulate", p.device)
    for g, f in zip(grads, flags, strict=True):
        p.grad.copy_(g)
        found_inf.fill_(f)
        graph.replay()
        if not f:  # the eager reference simply skips the flagged steps
            q.grad = g.clone()
            opt_q.step()
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert float(opt_p.state[p]["step"]) == float(opt_q.state[q]["step"]) == 5.0


@pytest.mark.parametrize("body, why", [
    (lambda x: float(x.sum()), "reads a device value on the host"),
    (lambda x: x.sum().item(), "reads a device value on the host"),
    (lambda x: bool((x > 0).any()), "reads a device value on the host"),
    (lambda x: x.nonzero(), "depends on device values"),
    (lambda x: x[x > 0], "depends on device values"),
    (lambda x: x.masked_select(x > 0), "depends on device values"),
    (lambda x: x.add_(torch.tensor([1.0, 2.0])), "made from host data"),
])
def test_what_cuda_capture_refuses_is_refused(body, why) -> None:
    x = torch.tensor([1.0, -2.0])
    before = x.clone()

    def step() -> None:
        x.mul_(3.0)  # a write before the refused operation: undone
        body(x)

    with pytest.raises(GraphCaptureError, match=why):
        EmulatedGraph(step)
    assert torch.equal(x, before)


def test_a_return_value_is_refused_and_capture_leaves_state_alone() -> None:
    x = torch.ones(2)

    def step() -> torch.Tensor:
        return x.mul_(2.0)

    with pytest.raises(GraphCaptureError, match="must return None"):
        EmulatedGraph(step)
    assert torch.equal(x, torch.ones(2))


def test_capture_rejects_unknown_modes_and_cuda_without_a_gpu() -> None:
    with pytest.raises(ValueError, match="graph mode must be one of cuda, emulate"):
        capture(lambda: None, "magic", torch.device("cpu"))
    with pytest.raises(GraphCaptureError, match="CUDA graphs need a CUDA device"):
        capture(lambda: None, "cuda", torch.device("cpu"))
