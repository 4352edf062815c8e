"""Architectures, registry, adaptive weights, exact-problem description and save/load.

Oracles: hand computations in numpy, autograd of losses written out here, closed forms.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aensae import objective
from aensae.objective import exact_objective
from aensae.saes import ARCHITECTURES, create, hyper_defaults, load, save
from aensae.saes import adaptive_lasso as adaptive_module

D_IN, D_SAE = 6, 10
RELU_FAMILY = ("relu_l1", "elastic_net", "adaptive_lasso", "aen")


def _x(b: int = 7, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, D_IN, generator=g, dtype=dtype)


def _perturb(model: torch.nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    """Move every parameter away from its symmetric initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.project_decoder()


def _relu_family(arch: str, l1: float, l2: float, ema: tuple[float, float] | None = None,
                 dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A perturbed ReLU-family model: ``l2`` where the architecture has it, adaptive
    weights live from step 0 with the EMA set to ``linspace(*ema)`` when given; the EMA
    updated after the step (``ema_update="after"``), so the loss uses ``l1_weights()``
    (the "before" order is tested on its own below)."""
    hyper: dict = {"l1": l1}
    if arch in ("elastic_net", "aen"):
        hyper["l2"] = l2
    if arch in ("adaptive_lasso", "aen"):
        hyper.update(warmup_steps=0, warmup_frac=0.0, ramp_steps=0, ema_update="after")
    model = create(arch, D_IN, D_SAE, dtype=dtype, **hyper)
    _perturb(model)
    if ema is not None and arch in ("adaptive_lasso", "aen"):
        with torch.no_grad():
            model.ema.copy_(torch.linspace(*ema, D_SAE, dtype=dtype))
    return model


# ----------------------------------------------------------------------------- registry
def test_registry_lists_every_architecture() -> None:
    assert list(ARCHITECTURES) == ["relu_l1", "elastic_net", "adaptive_lasso", "aen", "topk",
                                   "batchtopk", "jumprelu"]


def test_unknown_architecture_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'nope'.*relu_l1.*jumprelu"):
        create("nope", D_IN, D_SAE)


def test_unknown_hyperparameter_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) l1 .*'topk'.*k_top"):
        create("topk", D_IN, D_SAE, l1=0.1)
    with pytest.raises(ValueError, match="valid hyperparameters: init, l1$"):
        create("relu_l1", D_IN, D_SAE, l2=0.1)


@pytest.mark.parametrize(("arch", "name", "value"), [
    ("relu_l1", "l1", -1e-3), ("elastic_net", "l2", -1.0), ("aen", "gamma", -0.5),
    ("aen", "beta", 1.0), ("aen", "top_p", 0.0), ("aen", "w_min", 0.0),
    ("topk", "k_top", 0), ("jumprelu", "bandwidth", 0.0),
])
def test_bad_hyperparameter_values_name_the_parameter(arch: str, name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        create(arch, D_IN, D_SAE, **{name: value})


def test_relations_between_hyperparameters_are_checked() -> None:
    with pytest.raises(ValueError, match="w_min must be <= w_max"):
        create("aen", D_IN, D_SAE, w_min=2.0, w_max=1.0)
    with pytest.raises(ValueError, match="k_top must be <= d_sae=10"):
        create("topk", D_IN, D_SAE, k_top=11)
    with pytest.raises(ValueError, match="k_top must be <= d_sae=10"):
        create("batchtopk", D_IN, D_SAE, k_top=11)
    with pytest.raises(TypeError, match="warmup_steps must be an integer"):
        create("aen", D_IN, D_SAE, warmup_steps=1.5)


def test_adaptive_defaults_are_the_reference_implementations() -> None:
    """Issue 11: beta 0.999, top 1 %, w in [0.1, 10], 2,000-step ramp after the hold."""
    for arch in ("adaptive_lasso", "aen"):
        hp = hyper_defaults(arch)
        assert (hp["beta"], hp["top_p"], hp["w_min"], hp["w_max"], hp["ramp_steps"]) == \
            (0.999, 0.01, 0.1, 10.0, 2000)


def test_hyper_defaults_are_the_applied_defaults() -> None:
    for arch in ARCHITECTURES:
        assert create(arch, D_IN, 32).hyper == hyper_defaults(arch)


# ----------------------------------------------------------------------------- layout
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_layout_and_unit_norm_atoms(arch: str) -> None:
    model = create(arch, D_IN, D_SAE, seed=3, k_top=2) if "topk" in arch else \
        create(arch, D_IN, D_SAE, seed=3)
    assert model.W_enc.shape == (D_IN, D_SAE)
    assert model.W_dec.shape == (D_SAE, D_IN)
    assert model.b_enc.shape == (D_SAE,) and model.b_dec.shape == (D_IN,)
    norms = model.W_dec.detach().double().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(D_SAE, dtype=torch.float64))
    torch.testing.assert_close(model.W_enc.detach(), model.W_dec.detach().T)
    with torch.no_grad():
        model.W_dec.mul_(torch.linspace(0.5, 3.0, D_SAE)[:, None])
    model.project_decoder()
    torch.testing.assert_close(model.W_dec.detach().double().norm(dim=1),
                               torch.ones(D_SAE, dtype=torch.float64))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_tied_init_is_the_default_and_ties_exactly(arch: str) -> None:
    extra = {"k_top": 2} if "topk" in arch else {}
    model = create(arch, D_IN, D_SAE, seed=4, **extra)
    assert model.hyper["init"] == "tied"
    assert torch.equal(model.W_enc.detach(), model.W_dec.detach().T)
    assert not model.b_enc.any() and not model.b_dec.any()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_independent_init_draws_what_nn_linear_draws(arch: str) -> None:
    """Oracle: torch's own nn.Linear layers, built after seeding the global generator."""
    seed = 7
    extra = {"k_top": 2} if "topk" in arch else {}
    model = create(arch, D_IN, D_SAE, seed=seed, init="independent", **extra)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        enc = torch.nn.Linear(D_IN, D_SAE)
        dec = torch.nn.Linear(D_SAE, D_IN, bias=False)
    assert torch.equal(model.W_enc.detach(), enc.weight.detach().T)
    assert torch.equal(model.b_enc.detach(), enc.bias.detach())
    atoms = dec.weight.detach().T.double()
    torch.testing.assert_close(model.W_dec.detach().double(),
                               (atoms / atoms.norm(dim=1, keepdim=True)).float().double())
    assert not model.b_dec.any()
    assert not torch.equal(model.W_enc.detach(), model.W_dec.detach().T)


def test_independent_init_is_uniform_with_the_nn_linear_bounds() -> None:
    """Analytic oracle: U(-b, b) has mean 0 and variance b^2 / 3, b = 1/sqrt(fan_in)."""
    d_in, d_sae = 64, 2048
    model = create("relu_l1", d_in, d_sae, seed=1, init="independent")
    for name, t, fan_in in (("W_enc", model.W_enc, d_in), ("b_enc", model.b_enc, d_in)):
        v = t.detach().double().ravel()
        b = 1.0 / math.sqrt(fan_in)
        assert float(v.abs().max()) <= b, name
        n = v.numel()
        # mean: 6 standard errors; variance: 6 standard errors of the sample variance
        assert abs(float(v.mean())) < 6 * b / math.sqrt(3 * n), name
        se_var = math.sqrt((b**4 / 5 - (b**2 / 3) ** 2) / n)
        assert abs(float(v.var()) - b**2 / 3) < 6 * se_var, name
        assert float(v.abs().max()) > 0.99 * b, name  # the draws fill the interval
    torch.testing.assert_close(model.W_dec.detach().double().norm(dim=1),
                               torch.ones(d_sae, dtype=torch.float64))


def test_unknown_init_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="init must be one of tied, independent, got 'xavier'"):
        create("aen", D_IN, D_SAE, init="xavier")


