"""aensae llm eval: the spliced forward against a hand-rolled one (a forward hook that
patches the module output in the model's own forward), identity and zero splices, the
normalisation undo against the reference's defective splice, bad input, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from llm_support import save_tiny  # noqa: E402

from aensae import cli  # noqa: E402
from aensae._validation import InputError  # noqa: E402
from aensae.llm.cache import HarvestConfig, harvest  # noqa: E402
from aensae.llm.models import load_model  # noqa: E402
from aensae.llm.splice import (  # noqa: E402
    SplicedSAE,
    eval_windows,
    evaluate_saes,
    load_spliced_sae,
)
from aensae.metrics import explained_variance, l0  # noqa: E402
from aensae.saes import TrainConfig, create, train  # noqa: E402

LAYER = 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smol_tokenizer_dir):
    root = tmp_path_factory.mktemp("eval")
    folder = save_tiny("llama", smol_tokenizer_dir, root / "model", d=32)
    lm = load_model(str(folder), device="cpu")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(40):
        text = f"word{i % 7} and more text " * (4 + i % 6)
        (corpus / f"{i}.md").write_text(f"# part {i}\n" + text)
    cache = root / "cache"
    harvest(HarvestConfig(model=str(folder), layer=LAYER, text=str(corpus), tokens=800, ctx=16,
                          batch_size=4, shard_windows=10, shuffle_windows=4, eval_fraction=0.5),
            cache, model=lm, progress=False)
    ids, keep = eval_windows(lm, str(corpus), 200, ctx=16, eval_fraction=0.5)
    return {"lm": lm, "folder": folder, "corpus": corpus, "cache": cache, "ids": ids,
            "keep": keep, "root": root}


def _identity_sae(d):
    """relu(x) - relu(-x) = x: a ReLU SAE whose reconstruction is its input."""
    sae = create("relu_l1", d, 2 * d, seed=0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _hand_ce_kl(lm, ids, keep, patch):
    """CE and KL(clean || patched) of the model's own full forward, the block's output
    replaced at the data positions by ``patch(x)`` through a forward hook."""
    block = lm.block(LAYER)
    ce_c = ce_p = kl = 0.0
    n = 0
    for s in range(0, len(ids), 3):
        x_ids = torch.from_numpy(ids[s:s + 3]).long()
        m = torch.from_numpy(keep[s:s + 3])

        def hook(module, args, out, m=m):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            h[m] = patch(h[m])
            return (h, *out[1:]) if isinstance(out, tuple) else h

        with torch.no_grad():
            clean = lm.model(input_ids=x_ids).logits.double()
            handle = block.register_forward_hook(hook)
            try:
                patched = lm.model(input_ids=x_ids).logits.double()
            finally:
                handle.remove()
        pred = m[:, :-1] & m[:, 1:]
        y = x_ids[:, 1:][pred]
        lc, lp = clean[:, :-1][pred], patched[:, :-1][pred]
        ce_c += float(F.cross_entropy(lc, y, reduction="sum"))
        ce_p += float(F.cross_entropy(lp, y, reduction="sum"))
        kl += float(F.kl_div(F.log_softmax(lp, -1), F.log_softmax(lc, -1), log_target=True,
                             reduction="sum"))
        n += int(pred.sum())
    return ce_c / n, ce_p / n, kl / n


def _trained_sae(setup, c):
    """A ReLU SAE trained on the cache's activations multiplied by ``c``."""
    from aensae.llm.store import ActivationStore

    raw = ActivationStore(setup["cache"]).batch_source(64, seed=0, normalisation="none")
    sae = create("relu_l1", 32, 64, seed=0, l1=1e-3)
    train(sae, lambda s: (x * c for x in raw(s)), TrainConfig(steps=60, seed=0, device="cpu",
                                                              lr=3e-3))
    return sae.eval()


