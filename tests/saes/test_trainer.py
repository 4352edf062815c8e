"""The trainer: joint == separate, resume == uninterrupted, dead tracking, errors, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trainer_support import M, N, _assert_same_state, _stream

from aensae.saes import DeadTracker, TrainConfig, create, train
from aensae.saes.evaluate import align_codes, evaluate
from aensae.saes.training.trainer import CHECKPOINT_FILE


def _models() -> dict:
    return {
        "aen": create("aen", N, M, seed=1, warmup_steps=2, ramp_steps=5, l1=0.01, l2=0.01),
        "topk": create("topk", N, M, seed=2, k_top=3, aux_k=2, dead_samples=16),
        "btk": create("batchtopk", N, M, seed=3, k_top=2),
        "jump": create("jumprelu", N, M, seed=4),
        "relu": create("relu_l1", N, M, seed=5, l1=0.02),
    }




CFG = {"device": "cpu", "dead_window": 32, "dead_last": 2, "lr": 3e-3}


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(("field", "value", "exc"), [
    ("lr", -1.0, ValueError), ("lr", 0.0, ValueError), ("grad_clip", 0.0, ValueError),
    ("dead_window", 0, ValueError), ("dtype", "float16", ValueError),
    ("lr_warmup_steps", -1, ValueError), ("device", "nonsense", ValueError),
    ("steps", 1.5, TypeError),
])
def test_config_validation_names_the_field(field: str, value, exc) -> None:
    kwargs = {"steps": 5, field: value}
    with pytest.raises(exc, match=field):
        TrainConfig(**kwargs)


def test_lr_warmup_is_linear() -> None:
    cfg = TrainConfig(steps=10, lr=1.0, lr_warmup_steps=4)
    assert [cfg.lr_at(t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert TrainConfig(steps=3, lr=0.5).lr_at(0) == 0.5


# ----------------------------------------------------------------------------- equivalences
def test_joint_training_equals_separate_training() -> None:
    data = _stream(12)
    cfg = TrainConfig(steps=12, **CFG)
    joint = _models()
    res_joint = train(joint, data, cfg)
    for name, model in _models().items():
        res = train({name: model}, data, cfg)
        _assert_same_state(model, joint[name])
        assert res[name].train_loss == res_joint[name].train_loss
        assert res[name].dead == res_joint[name].dead


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trainer_update_is_torch_adam(dtype: str) -> None:
    # Oracle: the same steps written out with torch.optim.Adam (fused, as the trainer's
    # optimizer is configured), lr warmup, decoder projection and buffer updates.
    data = _stream(7)
    cfg = TrainConfig(steps=7, lr_warmup_steps=3, dtype=dtype, **CFG)
    trained = _models()
    train(trained, data, cfg)
    torch_dtype = getattr(torch, dtype)
    for name, model in _models().items():
        model.to(torch_dtype)
        if hasattr(model, "hold"):  # the hold of a 7-step run: warmup_steps + floor(0.2 * 7)
            model.hold.fill_(int(model.hyper["warmup_steps"]) + 1)
        optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
                                 eps=cfg.adam_eps, fused=True)
        for t, x in enumerate(data):
            out = model.compute_grads(x.to(torch_dtype))
            optim.param_groups[0]["lr"] = cfg.lr * min(1.0, (t + 1) / 3)
            optim.step()
            model.project_decoder()
            model.after_step(out)
        _assert_same_state(model, trained[name])


def test_training_is_deterministic_by_seed() -> None:
    data = _stream(6)
    a, b = _models(), _models()
    train(a, data, TrainConfig(steps=6, **CFG))
    train(b, data, TrainConfig(steps=6, **CFG))
    for k in a:
        _assert_same_state(a[k], b[k])


class _Interrupt(Exception):
    pass


def _interrupting(data, at: int):
    for i, x in enumerate(data):
        if i == at:
            raise _Interrupt
        yield x


@pytest.mark.parametrize(("callable_data", "stack"), [(False, False), (True, False),
                                                      (True, True)])
def test_resume_equals_uninterrupted(tmp_path, callable_data: bool, stack: bool) -> None:
    data = _stream(20)
    cfg = TrainConfig(steps=20, checkpoint_every=5, grad_clip=1.0, lr_warmup_steps=3,
                      stack=stack, **CFG)
    ref = _models()
    res_ref = train(ref, data, cfg, checkpoint_dir=tmp_path / "ref")

    first = _models()
    with pytest.raises(_Interrupt):
        train(first, _interrupting(data, 13), cfg, checkpoint_dir=tmp_path / "run")
    assert (tmp_path / "run" / CHECKPOINT_FILE).is_file()
    assert [p.name for p in (tmp_path / "run").iterdir()] == [CHECKPOINT_FILE]

    resumed = _models()  # fresh models: everything comes from the checkpoint
    source = (lambda start: iter(data[start:])) if callable_data else data
    res = train(resumed, source, cfg, checkpoint_dir=tmp_path / "run")
    for k in ref:
        _assert_same_state(ref[k], resumed[k])
        assert res[k].train_loss == res_ref[k].train_loss
        assert res[k].dead == res_ref[k].dead
    assert int(resumed["aen"].step) == 20


def test_resume_rejects_a_different_model(tmp_path) -> None:
    data = _stream(4)
    cfg = TrainConfig(steps=4, checkpoint_every=2, **CFG)
    train({"a": create("aen", N, M, seed=0)}, data, cfg, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="model 'a' has hyper"):
        train({"a": create("aen", N, M, seed=0, l1=0.5)}, data, cfg, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="holds models"):
        train({"b": create("aen", N, M)}, data, cfg, checkpoint_dir=tmp_path)
    other = TrainConfig(steps=4, checkpoint_every=2, **{**CFG, "lr": 1e-2})
    with pytest.raises(ValueError, match="trained with lr=0.003, this run has lr=0.01"):
        train({"a": create("aen", N, M, seed=0)}, data, other, checkpoint_dir=tmp_path)


# ----------------------------------------------------------------------------- dead latents
def test_dead_tracker_on_constructed_codes() -> None:
    tr = DeadTracker(d_sae=4, window=4, last=2)
    h = torch.zeros(2, 4)
    batches = [h.clone() for _ in range(6)]
    batches[0][0, 0] = 1.0          # window 1 (batches 0, 1): latents 0, 1 fire
    batches[1][1, 1] = 2.0
    batches[2][0, 0] = 1.0          # window 2 (batches 2, 3): latents 0, 1, 2 fire
    batches[3][:, 1:3] = 1.0
    for b in batches:               # window 3 (batches 4, 5): nothing fires
        tr.update(b)
    s = tr.summary()
    assert s["fractions"] == [0.5, 0.25, 1.0]
    assert s["samples_per_window"] == [4, 4, 4]
    assert s["final"] == 1.0 and s["median_last"] == (0.25 + 1.0) / 2
    assert s["window_samples"] == 4 and s["windows"] == 3


def test_dead_tracker_window_not_a_multiple_of_the_batch() -> None:
    tr = DeadTracker(d_sae=2, window=5, last=3)
    for _ in range(4):
        tr.update(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert tr.summary()["samples_per_window"] == [6]  # closes at the first boundary >= 5
    assert tr.summary()["fractions"] == [0.5]
    assert DeadTracker(2, 5).summary()["final"] is None


def test_trainer_tracks_dead_latents_of_a_constructed_model() -> None:
    """Latents 0..4 can never fire (huge negative bias); the others always fire."""
    model = create("relu_l1", N, M, seed=0)
    with torch.no_grad():
        model.b_enc.fill_(1e4)
        model.b_enc[:5] = -1e4
    data = _stream(10, b=8)
    res = train(model, data, TrainConfig(steps=10, lr=1e-9, device="cpu", dead_window=16,
                                         dead_last=3))
    dead = res["model"].dead
    assert dead["fractions"] == [5 / M] * 5
    assert dead["final"] == 5 / M and dead["median_last"] == 5 / M
    assert dead["window_samples"] == 16
    assert res["model"].device == "cpu"


# ----------------------------------------------------------------------------- errors
def test_nan_batch_names_the_step() -> None:
    data = _stream(5)
    data[3][2, 1] = float("nan")
    model = create("aen", N, M)
    with pytest.raises(FloatingPointError, match="batch at step 3 holds 1 NaN/inf"):
        train(model, data, TrainConfig(steps=5, device="cpu"))


def test_nan_loss_names_the_step_and_model() -> None:
    models = {"good": create("aen", N, M), "bad": create("topk", N, M, k_top=2)}
    with torch.no_grad():
        models["bad"].b_enc[0] = float("inf")
    # an infinite code makes every reconstruction error infinite: the mean squared error is
    # inf (autograd's loss, with its 0 * l1 term, read nan)
    with pytest.raises(FloatingPointError, match="loss of model 'bad' \\(topk\\) is inf at "
                                                 "step 0"):
        train(models, _stream(3), TrainConfig(steps=3, device="cpu"))


def test_bad_batches_are_clear_errors() -> None:
    model = create("aen", N, M)
    cfg = TrainConfig(steps=2, device="cpu")
    with pytest.raises(ValueError, match=r"batch at step 0 must have shape \(B, 8\)"):
        train(model, [torch.zeros(4, 3)] * 2, cfg)
    with pytest.raises(ValueError, match="batch at step 0 is empty"):
        train(model, [torch.zeros(0, N)] * 2, cfg)
    with pytest.raises(TypeError, match="batch at step 0 must be a torch.Tensor"):
        train(model, [np.zeros((4, N))] * 2, cfg)
    with pytest.raises(ValueError, match="data ended at step 1, before steps=2"):
        train(model, _stream(1), cfg)
    with pytest.raises(ValueError, match="share d_in"):
        train({"a": create("aen", N, M), "b": create("aen", N + 1, M)}, _stream(2), cfg)
    with pytest.raises(ValueError, match="checkpoint_every > 0 needs a checkpoint_dir"):
        train(model, _stream(2), TrainConfig(steps=2, checkpoint_every=1))


def test_batches_with_true_codes_and_float64() -> None:
    data = [(x.double(), torch.zeros(x.shape[0], 3)) for x in _stream(3)]
    model = create("elastic_net", N, M)
    train(model, data, TrainConfig(steps=3, device="cpu", dtype="float64"))
    assert model.W_dec.dtype == torch.float64


# ----------------------------------------------------------------------------- learning
def test_short_run_on_uncorrelated_data_learns() -> None:
    """rho = 0, n=16, m=32, k=2: 400 AEN steps lower the loss >= 5x and reach EV >= 0.9."""
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    dic = spiked_dictionary(16, 32, 0.0, seed=0)
    stream = SyntheticStream(dic.D, 2, 64, seed=0)
    model = create("aen", 16, 32, seed=0, l1=2e-3, l2=1e-4, warmup_steps=100, ramp_steps=100)
    evals = []
    res = train(model, lambda s: stream.torch_batches(400 - s, start=s),
                TrainConfig(steps=400, lr=3e-3, device="cpu", dead_window=640),
                eval_fn=lambda m: evals.append(1) or {"ev": 0.0})["model"]
    assert res.train_loss[-1] < res.train_loss[0] / 5
    X, H = SyntheticStream(dic.D, 2, 2048, seed=1).torch_batch(0)
    metrics = evaluate(model, X, H, D_true=dic.D, shared=dic.shared)
    assert metrics["explained_variance"] >= 0.9
    assert evals == [1] and res.evals[-1]["step"] == 400
    assert res.dead["window_samples"] == 640 and len(res.dead["fractions"]) == 40


def test_align_codes_recovers_a_signed_permutation() -> None:
    rng = np.random.default_rng(0)
    true = rng.standard_normal((5, 4))
    perm = np.array([2, 0, 3, 1])
    sign = np.array([1.0, -1.0, 1.0, 1.0])
    learned = np.concatenate([true[:, perm] * sign, rng.standard_normal((5, 1)) * 1e-3 + 0],
                             axis=1)
    codes = rng.uniform(0, 1, (3, 5))
    aligned = align_codes(codes, learned, true)
    assert aligned.shape == (3, 5)
    for j, p in enumerate(perm):
        np.testing.assert_array_equal(aligned[:, p], codes[:, j] * sign[j])
    np.testing.assert_array_equal(aligned[:, 4], codes[:, 4])


def test_fired_latents_equals_any_nonzero() -> None:
    from aensae.saes.dead import fired_latents

    h = torch.tensor([[0.0, 1.0, 0.0, -2.0], [0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    assert fired_latents(h).tolist() == [False, True, False, True]
    model = create("aen", N, M, seed=0)
    with torch.no_grad():
        model.b_enc[:3] = -50.0
    out = model.compute_grads(_stream(1)[0])
    assert torch.equal(out.stats["fired"], (out.h != 0).any(0))
    assert not out.stats["fired"][:3].any()


# ----------------------------------------------------------------------------- stacking
def _relu_family(dtype: torch.dtype = torch.float64) -> dict:
    return {
        "relu": create("relu_l1", N, M, seed=1, l1=0.02, dtype=dtype),
        "en": create("elastic_net", N, M, seed=2, l1=0.01, l2=0.02, dtype=dtype),
        "al": create("adaptive_lasso", N, M, seed=3, warmup_steps=1, ramp_steps=3,
                     dtype=dtype),
        "aen": create("aen", N, M, seed=4, warmup_steps=0, ramp_steps=2, l2=0.01,
                      dtype=dtype),
        "topk": create("topk", N, M, seed=5, k_top=3, dtype=dtype),
    }


def test_stacked_gradients_equal_each_models_own() -> None:
    from aensae.saes.training.stacked import StackedReLU

    models = _relu_family()
    names = ["relu", "en", "al", "aen"]
    with torch.no_grad():
        models["aen"].ema.copy_(torch.linspace(0.1, 2.0, M, dtype=torch.float64))
    x = _stream(1)[0].double()
    own = {}
    for k in names:
        out = models[k].compute_grads(x)
        own[k] = (out, {n: p.grad.clone() for n, p in models[k].named_parameters()})
    before = {k: {n: p.detach().clone() for n, p in models[k].named_parameters()}
              for k in names}
    outs = StackedReLU([models[k] for k in names]).compute_grads(x)
    for k, out in zip(names, outs, strict=True):
        for n, p in models[k].named_parameters():
            assert torch.equal(p.detach(), before[k][n])  # re-seating keeps the values
            torch.testing.assert_close(p.grad, own[k][1][n], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(out.loss, own[k][0].loss, rtol=1e-12, atol=0.0)
        assert torch.equal(out.stats["fired"], own[k][0].stats["fired"])


def test_stacked_training_matches_separate_training() -> None:
    data = [x.double() for x in _stream(15)]
    cfg = dict(steps=15, device="cpu", dtype="float64", dead_window=32, lr=3e-3)
    joint = _relu_family()
    res = train(joint, data, TrainConfig(stack=True, **cfg))
    for name, model in _relu_family().items():
        alone = train({name: model}, data, TrainConfig(**cfg))
        for (n, a), b in zip(model.state_dict().items(), joint[name].state_dict().values(),
                             strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"{name}.{n}")
        np.testing.assert_allclose(alone[name].train_loss, res[name].train_loss, rtol=1e-9)


def test_batch_whose_sum_overflows_is_not_an_error() -> None:
    big = torch.full((4, N), 3e38)  # finite entries, the float32 sum overflows to inf
    model = create("relu_l1", N, M, l1=0.0)
    with pytest.raises(FloatingPointError, match="loss of model"):  # not "batch at step"
        train(model, [big], TrainConfig(steps=1, device="cpu"))
    inf_batch = _stream(1)[0]
    inf_batch[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="batch at step 0 holds 1 NaN/inf"):
        train(model, [inf_batch], TrainConfig(steps=1, device="cpu"))


def test_dead_tracker_records_trend_and_regime_per_window() -> None:
    from aensae.saes.dead import DeadTracker

    calls = iter(range(100))
    tr = DeadTracker(4, window=6, last=3, probe=lambda: {"probe": float(next(calls))})
    h_all = torch.tensor([[1.0, 0, 0, 0]] * 3)   # one of four latents fires: 3/4 dead
    h_two = torch.tensor([[1.0, 1.0, 0, 0]] * 3)  # two fire: 1/2 dead
    for h in (h_all, h_all, h_two, h_two, h_all, h_two, h_all, h_all):
        tr.update(h)
    s = tr.summary()
    assert s["fractions"] == [0.75, 0.5, 0.5, 0.75]
    assert s["trend"] == 0.75 - 0.5  # last window minus the one `last - 1` windows before
    assert [r["samples_seen"] for r in s["regime"]] == [6, 12, 18, 24]
    assert [r["dead"] for r in s["regime"]] == s["fractions"]
    assert [r["probe"] for r in s["regime"]] == [0.0, 1.0, 2.0, 3.0]
    again = DeadTracker(4, window=6, last=3)
    again.load_state_dict(tr.state_dict())
    assert again.summary() == s


def test_trainer_records_the_adaptive_regime_at_each_window() -> None:
    model = create("aen", N, M, seed=0, l1=0.01, l2=0.01, ramp_steps=2)
    res = train({"m": model}, _stream(10), TrainConfig(steps=10, dead_window=32,
                                                       **{k: v for k, v in CFG.items()
                                                          if k != "dead_window"}))["m"]
    reg = res.dead["regime"]
    assert len(reg) == 5 and [r["step"] for r in reg] == [2, 4, 6, 8, 10]
    assert int(model.hold) == 2  # floor(0.2 * 10)
    assert [r["alpha"] for r in reg] == [0.0, 1.0, 1.0, 1.0, 1.0]  # (step - 2) / 2, capped
    assert all(0.0 <= r["w_max_frac"] <= 1.0 and r["w_q05"] <= r["w_q95"] for r in reg)