@pytest.mark.parametrize("init", ["tied", "independent"])
def test_init_round_trips_through_save_and_load(init: str, tmp_path) -> None:
    model = create("topk", D_IN, D_SAE, seed=3, k_top=2, init=init)
    save(model, tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["hyper"]["init"] == init
    loaded = load(tmp_path)
    assert loaded.hyper["init"] == init
    for (n1, t1), (_, t2) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                 strict=True):
        assert torch.equal(t1, t2), n1


def test_same_seed_same_init_different_seed_different_init() -> None:
    a, b, c = (create("aen", D_IN, D_SAE, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.W_dec, b.W_dec)
    assert not torch.equal(a.W_dec, c.W_dec)


def test_relu_encoder_matches_hand_formula() -> None:
    model = create("relu_l1", D_IN, D_SAE, dtype=torch.float64)
    _perturb(model)
    x = _x()
    W_enc, b_enc = model.W_enc.detach().numpy(), model.b_enc.detach().numpy()
    W_dec, b_dec = model.W_dec.detach().numpy(), model.b_dec.detach().numpy()
    xn = x.numpy()
    h = np.maximum((xn - b_dec) @ W_enc + b_enc, 0.0)
    x_hat, codes = model(x)
    np.testing.assert_allclose(codes.detach().numpy(), h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x_hat.detach().numpy(), h @ W_dec + b_dec, rtol=1e-12,
                               atol=1e-12)


# ----------------------------------------------------------------------------- bad inputs
def test_encode_rejects_bad_batches() -> None:
    model = create("aen", D_IN, D_SAE)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6\), got \(3, 5\)"):
        model.encode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="x must not be empty"):
        model.encode(torch.zeros(0, D_IN))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model.encode(np.zeros((3, D_IN)))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        model.encode(torch.zeros(3, D_IN, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"h must be a tensor of shape \(B, 10\)"):
        model.decode(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6\)"):
        model.compute_grads(torch.zeros(3, 4))


# ----------------------------------------------------------------------------- gradients
def _independent_loss(model, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """The ReLU-family loss written out from DESIGN.md, on the model's parameters."""
    h = torch.relu((x - model.b_dec) @ model.W_enc + model.b_enc)
    x_hat = h @ model.W_dec + model.b_dec
    ww = torch.ones(model.d_sae, dtype=x.dtype) if w is None else w
    return (((x - x_hat) ** 2).mean() + model.l1 * (ww * h.abs()).sum(1).mean()
            + model.l2 * (h ** 2).sum(1).mean())


def _assert_hand_step_is_the_loss(model, x: torch.Tensor, w: torch.Tensor | None):
    """``model.compute_grads(x)`` against autograd of :func:`_independent_loss` with the
    weights ``w``: loss and every gradient; returns ``(out, the reference loss)``."""
    out = model.compute_grads(x)
    hand = {n: p.grad.clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    ref = _independent_loss(model, x, w)
    ref.backward()
    torch.testing.assert_close(out.loss, ref.detach(), rtol=1e-12, atol=1e-14)
    for name, p in model.named_parameters():
        torch.testing.assert_close(hand[name], p.grad, rtol=1e-10, atol=1e-12,
                                   msg=f"gradient of {name}")
    return out, ref


@pytest.mark.parametrize("arch", RELU_FAMILY)
def test_hand_backward_equals_autograd(arch: str) -> None:
    model = _relu_family(arch, l1=0.05, l2=0.03, ema=(0.01, 2.0))
    x = _x(b=9)
    w = model.l1_weights()
    if w is not None:
        assert not torch.all(w == 1.0)  # the weighted case is exercised
    _assert_hand_step_is_the_loss(model, x, w)


def _topk_loss(model, x: torch.Tensor, k: int) -> torch.Tensor:
    """The TopK loss written out: a 0/1 mask of each row's k largest pre-activations
    (by a full sort), rectified; mean squared error."""
    pre = (x - model.b_dec) @ model.W_enc + model.b_enc
    order = torch.argsort(pre.detach(), dim=1, descending=True)[:, :k]
    mask = torch.zeros_like(pre).scatter(1, order, 1.0)
    h = torch.relu(pre) * mask
    x_hat = h @ model.W_dec + model.b_dec
    return ((x - x_hat) ** 2).mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_topk_hand_backward_equals_autograd(dtype: torch.dtype) -> None:
    model = create("topk", D_IN, D_SAE, dtype=torch.float64, k_top=3)
    _perturb(model)
    with torch.no_grad():  # some kept pre-activations negative: the ReLU mask is exercised
        model.b_enc.sub_(0.4)
    x = _x(b=11)
    ref_model = create("topk", D_IN, D_SAE, dtype=torch.float64, k_top=3)
    ref_model.load_state_dict(model.state_dict())
    ref = _topk_loss(ref_model, x, 3)
    ref.backward()
    pre = (x - model.b_dec) @ model.W_enc + model.b_enc
    kept = torch.topk(pre, 3, dim=1).values
    assert bool((kept < 0).any()) and bool((kept > 0).any())
    model.to(dtype)
    out = model.compute_grads(x.to(dtype))
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5,
                                                                       "atol": 1e-6}
    torch.testing.assert_close(out.loss.to(torch.float64), ref.detach(), **tol)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad.to(torch.float64), q.grad, **tol,
                                   msg=f"gradient of {name}")
    fired = torch.relu(pre) * torch.zeros_like(pre).scatter(
        1, torch.argsort(pre, dim=1, descending=True)[:, :3], 1.0)
    assert torch.equal(out.stats["fired"], fired.sum(0) > 0)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(256, 64, 256, 4), (37, 12, 40, 5)])
