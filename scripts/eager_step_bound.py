r"""What an eager PyTorch training step cannot go below, as ratios to the five products.

Usage (repository root, project venv active)::

    python scripts/eager_step_bound.py                 # n 64, m 256, batch 256
    python scripts/eager_step_bound.py --n 256 --m 1024

Issue 25 asks for the l1 family at 1.3x and the TopK family at 2x the floor of
``aensae bench train`` (the step's five matrix products alone). This script times, in
one process and interleaved, the floor and the fewest ops any eager step of each family
must run besides its products, with no Python of ours around them, no loss values, no
data generation and no bookkeeping:

* ``floor``: ``x W_enc``, ``h W_dec``, ``h^T r``, ``r W_dec^T``, ``x^T dpre``;
* ``relu minimal``: the products with their bias slots (``addmm``), ``relu_``, the
  residual ``x_hat - x`` (in place), the ReLU backward (one ``threshold_backward``), the
  encoder-bias sum; every output written into a preallocated buffer where torch allows;
* ``topk minimal``: the same with the rectified top-k (``torch.topk``, ``zeros_like``,
  ``scatter``) in place of the ReLU;
* ``topk compiled``: the same with aensae's own TopK codes (``topk_codes``: the
  compiled row selection the trainer's CPU step uses);
* ``adam``: one fused Adam update of the model's four tensors (``torch._fused_adam_``,
  what the trainer's optimizer runs);
* ``renorm``: the decoder rows back to unit norm (a norm and a division);
* ``relu step bound`` = relu minimal + adam + renorm, and the same for TopK with either
  selection.

A real step also computes its loss value, the decoder-bias gradient, the l1 / l2 terms
and the adaptive weights, checks the loss, and draws its batch, so it costs more than
these bounds. Medians over ``--rounds`` rounds of ``--blocks`` blocks each; every
ratio is a median of per-block ratios to the floor timed beside it. One torch thread
(``--threads``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from aensae.saes.topk import topk_codes


def _parts(n: int, m: int, batch: int, k: int) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    W_enc = torch.randn(n, m, generator=gen) / n ** 0.5
    W_dec = torch.randn(m, n, generator=gen) / n ** 0.5
    b_enc = torch.zeros(m)
    b_dec = torch.zeros(n)
    # Adam updates copies: the timed products keep their weights (an update driven by
    # these made-up gradients drifts towards tied pre-activations within a few hundred
    # steps, which the compiled TopK selection hands to torch.topk)
    params = [t.clone() for t in (W_enc, W_dec, b_enc, b_dec)]
    grads = [torch.zeros_like(p) for p in params]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros(()) for _ in params]
    X = torch.randn(batch, n, generator=gen).relu_()
    dh = torch.empty(batch, m)

    def floor() -> None:
        a = torch.mm(X, W_enc)
        b = torch.mm(a, W_dec)
        torch.mm(a.t(), b)
        d = torch.mm(b, W_dec.t())
        torch.mm(X.t(), d)

    def backward(h: torch.Tensor) -> None:  # gradients written into Adam's inputs
        r = torch.addmm(b_dec, h, W_dec).sub_(X)
        torch.mm(h.t(), r, out=grads[1])
        torch.mm(r, W_dec.t(), out=dh)
        torch.ops.aten.threshold_backward.grad_input(dh, h, 0, grad_input=dh)
        torch.mm(X.t(), dh, out=grads[0])
        torch.sum(dh, 0, out=grads[2])

    def relu_minimal() -> None:
        backward(torch.addmm(b_enc, X, W_enc).relu_())

    def topk_minimal() -> None:
        pre = torch.addmm(b_enc, X, W_enc)
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        backward(torch.zeros_like(pre).scatter_(-1, idx, vals.relu_()))

    def topk_compiled() -> None:
        backward(topk_codes(torch.addmm(b_enc, X, W_enc), k))

    def adam() -> None:
        torch._fused_adam_(params, grads, exp_avg, exp_avg_sq, [], steps, lr=1e-3,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                           amsgrad=False, maximize=False)

    def renorm() -> None:
        W_dec.div_(torch.linalg.vector_norm(W_dec, dim=1, keepdim=True))

    return {"floor": floor, "relu minimal": relu_minimal, "topk minimal": topk_minimal,
            "topk compiled": topk_compiled, "adam": adam, "renorm": renorm}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--k", type=int, default=16, help="TopK's k (bench train's default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--reps", type=int, default=50, help="calls per timed block")
    a = ap.parse_args(argv)
    for name, v in (("--n", a.n), ("--m", a.m), ("--batch-size", a.batch_size),
                    ("--threads", a.threads), ("--rounds", a.rounds), ("--blocks", a.blocks),
                    ("--reps", a.reps)):
        if v < 1:
            ap.error(f"{name} must be >= 1, got {v}")
    if not 1 <= a.k <= a.m:
        ap.error(f"--k must lie in [1, --m = {a.m}], got {a.k}")
    torch.set_num_threads(a.threads)
    parts = _parts(a.n, a.m, a.batch_size, a.k)

    def block(f: Callable[[], object]) -> float:
        t = time.perf_counter()
        for _ in range(a.reps):
            f()
        return (time.perf_counter() - t) / a.reps

    for f in parts.values():  # warm-up
        block(f)
    ms: dict[str, list[float]] = {name: [] for name in parts}
    ratio: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(a.rounds * a.blocks):
        fl = block(parts["floor"])
        for name, f in parts.items():
            t = fl if name == "floor" else block(f)
            ms[name].append(t * 1e3)
            ratio[name].append(t / fl)
    med = {name: statistics.median(v) for name, v in ratio.items()}
    print(f"n={a.n} m={a.m} batch={a.batch_size} k={a.k} threads={a.threads}: floor "
          f"{statistics.median(ms['floor']):.3f} ms")
    for name in parts:
        print(f"  {name:14s} {statistics.median(ms[name]):7.3f} ms  x{med[name]:.2f}")
    for fam, part in (("relu", "relu minimal"), ("topk", "topk minimal"),
                      ("topk, compiled selection", "topk compiled")):
        bound = med[part] + med["adam"] + med["renorm"]
        print(f"  {fam} step bound x{bound:.2f} of the floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
