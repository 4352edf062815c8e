r"""``aensae bench llm-eval``: k SAEs evaluated together against k separate evaluations.

In one process, on the same model, windows and SAEs (random ReLU-l1 SAEs; the cost of a
spliced evaluation does not depend on the weights): **joint** is one
:func:`aensae.llm.splice.evaluate_saes` call with all ``k`` SAEs (layers below the hook
once per batch, layers above ``3 + 2k`` times), **separate** is ``k`` calls with one SAE
each (layers below ``k`` times, layers above ``5k`` times). Timed alternately
``repeats`` times::

    ratio = joint seconds / separate seconds      (median over repeats; < 1 is a saving)

``ratio_min`` uses the fastest of each, and ``ratio_cpu`` the process CPU seconds (all
threads) of each pair, which waiting for a core on a busy shared machine does not
inflate. The model is a tiny random Llama with a
byte-level tokenizer (:func:`aensae.benches.harvest.tiny_llama`) unless ``model`` names one.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

import torch

from aensae import __version__
from aensae.llm.splice import SplicedSAE, eval_windows, evaluate_saes

__all__ = ["bench_llm_eval"]


def bench_llm_eval(k: int = 4, tokens: int = 4096, *, model: str | None = None,
                   layer: int | None = None, d_sae: int = 256, ctx: int = 64,
                   batch_size: int = 8, repeats: int = 5, text: str = "python-docs"
                   ) -> dict[str, Any]:
    """Time the joint evaluation of ``k`` SAEs against ``k`` separate ones (see above)."""
    from aensae.benches.harvest import tiny_llama
    from aensae.llm.models import load_model
    from aensae.saes import create

    lm = tiny_llama() if model in (None, "tiny-llama") else load_model(model)
    layer = lm.n_layers // 2 if layer is None else layer
    lm.check_hook(layer, "resid_post")
    ids, keep = eval_windows(lm, text, tokens, ctx=ctx)
    saes = [SplicedSAE(f"sae{i}", create("relu_l1", lm.d_model, d_sae, seed=i))
            for i in range(k)]

    def joint() -> None:
        evaluate_saes(lm, saes, ids, keep, layer, batch_size=batch_size)

    def separate() -> None:
        for s in saes:
            evaluate_saes(lm, [s], ids, keep, layer, batch_size=batch_size)

    def timed(fn: Any) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t, time.process_time() - c

    joint()  # warm-up
    tj, ts, cj, cs = [], [], [], []
    for _ in range(repeats):
        for fn, wall, cpu in ((joint, tj, cj), (separate, ts, cs)):
            w, c = timed(fn)
            wall.append(w)
            cpu.append(c)
    ratios = [a / b for a, b in zip(tj, ts, strict=True)]
    return {"ratio": statistics.median(ratios), "ratio_min": min(tj) / min(ts),
            "ratio_cpu": statistics.median([a / b for a, b in zip(cj, cs, strict=True)]),
            "ratios": ratios, "joint_s": tj, "separate_s": ts, "joint_cpu_s": cj,
            "separate_cpu_s": cs,
            "config": {"k": k, "tokens": int(keep.sum()), "windows": len(ids), "ctx": ctx,
                       "model": lm.source.name, "layer": layer, "d_model": lm.d_model,
                       "d_sae": d_sae, "batch_size": batch_size, "repeats": repeats,
                       "text": text},
            "load_average": os.getloadavg(),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
            "aensae_version": __version__}