def test_identity_splice_is_clean_and_zero_splice_scores_zero(setup):
    lm = setup["lm"]
    ident = SplicedSAE("identity", _identity_sae(32), "scalar", 0.37)
    zero = SplicedSAE("zero", _identity_sae(32))
    with torch.no_grad():
        zero.sae.W_dec.zero_()
    res = evaluate_saes(lm, [ident, zero], setup["ids"], setup["keep"], LAYER)
    r = res["saes"]["identity"]
    assert r["ce_spliced"] == pytest.approx(res["ce_clean"], abs=1e-5)
    assert r["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert abs(r["kl_spliced"]) < 1e-6 and r["kl_score"] == pytest.approx(1.0, abs=1e-5)
    assert r["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert res["ce_zero"] > res["ce_clean"] + 1e-3  # the test can see a difference
    z = res["saes"]["zero"]
    assert z["ce_loss_score"] == pytest.approx(0.0, abs=1e-9)
    assert z["kl_score"] == pytest.approx(0.0, abs=1e-9)
    assert z["l0"] > 0 and z["dead_fraction"] < 1
    # cost: below once per batch; above 3 + 2 per SAE per batch
    batches = -(-len(setup["ids"]) // 8)
    assert res["cost"] == {**res["cost"], "below_calls": batches,
                           "above_calls": batches * (3 + 2 * 2)}


def test_spliced_forward_equals_hand_rolled_patch(setup):
    lm, ids, keep = setup["lm"], setup["ids"], setup["keep"]
    c = 2.5
    sae = _trained_sae(setup, c)
    s = SplicedSAE("sae", sae, "scalar", c)
    res = evaluate_saes(lm, [s], ids, keep, LAYER, batch_size=5)
    r = res["saes"]["sae"]

    def undo(x):
        return sae.decode(sae.encode(x * c)) / c

    ce_clean, ce_spliced, kl = _hand_ce_kl(lm, ids, keep, undo)
    assert res["ce_clean"] == pytest.approx(ce_clean, abs=1e-5)
    assert r["ce_spliced"] == pytest.approx(ce_spliced, abs=1e-5)
    assert r["kl_spliced"] == pytest.approx(kl, abs=1e-5)
    _, ce_zero, kl_zero = _hand_ce_kl(lm, ids, keep, torch.zeros_like)
    assert res["ce_zero"] == pytest.approx(ce_zero, abs=1e-5)
    assert r["ce_loss_score"] == pytest.approx((ce_zero - ce_spliced) / (ce_zero - ce_clean),
                                               abs=1e-4)
    assert r["kl_score"] == pytest.approx((kl_zero - kl) / kl_zero, abs=1e-4)
    # reconstruction metrics against aensae.metrics on the hand-collected activations
    X = torch.cat([lm.activations(torch.from_numpy(ids[i:i + 4]).long(), LAYER)[
        torch.from_numpy(keep[i:i + 4])] for i in range(0, len(ids), 4)])
    with torch.no_grad():
        X_hat, H = undo(X), sae.encode(X * c)
    assert r["explained_variance"] == pytest.approx(
        explained_variance(X.double().numpy(), X_hat.double().numpy()), abs=1e-5)
    assert r["l0"] == pytest.approx(l0(H.numpy()), abs=1e-9)
    assert r["mse"] == pytest.approx(float(((X - X_hat).double() ** 2).mean()), rel=1e-5)
    fired = (H != 0).any(0).double().mean()
    assert r["dead_fraction"] == pytest.approx(1 - float(fired), abs=1e-12)
    mean = X.double().mean(0).float()
    _, ce_mean, _ = _hand_ce_kl(lm, ids, keep, lambda x: mean.expand_as(x))
    assert res["ce_mean_ablation"] == pytest.approx(ce_mean, abs=1e-5)


def test_normalisation_undo_vs_the_defective_splice(setup):
    lm, ids, keep = setup["lm"], setup["ids"], setup["keep"]
    c = 20.0  # trained on activations 20x their own scale
    sae = _trained_sae(setup, c)
    res = evaluate_saes(lm, [SplicedSAE("sae", sae, "scalar", c)], ids, keep, LAYER)
    r = res["saes"]["sae"]
    # the defective splice by hand: raw activations in, the normalised-scale output out
    _, ce_bad, kl_bad = _hand_ce_kl(lm, ids, keep, lambda x: sae.decode(sae.encode(x)))
    assert r["ce_unnormalised_splice"] == pytest.approx(ce_bad, abs=1e-5)
    assert r["kl_unnormalised_splice"] == pytest.approx(kl_bad, abs=1e-5)
    ce_zero, ce_clean = res["ce_zero"], res["ce_clean"]
    assert r["ce_loss_score_unnormalised_splice"] == pytest.approx(
        (ce_zero - ce_bad) / (ce_zero - ce_clean), abs=1e-4)
    # the undo matters: the proper splice recovers far more than the defective one
    assert r["ce_loss_score"] > r["ce_loss_score_unnormalised_splice"] + 0.1
    assert r["kl_spliced"] < kl_bad
    # with no normalisation the two splices are the same computation
    same = evaluate_saes(lm, [SplicedSAE("raw", sae, "none")], ids, keep, LAYER)["saes"]["raw"]
    assert same["ce_spliced"] == same["ce_unnormalised_splice"]


def test_bad_input(setup, tmp_path, capsys):
    lm, ids, keep = setup["lm"], setup["ids"], setup["keep"]
    with pytest.raises(InputError, match="d_in 16"):
        evaluate_saes(lm, [SplicedSAE("s", create("relu_l1", 16, 8))], ids, keep, LAYER)
    other = SplicedSAE("s", create("relu_l1", 32, 8), llm={
        "model": {"name": "x", "fingerprint": lm.fingerprint}, "hook": "mlp_out",
        "layer": LAYER})
    with pytest.raises(InputError, match="--force"):
        evaluate_saes(lm, [other], ids, keep, LAYER)
    evaluate_saes(lm, [other], ids[:2], keep[:2], LAYER, force=True)
    assert "warning" in capsys.readouterr().err
    other.llm = {"model": {"name": "x", "fingerprint": {"sha256": "0" * 64}},
                 "hook": "resid_post", "layer": LAYER}
    with pytest.raises(InputError, match="trained on model x"):
        evaluate_saes(lm, [other], ids, keep, LAYER)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    with pytest.raises(InputError, match="--text"):
        eval_windows(lm, str(empty), 100, ctx=16)


def test_command_end_to_end(setup, tmp_path, capsys):
    out = tmp_path / "saes"
    assert cli.main(["llm", "train", "--cache", str(setup["cache"]), "--arch", "relu_l1",
                     "--arch", "topk", "--k-top", "4", "--d-sae", "48", "--steps", "5",
                     "--batch-size", "32", "--out", str(out), "--no-progress"]) == 0
    assert load_spliced_sae(out / "topk").constant == pytest.approx(
        json.loads((setup["cache"] / "manifest.json").read_text())
        ["normalisation"]["scalar_constant"])
    js = tmp_path / "eval.json"
    base = ["llm", "eval", "--model", str(setup["folder"]), "--text", str(setup["corpus"]),
            "--eval-fraction", "0.5", "--ctx", "16", "--no-progress"]
    assert cli.main([*base, "--sae", str(out), "--tokens", "120", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert set(res["saes"]) == {"relu_l1", "topk"} and res["tokens"] >= 120
    assert (res["layer"], res["hook"]) == (LAYER, "resid_post")
    for r in res["saes"].values():
        for key in ("l0", "dead_fraction", "explained_variance", "mse", "ce_spliced",
                    "ce_loss_score", "ce_loss_score_mean_ablation", "kl_spliced", "kl_score",
                    "ce_loss_score_unnormalised_splice"):
            assert np.isfinite(r[key]), key
    capsys.readouterr()
    assert cli.main([*base, "--sae", str(out / "topk"), "--tokens", "120", "--hook",
                     "mlp_out"]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main([*base, "--sae", str(tmp_path / "none"), "--tokens", "10"]) == 2
    assert cli.main([*base, "--sae", str(out), "--tokens", "0"]) == 2


def test_exact_codes_on_activations_against_scikit_learn(setup):
    from aensae.objective import sae_to_exact
    from aensae.solvers import solve_sklearn

    lm, ids, keep = setup["lm"], setup["ids"], setup["keep"]
    c = 2.5
    sae = _trained_sae(setup, c)
    topk = create("topk", 32, 64, seed=0, k_top=4)
    res = evaluate_saes(lm, [SplicedSAE("sae", sae, "scalar", c),
                             SplicedSAE("topk", topk, "scalar", c)], ids, keep, LAYER,
                        exact_tokens=50)
    assert res["saes"]["topk"]["exact"] is None
    ex = res["saes"]["sae"]["exact"]
    assert ex["exact_tokens"] == 50 and ex["exact_certified"] == 1.0
    X = torch.cat([lm.activations(torch.from_numpy(ids[i:i + 4]).long(), LAYER)[
        torch.from_numpy(keep[i:i + 4])] for i in range(0, len(ids), 4)])[:50].double()
    Xn = (X * c).numpy()
    lam1, lam2 = sae_to_exact(sae.l1, sae.l2, 32)
    D = sae.W_dec.detach().double().numpy().T
    b = sae.b_dec.detach().double().numpy()
    H = solve_sklearn(D, Xn - b, lam1, lam2, nonneg=True, tol=1e-12).codes
    X_exact = (H @ D.T + b) / c
    assert ex["exact_explained_variance"] == pytest.approx(
        explained_variance(X.numpy(), X_exact), abs=1e-6)
    assert ex["exact_l0"] == pytest.approx(l0(np.where(np.abs(H) > 1e-9, H, 0)), abs=0.1)
    with torch.no_grad():
        H_enc = sae.encode(torch.from_numpy(Xn).float())
        X_enc = sae.decode(H_enc).double() / c
    assert ex["encoder_l0"] == pytest.approx(l0(H_enc.numpy()), abs=1e-9)
    assert ex["encoder_explained_variance"] == pytest.approx(
        explained_variance(X.numpy(), X_enc.numpy()), abs=1e-5)
    assert ex["amort_gap_median"] >= -1e-8  # the encoder never beats the exact optimum
    assert 0.0 <= ex["amort_support_f1"] <= 1.0


def _write_saelens(folder, tensors, cfg):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_saelens_jumprelu_folder_spliced_as_written(setup, tmp_path):
    lm, ids, keep = setup["lm"], setup["ids"], setup["keep"]
    g = torch.Generator().manual_seed(3)
    W_enc = torch.randn(32, 48, generator=g) * 0.3
    W_dec = torch.randn(48, 32, generator=g) * 0.3
    b_enc, b_dec = torch.randn(48, generator=g) * 0.1, torch.randn(32, generator=g) * 0.1
    threshold = torch.rand(48, generator=g) * 0.5
    folder = tmp_path / "saelens"
    _write_saelens(folder, {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec,
                            "threshold": threshold},
                   {"architecture": "jumprelu", "d_in": 32, "d_sae": 48,
                    "hook_name": f"blocks.{LAYER}.hook_resid_post", "model_name": "tiny",
                    "apply_b_dec_to_input": True, "normalize_activations": "none"})
    s = load_spliced_sae(folder)
    assert (s.llm["layer"], s.llm["hook"]) == (LAYER, "resid_post")

    def by_hand(x):
        pre = (x - b_dec) @ W_enc + b_enc
        return torch.where(pre > threshold, pre, torch.zeros_like(pre)).clamp_min(0) @ W_dec + b_dec

    res = evaluate_saes(lm, [s], ids, keep, LAYER)
    _, ce, kl = _hand_ce_kl(lm, ids, keep, by_hand)
    r = res["saes"]["saelens"]
    assert r["ce_spliced"] == pytest.approx(ce, abs=1e-5)
    assert r["kl_spliced"] == pytest.approx(kl, abs=1e-5)
    assert r["ce_spliced"] == r["ce_unnormalised_splice"]  # no normalisation to undo
    # the command takes the folder with no conversion step, hook point from hook_name
    js = tmp_path / "e.json"
    assert cli.main(["llm", "eval", "--sae", str(folder), "--model", str(setup["folder"]),
                     "--text", str(setup["corpus"]), "--eval-fraction", "0.5", "--ctx", "16",
                     "--tokens", "60", "--no-progress", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["saes"]["saelens"]["exact"] is None


def test_saelens_bad_files(tmp_path):
    t = {"W_enc": torch.zeros(4, 6), "W_dec": torch.zeros(6, 4), "b_enc": torch.zeros(6),
         "b_dec": torch.zeros(4)}
    _write_saelens(tmp_path / "a", t, {"architecture": "jumprelu"})
    with pytest.raises(InputError, match="threshold"):
        load_spliced_sae(tmp_path / "a")
    _write_saelens(tmp_path / "b", t, {"architecture": "gated"})
    with pytest.raises(InputError, match="gated"):
        load_spliced_sae(tmp_path / "b")
    _write_saelens(tmp_path / "c", t, {"normalize_activations": "expected_average_only_in"})
    with pytest.raises(InputError, match="normalize_activations"):
        load_spliced_sae(tmp_path / "c")
    _write_saelens(tmp_path / "d", t, {"architecture": "topk", "activation_fn_kwargs": {}})
    with pytest.raises(InputError, match="k"):
        load_spliced_sae(tmp_path / "d")


def test_bench_llm_eval_runs(setup):
    from aensae.benches.llm_eval import bench_llm_eval

    res = bench_llm_eval(2, 40, model=str(setup["folder"]), d_sae=16, ctx=16, repeats=1,
                         text=str(setup["corpus"]))
    assert res["config"]["k"] == 2 and res["config"]["tokens"] > 0
    assert len(res["ratios"]) == 1 and res["ratio"] > 0 and res["ratio_cpu"] > 0


def _lipschitz_by_hand(D, H, lam2):
    """Spectral norm of the Jacobian (D_S^T D_S + lam2 I)^-1 D_S^T on each code's support,
    formed explicitly (inf for a rank-deficient lasso support, 0 for an empty one)."""
    out = []
    for h in H:
        S = np.flatnonzero(h)
        if S.size == 0:
            out.append(0.0)
            continue
        DS = D[:, S]
        K = DS.T @ DS + lam2 * np.eye(S.size)
        if lam2 == 0 and np.linalg.matrix_rank(DS) < S.size:
            out.append(np.inf)
            continue
        out.append(np.linalg.norm(np.linalg.solve(K, DS.T), 2))
    return np.array(out)


def _hoffman_by_hand(D, H, lam1, lam2):
    """1 / sigma_min of the KKT matrix, built entry by entry: rows of the active set hold
    (D^T D + lam2 I) in the active columns, the other rows D_j^T D_A and lam1 on the
    diagonal."""
    G = D.T @ D
    m = D.shape[1]
    out = []
    for h in H:
        A = set(np.flatnonzero(h).tolist())
        M = np.zeros((m, m))
        for i in range(m):
            for j in range(m):
                if j in A:
                    M[i, j] = G[i, j] + (lam2 if i == j else 0.0)
                elif i == j:
                    M[i, j] = lam1
        out.append(1.0 / np.linalg.svd(M, compute_uv=False)[-1])
    return np.array(out)


def _median(v):
    return float(np.quantile(v, 0.5, method="inverted_cdf"))


def test_dictionary_geometry_against_hand_computations(setup):
    """Lipschitz and Hoffman summaries of an elastic-net SAE's dictionary against the
    Jacobians and KKT matrices formed by hand on scikit-learn's exact codes; NaN with a
    reason for TopK."""
    from aensae.objective import sae_to_exact
    from aensae.solvers import solve_sklearn

    lm, ids, keep = setup["lm"], setup["ids"], setup["keep"]
    c, g = 2.5, 24
    sae = create("elastic_net", 32, 64, seed=1, l1=2e-3, l2=5e-3).eval()
    topk = create("topk", 32, 64, seed=0, k_top=4)
    res = evaluate_saes(lm, [SplicedSAE("enet", sae, "scalar", c),
                             SplicedSAE("topk", topk, "scalar", c)], ids, keep, LAYER,
                        exact_tokens=50, geometry_tokens=g)
    r = res["saes"]["enet"]
    assert r["geometry_tokens"] == g and r["geometry_note"] == ""
    assert "geometry" not in r["exact"]
    X = torch.cat([lm.activations(torch.from_numpy(ids[i:i + 4]).long(), LAYER)[
        torch.from_numpy(keep[i:i + 4])] for i in range(0, len(ids), 4)])[:g].double()
    lam1, lam2 = sae_to_exact(sae.l1, sae.l2, 32)
    D = sae.W_dec.detach().double().numpy().T
    Xc = (X * c).numpy() - sae.b_dec.detach().double().numpy()
    H = solve_sklearn(D, Xc, lam1, lam2, nonneg=True, tol=1e-14).codes
    H = np.where(np.abs(H) > 1e-9, H, 0.0)
    H_lasso = solve_sklearn(D, Xc, lam1, 0.0, nonneg=True, tol=1e-14).codes
    H_lasso = np.where(np.abs(H_lasso) > 1e-9, H_lasso, 0.0)
    assert np.count_nonzero(H, axis=1).min() >= 1  # the summaries see real supports
    enet = _lipschitz_by_hand(D, H, lam2)
    lasso = _lipschitz_by_hand(D, H_lasso, 0.0)
    hof = _hoffman_by_hand(D, H, lam1, lam2)
    for key, ref in (("lip_exact_enet", enet), ("lip_exact_lasso", lasso),
                     ("hoffman", hof)):
        assert r[f"{key}_max"] == pytest.approx(ref.max(), rel=1e-6), key
        assert r[f"{key}_median"] == pytest.approx(_median(ref), rel=1e-6), key
        assert r[f"{key}_q05"] == pytest.approx(
            float(np.quantile(ref, 0.05, method="inverted_cdf")), rel=1e-6), key
    assert r["lip_exact_enet_bound"] == pytest.approx(1 / (2 * np.sqrt(lam2)))
    assert r["lip_exact_enet_max"] <= r["lip_exact_enet_bound"] * (1 + 1e-12)
    assert r["lasso_certified"] == 1.0
    assert r["hoffman_lower_max"] <= r["hoffman_max"] * (1 + 1e-9)
    assert r["hoffman_max"] <= r["hoffman_upper_max"] * (1 + 1e-9)
    t = res["saes"]["topk"]
    assert t["exact"] is None and "topk" in t["geometry_note"]
    assert np.isnan(t["lip_exact_enet_median"]) and np.isnan(t["hoffman_max"])
    assert set(t) >= {k for k in r if k.startswith(("lip_exact", "hoffman", "geometry"))}


def test_geometry_tokens_option(setup, tmp_path, capsys):
    lm, ids, keep = setup["lm"], setup["ids"], setup["keep"]
    s = SplicedSAE("sae", create("relu_l1", 32, 64, seed=0, l1=2e-3), "scalar", 2.5)
    with pytest.raises(InputError, match="--geometry-tokens"):
        evaluate_saes(lm, [s], ids, keep, LAYER, exact_tokens=10, geometry_tokens=11)
    r = evaluate_saes(lm, [s], ids, keep, LAYER, exact_tokens=10)["saes"]["sae"]
    assert r["geometry_tokens"] == 10  # the default, 256, or all exact tokens when fewer
    assert r["lasso_certified"] == r["exact"]["exact_certified"]  # lam2 = 0: the same codes
    assert r["lip_exact_enet_median"] == r["lip_exact_lasso_median"]
    r = evaluate_saes(lm, [s], ids, keep, LAYER, exact_tokens=10,
                      geometry_tokens=0)["saes"]["sae"]
    assert r["geometry_tokens"] == 0 and np.isnan(r["hoffman_median"]) and r["geometry_note"]
    base = ["llm", "eval", "--sae", str(tmp_path / "x"), "--model", str(setup["folder"]),
            "--text", str(setup["corpus"]), "--tokens", "60", "--no-progress"]
    for extra in (["--geometry-tokens", "-1"], ["--exact-tokens", "8", "--geometry-tokens",
                                                  "9"]):
        capsys.readouterr()
        assert cli.main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert "--geometry-tokens" in err and len(err.strip().splitlines()) == 1