def test_topk_hand_steps_bit_identical_to_autograd(arch: str, dtype: torch.dtype, shape
                                                   ) -> None:
    """The plain path (autograd of ``loss``, :meth:`SAE.compute_grads`) and the hand-derived
    backward round alike: 40 Adam steps end on the same weights (and BatchTopK's inference
    threshold), bit for bit, so runs trained before the hand-derived backward are
    reproduced exactly."""
    from aensae.saes.base import SAE

    B, n, m, k = shape
    plain = create(arch, n, m, dtype=dtype, k_top=k, seed=3)
    hand = create(arch, n, m, dtype=dtype, k_top=k, seed=3)
    gen = torch.Generator().manual_seed(5)
    opts = [torch.optim.Adam(mdl.parameters(), lr=1e-3) for mdl in (plain, hand)]
    for _ in range(40):
        x = torch.relu(torch.randn(B, n, generator=gen, dtype=dtype))
        outs = [SAE.compute_grads(plain, x), hand.compute_grads(x)]
        assert torch.equal(outs[0].loss, outs[1].loss)
        for mdl, opt, out in zip((plain, hand), opts, outs, strict=True):
            opt.step()
            mdl.project_decoder()
            mdl.after_step(out)
    for (name, p), q in zip(plain.named_parameters(), hand.parameters(), strict=True):
        assert torch.equal(p, q), name
    for (name, b), c in zip(plain.named_buffers(), hand.buffers(), strict=True):
        assert torch.equal(b, c), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, l0", [((256, 64, 256), 3e-3), ((37, 12, 40), 0.2)])
