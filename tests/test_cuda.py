"""CUDA paths: skipped without a GPU; the oracle is the same computation on the CPU.

Exact bit equality holds only within one device (joint == separate, resume ==
uninterrupted, save == load); across devices the matrix-product kernels differ, so CUDA
float64 runs are compared with CPU float64 runs to a tolerance far below any effect the
suite measures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trainer_support import M, N, _assert_same_state, _stream  # the trainer tests' helpers

from aensae.saes import TrainConfig, create, load, save, train
from aensae.saes.evaluate import evaluate
from aensae.saes.training.trainer import resolve_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CFG = {"dead_window": 32, "dead_last": 2, "lr": 3e-3}


def _models(dtype: torch.dtype = torch.float64) -> dict:
    return {
        "aen": create("aen", N, M, seed=1, warmup_steps=2, ramp_steps=5, l1=0.01, l2=0.01,
                      dtype=dtype),
        "al": create("adaptive_lasso", N, M, seed=6, warmup_steps=1, ramp_steps=3, dtype=dtype),
        "en": create("elastic_net", N, M, seed=7, l1=0.01, l2=0.02, dtype=dtype),
        "topk": create("topk", N, M, seed=2, k_top=3, aux_k=2, dead_samples=16, dtype=dtype),
        "btk": create("batchtopk", N, M, seed=3, k_top=2, dtype=dtype),
        "jump": create("jumprelu", N, M, seed=4, dtype=dtype),
        "relu": create("relu_l1", N, M, seed=5, l1=0.02, dtype=dtype),
    }


def test_auto_device_is_cuda_and_models_train_there() -> None:
    assert resolve_device("auto").type == "cuda"
    models = _models(torch.float32)
    res = train(models, _stream(3), TrainConfig(steps=3, device="auto", **CFG))
    assert {r.device for r in res.values()} == {"cuda"}
    for name, model in models.items():
        for t in model.state_dict().values():
            assert t.device.type == "cuda", name


def test_cuda_training_matches_cpu_training() -> None:
    data = _stream(12)
    cfg = dict(steps=12, dtype="float64", lr_warmup_steps=3, grad_clip=1.0, **CFG)
    on_cpu, on_gpu = _models(), _models()
    res_cpu = train(on_cpu, data, TrainConfig(device="cpu", **cfg))
    res_gpu = train(on_gpu, data, TrainConfig(device="cuda", **cfg))
    for name in on_cpu:
        for (k, a), b in zip(on_cpu[name].state_dict().items(),
                             on_gpu[name].state_dict().values(), strict=True):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11, msg=f"{name}.{k}")
        np.testing.assert_allclose(res_gpu[name].train_loss, res_cpu[name].train_loss,
                                   rtol=1e-9)
        assert res_gpu[name].dead == res_cpu[name].dead


def test_cuda_joint_training_equals_separate_training() -> None:
    data = _stream(10)
    cfg = TrainConfig(steps=10, device="cuda", **CFG)
    joint = _models(torch.float32)
    res_joint = train(joint, data, cfg)
    for name, model in _models(torch.float32).items():
        res = train({name: model}, data, cfg)
        _assert_same_state(model, joint[name])
        assert res[name].train_loss == res_joint[name].train_loss


@pytest.mark.parametrize("graph", ["off", "auto"])
def test_cuda_stacked_training_matches_cpu_separate(graph) -> None:
    data = _stream(10)
    cfg = dict(steps=10, dtype="float64", **CFG)
    stacked = _models()  # all seven architectures, each family on its stacked path
    res = train(stacked, data, TrainConfig(device="cuda", stack=True, graph=graph, **cfg))
    want = "stacked-eager" if graph == "off" else "stacked-graph"
    assert {r.path for r in res.values()} == {want}, {r.path_note for r in res.values()}
    for name in stacked:
        alone = {name: _models()[name]}
        train(alone, data, TrainConfig(device="cpu", **cfg))
        for (k, a), b in zip(alone[name].state_dict().items(),
                             stacked[name].state_dict().values(), strict=True):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11, msg=f"{name}.{k}")


def test_cuda_graph_replays_equal_the_eager_stacked_step() -> None:
    # float32, the grids' dtype: the captured step against the same step run eagerly,
    # through the learning-rate warmup (eager) into the captured phase, AuxK switching on
    data = _stream(20)
    cfg = dict(steps=20, dtype="float32", stack=True, lr_warmup_steps=4, sync_every=5,
               **CFG)
    eager, graphed = _models(torch.float32), _models(torch.float32)
    re = train(eager, data, TrainConfig(device="cuda", graph="off", **cfg))
    rg = train(graphed, data, TrainConfig(device="cuda", graph="auto", **cfg))
    for name in eager:
        assert rg[name].path == "stacked-graph", rg[name].path_note
        assert rg[name].path_steps["stacked-graph"] >= 12, rg[name].path_steps
        for (k, a), b in zip(eager[name].state_dict().items(),
                             graphed[name].state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")
        np.testing.assert_allclose(rg[name].train_loss, re[name].train_loss, rtol=1e-5)
        assert rg[name].dead == re[name].dead


def test_cuda_graph_run_stops_at_a_bad_batch(tmp_path) -> None:
    data = _stream(16)
    bad = [x.clone() for x in data]
    bad[9][0, :2] = float("nan")
    cfg = dict(steps=16, dtype="float32", stack=True, graph="auto", sync_every=6, **CFG)
    with pytest.raises(FloatingPointError, match=r"batch at step 9 holds 2 NaN/inf"):
        train(_models(torch.float32), bad, TrainConfig(device="cuda", **cfg))


def test_cuda_resume_equals_uninterrupted(tmp_path) -> None:
    data = _stream(12)
    cfg = TrainConfig(steps=12, checkpoint_every=4, device="cuda", **CFG)
    ref = _models(torch.float32)
    train(ref, data, cfg, checkpoint_dir=tmp_path / "ref")

    def interrupted():
        for i, x in enumerate(data):
            if i == 6:
                raise KeyboardInterrupt
            yield x

    with pytest.raises(KeyboardInterrupt):
        train(_models(torch.float32), interrupted(), cfg, checkpoint_dir=tmp_path / "run")
    resumed = _models(torch.float32)
    train(resumed, lambda start: iter(data[start:]), cfg, checkpoint_dir=tmp_path / "run")
    for name in ref:
        _assert_same_state(ref[name], resumed[name])


def test_cuda_model_saves_and_loads_on_either_device(tmp_path) -> None:
    models = _models(torch.float32)
    train(models, _stream(4), TrainConfig(steps=4, device="cuda", **CFG))
    x = _stream(1, b=32, seed=9)[0]
    for name, model in models.items():
        model.eval()
        x_hat, h = model(x.cuda())
        save(model, tmp_path / name)
        back = load(tmp_path / name, device="cuda")
        _assert_same_state(model, back)
        x_hat2, h2 = back.eval()(x.cuda())
        assert torch.equal(x_hat, x_hat2) and torch.equal(h, h2), name
        on_cpu = load(tmp_path / name)
        assert on_cpu.W_dec.device.type == "cpu"
        x_hat3, _ = on_cpu.eval()(x)
        torch.testing.assert_close(x_hat3, x_hat.cpu(), rtol=1e-4, atol=1e-5)


def test_cuda_nan_batch_and_loss_are_errors() -> None:
    data = _stream(4)
    data[2][1, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="batch at step 2 holds 1 NaN/inf"):
        train(create("aen", N, M), data, TrainConfig(steps=4, device="cuda"))
    bad = create("topk", N, M, k_top=2)
    with torch.no_grad():
        bad.b_enc[0] = float("inf")
    with pytest.raises(FloatingPointError, match="loss of model 'bad' \\(topk\\) is nan"):
        train({"bad": bad}, _stream(2), TrainConfig(steps=2,
                                                                          device="cuda"))


def test_cuda_stream_and_evaluation_match_cpu() -> None:
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    dic = spiked_dictionary(16, 32, 0.5, seed=0)
    stream = SyntheticStream(dic.D, 2, 64, seed=0)
    on_gpu = list(stream.torch_signal_batches(3, device="cuda", dtype=torch.float64))
    on_cpu = list(stream.torch_signal_batches(3, dtype=torch.float64))
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert b.device.type == "cuda" and torch.equal(a, b.cpu())
    model = create("aen", 16, 32, seed=0, dtype=torch.float64)
    X, H = stream.torch_batch(7, dtype=torch.float64)
    cpu_metrics = evaluate(model, X, H, D_true=dic.D, shared=dic.shared)
    gpu_metrics = evaluate(model.cuda(), X, H, D_true=dic.D, shared=dic.shared)
    for key in ("l0", "mse", "explained_variance", "shrinkage"):
        np.testing.assert_allclose(gpu_metrics[key], cpu_metrics[key], rtol=1e-9, err_msg=key)


def test_cuda_encoder_lipschitz_matches_cpu() -> None:
    from aensae.theory.encoders import encoder_local_lipschitz

    model = create("aen", N, M, seed=3, dtype=torch.float64)
    X = _stream(1, b=6, seed=4)[0]
    cpu = encoder_local_lipschitz(model, X)
    gpu = encoder_local_lipschitz(model.cuda(), X)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-9)


def test_cli_train_on_cuda(tmp_path) -> None:
    import json

    from aensae import cli

    out = tmp_path / "aen"
    argv = ["train", "--arch", "aen", "--n", "12", "--m", "24", "--k", "2", "--steps", "20",
            "--batch-size", "32", "--eval-samples", "256", "--dead-window", "320",
            "--no-progress", "--device", "auto", "--out", str(out)]
    assert cli.main(argv) == 0
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["config"]["train"]["device"] == "auto" and rec["device"] == "cuda"
    assert load(out, device="cuda").W_dec.device.type == "cuda"


def test_cuda_bench_train_stack_times_on_the_device(tmp_path) -> None:
    from aensae import cli

    path = tmp_path / "bench.json"
    assert cli.main(["bench", "train", "--n", "16", "--m", "32", "--batch-size", "16",
                     "--k", "2", "--models", "3", "--steps", "8", "--repeats", "1",
                     "--arch", "topk", "--stack", "--device", "cuda", "--json",
                     str(path)]) == 0
    import json

    rec = json.loads(path.read_text())
    assert rec["config"]["device"].startswith("cuda") and rec["machine"]["gpu"]
    assert rec["stack_path"] == "stacked-eager" and rec["stack_speedup"] > 0
    assert cli.main(["bench", "train", "--n", "16", "--m", "32", "--batch-size", "16",
                     "--k", "2", "--models", "3", "--steps", "8", "--repeats", "1",
                     "--arch", "aen", "--stack", "--graph", "--device", "cuda", "--json",
                     str(path)]) == 0
    rec = json.loads(path.read_text())
    assert rec["graph_note"] == "" and rec["graph_speedup"] > 0
    assert rec["graph_path_steps"]["stacked-graph"] > 0
