r"""``aensae bench train``: ms per training step against the matrix-product floor.

``aensae bench train`` times a training step of the paper configuration (n=256, m=1024,
batch 256, aen, float32, CPU) including data generation, against the floor: the same
step's five matrix products alone, measured in the same process::

    ratio_single      = ms_per_step / floor_ms
    ratio_per_model_8 = (ms per step of 8 models trained together) / 8 / floor_ms
    stack_speedup     = (ms per model-step, separate) / (ms per model-step, stacked)
    graph_speedup     = (ms per model-step, stacked eager) / (ms per model-step, CUDA graph)
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from typing import Any

__all__ = ["bench_train"]


def bench_train(n: int = 256, m: int = 1024, batch_size: int = 256, k: int = 16,
                n_models: int = 8, steps: int = 40, repeats: int = 3, *,
                arch: str = "aen", stack: bool = False, device: str = "cpu",
                graph: bool = False) -> dict[str, Any]:
    """Measure ms per training step (with data generation) against the GEMM floor.

    A step is what ``aensae train`` does per batch: the signals of batch ``i`` of the
    synthetic stream (float64 numpy, converted to float32 torch; generated 8 batches at a
    time by :meth:`~aensae.synthetic.SyntheticStream.torch_signal_batches`), then for each
    model the hand-derived forward/backward, Adam, decoder projection, EMA update and
    dead-latent tracking. The timed steps fall in the AEN's cold-start hold
    (``warmup_steps`` = 1000 by default), where the l1 weights are exactly 1 and the
    population weights are not computed (about 0.1-0.2 ms per model afterwards). The
    floor is the step's five matrix products alone: ``(B,n)x(n,m)``, ``(B,m)x(m,n)``,
    ``(m,B)x(B,n)``, ``(B,n)x(n,m)`` and ``(n,B)x(B,m)``.

    Timed in blocks of 8 consecutive steps (one chunk of data generation each, so the
    per-step time is amortized over a chunk, never a step that skipped it),
    ``repeats * steps / 8`` blocks each: one model, ``n_models`` models trained together
    with the default configuration (``ratio_per_model_8``) and, with ``stack``, with
    batched products (``TrainConfig(stack=True)``, ``*_stacked``; ``stack_speedup`` is
    the median over blocks of the separate block's time over the stacked block's, timed
    one after the other, ``stack_speedup_range`` their smallest and largest, and
    ``ms_per_model_step*`` give median, min and max per model-step); with ``graph``
    (CUDA only) the stacked models once more, their step replayed from a CUDA graph
    (``*_graph``, ``graph_speedup`` over the stacked eager step, ``graph_path_steps``
    the steps each path took, ``graph_note`` why a graph was not used, if so). The models
    are
    ``arch`` with default hyperparameters and seeds ``0 .. n_models - 1`` (the l1 models
    therefore in their cold start, see above). ``device`` places models and floor (the
    data are drawn on the CPU, as in training; on CUDA every timer reading waits for
    the device). Each block is paired with the floor timed
    right before and right after it; a ratio is the block's time per step (per model) over
    the mean of its two floors, and the reported ratios are medians over all blocks.
    Pairing keeps the ratios meaningful on a shared machine, where a slow period inflates
    both. The minimum over all calls is reported too (``*_min``). ``data_ms`` is the data
    time per batch within a chunk, ``data_ms_single`` one batch generated alone (both
    right after a floor).

    ``adam_ratio_single`` and ``adam_ratio_per_model_8`` are the Adam update alone, per
    model, over the floor, timed between two floors like a block (so with the caches a
    step leaves it). It is memory-bound: per parameter it reads the weight, gradient and
    both moments and writes three of them, 7 float32 values (14.7 MB per paper-size model),
    and eight models' state does not fit a typical last-level cache. That traffic is
    Adam's own, so this share of a step's excess over the floor stays whatever else in
    the step is made faster.
    """
    import platform

    import torch

    from aensae import __version__
    from aensae.saes import TrainConfig, create
    from aensae.saes.training.trainer import _Run
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    torch.manual_seed(0)
    stream = SyntheticStream(spiked_dictionary(n, m, 0.0, seed=0).D, k, batch_size, seed=0)
    from aensae.saes.training.trainer import resolve_device

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    cfg = TrainConfig(steps=10**9, device=str(dev), dtype="float32")
    if graph and not (stack and cuda):
        raise ValueError(f"graph timing needs stack=True and a CUDA device, got stack={stack}, "
                         f"device {dev}")
    single = _Run({"m0": create(arch, n, m, seed=0)}, cfg)
    multi = _Run({f"m{i}": create(arch, n, m, seed=i) for i in range(n_models)}, cfg)

    def stacked_run(mode: str) -> Any:
        return _Run({f"m{i}": create(arch, n, m, seed=i) for i in range(n_models)},
                    TrainConfig(steps=10**9, device=str(dev), dtype="float32", stack=True,
                                graph=mode))

    stacked = stacked_run("off") if stack else None
    graphed = stacked_run("auto") if graph else None
    x = next(stream.torch_signal_batches(1)).to(dev)
    W_enc, W_dec = single.models["m0"].W_enc.detach(), single.models["m0"].W_dec.detach()
    h = torch.relu(x @ W_enc)
    g = torch.randn(batch_size, n).to(dev)

    def floor_step() -> None:
        torch.mm(x, W_enc)
        torch.mm(h, W_dec)
        torch.mm(h.t(), g)
        torch.mm(g, W_dec.t())
        torch.mm(x.t(), h)

    # Data as aensae train draws it: signals only, generated a chunk of batches at a time;
    # each run has its own iterator, and runs are timed in blocks of one chunk, so every
    # block pays for exactly one chunk of data generation (an amortized, not a best-case,
    # per-step cost).
    block = 8

    def data_source() -> Any:
        return stream.torch_signal_batches(start=0, dtype=torch.float32, chunk=block)

    def timed(fn: Any) -> float:
        if cuda:
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(dev)
        return 1e3 * (time.perf_counter() - t)

    def block_of(run: Any) -> Any:
        it = data_source()

        def steps_of_block() -> None:
            for _ in range(block):
                run.step_all(next(it))
        return steps_of_block

    runs = {"single": block_of(single), "multi": block_of(multi)}
    if stack:
        runs["multi_stacked"] = block_of(stacked)
    if graph:
        runs["multi_graph"] = block_of(graphed)
    adam_runs = {"single": single, "multi": multi}
    floor_step()
    for fn in runs.values():  # warm-up: allocator, thread pool, optimizer state
        fn()
    # Interleaved: every timed block is paired with the floor measured right before and
    # right after it, so that a slow period of a shared machine inflates both alike.
    floors: list[float] = []
    times: dict[str, list[float]] = {k: [] for k in runs}
    ratios: dict[str, list[float]] = {k: [] for k in runs}
    datas: list[float] = []
    datas_single: list[float] = []
    adam_ratios: dict[str, list[float]] = {k: [] for k in adam_runs}
    per_model = {"single": 1, "multi": n_models, "multi_stacked": n_models,
                 "multi_graph": n_models}
    for _ in range(max(1, repeats * steps // block)):
        before = timed(floor_step)
        floors.append(before)
        datas.append(timed(lambda: list(itertools.islice(data_source(), block))) / block)
        floor_step()
        datas_single.append(timed(lambda: next(stream.torch_signal_batches(1, start=10**6))))
        before = timed(floor_step)
        for key, fn in runs.items():
            t = timed(fn) / block
            after = timed(floor_step)
            floors.append(after)
            times[key].append(t)
            ratios[key].append(t / per_model[key] / (0.5 * (before + after)))
            before = after
        for key, run in adam_runs.items():  # the update alone, on the last step's gradients
            t = timed(lambda run=run: run.adam.step(run.cfg.lr_at(run.step)))
            after = timed(floor_step)
            floors.append(after)
            adam_ratios[key].append(t / per_model[key] / (0.5 * (before + after)))
            before = after
    med = statistics.median

    def model_step(key: str) -> dict[str, float]:
        ts = [t / per_model[key] for t in times[key]]
        return {"median": med(ts), "min": min(ts), "max": max(ts)}

    stacked_keys: dict[str, Any] = {}
    if stack:
        speedups = [a / b for a, b in zip(times["multi"], times["multi_stacked"], strict=True)]
        stacked_keys = {
            "ms_per_step_8_stacked": med(times["multi_stacked"]),
            "ratio_per_model_8_stacked": med(ratios["multi_stacked"]),
            "ms_per_model_step_stacked": model_step("multi_stacked"),
            "stack_speedup": med(speedups),
            "stack_speedup_range": [min(speedups), max(speedups)],
            "stack_path": stacked.paths["m0"] if stacked is not None else None,
        }
    if graph:
        assert graphed is not None and graphed.static is not None
        speedups = [a / b for a, b in zip(times["multi_stacked"], times["multi_graph"],
                                          strict=True)]
        stacked_keys.update({
            "ms_per_step_8_graph": med(times["multi_graph"]),
            "ratio_per_model_8_graph": med(ratios["multi_graph"]),
            "ms_per_model_step_graph": model_step("multi_graph"),
            "graph_speedup": med(speedups),
            "graph_speedup_range": [min(speedups), max(speedups)],
            "graph_path_steps": dict(graphed.static.path_steps),
            "graph_note": graphed.static.note,
        })
    return {
        "ms_per_step": med(times["single"]),
        "floor_ms": med(floors),
        "ratio_single": med(ratios["single"]),
        "ms_per_step_8": med(times["multi"]),
        "ratio_per_model_8": med(ratios["multi"]),
        "ms_per_model_step_single": model_step("single"),
        "ms_per_model_step_separate": model_step("multi"),
        **stacked_keys,
        "adam_ratio_single": med(adam_ratios["single"]),
        "adam_ratio_per_model_8": med(adam_ratios["multi"]),
        "data_ms": med(datas),
        "data_ms_single": med(datas_single),
        "block_steps": block,
        "min_ms": {"floor": min(floors), "data": min(datas),
                   **{k: min(v) for k, v in times.items()}},
        "ratio_single_min": min(times["single"]) / min(floors),
        "ratio_per_model_8_min": min(times["multi"]) / n_models / min(floors),
        "load_average": os.getloadavg(),
        "config": {"n": n, "m": m, "batch_size": batch_size, "k": k, "arch": arch,
                   "dtype": "float32", "device": str(dev), "models": n_models, "steps": steps,
                   "repeats": repeats, "stack": stack, "graph": graph},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(dev) if cuda else None,
                    "torch": torch.__version__},
        "aensae_version": __version__,
    }
