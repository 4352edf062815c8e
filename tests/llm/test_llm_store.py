"""aensae.llm.store and aensae.llm.normalise: shuffled batches, exact resume, the trainer
fed from a cache, normalisation against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")

from llm_support import harvest_tiny_cache  # noqa: E402

from aensae._validation import InputError  # noqa: E402
from aensae.llm.normalise import normalise, scalar_constant, unnormalise  # noqa: E402
from aensae.llm.store import ActivationStore  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory, smol_tokenizer_dir):
    return harvest_tiny_cache(tmp_path_factory, smol_tokenizer_dir)


def _all_rows(store):
    return torch.cat([store.shard(i)["activations"] for i in range(len(store.shards))])


def test_batches_deterministic_and_resumable(cache):
    store = ActivationStore(cache)
    assert store.n_tokens == 600 and store.d_in == 16
    B = 48  # 600 rows: an epoch is 12.5 batches, so batches straddle buffers and epochs
    ref = [b for _, b in zip(range(30), store.batches(B, seed=1, buffer_tokens=160),
                             strict=False)]
    again = [b for _, b in zip(range(30), store.batches(B, seed=1, buffer_tokens=160),
                               strict=False)]
    for a, b in zip(ref, again, strict=True):
        assert torch.equal(a, b)
    for start in (1, 7, 12, 13, 25):
        it = store.batches(B, seed=1, start=start, buffer_tokens=160)
        for i in range(start, 30):
            assert torch.equal(next(it), ref[i]), (start, i)
    other = next(store.batches(B, seed=2, buffer_tokens=160))
    assert not torch.equal(other, ref[0])


def test_an_epoch_is_every_row_once(cache):
    store = ActivationStore(cache)
    scaled = torch.cat([b for _, b in zip(range(25), store.batches(24, seed=0), strict=False)])
    raw = torch.cat([b for _, b in zip(range(25), store.batches(24, seed=0, normalisation="none"),
                                     strict=False)])
    rows = _all_rows(store)
    key = lambda x: x[np.lexsort(x.numpy().T[::-1])]  # noqa: E731 - canonical row order
    assert torch.equal(key(raw), key(rows))
    torch.testing.assert_close(scaled, raw * store.scalar_constant)
    assert not torch.equal(raw[:300], rows[:300])  # shuffled, not the file order


def test_scalar_constant_by_hand(cache):
    store = ActivationStore(cache)
    x = _all_rows(store).double()
    mean_sq = sum(float(v) ** 2 for v in x.reshape(-1)) / len(x)
    assert store.scalar_constant == pytest.approx(math.sqrt(16 / mean_sq), rel=1e-12)
    xn = next(store.batches(600, normalisation="scalar", dtype="float64"))
    assert float((xn * xn).sum(1).mean()) == pytest.approx(16, rel=1e-6)
    tok = next(store.batches(50, normalisation="per_token"))
    torch.testing.assert_close(tok.norm(dim=1), torch.full((50,), 4.0))


def test_trainer_takes_the_store(cache, tmp_path):
    from aensae.saes import TrainConfig, create, train

    store = ActivationStore(cache)
    cfg = dict(steps=8, device="cpu", seed=0, dead_window=64)
    src = store.batch_source(32, seed=5)
    whole = create("relu_l1", 16, 24, seed=0, l1=1e-3)
    train(whole, src, TrainConfig(**cfg))
    half = create("relu_l1", 16, 24, seed=0, l1=1e-3)
    train(half, src, TrainConfig(**{**cfg, "steps": 3, "checkpoint_every": 3}),
          checkpoint_dir=tmp_path)
    resumed = create("relu_l1", 16, 24, seed=0, l1=1e-3)
    train(resumed, src, TrainConfig(**{**cfg, "checkpoint_every": 3}), checkpoint_dir=tmp_path)
    for (n, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), n
    # an iterator works as is too
    plain = create("relu_l1", 16, 24, seed=0, l1=1e-3)
    train(plain, store.batches(32, seed=5), TrainConfig(**cfg))
    assert torch.equal(plain.W_dec, whole.W_dec)


def test_store_bad_input(cache, tmp_path):
    with pytest.raises(InputError, match="no manifest.json"):
        ActivationStore(tmp_path)
    store = ActivationStore(cache)
    with pytest.raises(InputError, match="batch_size must be an integer >= 1"):
        store.batches(0)
    with pytest.raises(InputError, match="normalisation must be one of"):
        store.batches(4, normalisation="l2")


# ----------------------------------------------------------------------------- normalise
def test_scalar_constant_formula():
    x = np.array([[3.0, 4.0], [0.0, 1.0]])  # ||x||^2 = 25, 1: mean 13
    assert scalar_constant(26.0, 2, 2) == pytest.approx(math.sqrt(2 / 13))
    xn, scale = normalise(torch.tensor(x), "scalar", math.sqrt(2 / 13))
    torch.testing.assert_close(xn, torch.tensor(x) * math.sqrt(2 / 13))
    xn, scale = normalise(torch.tensor(x), "per_token")
    want = torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64) * math.sqrt(2)
    torch.testing.assert_close(xn, want)
    assert scale.shape == (2, 1)
    z, s = normalise(torch.zeros(1, 3), "per_token")
    assert torch.isfinite(s).all() and torch.equal(unnormalise(z, s), torch.zeros(1, 3))
    with pytest.raises(InputError, match="needs its constant"):
        normalise(torch.ones(2, 2), "scalar")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.sampled_from(["scalar", "per_token", "none"]),
       st.floats(1e-3, 1e3), st.integers(0, 2**31))
def test_normalise_then_undo_is_identity(rows, d, kind, c, seed):
    x = torch.randn(rows, d, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64) * 300
    xn, scale = normalise(x, kind, c)
    torch.testing.assert_close(unnormalise(xn, scale), x, rtol=1e-12, atol=1e-9)
