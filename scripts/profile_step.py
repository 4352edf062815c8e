r"""Profile one training step of the real trainer path and break its time down.

Usage (from the repository root, project venv active)::

    python scripts/profile_step.py --arch aen --n 64 --m 256
    python scripts/profile_step.py --arch topk --n 256 --m 1024 --json out.json
    python scripts/profile_step.py --arch aen --after-hold   # population weights on

Setup as ``aensae bench train`` (:func:`aensae.benches.train.bench_train`): one model
``aensae.saes.create(arch, n, m, seed=0)`` (default hyperparameters) driven by the
trainer's ``_Run`` with ``TrainConfig(dtype="float32", device="cpu")``, fed by the
synthetic stream ``SyntheticStream(spiked_dictionary(n, m, 0, seed=0).D, k, batch,
seed=0).torch_signal_batches(chunk=8)``, one torch thread (``--threads``). A step is
``next(data)`` then ``run.step_all(x)``, exactly what ``aensae train`` does per batch.

After ``--warmup`` steps, three things are measured in the same process:

* ``wall``: median over blocks of 8 steps (one chunk of data generation each) of the
  unprofiled step time, every block paired with the matrix-product floor (the step's
  five products alone, as in ``bench_train``) timed right before it;
* a ``torch.profiler`` trace (CPU, no shapes, no stacks) of ``--profile-steps`` steps,
  ``--repeats`` times, with the trainer's stages labelled by ``record_function``
  wrappers installed on the instances only for the trace (nothing in ``src/`` is
  changed): ``data`` (``next`` on the stream), ``fwd_bwd`` (``model.compute_grads``),
  ``loss_check`` (``_Run._check_loss``), ``adam`` (``_AdamStep.step``), ``renorm``
  (``model.project_decoder``), ``after_step`` (``model.after_step``) and ``dead``
  (``DeadTracker.update``);
* with ``--aux-k K`` (TopK only) the same model once more with AuxK on (``aux_k=K``,
  ``dead_samples=1``, and ``samples_since_fired`` set to 1 before every step, so that
  every latent counts as dead and the AuxK branch runs on every step; at n 64 / m 256
  nearly every latent fires in every batch otherwise); its extra time per step, wall
  and profiled (median over ``--repeats`` interleaved rounds of the per-round
  difference, also by category), is the AuxK cost. AuxK is off by default
  (``aux_k=0``), so the default step spends nothing on it.

Categories (ms per step, the median over repeats of each category's time in the
trace; every torch op is attributed to its outermost ``aten::`` ancestor and to the
stage around it):

* ``matmul``: ``mm``, ``addmm``, ``bmm``, ``mv``, ``dot``, ``matmul``, ``linear`` (and
  their autograd backward nodes' products);
* ``topk selection``: ``topk`` and the ``scatter`` / ``gather`` / ``zeros_like`` that
  turn its indices into codes and back (TopK only);
* ``elementwise``: every other op in ``fwd_bwd`` and ``loss_check``;
* ``adam``, ``renorm``, ``after_step`` (AEN: EMA of mean ``|h|``; TopK: the
  ``samples_since_fired`` counter AuxK reads, i.e. dead-latent bookkeeping), ``dead``:
  all op time inside that stage;
* ``data``: the whole ``data`` stage (numpy generation, cast and copy);
* ``python/rest``: the profiled step time minus all of the above (the interpreter,
  argument parsing, dispatcher and autograd-engine bookkeeping outside op bodies, and
  the profiler's own cost, which inflates it).

The profiler adds a few microseconds per op, so the trace's total differs from the wall
time; shares are given against the trace's total, and ``~wall ms`` scales every category
by wall / trace total (an estimate of what it costs unprofiled; ``x floor``: that over
the floor). Also printed: the number of outermost ``aten::`` ops per step outside data
generation (each costs a few microseconds of dispatch, whatever its size). Timings on
a shared machine are noisy: repeat, read medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import torch

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mv",
              "aten::dot", "aten::matmul", "aten::linear", "aten::addmv", "aten::vdot"}
SELECT_OPS = {"aten::topk", "aten::scatter", "aten::scatter_", "aten::gather",
              "aten::scatter_add", "aten::scatter_add_", "aten::zeros_like"}
STAGES = ("data", "fwd_bwd", "loss_check", "adam", "renorm", "after_step", "dead")
CATEGORIES = ("matmul", "topk selection", "elementwise", "adam", "renorm", "after_step",
              "dead", "data", "python/rest")


def build(arch: str, n: int, m: int, batch: int, k: int, hyper: dict[str, Any]) -> Any:
    """A one-model ``_Run``, a fresh-iterator factory for its data, and the floor."""
    from aensae.saes import TrainConfig, create
    from aensae.saes.training.trainer import _Run
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    torch.manual_seed(0)
    stream = SyntheticStream(spiked_dictionary(n, m, 0.0, seed=0).D, k, batch, seed=0)
    cfg = TrainConfig(steps=10**9, device="cpu", dtype="float32")
    run = _Run({"m0": create(arch, n, m, seed=0, **hyper)}, cfg)

    def data() -> Any:
        return stream.torch_signal_batches(start=0, dtype=torch.float32, chunk=8)

    x = next(stream.torch_signal_batches(1)).to(torch.float32)
    W_enc, W_dec = run.models["m0"].W_enc.detach(), run.models["m0"].W_dec.detach()
    h = torch.relu(x @ W_enc)
    g = torch.randn(batch, n)

    def floor_step() -> None:
        torch.mm(x, W_enc)
        torch.mm(h, W_dec)
        torch.mm(h.t(), g)
        torch.mm(g, W_dec.t())
        torch.mm(x.t(), h)

    return run, data, floor_step


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t)


def wall_times(run: Any, data: Any, floor_step: Any, blocks: int) -> tuple[float, float]:
    """Median ms per step (blocks of 8 with one chunk of data) and median floor ms."""
    steps, floors = [], []
    for _ in range(blocks):
        it = data()
        floors.append(timed(floor_step))

        def block(it: Any = it) -> None:
            for _ in range(8):
                run.step_all(next(it))
        steps.append(timed(block) / 8)
    return statistics.median(steps), statistics.median(floors)


def labelled(label: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)
    return wrapper


def install(run: Any) -> list[tuple[Any, str]]:
    """Label the trainer's stages on the instances; returns what to remove afterwards."""
    done = []
    for model in run.models.values():
        for attr, label in (("compute_grads", "fwd_bwd"), ("project_decoder", "renorm"),
                            ("after_step", "after_step")):
            setattr(model, attr, labelled(label, getattr(model, attr)))
            done.append((model, attr))
    for tracker in run.dead.values():
        tracker.update = labelled("dead", tracker.update)
        done.append((tracker, "update"))
    run.adam.step = labelled("adam", run.adam.step)
    done.append((run.adam, "step"))
    run._check_loss = labelled("loss_check", run._check_loss)
    done.append((run, "_check_loss"))
    return done