def test_jumprelu_hand_steps_bit_identical_to_autograd(dtype: torch.dtype, shape, l0) -> None:
    """The oracle is autograd through JumpReLU's straight-through functions
    (:meth:`SAE.compute_grads` on ``loss``): 40 Adam steps of both paths end on the same
    weights and thresholds, bit for bit, with latents inside the kernel's band on the
    way (so both threshold terms act)."""
    from aensae.saes.base import SAE
    from aensae.saes.jumprelu import _kernel

    B, n, m = shape
    plain = create("jumprelu", n, m, dtype=dtype, l0=l0, bandwidth=0.2, seed=3)
    hand = create("jumprelu", n, m, dtype=dtype, l0=l0, bandwidth=0.2, seed=3)
    gen = torch.Generator().manual_seed(5)
    opts = [torch.optim.Adam(mdl.parameters(), lr=1e-2) for mdl in (plain, hand)]
    in_band = 0.0
    for _ in range(40):
        x = torch.relu(torch.randn(B, n, generator=gen, dtype=dtype))
        with torch.no_grad():
            in_band += float(_kernel(plain.pre_activation(x), plain.threshold, 0.2).sum())
        outs = [SAE.compute_grads(plain, x), hand.compute_grads(x)]
        assert torch.equal(outs[0].loss, outs[1].loss)
        assert torch.equal(outs[0].h, outs[1].h)
        for mdl, opt in zip((plain, hand), opts, strict=True):
            opt.step()
            mdl.project_decoder()
    assert in_band > 0
    assert not torch.equal(plain.log_threshold, torch.full_like(plain.log_threshold,
                                                                math.log(0.1)))
    for (name, p), q in zip(plain.named_parameters(), hand.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_topk_with_auxk_on_uses_autograd() -> None:
    model = create("topk", D_IN, D_SAE, dtype=torch.float64, k_top=2, aux_k=2,
                   dead_samples=1)
    _perturb(model)
    with torch.no_grad():
        model.samples_since_fired.fill_(5)  # every latent dead: the AuxK term is on
    out = model.compute_grads(_x())
    assert "aux" in out.terms and float(out.terms["aux"]) > 0


def test_hand_backward_terms_sum_to_loss() -> None:
    model = create("aen", D_IN, D_SAE, dtype=torch.float64, l1=0.05, l2=0.02)
    _perturb(model)
    out = model.compute_grads(_x())
    total = sum(float(v) for v in out.terms.values())
    assert math.isclose(float(out.loss), total, rel_tol=1e-12)


# ----------------------------------------------------------------------------- AEN weights
def _hand_population_weights(ema: np.ndarray, gamma: float, top_p: float, w_min: float,
                             w_max: float) -> np.ndarray:
    k = math.ceil(top_p * ema.size)
    ref = np.sort(ema)[::-1][:k].mean()
    return np.clip((ref / ema) ** gamma, w_min, w_max)


@pytest.mark.parametrize("arch", ("adaptive_lasso", "aen"))
def test_adaptive_weights_hold_ramp_and_clamps(arch: str) -> None:
    hp = {"gamma": 4.0, "top_p": 0.5, "w_min": 0.1, "w_max": 4.0, "warmup_steps": 10,
          "ramp_steps": 20}
    model = create(arch, D_IN, D_SAE, dtype=torch.float64, **hp)
    ema = np.array([100.0, 10.0, 9.0, 8.0, 7.0, 6.0, 34.0, 1e-3, 32.0, 30.0])
    with torch.no_grad():
        model.ema.copy_(torch.from_numpy(ema))
    w_pop = _hand_population_weights(ema, 4.0, 0.5, 0.1, 4.0)
    assert w_pop.min() == 0.1 and w_pop.max() == 4.0  # both clamps are exercised
    assert np.sum((w_pop > 0.1) & (w_pop < 4.0)) >= 3  # and unclamped values
    for step, alpha in [(0, 0.0), (9, 0.0), (10, 0.0), (15, 0.25), (20, 0.5), (30, 1.0),
                        (1000, 1.0)]:
        with torch.no_grad():
            model.step.fill_(step)
        w = model.l1_weights().numpy()
        if alpha == 0.0:
            assert np.all(w == 1.0), f"weights not exactly 1 during the hold at step {step}"
        else:
            np.testing.assert_allclose(w, 1.0 + alpha * (w_pop - 1.0), rtol=1e-12)
        assert np.all(w >= 0.1 - 1e-15) and np.all(w <= 4.0 + 1e-15)
    np.testing.assert_allclose(model.l1_weights().numpy(), w_pop, rtol=1e-12)
    # blend_weights(w, 1) = 1 + (w - 1): the clamps hold up to one rounding
    assert math.isclose(float(model.l1_weights().min()), 0.1, rel_tol=1e-15)
    assert math.isclose(float(model.l1_weights().max()), 4.0, rel_tol=1e-15)


def test_adaptive_weights_use_the_objective_function_of_the_solvers() -> None:
    # the training step's path, which objective.population_weights also takes for torch
    assert adaptive_module.torch_population_weights is objective.torch_population_weights
    assert adaptive_module.blend_weights is objective.blend_weights
    model = create("aen", D_IN, D_SAE, dtype=torch.float64, warmup_steps=0, ramp_steps=0)
    rng = np.random.default_rng(0)
    ema = rng.uniform(0.0, 2.0, D_SAE)
    with torch.no_grad():
        model.ema.copy_(torch.from_numpy(ema))
    solver_w = objective.population_weights(ema, gamma=1.0, top_p=0.05, w_min=0.01, w_max=10.0)
    np.testing.assert_allclose(model.l1_weights().numpy(), solver_w, rtol=1e-12)
    np.testing.assert_allclose(model.exact_problem().weights, solver_w, rtol=1e-12)


def test_no_gradient_through_adaptive_weights() -> None:
    model = create("aen", D_IN, D_SAE, dtype=torch.float64, warmup_steps=0, ramp_steps=0,
                   ema_update="after")
    _perturb(model)
    with torch.no_grad():
        model.ema.copy_(torch.linspace(0.1, 1.0, D_SAE, dtype=torch.float64))
    assert not model.l1_weights().requires_grad
    assert "ema" not in dict(model.named_parameters())
    out = model.loss(_x())  # autograd path
    out.loss.backward()
    assert model.ema.grad is None
    # the weights act as constants: autograd of the loss with w frozen gives the same grads
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    _independent_loss(model, _x(), model.l1_weights().clone()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-12, atol=1e-14)


def test_ema_and_step_update_after_a_step() -> None:
    beta = 0.9
    model = create("aen", D_IN, D_SAE, dtype=torch.float64, beta=beta)
    _perturb(model)
    x = _x()
    h = model.encode(x).detach().numpy()
    out = model.compute_grads(x)
    model.after_step(out)
    np.testing.assert_allclose(model.ema.numpy(), beta * 1.0 + (1 - beta) * np.abs(h).mean(0),
                               rtol=1e-12)
    assert int(model.step) == 1


# ------------------------------------------------------ the reference implementation's choices
def _reference_weights(ema: np.ndarray, gamma: float, top_p: float, w_min: float,
                       w_max: float) -> np.ndarray:
    """The reference's population weights written out: the mean of the ``int(top_p m)``
    largest EMA entries (at least one) over each entry, to the power gamma, clamped."""
    k = max(1, int(top_p * ema.size))
    ref = np.sort(ema)[::-1][:k].mean()
    return np.clip((ref / ema) ** gamma, w_min, w_max)


def test_reference_count_is_the_floor_of_top_p_m() -> None:
    # m = 256, top 1 %: int(2.56) = 2 latents (ceil would take 3); top 5 %: 12
    ema = np.linspace(0.01, 1.0, 256) ** 2
    ema[[-1, -2, -3]] = [9.0, 6.0, 1.5]   # the top three differ a lot: the count matters
    for top_p, k in ((0.01, 2), (0.05, 12), (0.001, 1)):
        ref = np.sort(ema)[::-1][:k].mean()
        want = np.clip(ref / ema, 0.1, 10.0)
        got = objective.population_weights(ema, 1.0, top_p, 0.1, 10.0)
        np.testing.assert_allclose(got, want, rtol=1e-13)
        got_t = objective.population_weights(torch.from_numpy(ema), 1.0, top_p, 0.1, 10.0)
        np.testing.assert_allclose(got_t.numpy(), want, rtol=1e-13)
    assert objective.ref_count(0.01, 256) == 2 and objective.ref_count(0.01, 256, "ceil") == 3
    # set back: ceil takes 3 at m = 256, top 1 %
    ref3 = np.sort(ema)[::-1][:3].mean()
    np.testing.assert_allclose(objective.population_weights(ema, 1.0, 0.01, 0.1, 10.0, "ceil"),
                               np.clip(ref3 / ema, 0.1, 10.0), rtol=1e-13)
    model = create("aen", D_IN, 256, dtype=torch.float64, warmup_frac=0.0, ramp_steps=0)
    with torch.no_grad():
        model.ema.copy_(torch.from_numpy(ema))
    np.testing.assert_allclose(model.l1_weights().numpy(),
                               _reference_weights(ema, 1.0, 0.01, 0.1, 10.0), rtol=1e-13)


@pytest.mark.parametrize("arch", ("adaptive_lasso", "aen"))
def test_ema_takes_the_batch_before_the_weights(arch: str) -> None:
    # the reference's compute_loss: ema <- beta ema + (1 - beta) mean_b |h_b| first, then
    # w = clip((ref / ema)^gamma, ...) of the new ema; the loss written out with that w
    beta, gamma = 0.8, 0.5
    hyper = {"l1": 0.05, "beta": beta, "gamma": gamma, "top_p": 0.2, "w_min": 0.01,
             "warmup_frac": 0.0, "ramp_steps": 0}
    if arch == "aen":
        hyper["l2"] = 0.03
    model = create(arch, D_IN, D_SAE, dtype=torch.float64, **hyper)
    _perturb(model)
    ema0 = np.linspace(0.05, 2.0, D_SAE)
    with torch.no_grad():
        model.ema.copy_(torch.from_numpy(ema0))
    x = _x(b=9)
    with torch.no_grad():
        h = torch.relu((x - model.b_dec) @ model.W_enc + model.b_enc).numpy()
    ema1 = beta * ema0 + (1 - beta) * np.abs(h).mean(0)
    w = torch.from_numpy(_reference_weights(ema1, gamma, 0.2, 0.01, 10.0))
    out, ref = _assert_hand_step_is_the_loss(model, x, w)
    model.after_step(out)
    np.testing.assert_allclose(model.ema.numpy(), ema1, rtol=1e-13)
    assert int(model.step) == 1
    # the autograd path (SAE.loss) uses the same weights
    model.ema.copy_(torch.from_numpy(ema0))
    out2 = model.loss(x)
    torch.testing.assert_close(out2.loss.detach(), ref.detach(), rtol=1e-12, atol=1e-14)


def test_ema_after_order_can_be_set_back() -> None:
    model = create("aen", D_IN, D_SAE, dtype=torch.float64, ema_update="after",
                   warmup_frac=0.0, ramp_steps=0, top_p=0.2)
    _perturb(model)
    ema0 = np.linspace(0.05, 2.0, D_SAE)
    with torch.no_grad():
        model.ema.copy_(torch.from_numpy(ema0))
    x = _x(b=9)
    out = model.compute_grads(x)
    ref = _independent_loss(model, x, torch.from_numpy(_reference_weights(ema0, 1.0, 0.2,
                                                                          0.1, 10.0)))
    torch.testing.assert_close(out.loss, ref.detach(), rtol=1e-12, atol=1e-14)


def test_hold_is_a_fraction_of_the_run() -> None:
    # hold = warmup_steps + floor(warmup_frac * T): 20 % of 30,000 steps = 6,000
    model = create("aen", D_IN, D_SAE)
    assert model.hyper["warmup_frac"] == 0.2 and model.hyper["warmup_steps"] == 0
    model.set_run_length(30000)
    assert int(model.hold) == 6000
    for step, alpha in ((5999, 0.0), (6000, 0.0), (7000, 0.5), (8000, 1.0)):
        model.step.fill_(step)
        assert model.ramp() == alpha
    model.step.fill_(10)  # a model that has stepped keeps its hold
    model.set_run_length(100)
    assert int(model.hold) == 6000
    old = create("aen", D_IN, D_SAE, warmup_frac=0.0, warmup_steps=1000)
    old.set_run_length(30000)
    assert int(old.hold) == 1000
    mixed = create("aen", D_IN, D_SAE, warmup_frac=0.1, warmup_steps=7)
    mixed.set_run_length(999)
    assert int(mixed.hold) == 7 + 99


def test_regime_reports_clamped_fractions_and_quantiles() -> None:
    model = create("aen", D_IN, D_SAE, dtype=torch.float64, warmup_frac=0.0, ramp_steps=0,
                   top_p=0.1, w_min=0.5, w_max=4.0)
    ema = np.array([8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.1, 0.0, 8.0])
    with torch.no_grad():
        model.ema.copy_(torch.from_numpy(ema))
    w = np.clip(8.0 / np.where(ema > 0, ema, 1e-300), 0.5, 4.0)  # K = 1, ref = 8
    got = model.regime()
    assert got["w_max_frac"] == np.mean(w >= 4.0) == 0.7  # ema <= 2: seven of ten
    assert got["w_min_frac"] == 0.0 and got["alpha"] == 1.0
    assert math.isclose(got["w_q50"], float(np.quantile(w, 0.5)), rel_tol=1e-12)
    assert math.isclose(got["ema_q95"], float(np.quantile(ema, 0.95)), rel_tol=1e-12)
    model.hold.fill_(5)  # during the hold every weight is 1: nothing is at a clamp
    assert model.regime()["w_max_frac"] == 0.0 and model.regime()["w_q50"] == 1.0


# ----------------------------------------------------------------------------- exact problem
@pytest.mark.parametrize("arch", RELU_FAMILY)
def test_exact_problem_matches_the_sae_loss(arch: str) -> None:
    """L * n / 2 = mean_b F(h_b) for codes of x - b_dec on D = W_dec.T (DESIGN.md)."""
    model = _relu_family(arch, l1=0.04, l2=0.01, ema=(0.05, 1.0))
    prob = model.exact_problem()
    assert prob.D.dtype == np.float64 and prob.D.shape == (D_IN, D_SAE)
    np.testing.assert_array_equal(prob.D, model.W_dec.detach().numpy().T)
    np.testing.assert_array_equal(prob.offset, model.b_dec.detach().numpy())
    l2 = 0.01 if arch in ("elastic_net", "aen") else 0.0
    assert prob.lam1 == D_IN * 0.04 / 2 and prob.lam2 == D_IN * l2
    assert prob.nonneg is True
    x = _x()
    out = model.compute_grads(x)
    F = exact_objective(prob.D, prob.centred(x.numpy()), out.h.numpy(), prob.lam1, prob.lam2,
                        prob.weights)
    assert math.isclose(F.mean(), float(out.loss) * D_IN / 2, rel_tol=1e-12)


@pytest.mark.parametrize("arch", ("topk", "batchtopk", "jumprelu"))
def test_exact_problem_is_none_without_l1_objective(arch: str) -> None:
    assert create(arch, D_IN, D_SAE, **({"k_top": 2} if "topk" in arch else {})
                  ).exact_problem() is None


def test_exact_problem_weights_none_for_fixed_weights() -> None:
    assert create("relu_l1", D_IN, D_SAE).exact_problem().weights is None


# ----------------------------------------------------------------------------- topk family
def _positive_pre(model) -> None:
    """Make every pre-activation positive so that top-k keeps exactly k entries."""
    with torch.no_grad():
        model.b_enc.fill_(100.0)


def test_topk_l0_equals_k_and_keeps_the_largest() -> None:
    k = 3
    model = create("topk", D_IN, D_SAE, k_top=k, dtype=torch.float64)
    _perturb(model)
    _positive_pre(model)
    x = _x(b=11)
    h = model.encode(x).detach().numpy()
    pre = model.pre_activation(x).detach().numpy()
    assert np.all((h != 0).sum(1) == k)
    expected = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :k]
    np.put_along_axis(expected, top, np.take_along_axis(pre, top, 1), 1)
    np.testing.assert_array_equal(h, expected)


