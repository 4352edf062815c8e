"""Helpers shared by the trainer tests (tests/saes/test_trainer.py) and the CUDA tests."""

from __future__ import annotations

import torch

N, M = 8, 16


def _stream(n_batches: int, b: int = 16, seed: int = 0, n: int = N):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, generator=g) for _ in range(n_batches)]


def _assert_same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