def uninstall(done: list[tuple[Any, str]]) -> None:
    for obj, attr in done:
        delattr(obj, attr)  # the instance attribute hid the class's method


def classify(events: Any) -> dict[str, float]:
    """ms (summed over the trace) per category, plus ``total`` (the whole trace)."""
    out: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.name == "step":
            out["total"] += ev.cpu_time_total / 1e3
        if ev.name == "data":
            out["data"] += ev.cpu_time_total / 1e3
        if ev.name.startswith("aten::") or ev.name.startswith("autograd::") or \
                ev.name.startswith("torch::autograd"):
            # walk up: outermost aten op and enclosing stage
            stage, top, p = None, ev.name if ev.name.startswith("aten::") else None, ev
            while p.cpu_parent is not None:
                p = p.cpu_parent
                if p.name in STAGES and stage is None:
                    stage = p.name
                if p.name.startswith("aten::") and stage is None:
                    top = p.name
            self_ms = ev.self_cpu_time_total / 1e3
            if stage != "data" and ev.name.startswith("aten::") and top == ev.name:
                out["ops"] += 1  # outermost aten ops outside data generation
            if stage == "data":
                continue  # counted inclusively above
            if stage in ("fwd_bwd", "loss_check", None):
                if top in MATMUL_OPS:
                    out["matmul"] += self_ms
                elif top in SELECT_OPS:
                    out["topk selection"] += self_ms
                else:
                    out["elementwise"] += self_ms
            else:
                out[stage] += self_ms
    out["python/rest"] = out["total"] - sum(out[c] for c in CATEGORIES
                                            if c != "python/rest")
    out["ops"] = float(out["ops"])
    return dict(out)