@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(1, 12),
    m=st.integers(2, 70),
    k_frac=st.floats(0.0, 0.99),
    levels=st.sampled_from([0, 3, 50]),
    nan_row=st.booleans(),
    double=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_compiled_topk_selection_is_torch_topk(B, m, k_frac, levels, nan_row, double, seed):
    """The compiled row selection gives ``torch.topk``'s codes bit for bit, and declines
    exactly the batches where the choice is the algorithm's: a row whose k-th and
    (k+1)-th largest values tie, or a NaN (oracle: the sorted row). ``levels`` > 0 draws
    from that many values (ties; zeros, some stored as -0), 0 continuous values."""
    from aensae.saes.topk import _select_rows, topk_codes

    k = 1 + int(k_frac * (m - 1))
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    if levels:
        pre = torch.randint(-levels // 2, levels - levels // 2, (B, m), generator=gen)
        pre = pre.to(dtype)
        pre[torch.rand(B, m, generator=gen) < 0.2] = -0.0
    else:
        pre = torch.randn(B, m, generator=gen, dtype=dtype)
    if nan_row:
        pre[seed % B, seed % m] = math.nan
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    want = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    got = topk_codes(pre, k)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
    assert torch.equal(got.signbit(), want.signbit())
    srt = pre.numpy().astype(np.float64)
    srt = -np.sort(-srt, axis=1)  # descending, NaN last
    declines = bool(np.isnan(srt).any() or np.any(srt[:, k - 1] == srt[:, k]))
    assert _select_rows(pre.numpy(), k, torch.zeros_like(pre).numpy()) == (not declines)


def test_compiled_topk_selection_declines_hand_ties() -> None:
    """Ties at the boundary, by hand: skipped (row 0: the third 3 is left out), pushed
    out of the buffer (row 1: 5 pushes one 3 out, the other stays), and none (row 2)."""
    from aensae.saes.topk import _select_rows

    for row, declines in (([3.0, 3.0, 3.0, 1.0], True), ([3.0, 3.0, 5.0, 1.0], True),
                          ([3.0, 2.0, 5.0, 1.0], False)):
        pre = np.array([row], dtype=np.float32)
        h = np.zeros_like(pre)
        assert _select_rows(pre, 2, h) == (not declines)
    np.testing.assert_array_equal(h, [[3.0, 0.0, 5.0, 0.0]])


def test_topk_rectifies_negative_winners() -> None:
    model = create("topk", D_IN, D_SAE, k_top=4, dtype=torch.float64)
    with torch.no_grad():
        model.b_enc.fill_(-100.0)
    assert torch.all(model.encode(_x()) == 0)


def test_topk_auxk_off_by_default_and_on_for_dead_latents() -> None:
    model = create("topk", D_IN, D_SAE, k_top=2, dtype=torch.float64)
    assert "aux" not in model.loss(_x()).terms
    aux = create("topk", D_IN, D_SAE, k_top=2, aux_k=3, dead_samples=5, dtype=torch.float64)
    assert "aux" not in aux.loss(_x()).terms  # nothing dead yet
    with torch.no_grad():
        aux.samples_since_fired[:4] = 5
    out = aux.loss(_x())
    assert "aux" in out.terms and float(out.terms["aux"]) > 0
    out.loss.backward()
    assert aux.W_dec.grad[:4].abs().sum() > 0


def test_topk_dead_counter_counts_samples() -> None:
    model = create("topk", D_IN, D_SAE, k_top=2, dtype=torch.float64)
    x = _x(b=4)
    out = model.loss(x)
    model.after_step(out)
    fired = (out.h != 0).any(0)
    assert torch.equal(model.samples_since_fired, torch.where(fired, 0, 4))


def test_batchtopk_mean_l0_equals_k_in_training() -> None:
    k = 3
    model = create("batchtopk", D_IN, D_SAE, k_top=k, dtype=torch.float64)
    _perturb(model)
    _positive_pre(model)
    x = _x(b=8)
    out = model.loss(x)
    assert (out.h != 0).sum() == 8 * k
    assert float((out.h != 0).sum(1).double().mean()) == k
    pre = model.pre_activation(x).detach().numpy().ravel()
    kept = np.sort(pre)[::-1][:8 * k]
    assert float(out.stats["min_kept"]) == kept.min()


def test_batchtopk_threshold_ema_and_inference() -> None:
    model = create("batchtopk", D_IN, D_SAE, k_top=2, threshold_beta=0.5, dtype=torch.float64)
    _perturb(model)
    model.eval()
    with pytest.raises(RuntimeError, match="threshold has not been estimated"):
        model.encode(_x())
    model.train()
    out1 = model.loss(_x(seed=1))
    model.after_step(out1)
    t1 = float(out1.stats["min_kept"])
    assert float(model.threshold) == t1
    out2 = model.loss(_x(seed=2))
    model.after_step(out2)
    t2 = 0.5 * t1 + 0.5 * float(out2.stats["min_kept"])
    assert math.isclose(float(model.threshold), t2, rel_tol=1e-12)
    model.eval()
    x = _x(seed=3)
    pre = model.pre_activation(x).detach().numpy()
    np.testing.assert_array_equal(model.encode(x).detach().numpy(), np.where(pre > t2, pre, 0))


def test_jumprelu_threshold_receives_the_ste_gradient() -> None:
    eps, theta0, l0 = 0.5, 0.3, 0.1
    model = create("jumprelu", D_IN, D_SAE, bandwidth=eps, init_threshold=theta0, l0=l0,
                   dtype=torch.float64)
    _perturb(model, scale=0.1)
    x = _x(b=16)
    out = model.loss(x)
    out.loss.backward()
    grad = model.log_threshold.grad.numpy()
    assert np.any(grad != 0)
    # hand formula: dL/dtheta_i = sum_b [ dL/dh_bi * (-theta/eps) K + l0/B * (-1/eps) K ]
    pre = model.pre_activation(x).detach().numpy()
    theta = np.exp(model.log_threshold.detach().numpy())
    W_dec, b_dec = model.W_dec.detach().numpy(), model.b_dec.detach().numpy()
    h = pre * (pre > theta)
    B = x.shape[0]
    dh = 2.0 / (B * D_IN) * (h @ W_dec + b_dec - x.numpy()) @ W_dec.T
    K = (np.abs(pre - theta) < eps / 2).astype(float)
    dtheta = (dh * (-theta / eps) * K + (l0 / B) * (-1.0 / eps) * K).sum(0)
    np.testing.assert_allclose(grad, dtheta * theta, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(out.h.detach().numpy(), h)


# ----------------------------------------------------------------------------- save / load
def _trained_few_steps(arch: str):
    from aensae.saes import TrainConfig, train

    hyper = {"k_top": 2} if "topk" in arch else {}
    if arch in ("adaptive_lasso", "aen"):
        hyper.update(warmup_steps=1, ramp_steps=2)
    model = create(arch, D_IN, D_SAE, seed=2, **hyper)
    batches = [_x(b=8, seed=s, dtype=torch.float32) for s in range(4)]
    train(model, batches, TrainConfig(steps=4, device="cpu", dead_window=8))
    return model


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_save_load_round_trip(arch: str, tmp_path) -> None:
    model = _trained_few_steps(arch)
    save(model, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["cfg.json",
                                                                    "sae.safetensors"]
    cfg = json.loads((tmp_path / "run" / "cfg.json").read_text())
    assert cfg["arch"] == arch and cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE
    assert cfg["hyper"] == model.hyper and "aensae_version" in cfg
    loaded = load(tmp_path / "run")
    assert type(loaded) is type(model)
    for (n1, t1), (n2, t2) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                  strict=True):
        assert n1 == n2 and torch.equal(t1, t2), n1
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(loaded, mode)()
        x = _x(seed=9, dtype=torch.float32)
        a, b = model(x), loaded(x)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    if arch == "aen":
        assert int(loaded.step) == 4 and not torch.all(loaded.ema == 1)
        assert torch.equal(model.l1_weights(), loaded.l1_weights())


def test_safetensors_use_saelens_names(tmp_path) -> None:
    from safetensors.torch import load_file

    save(create("aen", D_IN, D_SAE), tmp_path)
    tensors = load_file(str(tmp_path / "sae.safetensors"))
    assert tensors["W_enc"].shape == (D_IN, D_SAE) and tensors["W_dec"].shape == (D_SAE, D_IN)
    assert set(tensors) == {"W_enc", "W_dec", "b_enc", "b_dec", "ema", "step", "hold"}


def test_load_missing_files_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="cfg.json not found"):
        load(tmp_path)


@pytest.mark.parametrize("arch", ["relu_l1", "aen"])
def test_float32_hand_step_matches_float64_autograd(arch: str) -> None:
    # the hand-derived step in float32 (the training dtype), against autograd in float64
    m32 = _relu_family(arch, l1=0.05, l2=0.03, dtype=torch.float32)
    m64 = create(arch, D_IN, D_SAE, dtype=torch.float64, **m32.hyper)
    m64.load_state_dict({k: v.to(torch.float64) if v.is_floating_point() else v
                         for k, v in m32.state_dict().items()})
    x = _x(b=33)
    out = m32.compute_grads(x.to(torch.float32))
    ref = _independent_loss(m64, x, m64.l1_weights())
    ref.backward()
    assert abs(float(out.loss) - float(ref.detach())) <= 1e-5 * float(ref.detach())
    for (name, p32), p64 in zip(m32.named_parameters(), m64.parameters(), strict=True):
        scale = float(p64.grad.abs().max())
        err = float((p32.grad.to(torch.float64) - p64.grad).abs().max())
        assert err <= 1e-5 * scale, (name, err, scale)


def test_projection_refuses_zero_decoder_rows() -> None:
    model = create("relu_l1", D_IN, D_SAE)
    with torch.no_grad():
        model.W_dec[[1, 4]] = 0.0
    with pytest.raises(FloatingPointError, match="2 decoder row"):
        model.project_decoder()
    with torch.no_grad():
        model.W_dec[[1, 4]] = 3.0
    model.project_decoder()
    torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(D_SAE))
