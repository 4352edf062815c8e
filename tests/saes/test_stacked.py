"""The stacked training path for all seven architectures against separate training.

Oracle: each model's own ``compute_grads`` (autograd for TopK, BatchTopK and JumpReLU, the
autograd-checked hand backward for the ReLU family), run one model at a time. Several
models with different hyperparameters share each stack, so every per-model tensor
(``k_top``, ``aux_k``, ``l0``, bandwidths, EMA state ...) is exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aensae.saes import TrainConfig, create, train
from aensae.saes.topk import TopKSAE
from aensae.saes.training.stacked import (
    PATH_SEPARATE,
    PATH_STACKED,
    family_of,
    group_models,
    stack_models,
    step_path,
)

N, M = 8, 16


def _stream(n_batches: int, b: int = 16, seed: int = 0) -> list[torch.Tensor]:
    # non-negative spiky signals: sparse codes on random atoms, as the synthetic stream
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(M, N, generator=g, dtype=torch.float64)
    out = []
    for _ in range(n_batches):
        H = torch.rand(b, M, generator=g, dtype=torch.float64) * (
            torch.rand(b, M, generator=g, dtype=torch.float64) < 0.2)
        out.append(H @ D + 0.1 * torch.randn(b, N, generator=g, dtype=torch.float64))
    return out


#: Per architecture, hyperparameters of the models of one stack (all different).
STACKS: dict[str, list[dict]] = {
    "relu_l1": [{"l1": 0.02}, {"l1": 0.005}, {"l1": 0.0, "init": "independent"}],
    "elastic_net": [{"l1": 0.01, "l2": 0.02}, {"l1": 0.03, "l2": 0.0}, {"l1": 0.0, "l2": 0.1}],
    "adaptive_lasso": [{"warmup_steps": 1, "ramp_steps": 3},
                       {"warmup_steps": 0, "ramp_steps": 0, "gamma": 2.0, "top_p": 0.25},
                       {"warmup_steps": 5, "ramp_steps": 10, "beta": 0.5, "l1": 0.05}],
    "aen": [{"warmup_steps": 0, "ramp_steps": 2, "l2": 0.01},
            {"warmup_steps": 3, "ramp_steps": 4, "l1": 0.02, "l2": 0.05, "w_min": 0.5},
            {"warmup_steps": 1, "ramp_steps": 0, "beta": 0.9, "w_max": 3.0}],
    "topk": [{"k_top": 3, "aux_k": 2, "dead_samples": 16},
             {"k_top": 1, "aux_k": 5, "dead_samples": 32, "aux_coeff": 0.5},
             {"k_top": 6, "aux_k": 0},
             {"k_top": 3, "aux_k": 16, "dead_samples": 1}],
    "batchtopk": [{"k_top": 2}, {"k_top": 5, "threshold_beta": 0.5}, {"k_top": 16},
                  {"k_top": 1, "init": "independent"}],
    "jumprelu": [{"l0": 1e-3, "bandwidth": 0.5}, {"l0": 0.05, "bandwidth": 1.0,
                                                   "init_threshold": 0.3},
                 {"l0": 0.0, "bandwidth": 0.05, "init_threshold": 0.01}],
}
CFG = {"device": "cpu", "dtype": "float64", "dead_window": 48, "dead_last": 2, "lr": 1e-2}


def _stack(arch: str) -> dict:
    return {f"{arch}{i}": create(arch, N, M, seed=10 + i, dtype=torch.float64, **hp)
            for i, hp in enumerate(STACKS[arch])}


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((x.double() - y.double()).abs().max())
               for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("arch", list(STACKS))
def test_one_stacked_step_gives_each_models_own_gradients(arch: str) -> None:
    models = _stack(arch)
    with torch.no_grad():  # states in which adaptive weights and AuxK are live
        for m in models.values():
            if hasattr(m, "ema"):
                m.ema.copy_(torch.linspace(0.05, 2.0, M, dtype=torch.float64))
                m.step.fill_(4)
            if isinstance(m, TopKSAE):
                m.samples_since_fired[::2] = 40
    x = _stream(1)[0]
    own = {}
    for k, m in models.items():
        out = m.compute_grads(x)
        own[k] = (out, {n: p.grad.clone() for n, p in m.named_parameters()})
    before = {k: {n: p.detach().clone() for n, p in m.named_parameters()}
              for k, m in models.items()}
    outs = stack_models(list(models.values())).compute_grads(x)
    for (k, m), out in zip(models.items(), outs, strict=True):
        ref, grads = own[k]
        for n, p in m.named_parameters():
            assert torch.equal(p.detach(), before[k][n])  # re-seating keeps the values
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-12, atol=1e-14,
                                       msg=f"{k}.{n}")
        torch.testing.assert_close(out.loss, ref.loss.detach(), rtol=1e-12, atol=0.0)
        torch.testing.assert_close(out.h, ref.h, rtol=1e-12, atol=1e-14)
        assert set(out.terms) == set(ref.terms), k
        for t in ref.terms:
            torch.testing.assert_close(out.terms[t], ref.terms[t], rtol=1e-12, atol=1e-15)
        assert torch.equal(out.stats["fired"], (ref.h != 0).any(0))
        if "min_kept" in ref.stats:
            torch.testing.assert_close(out.stats["min_kept"], ref.stats["min_kept"])
    if arch == "topk":  # AuxK was active for the models that have it
        assert [("aux" in o.terms) for o in outs] == [True, True, False, True]


@pytest.mark.parametrize("arch", list(STACKS))
def test_stacked_training_equals_separate_training(arch: str) -> None:
    data = _stream(30)
    joint = _stack(arch)
    res = train(joint, data, TrainConfig(steps=30, stack=True, **CFG))
    worst = 0.0
    for name, model in _stack(arch).items():
        alone = train({name: model}, data, TrainConfig(steps=30, **CFG))[name]
        for (n, a), b in zip(model.state_dict().items(), joint[name].state_dict().values(),
                             strict=True):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=f"{name}.{n}")
        worst = max(worst, _max_diff(model, joint[name]))
        np.testing.assert_allclose(res[name].train_loss, alone.train_loss, rtol=1e-9)
        assert res[name].last_terms.keys() == alone.last_terms.keys()
        assert ({k: v for k, v in res[name].dead.items() if k != "regime"}
                == {k: v for k, v in alone.dead.items() if k != "regime"})
        for a, b in zip(res[name].dead["regime"], alone.dead["regime"], strict=True):
            assert a.keys() == b.keys()
            np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-9)
        assert (res[name].path, alone.path) == (PATH_STACKED, PATH_SEPARATE)
        # the models learned something: the stack is not trivially equal (step 0 has
        # no AuxK term: no latent is dead yet)
        assert res[name].last_terms["mse"] < res[name].train_loss[0]
    print(f"\n{arch}: max |stacked - separate| over weights and buffers = {worst:.3g}")
    assert worst < 1e-9


def test_jumprelu_thresholds_and_auxk_move_in_the_stacked_run() -> None:
    # guards the equality test above against vacuous parts: thresholds receive gradient,
    # AuxK fires, BatchTopK's threshold is estimated
    data = _stream(30)
    jump = _stack("jumprelu")
    train(jump, data, TrainConfig(steps=30, stack=True, **CFG))
    for hp, m in zip(STACKS["jumprelu"], jump.values(), strict=True):
        init = torch.full((M,), float(np.log(hp.get("init_threshold", 0.1))),
                          dtype=torch.float64)
        assert not torch.allclose(m.log_threshold.detach(), init)
    topk = _stack("topk")
    res = train(topk, data, TrainConfig(steps=30, stack=True, **CFG))
    assert "aux" in res["topk3"].last_terms
    btk = _stack("batchtopk")
    train(btk, data, TrainConfig(steps=30, stack=True, **CFG))
    assert all(float(m.threshold) > 0 for m in btk.values())


def test_mixed_run_groups_by_family_and_width() -> None:
    models = {
        "a": create("relu_l1", N, M, seed=1), "b": create("aen", N, M, seed=2),
        "c": create("topk", N, M, seed=3, k_top=2), "d": create("topk", N, 2 * M, seed=4),
        "e": create("jumprelu", N, M, seed=5), "f": create("batchtopk", N, M, seed=6),
        "g": create("topk", N, M, seed=7, k_top=4),
    }
    groups = group_models(models)
    assert [(names, g.family) for names, g in groups] == [
        (["a", "b"], "relu"), (["c", "g"], "topk"), (["d"], "topk"), (["e"], "jumprelu"),
        (["f"], "batchtopk")]
    data = [x.float() for x in _stream(6)]
    cfg = dict(steps=6, device="cpu", dead_window=32, lr=3e-3)
    joint = {k: create(m.arch, N, m.d_sae, seed=m.seed, **m.hyper) for k, m in models.items()}
    res = train(joint, data, TrainConfig(stack=True, **cfg))
    for k, m in models.items():
        alone = train({k: m}, data, TrainConfig(**cfg))[k]
        torch.testing.assert_close(joint[k].W_dec, m.W_dec, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res[k].train_loss, alone.train_loss, rtol=1e-4)
        assert res[k].path == PATH_STACKED


def test_path_selection_and_refusals() -> None:
    assert step_path(True) == PATH_STACKED == "stacked-eager"
    assert step_path(False) == PATH_SEPARATE == "separate"
    assert family_of(create("elastic_net", N, M)) == "relu"
    assert family_of(object()) is None

    class Custom(TopKSAE):  # a subclass may change the loss: never stacked
        pass

    assert family_of(Custom(N, M)) is None
    assert group_models({"c": Custom(N, M)}) == []
    with pytest.raises(TypeError, match="does not belong to the stacked family 'topk'"):
        stack_models([create("topk", N, M), create("batchtopk", N, M)])
    with pytest.raises(ValueError, match="must share d_in, d_sae"):
        stack_models([create("topk", N, M), create("topk", N, M + 1)])
    # without stack every model is separate; an unstackable model stays separate with it
    res = train({"c": Custom(N, M), "t": create("topk", N, M)}, [x.float() for x in
                                                                  _stream(2)],
                TrainConfig(steps=2, device="cpu", stack=True))
    assert (res["c"].path, res["t"].path) == (PATH_SEPARATE, PATH_STACKED)


@settings(max_examples=15, deadline=None)
@given(ks=st.lists(st.integers(1, 6), min_size=1, max_size=4), b=st.integers(1, 5),
       arch=st.sampled_from(["topk", "batchtopk"]), seed=st.integers(0, 1000))
def test_per_model_k_matches_each_models_own_codes(ks, b, arch, seed) -> None:
    models = [create(arch, 5, 6, seed=seed + i, k_top=k, dtype=torch.float64)
              for i, k in enumerate(ks)]
    x = torch.randn(b, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    own = [m.compute_grads(x) for m in models]
    own_grads = [m.W_enc.grad.clone() for m in models]
    outs = stack_models(models).compute_grads(x)
    for m, o, ref, gref in zip(models, outs, own, own_grads, strict=True):
        torch.testing.assert_close(o.h, ref.h, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(m.W_enc.grad, gref, rtol=1e-12, atol=1e-14)


def test_batched_projection_refuses_a_zero_decoder_row() -> None:
    models = [create("jumprelu", N, M, seed=i) for i in range(3)]
    group = stack_models(models)
    with torch.no_grad():
        models[1].W_dec.mul_(3.0)
        models[2].W_dec[4:6] = 0.0
    with pytest.raises(FloatingPointError, match="2 decoder row\\(s\\) of jumprelu have zero"):
        group.project_decoders()
    with torch.no_grad():
        models[2].W_dec[4:6] = 1.0
    group.project_decoders()
    for m in models:  # every row back on the unit sphere, the direction kept
        torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(M))
    torch.testing.assert_close(models[2].W_dec[4], torch.full((N,), N ** -0.5))
