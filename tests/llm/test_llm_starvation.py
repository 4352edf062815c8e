"""Issue 27: starvation measured per window, outlier tokens left out as the field does,
per-token normalisation undone at the splice. Every expected number is a hand
computation: a cache whose token norms are chosen, a dead-latent firing pattern built by
hand, numpy on the kept tokens, a forward hook that patches the model's own forward."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("safetensors")

from aensae._validation import InputError  # noqa: E402
from aensae.llm.normalise import normalise, outlier_threshold  # noqa: E402
from aensae.llm.store import ActivationStore  # noqa: E402
from aensae.llm.training import SAESpec, TrainRun, train_on_cache, window_columns  # noqa: E402
from aensae.saes import create  # noqa: E402
from aensae.saes.dead import DeadTracker  # noqa: E402

# ----------------------------------------------------------------------------- a hand cache
#: Token norms of the hand-built cache: the median is 2, so 10 x the median is 20; the
#: token of norm exactly 20 is kept (an outlier lies strictly above), 21 and 400 are not.
NORMS = [2.0] * 16 + [3.0, 19.5, 20.0, 21.0, 400.0]
D = 4
#: The scalar constant of the 19 kept tokens: sqrt(d_in / mean ||x||^2).
KEPT_SQ = 16 * 4.0 + 9.0 + 19.5 ** 2 + 400.0
C_KEPT = math.sqrt(D / (KEPT_SQ / 19))
C_ALL = math.sqrt(D / ((KEPT_SQ + 441.0 + 160000.0) / 21))


def _write_cache(folder, rows: np.ndarray, shard_sizes: list[int]) -> None:
    """A cache written by hand: shards of ``rows`` and a manifest with their SHA-256."""
    from safetensors.numpy import save_file

    from aensae.llm.cache import FORMAT, MANIFEST, shard_name

    folder.mkdir(parents=True)
    shards, start = [], 0
    for i, n in enumerate(shard_sizes):
        path = folder / shard_name(i)
        save_file({"activations": rows[start:start + n].astype(np.float32),
                   "tokens": np.arange(start, start + n, dtype=np.int32),
                   "positions": np.zeros(n, dtype=np.int32)}, str(path))
        shards.append({"file": shard_name(i), "tokens": n, "windows": 1,
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        start += n
    sq = float((rows.astype(np.float64) ** 2).sum())
    (folder / MANIFEST).write_text(json.dumps({
        "format": FORMAT, "config": {}, "complete": True, "model": {"name": "hand"},
        "hook": "resid_post", "layer": 0, "d_in": rows.shape[1], "tokens": len(rows),
        "shards": shards,
        "normalisation": {"scalar_constant": math.sqrt(rows.shape[1] / (sq / len(rows)))}}))


@pytest.fixture(scope="module")
def hand_cache(tmp_path_factory):
    """21 tokens in shards of 8, 7 and 6; token i is +-NORMS[i] along an axis (exact in
    float32; the big ones spread over the shards)."""
    order = [0, 20, 1, 2, 3, 17, 4, 5, 6, 19, 7, 8, 9, 10, 18, 11, 12, 13, 16, 14, 15]
    rows = np.zeros((len(NORMS), D))
    for row, i in enumerate(order):
        rows[row, i % D] = NORMS[i] * (-1.0 if i % 3 else 1.0)
    folder = tmp_path_factory.mktemp("hand") / "cache"
    _write_cache(folder, rows, [8, 7, 6])
    return folder


def _norms(batch: torch.Tensor) -> list[float]:
    return [round(float(v), 3) for v in torch.linalg.vector_norm(batch.double(), dim=1)]


def test_outlier_threshold_is_a_multiple_of_the_median():
    median, thr = outlier_threshold(torch.tensor([1.0, 2.0, 3.0, 10.0]), 10.0)
    assert (median, thr) == (2.5, 25.0)  # an even count: the mean of the middle two
    assert outlier_threshold(torch.tensor(NORMS, dtype=torch.float64), 10.0) == (2.0, 20.0)


def test_store_leaves_outliers_out_of_every_batch(hand_cache):
    store = ActivationStore(hand_cache)
    rec = store.outliers(10.0)
    assert rec["median_norm"] == 2.0 and rec["threshold"] == 20.0
    assert (rec["excluded_tokens"], rec["kept_tokens"]) == (2, 19)
    assert rec["scalar_constant"] == pytest.approx(C_KEPT, rel=1e-6)
    assert store.scalar_constant == pytest.approx(C_ALL, rel=1e-6)
    # one batch of 19 is one epoch: every kept token once, none of the two outliers
    raw = next(store.batches(19, seed=3, normalisation="none", exclude_above=20.0))
    assert sorted(_norms(raw)) == sorted(NORMS[:19])
    # five epochs in batches of 5 (crossing epochs and buffers): each kept token 5 times
    it = store.batches(5, seed=3, normalisation="none", exclude_above=20.0, buffer_tokens=8)
    seen = sum((_norms(next(it)) for _ in range(19)), [])
    assert sorted(seen) == sorted(NORMS[:19] * 5)
    # the batches stay a pure function of (seed, start)
    again = store.batches(5, seed=3, start=7, normalisation="none", exclude_above=20.0,
                          buffer_tokens=8)
    it = store.batches(5, seed=3, normalisation="none", exclude_above=20.0, buffer_tokens=8)
    want = [next(it) for _ in range(9)][7:]
    for w in want:
        assert torch.equal(next(again), w)
    # scaled by the constant of the kept tokens
    scaled = next(store.batches(19, seed=3, exclude_above=20.0, constant=C_KEPT))
    torch.testing.assert_close(scaled, raw * C_KEPT)
    with pytest.raises(InputError, match="exceeds the 19 tokens .* norm <= 20"):
        store.batches(20, exclude_above=20.0)


def test_training_records_the_exclusion(hand_cache, tmp_path):
    spec = [SAESpec("relu_l1", {"l1": 1e-3}, "r")]
    run = TrainRun(cache=hand_cache, specs=spec, d_sae=6, steps=4, batch_size=5,
                   out=tmp_path / "o", device="cpu", progress=False, outlier_factor=10.0,
                   dead_window=10)
    train_on_cache(run)
    llm = json.loads((tmp_path / "o" / "r" / "cfg.json").read_text())["llm"]
    assert llm["normalisation"] == {"kind": "scalar", "constant": pytest.approx(C_KEPT)}
    assert llm["outliers"]["threshold"] == 20.0
    assert llm["outliers"]["excluded_tokens"] == 2
    run = TrainRun(cache=hand_cache, specs=spec, d_sae=6, steps=2, batch_size=5,
                   out=tmp_path / "p", device="cpu", progress=False)
    train_on_cache(run)
    llm = json.loads((tmp_path / "p" / "r" / "cfg.json").read_text())["llm"]
    assert llm["normalisation"]["constant"] == pytest.approx(C_ALL) and "outliers" not in llm
    for bad in (1.0, 0.5, "10", True):
        with pytest.raises(InputError) as err:
            train_on_cache(TrainRun(cache=hand_cache, specs=spec, d_sae=6, steps=2,
                                    batch_size=5, out=tmp_path / "q", device="cpu",
                                    progress=False, outlier_factor=bad))
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("--outlier-factor: must be")
        assert repr(bad) in msg and "> 1" in msg
    assert not (tmp_path / "q").exists()


# ----------------------------------------------------------------------------- windows
def test_window_columns_against_a_hand_firing_pattern():
    """Three latents, windows of 4 samples in batches of 2: latent 0 fires in the first
    half of the run and then dies, latent 1 never fires, latent 2 fires only in the
    first window."""
    tracker = DeadTracker(3, 4, last=5)
    for b in range(8):
        h = torch.zeros(2, 3)
        if b < 4:
            h[0, 0] = 1.0
        if b < 2:
            h[1, 2] = 0.5
        tracker.update(h)
    dead = tracker.summary()
    # regime records as an adaptive SAE's probe would give them (fixed by hand here)
    dead["regime"] = [{"samples_seen": 4 * (i + 1), "w_max_frac": f, "alpha": a}
                      for i, (f, a) in enumerate([(0.0, 0.0), (0.0, 0.5), (1 / 3, 1.0),
                                                  (2 / 3, 1.0)])]
    cols = window_columns(dead, batch_size=2, hold_ramp=3)  # full strength after 6 tokens
    assert cols["dead_fractions"] == "0.333333;0.666667;1;1"
    assert cols["dead_window_ends"] == "4;8;12;16"
    assert cols["dead_windows"] == 4 and cols["dead_final"] == 1.0
    assert cols["dead_median_last"] == pytest.approx((2 / 3 + 1) / 2)
    assert cols["dead_trend"] == pytest.approx(1 - 1 / 3)  # last minus first of the last 5
    assert cols["hold_ramp_tokens"] == 6
    # windows starting at token 8 and 12 start after the ramp
    assert cols["dead_post_ramp_windows"] == 2
    assert cols["dead_post_ramp_median_last"] == 1.0 and cols["dead_post_ramp_trend"] == 0.0
    assert cols["regime_w_max_frac_final"] == pytest.approx(2 / 3)
    assert cols["regime_w_max_frac_windows"] == "0;0;0.333333;0.666667"
    assert cols["regime_alpha_windows"] == "0;0.5;1;1"
    assert "regime_samples_seen_final" not in cols
    plain = window_columns(dead | {"regime": []}, batch_size=2, hold_ramp=None)
    assert plain["dead_post_ramp_windows"] == 4 and plain["hold_ramp_tokens"] is None
    assert not any(k.startswith("regime_") for k in plain)


# ----------------------------------------------------------------------------- the splice
@pytest.fixture(scope="module")
def model_env(tmp_path_factory, smol_tokenizer_dir):
    pytest.importorskip("transformers")
    from llm_support import save_tiny

    from aensae.llm.models import load_model
    from aensae.llm.splice import eval_windows

    root = tmp_path_factory.mktemp("starve")
    lm = load_model(str(save_tiny("llama", smol_tokenizer_dir, root / "model", d=32)),
                    device="cpu")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"{i}.md").write_text(f"# part {i}\n" + f"word{i % 5} and text " * 6)
    ids, keep = eval_windows(lm, str(corpus), 64, ctx=12, eval_fraction=0.5)
    return lm, ids, keep


def _hook_run(lm, ids, keep, patch):
    """Data-token activations of block 1 (from the model's own forward), and the CE and
    KL(clean || patched) of the forward whose block-1 output is ``patch(h, mask)`` (the
    patch returns the new hidden states of one batch)."""
    block = lm.block(1)
    xs, ce_c, ce_p, kl, n = [], 0.0, 0.0, 0.0, 0
    for s in range(0, len(ids), 4):
        x_ids = torch.from_numpy(ids[s:s + 4]).long()
        m = torch.from_numpy(keep[s:s + 4])
        seen = {}

        def hook(module, args, out, m=m, seen=seen):
            h = out[0] if isinstance(out, tuple) else out
            seen["h"] = h.detach().clone()
            if not seen.get("patch"):
                return out
            h = patch(h.clone(), m)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = block.register_forward_hook(hook)
        try:
            with torch.no_grad():
                clean = lm.model(input_ids=x_ids).logits.double()
                xs.append(seen["h"][m].double())
                seen["patch"] = True
                pat = lm.model(input_ids=x_ids).logits.double()
        finally:
            handle.remove()
        pred = m[:, :-1] & m[:, 1:]
        y = x_ids[:, 1:][pred]
        lc, lp = clean[:, :-1][pred], pat[:, :-1][pred]
        ce_c += float(F.cross_entropy(lc, y, reduction="sum"))
        ce_p += float(F.cross_entropy(lp, y, reduction="sum"))
        kl += float(F.kl_div(F.log_softmax(lp, -1), F.log_softmax(lc, -1), log_target=True,
                             reduction="sum"))
        n += int(pred.sum())
    return torch.cat(xs).numpy(), ce_c / n, ce_p / n, kl / n


def _linear_sae(d, scale=1.0, out=None):
    """A ReLU SAE whose reconstruction is ``scale * x`` (relu(x) - relu(-x) = x), or the
    constant ``out`` (decoder weights zero, decoder bias ``out``)."""
    sae = create("relu_l1", d, 2 * d, seed=0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(scale * torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        if out is not None:
            sae.W_dec.zero_()
            sae.b_dec.copy_(out)
    return sae.eval()


def _ev(x, x_hat):
    return 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


def test_exclusion_measures_the_kept_tokens_and_passes_outliers_through(model_env):
    from aensae.llm.splice import SplicedSAE, evaluate_saes

    lm, ids, keep = model_env
    x, ce_clean, _, _ = _hook_run(lm, ids, keep, lambda h, m: h)
    norms = np.linalg.norm(x, axis=1)
    thr = float(np.median(norms))  # about half the tokens are outliers here
    kept = norms <= thr
    assert 0 < kept.sum() < len(x)
    half = SplicedSAE("half", _linear_sae(32, 0.5))
    zero = SplicedSAE("zero", _linear_sae(32, out=torch.zeros(32)))
    res = evaluate_saes(lm, [half, zero], ids, keep, 1, batch_size=4, outlier_threshold=thr)
    assert res["excluded_tokens"] == int((~kept).sum()) and res["exclude_outliers"] is True
    r = res["saes"]["half"]
    xk = x[kept]
    for suffix, xs in (("_outliers_excluded", xk), ("_all_tokens", x)):
        assert r["explained_variance" + suffix] == pytest.approx(_ev(xs, 0.5 * xs), rel=1e-5)
        assert r["mse" + suffix] == pytest.approx(
            ((0.5 * xs) ** 2).sum() / xs.size, rel=1e-5)
    assert r["explained_variance"] == r["explained_variance_outliers_excluded"]
    assert r["mse"] == r["mse_outliers_excluded"]

    # the zero SAE: outliers keep their activation, the kept tokens become 0
    def zero_kept(h, m):
        h[m & (torch.linalg.vector_norm(h.double(), dim=-1) <= thr)] = 0
        return h

    _, ce_c, ce_p, kl = _hook_run(lm, ids, keep, zero_kept)
    z = res["saes"]["zero"]
    assert res["ce_clean"] == pytest.approx(ce_c, abs=1e-5)
    assert z["ce_spliced_outliers_excluded"] == pytest.approx(ce_p, abs=1e-5)
    assert z["kl_spliced_outliers_excluded"] == pytest.approx(kl, abs=1e-5)
    assert res["ce_zero_outliers_excluded"] == pytest.approx(ce_p, abs=1e-5)
    assert z["ce_loss_score_outliers_excluded"] == pytest.approx(0.0, abs=1e-6)

    def zero_all(h, m):
        h[m] = 0
        return h

    _, _, ce_p_all, kl_all = _hook_run(lm, ids, keep, zero_all)
    assert z["ce_spliced_all_tokens"] == pytest.approx(ce_p_all, abs=1e-5)
    assert z["kl_spliced_all_tokens"] == pytest.approx(kl_all, abs=1e-5)
    assert abs(ce_p_all - ce_p) > 1e-4  # the passed-through tokens made a difference
    # exclude_outliers=False: the same two ways, the headline is every token
    off = evaluate_saes(lm, [zero], ids, keep, 1, batch_size=4, outlier_threshold=thr,
                        exclude_outliers=False)["saes"]["zero"]
    assert off["ce_spliced"] == pytest.approx(ce_p_all, abs=1e-5)


def test_per_token_normalisation_is_undone_at_the_splice(model_env):
    from aensae.llm.splice import SplicedSAE, evaluate_saes

    lm, ids, keep = model_env
    x, _, _, _ = _hook_run(lm, ids, keep, lambda h, m: h)
    xt = torch.from_numpy(x)
    xn, scale = normalise(xt, "per_token")
    torch.testing.assert_close(torch.linalg.vector_norm(xn, dim=1),
                               torch.full((len(x),), math.sqrt(32), dtype=torch.float64))
    # an SAE whose output is the constant v in the normalised space puts back
    # v * ||x|| / sqrt(d_in) in the model's space
    v = torch.linspace(-1.0, 1.0, 32)
    const = SplicedSAE("v", _linear_sae(32, out=v), "per_token")
    with torch.no_grad():
        x_hat, _ = const.reconstruct(xt.float())
    want = v.double()[None, :] * torch.from_numpy(np.linalg.norm(x, axis=1))[:, None] / \
        math.sqrt(32)
    torch.testing.assert_close(x_hat.double(), want, rtol=1e-5, atol=1e-6)
    # the identity SAE round-trips: the spliced pass is the clean one
    ident = SplicedSAE("id", _linear_sae(32), "per_token")
    r = evaluate_saes(lm, [ident], ids, keep, 1, batch_size=4)
    assert r["saes"]["id"]["ce_spliced"] == pytest.approx(r["ce_clean"], abs=1e-5)
    assert r["saes"]["id"]["explained_variance"] == pytest.approx(1.0, abs=1e-6)
