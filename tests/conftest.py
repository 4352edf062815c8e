"""Shared test configuration."""

from __future__ import annotations

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