def profile(run: Any, data: Any, steps: int) -> dict[str, float]:
    from torch.profiler import ProfilerActivity
    done = install(run)
    try:
        it = data()
        with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with torch.profiler.record_function("step"):
                    with torch.profiler.record_function("data"):
                        x = next(it)
                    run.step_all(x)
        cats = classify(prof.events())
    finally:
        uninstall(done)
    return {c: v / steps for c, v in cats.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="aen")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--k", type=int, default=None,
                    help="non-zeros per true code (default: 4 if n <= 64 else 16)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=48, help="steps before any timing")
    ap.add_argument("--profile-steps", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--wall-blocks", type=int, default=15)
    ap.add_argument("--aux-k", type=int, default=0,
                    help="TopK: also time the step with AuxK on (aux_k=K, dead_samples=1)")
    ap.add_argument("--after-hold", action="store_true",
                    help="AEN / adaptive lasso: profile steps after the cold-start hold and "
                         "ramp (hold 0, step counter at 5,000: the weights of every step "
                         "are the population weights); by default the steps fall in the "
                         "hold, as in aensae bench train")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args(argv)
    k = a.k if a.k is not None else (4 if a.n <= 64 else 16)
    torch.set_num_threads(a.threads)

    import os
    if a.after_hold and a.arch not in ("aen", "adaptive_lasso"):
        ap.error(f"--after-hold needs an adaptive architecture (aen, adaptive_lasso), got "
                 f"--arch {a.arch}")
    run, data, floor_step = build(a.arch, a.n, a.m, a.batch_size, k, {})
    if a.after_hold:
        model = run.models["m0"]
        model.hold.fill_(0)
        model.step.fill_(5000)
    it = data()
    for _ in range(a.warmup):
        run.step_all(next(it))
    floor_step()
    wall, floor = wall_times(run, data, floor_step, a.wall_blocks)
    reps = [profile(run, data, a.profile_steps) for _ in range(a.repeats)]
    wall2, floor2 = wall_times(run, data, floor_step, a.wall_blocks)
    med = {c: statistics.median(r.get(c, 0.0) for r in reps) for c in
           (*CATEGORIES, "total", "ops")}
    res: dict[str, Any] = {
        "config": {"arch": a.arch, "n": a.n, "m": a.m, "batch_size": a.batch_size, "k": k,
                   "threads": torch.get_num_threads(), "torch": torch.__version__},
        "wall_ms_per_step": statistics.median([wall, wall2]),
        "floor_ms": statistics.median([floor, floor2]),
        "profiled_ms_per_step": med,
        "load_average": os.getloadavg(),
    }
    res["ratio_wall_over_floor"] = res["wall_ms_per_step"] / res["floor_ms"]
    if a.aux_k:
        run2, data2, floor2_step = build(a.arch, a.n, a.m, a.batch_size, k,
                                         {"aux_k": a.aux_k, "dead_samples": 1})
        model2 = run2.models["m0"]
        plain = model2.compute_grads

        def all_dead(x: torch.Tensor) -> Any:
            # every latent counts as dead, so the AuxK branch runs on every step (a
            # well-trained model has few dead latents; the branch's cost hardly depends
            # on how many, only on aux_k)
            model2.samples_since_fired.fill_(1)
            return plain(x)
        model2.compute_grads = all_dead
        it2 = data2()
        for _ in range(a.warmup):
            run2.step_all(next(it2))
        w_off, w_on, p_off, p_on = [], [], [], []
        for _ in range(a.repeats):  # interleaved, so that load changes hit both alike
            w_off.append(wall_times(run, data, floor_step, 5)[0])
            w_on.append(wall_times(run2, data2, floor2_step, 5)[0])
            p_off.append(profile(run, data, a.profile_steps))
            p_on.append(profile(run2, data2, a.profile_steps))
        res["auxk_extra_ms_per_step"] = statistics.median(w_on) - statistics.median(w_off)
        res["auxk_extra_profiled_ms_per_step"] = {
            c: statistics.median(on.get(c, 0.0) - off.get(c, 0.0)
                                 for on, off in zip(p_on, p_off, strict=True))
            for c in (*CATEGORIES, "total")}
        res["auxk_config"] = {"aux_k": a.aux_k, "dead_samples": 1}

    tot = med["total"]
    print(f"{a.arch} n={a.n} m={a.m} batch={a.batch_size} k={k} threads="
          f"{torch.get_num_threads()} | wall {res['wall_ms_per_step']:.3f} ms/step, floor "
          f"{res['floor_ms']:.3f} ms (x{res['ratio_wall_over_floor']:.2f}) | profiled "
          f"{tot:.3f} ms/step | load {res['load_average'][0]:.2f}")
    scale = res["wall_ms_per_step"] / tot
    res["wall_scaled_ms_per_step"] = {c: med[c] * scale for c in CATEGORIES}
    print(f"{med['ops']:.0f} outermost aten ops per step outside data generation")
    print(f"{'category':<16} {'ms/step':>8} {'share':>6} {'~wall ms':>9} {'x floor':>8}")
    for c in CATEGORIES:
        print(f"{c:<16} {med[c]:8.3f} {100 * med[c] / tot:5.1f}% {med[c] * scale:9.3f} "
              f"{med[c] * scale / res['floor_ms']:8.2f}")
    if a.aux_k:
        d = res["auxk_extra_profiled_ms_per_step"]
        print(f"AuxK on (aux_k={a.aux_k}, dead_samples=1): {res['auxk_extra_ms_per_step']:+.3f}"
              f" ms/step wall, {d['total']:+.3f} profiled (" + ", ".join(
                  f"{c} {d[c]:+.3f}" for c in CATEGORIES if abs(d[c]) >= 0.01) + ")")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
