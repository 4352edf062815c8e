r"""Spliced evaluation: an SAE's reconstruction put back into the model (``aensae llm eval``).

For each eval token ``t`` that is data (special tokens are masked exactly as in the
harvest: their activations are left as they are and they are in no metric), with hooked
activation :math:`x_t` in the model's own scale, an SAE trained on normalised
activations gives

.. math:: \hat x_t = u\big(\mathrm{dec}(\mathrm{enc}(n(x_t)))\big),

with :math:`n` its normalisation and :math:`u` the undo (:mod:`aensae.llm.normalise`,
with the kind and constant recorded in the SAE's ``cfg.json``). The model then runs on
from the hook with :math:`\hat x_t` in place of :math:`x_t`.

Per SAE, over the :math:`N` data tokens (float64 sums):

- ``l0`` = mean number of non-zero codes; ``dead_fraction`` = share of latents that fire
  on none of the eval tokens;
- ``explained_variance`` = :math:`1 - \sum_t \lVert x_t - \hat x_t\rVert^2 / \sum_t
  \lVert x_t - \bar x\rVert^2` (the formula of :func:`aensae.metrics.explained_variance`:
  the mean predictor scores 0), ``mse`` = :math:`\sum_t \lVert x_t - \hat x_t\rVert^2 /
  (N d_{in})`, both in the model's scale.

Next-token cross-entropy, over the positions ``t`` whose token and next token are both
data: :math:`CE = -\frac1{|P|}\sum_{t\in P} \log p(y_{t+1}\mid\cdot)` with log-softmax
logits, for the clean pass, the spliced pass, the zero ablation (:math:`x_t \to 0`) and
the mean ablation (:math:`x_t \to \bar x`, the mean over the eval tokens). Then

.. math::

   \mathrm{ce\_loss\_score} = \frac{CE_{zero} - CE_{spliced}}{CE_{zero} - CE_{clean}},
   \qquad
   \mathrm{ce\_loss\_score\_mean\_ablation} = \frac{CE_{mean} - CE_{spliced}}
   {CE_{mean} - CE_{clean}},

:math:`KL = \frac1{|P|}\sum_{t\in P} \sum_v p^{clean}_{tv}(\log p^{clean}_{tv} - \log
p^{spliced}_{tv})` (log-softmax on both sides, never a log of a softmax) and
``kl_score`` = :math:`(KL_{zero} - KL_{spliced}) / KL_{zero}`.

Outlier tokens (``outlier_threshold``, a norm): a data token whose activation norm
exceeds it is measured both ways, each metric under a suffix: ``_all_tokens`` (as above)
and ``_outliers_excluded``, where the outlier tokens are passed through unchanged (their
activation is not replaced, in the spliced and in the ablated passes) and left out of L0,
the dead and rare fractions, EV, MSE and the mean of the mean ablation; CE and KL are
still taken over every scored position, since the model runs on every token. The keys
without a suffix are one of the two ways (``exclude_outliers``), and ``excluded_tokens``
counts the tokens passed through. ``rare_fraction`` is the share of latents whose firing
rate over the measured tokens is below ``rare_rate`` (1e-5 by default, the paper's
criterion for a dead latent; it needs more than 100,000 eval tokens to differ from the
dead fraction).

The reference implementation's defective splice feeds the *raw* activation to the SAE and
puts its output back *without* undoing the normalisation,
:math:`\tilde x_t = \mathrm{dec}(\mathrm{enc}(x_t))`; its scores are reported as
``ce_unnormalised_splice``, ``kl_unnormalised_splice`` and
``ce_loss_score_unnormalised_splice``, always on every data token.

Cost: the layers below the hook run once per batch (:meth:`LanguageModel.run_below`, kept
for the second pass, since the mean ablation needs the mean over all eval tokens first);
the layers above run (:meth:`LanguageModel.run_above`) once for the clean pass, once per
ablation and twice per SAE (its splice and the defective one); with an outlier threshold,
once more for the mean ablation and, on a batch that holds an outlier, once more for the
zero ablation and per SAE. Memory: the kept ``run_below`` state, about two activations
per eval token.

Exact certified codes (``exact_tokens``): see :mod:`aensae.llm.exact`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aensae._validation import InputError
from aensae.llm.models import HOOKS, Below, LanguageModel
from aensae.llm.normalise import NORMALISATIONS, check_constant, normalise, unnormalise
from aensae.llm.text import WindowStream, check_not_empty, open_text

__all__ = ["BOTH_WAYS", "COMMON_BOTH_WAYS", "RARE_RATE", "WAY_SUFFIX", "SAELensSAE",
           "SplicedSAE", "eval_windows", "evaluate_saes", "load_spliced_sae",
           "outlier_threshold_of"]


@dataclass
class SplicedSAE:
    """An SAE with what a splice needs: its normalisation and where it was trained."""

    name: str
    sae: Any
    normalisation: str = "none"
    constant: float | None = None
    llm: dict[str, Any] | None = None
    path: str | None = None
    #: Where ``llm``'s hook point was read, for errors (``cfg.json llm.layer``, a
    #: SAELens ``hook_name``).
    origin: str | None = None

    def normalised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return normalise(x, self.normalisation, self.constant)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_hat, h)`` in the model's scale: normalise, encode, decode, undo."""
        xn, scale = self.normalised(x)
        h = self.sae.encode(xn)
        return unnormalise(self.sae.decode(h), scale), h

    def reconstruct_defective(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's splice: raw ``x`` in, the normalised-scale output out."""
        return self.sae.decode(self.sae.encode(x))


class SAELensSAE(torch.nn.Module):
    r"""An SAE saved by SAELens (``cfg.json`` + ``sae_weights.safetensors``), as saved.

    ``pre = (x - b_dec) W_enc + b_enc`` (without ``- b_dec`` when ``apply_b_dec_to_input``
    is false); codes ``relu(pre)`` (``standard``), ``relu(pre) * [pre > threshold]``
    (``jumprelu``) or ``relu`` of the ``k`` largest pre-activations (``topk``, ``k`` from
    ``activation_fn_kwargs``); reconstruction ``h W_dec + b_dec``.
    """

    KINDS = ("standard", "jumprelu", "topk")

    def __init__(self, tensors: dict[str, torch.Tensor], kind: str, *,
                 apply_b_dec_to_input: bool = True, k: int | None = None) -> None:
        super().__init__()
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            self.register_buffer(name, tensors[name])
        self.register_buffer("threshold", tensors.get("threshold"))
        self.kind, self.k = kind, k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.d_in, self.d_sae = self.W_enc.shape
        self.arch = f"saelens-{kind}"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x - self.b_dec if self.apply_b_dec_to_input else x) @ self.W_enc + self.b_enc
        if self.kind == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        if self.kind == "topk":
            top = torch.topk(pre, self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        return torch.relu(pre)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.W_dec + self.b_dec


_SAELENS_HOOKS = {"hook_resid_post": "resid_post", "hook_mlp_out": "mlp_out",
                  "hook_attn_out": "attn_out"}


def _load_saelens(folder: Path, cfg: dict[str, Any]) -> SplicedSAE:
    from safetensors.torch import load_file

    where = f"--sae {folder}"
    meta = {**cfg.get("metadata", {}), **cfg}
    kind = meta.get("architecture", "standard")
    if kind not in SAELensSAE.KINDS:
        raise InputError(f"{where}: SAELens architecture {kind!r} is not supported; "
                         f"supported: {', '.join(SAELensSAE.KINDS)}")
    norm = meta.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise InputError(f"{where}: normalize_activations {norm!r}: its constant is not in "
                         "cfg.json; fold it into the weights (SAELens "
                         "fold_activation_norm_scaling_factor) and save again")
    try:
        tensors = load_file(str(folder / "sae_weights.safetensors"))
    except Exception as err:  # noqa: BLE001 - SafetensorError: truncated, a garbage header
        raise InputError(f"{where}: sae_weights.safetensors is damaged ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:120]})") from None
    missing = [n for n in ("W_enc", "W_dec", "b_enc", "b_dec") if n not in tensors]
    if kind == "jumprelu" and "threshold" not in tensors:
        missing.append("threshold")
    if missing:
        raise InputError(f"{where}: sae_weights.safetensors lacks {', '.join(missing)}")
    tensors = {k: v.float() for k, v in tensors.items()}
    if tensors["W_enc"].ndim != 2:
        raise InputError(f"{where}: sae_weights.safetensors W_enc has shape "
                         f"{tuple(tensors['W_enc'].shape)}, expected (d_in, d_sae)")
    d_in, d_sae = tensors["W_enc"].shape
    want = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    for name, shape in want.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise InputError(f"{where}: sae_weights.safetensors {name} has shape "
                             f"{tuple(tensors[name].shape)}, expected {shape} (W_enc is "
                             f"{(d_in, d_sae)}: d_in {d_in}, d_sae {d_sae})")
    _check_finite_tensors(where, "sae_weights.safetensors", tensors)
    for key in ("d_in", "d_sae"):
        given = meta.get(key)
        if given is not None and given != {"d_in": d_in, "d_sae": d_sae}[key]:
            raise InputError(f"{where}: cfg.json {key} {given!r} does not match W_enc of "
                             f"shape {(d_in, d_sae)}")
    k = None
    if kind == "topk":
        k = (meta.get("activation_fn_kwargs") or {}).get("k", meta.get("k"))
        if not isinstance(k, int) or not 1 <= k <= d_sae:
            raise InputError(f"{where}: a topk SAE needs activation_fn_kwargs.k in "
                             f"[1, {d_sae}], got {k!r}")
    sae = SAELensSAE(tensors, kind, apply_b_dec_to_input=bool(
        meta.get("apply_b_dec_to_input", True)), k=k)
    llm = None
    origin = None
    hook_name = meta.get("hook_name")
    if isinstance(hook_name, str):
        parts = hook_name.split(".")
        if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and (
                parts[2] in _SAELENS_HOOKS):
            llm = {"model": {"name": meta.get("model_name"), "fingerprint": None},
                   "hook": _SAELENS_HOOKS[parts[2]], "layer": int(parts[1])}
            origin = f"{folder / 'cfg.json'} hook_name {hook_name!r}"
    return SplicedSAE(folder.name, sae.eval(), "none", None, llm, str(folder), origin)


def _check_finite_tensors(where: str, file: str, tensors: dict[str, torch.Tensor]) -> None:
    bad = [k for k, v in tensors.items()
           if v is not None and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(f"{where}: {file} {', '.join(sorted(bad))} hold NaN or inf; an SAE "
                         "with non-finite weights gives no meaningful results")


def _llm_record(path: Path, llm: Any) -> tuple[str, float | None]:
    """Check the ``llm`` record of an SAE's ``cfg.json`` (written by ``aensae llm train``):
    ``model``, ``hook``, ``layer`` and ``normalisation`` (kind, and a sane constant for
    ``scalar``); return ``(kind, constant)``. Each problem is an :class:`InputError`
    naming the key and the file."""
    file = path / "cfg.json"
    where = f"--sae {path}: {file}"
    if not isinstance(llm, dict):
        raise InputError(f"{where}: llm is a {type(llm).__name__}, not an object")
    missing = [k for k in ("model", "hook", "layer", "normalisation") if k not in llm]
    if missing:
        raise InputError(f"{where} has llm but no llm.{', llm.'.join(missing)}; it must be "
                         "the cfg.json aensae llm train wrote (retrain, or restore the file)")
    if not isinstance(llm["model"], dict):
        raise InputError(f"{where}: llm.model is not an object")
    if llm["hook"] not in HOOKS:
        raise InputError(f"{where}: llm.hook {llm['hook']!r} is not one of {', '.join(HOOKS)}")
    layer = llm["layer"]
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise InputError(f"{where}: llm.layer must be a block index (an integer >= 0), got "
                         f"{layer!r}")
    norm = llm["normalisation"]
    if not isinstance(norm, dict) or "kind" not in norm:
        raise InputError(f"{where}: llm.normalisation must be an object with kind and "
                         f"constant, got {norm!r}")
    kind = norm["kind"]
    if kind not in NORMALISATIONS:
        raise InputError(f"{where}: llm.normalisation.kind {kind!r} is not one of "
                         f"{', '.join(NORMALISATIONS)}")
    constant = None
    if kind == "scalar":
        constant = check_constant(f"{where} llm.normalisation.constant", norm.get("constant"))
    return kind, constant


def load_spliced_sae(path: str | Path) -> SplicedSAE:
    """An SAE saved by ``aensae llm train`` (or :func:`aensae.saes.save`) or by SAELens
    (``cfg.json`` + ``sae_weights.safetensors``, :class:`SAELensSAE`) in ``path``.

    Without the ``llm`` record of ``aensae llm train`` the SAE is taken to see raw
    activations (normalisation ``none``). A SAELens ``hook_name`` of the form
    ``blocks.L.hook_resid_post`` (``hook_mlp_out``, ``hook_attn_out``) gives the hook
    point; its model is named but has no weight fingerprint, so it is not checked.
    """
    from aensae.saes import load

    folder = Path(path)
    if (folder / "sae_weights.safetensors").is_file() and (folder / "cfg.json").is_file():
        try:
            cfg = json.loads((folder / "cfg.json").read_text(encoding="utf-8"))
            if not isinstance(cfg, dict):
                raise ValueError("not a JSON object")
            return _load_saelens(folder, cfg)
        except (OSError, ValueError, KeyError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"--sae {path}: cannot read the SAELens files "
                             f"({' '.join(str(err).split())})") from None
    cfg_path = folder / "cfg.json"
    if not cfg_path.is_file():
        raise InputError(f"--sae {path}: no cfg.json; expected a folder written by aensae "
                         "llm train")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"--sae {path}: {cfg_path} is damaged ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:120]})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"--sae {path}: {cfg_path} is damaged (a JSON {type(cfg).__name__}, "
                         "not an object)")
    llm = cfg.get("llm")
    kind, constant = "none", None
    if llm is not None:  # checked before the weights are read: the cheaper file first
        kind, constant = _llm_record(folder, llm)
    try:
        sae = load(folder)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise InputError(f"--sae {path}: cannot load the SAE ({' '.join(str(err).split())})"
                         ) from None
    _check_finite_tensors(f"--sae {path}", "sae.safetensors", dict(sae.state_dict()))
    origin = f"{cfg_path} llm.layer" if llm is not None else None
    return SplicedSAE(folder.name, sae.eval(), kind, constant, llm, str(folder), origin)


def outlier_threshold_of(saes: list[SplicedSAE]) -> float | None:
    """The outlier threshold the SAEs were trained with (``cfg.json`` ``llm.outliers``,
    written by ``aensae llm train`` when it left outlier tokens out), so that their
    evaluation passes the same tokens through; ``None`` when none of them left any out.
    SAEs trained with different thresholds (or some with and some without) are an
    :class:`InputError`: they are evaluated separately."""
    found: dict[str, list[str]] = {}
    for s in saes:
        rec = (s.llm or {}).get("outliers")
        threshold = rec.get("threshold") if isinstance(rec, dict) else None
        if threshold is not None and (isinstance(threshold, bool)
                                      or not isinstance(threshold, (int, float))
                                      or not math.isfinite(threshold) or threshold <= 0):
            raise InputError(f"--sae {s.path or s.name}: cfg.json llm.outliers.threshold must "
                             f"be a positive number, got {threshold!r}")
        found.setdefault(repr(threshold), []).append(s.path or s.name)
    if len(found) > 1:
        listed = "; ".join(f"{k}: {', '.join(v[:2])}{' ...' if len(v) > 2 else ''}"
                           for k, v in sorted(found.items()))
        raise InputError("--sae: these SAEs were trained with different outlier thresholds "
                         f"(cfg.json llm.outliers.threshold {listed}); evaluate each set "
                         "separately")
    value = next(iter(found), "None")
    return None if value == "None" else float(value)


def eval_windows(lm: LanguageModel, text: str, tokens: int, *, ctx: int = 128,
                 eval_fraction: float = 0.05, seed: int = 0, text_column: str = "text",
                 prepend_bos: bool = True, keep_special: bool = False,
                 shuffle_windows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Windows (W, ctx) of the eval split of ``text`` holding at least ``tokens`` data
    tokens (fewer when the text runs out), and their data mask (special tokens False)."""
    source = open_text(text, text_column=text_column)
    check_not_empty(source, "eval", eval_fraction)
    stream = WindowStream(source, lm.tokenizer, ctx, split="eval", eval_fraction=eval_fraction,
                          buffer=shuffle_windows, seed=seed, prepend_bos=prepend_bos)
    windows, masks, kept = [], [], 0
    for w in stream:
        m = stream.info.keep_mask(w, keep_special)
        windows.append(w)
        masks.append(m)
        kept += int(m.sum())
        if kept >= tokens:
            break
    if not windows or kept == 0:
        raise InputError(f"--text {text}: the eval split holds no window of --ctx {ctx} "
                         "tokens with data")
    return np.stack(windows), np.stack(masks)


def _check_saes(lm: LanguageModel, saes: list[SplicedSAE], layer: int, hook: str,
                force: bool) -> None:
    for s in saes:
        if s.sae.d_in != lm.d_model:
            raise InputError(f"--sae {s.path or s.name}: d_in {s.sae.d_in} does not match "
                             f"the width {lm.d_model} of hook {hook} of {lm.source.name}")
        if s.llm is None:
            continue
        problems = []
        fingerprint = s.llm["model"].get("fingerprint")
        if fingerprint is not None and fingerprint != lm.fingerprint:
            problems.append(f"model {s.llm['model'].get('name')} "
                            f"{s.llm['model'].get('fingerprint')} (evaluating "
                            f"{lm.source.name} {lm.fingerprint})")
        if (s.llm["layer"], s.llm["hook"]) != (layer, hook):
            problems.append(f"hook {s.llm['hook']} of layer {s.llm['layer']} (splicing into "
                            f"{hook} of layer {layer})")
        if problems:
            msg = f"--sae {s.path or s.name}: trained on " + " and ".join(problems)
            if not force:
                raise InputError(msg + "; pass --force to evaluate it anyway")
            print(f"aensae llm eval: warning: {msg}; evaluated anyway (--force)",
                  file=sys.stderr)


def _ce_kl(logits: torch.Tensor, targets: torch.Tensor, pred: torch.Tensor,
           lp_clean: torch.Tensor | None) -> tuple[float, float]:
    """Sums over the positions ``pred`` of the CE and of KL(clean || this)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)[pred]
    ce = -lp.gather(1, targets[pred].unsqueeze(1)).double().sum()
    if lp_clean is None:
        return float(ce), 0.0
    kl = (lp_clean.exp() * (lp_clean - lp)).sum(-1).double().sum()
    return float(ce), float(kl)


#: Per-SAE metrics that must come out finite, with the pass that produced each.
_SAE_METRICS = {
    "l0": "its codes", "dead_fraction": "its codes",
    "explained_variance": "its reconstruction (or activations of zero variance)",
    "mse": "its reconstruction", "ce_spliced": "the spliced pass",
    "kl_spliced": "the spliced pass",
    "ce_loss_score": "the spliced pass against the zero ablation",
    "ce_loss_score_mean_ablation": "the spliced pass against the mean ablation",
    "kl_score": "the spliced pass against the zero ablation",
    "ce_unnormalised_splice": "the reference's defective splice",
    "kl_unnormalised_splice": "the reference's defective splice",
    "ce_loss_score_unnormalised_splice": "the reference's defective splice"}
#: Measurements shared by every SAE, with the pass that produced each.
_COMMON_METRICS = {"ce_clean": "the clean pass", "ce_zero": "the zero ablation",
                   "ce_mean_ablation": "the mean ablation", "kl_zero": "the zero ablation",
                   "kl_mean_ablation": "the mean ablation"}


def _check_finite_metrics(lm: LanguageModel, layer: int, hook: str, common: dict[str, float],
                          saes: list[SplicedSAE], results: dict[str, dict[str, Any]]) -> None:
    """No result is reported with a NaN or infinite metric: each one is an
    :class:`InputError` naming the metric and what produced it (the model's own passes, or
    an SAE, its splice or its exact codes). The geometry keys are exempt: they are NaN by
    design where an SAE has no exact problem (``geometry_note`` says why)."""
    import math

    model = f"{lm.source.name} ({lm.dtype}, {hook} of layer {layer})"
    for key, what in _COMMON_METRICS.items():
        if not math.isfinite(common[key]):
            raise InputError(f"--model {lm.source.name}: {key} is {common[key]!r}: {what} of "
                             f"{model} gave a non-finite result (logits or activations "
                             "overflow; try --dtype float32); nothing is reported")
    for base, score in (("ce_zero", "ce_loss_score"),
                        ("ce_mean_ablation", "ce_loss_score_mean_ablation")):
        if common[base] == common["ce_clean"]:
            raise InputError(f"--model {lm.source.name}: {_COMMON_METRICS[base]} of {hook} at "
                             f"layer {layer} leaves the CE unchanged ({common[base]!r}), so "
                             f"{score} is undefined; choose another --layer or --hook")
    if common["kl_zero"] <= 0:
        raise InputError(f"--model {lm.source.name}: the zero ablation of {hook} at layer "
                         f"{layer} leaves the next-token distribution unchanged (KL "
                         f"{common['kl_zero']!r}), so kl_score is undefined; choose another "
                         "--layer or --hook")
    for s in saes:
        r = results[s.name]
        checks = [(k, r[k], f"{what} of this SAE") for k, what in _SAE_METRICS.items()]
        exact = r.get("exact")
        if isinstance(exact, dict):
            checks += [(f"exact.{k}", v, "its exact certified codes") for k, v in exact.items()
                       if isinstance(v, float)]
        for key, value, what in checks:
            if not math.isfinite(value):
                raise InputError(f"--sae {s.path or s.name}: {key} is {value!r}: {what} gave a "
                                 f"non-finite result on {model} (are its weights or its "
                                 "normalisation constant damaged?); nothing is reported")


#: Per-SAE metrics measured both ways when an outlier threshold is given.
BOTH_WAYS = ("l0", "dead_fraction", "rare_fraction", "explained_variance", "mse",
             "ce_spliced", "kl_spliced", "ce_loss_score", "ce_loss_score_mean_ablation",
             "kl_score")
#: Shared baselines measured both ways when an outlier threshold is given.
COMMON_BOTH_WAYS = ("ce_zero", "ce_mean_ablation", "kl_zero", "kl_mean_ablation")
#: Key suffix of each way: every data token, or the outlier tokens left out.
WAY_SUFFIX = {"all": "_all_tokens", "kept": "_outliers_excluded"}
#: Default firing rate below which a latent counts as rare (the paper's dead criterion).
RARE_RATE = 1e-5


def evaluate_saes(lm: LanguageModel, saes: list[SplicedSAE], ids: np.ndarray,
                  keep: np.ndarray, layer: int, hook: str = "resid_post", *,
                  batch_size: int = 8, force: bool = False, progress: bool = False,
                  exact_tokens: int = 0, exact_tol: float = 1e-10,
                  geometry_tokens: int | None = None,
                  outlier_threshold: float | None = None, exclude_outliers: bool = True,
                  rare_rate: float = RARE_RATE) -> dict[str, Any]:
    """Evaluate ``saes`` spliced at ``(layer, hook)`` on windows ``ids`` with data mask
    ``keep`` (both (W, T)); see the module docstring for every quantity.

    With ``exact_tokens > 0``, each l1-family SAE is also compared with exact certified
    codes on the first ``exact_tokens`` measured data tokens (:mod:`aensae.llm.exact`),
    under ``"exact"`` in its results (``None`` for the other architectures), and the
    geometry of its dictionary is summarised on the first ``geometry_tokens`` of them
    (``None``: :data:`aensae.llm.exact.DEFAULT_GEOMETRY_TOKENS`, or all exact tokens when
    fewer; 0: none) under the SAE's own keys ``lip_exact_*``, ``hoffman_*``,
    ``geometry_*`` (NaN with the reason in ``geometry_note`` where they do not apply).

    ``outlier_threshold`` (a norm in the model's scale, e.g. 10 x the training cache's
    median token norm): a data token whose activation norm exceeds it is an outlier. The
    metrics are then measured both ways, under the suffixes of :data:`WAY_SUFFIX`:
    ``_all_tokens`` (every data token spliced and measured) and ``_outliers_excluded``
    (outliers passed through unchanged in the spliced and ablated passes, and left out of
    L0, dead and rare fractions, EV, MSE and the mean of the mean ablation; CE and KL
    still over every scored position). The keys without a suffix are the second way when
    ``exclude_outliers``, else the first; ``excluded_tokens`` counts the outliers. The
    reference's defective splice is always measured on every data token.

    ``rare_fraction``: the share of latents whose firing rate over the measured tokens is
    below ``rare_rate`` (with fewer than ``1 / rare_rate`` tokens, the latents that never
    fired: the dead fraction).
    """
    from tqdm.auto import tqdm

    from aensae.llm.exact import (
        DEFAULT_GEOMETRY_TOKENS,
        exact_code_report,
        geometry_report,
        no_geometry_reason,
    )
    from aensae.llm.normalise import token_norms

    lm.check_hook(layer, hook)
    if not saes:
        raise InputError("--sae: give at least one SAE")
    if outlier_threshold is not None and (
            isinstance(outlier_threshold, bool) or not isinstance(outlier_threshold, (int, float))
            or not math.isfinite(outlier_threshold) or outlier_threshold <= 0):
        raise InputError(f"outlier_threshold must be a positive finite norm or None, got "
                         f"{outlier_threshold!r}")
    if isinstance(rare_rate, bool) or not isinstance(rare_rate, (int, float)) or not (
            0 < rare_rate < 1):
        raise InputError(f"rare_rate must be a number in (0, 1), got {rare_rate!r}")
    _check_saes(lm, saes, layer, hook, force)
    t0 = time.perf_counter()
    ids_t = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    keep_t = torch.from_numpy(np.asarray(keep, dtype=bool))
    starts = range(0, len(ids_t), batch_size)
    belows: list[Below] = []
    outlier_masks: list[torch.Tensor] = []
    rows, row_outliers = [], []
    for s in tqdm(starts, disable=not progress, desc="eval: layers below", dynamic_ncols=True):
        below = lm.run_below(ids_t[s:s + batch_size], layer, hook)
        belows.append(below)
        m = keep_t[s:s + batch_size].to(below.activation.device)
        out_m = torch.zeros_like(m)
        if outlier_threshold is not None:
            out_m = m & (token_norms(below.activation) > outlier_threshold)
        outlier_masks.append(out_m)
        rows.append(below.activation[m].double().cpu())
        row_outliers.append(out_m[m].cpu())
    X = torch.cat(rows)
    is_out = torch.cat(row_outliers)
    n, d = X.shape
    n_out = int(is_out.sum())
    ways = ["all"] if outlier_threshold is None else ["all", "kept"]
    headline = "kept" if outlier_threshold is not None and exclude_outliers else "all"
    measured = {"all": torch.ones(n, dtype=torch.bool), "kept": ~is_out}
    n_way, mean, total_var = {}, {}, {}
    for way in ways:
        Xw = X[measured[way]]
        n_way[way] = int(Xw.shape[0])
        if n_way[way] == 0:
            raise InputError(f"every one of the {n} eval tokens has an activation norm above "
                             f"the outlier threshold {outlier_threshold:g}: nothing is left "
                             "to measure with outliers excluded")
        mean[way] = Xw.mean(0)
        total_var[way] = float(((Xw - mean[way]) ** 2).sum())
        del Xw
    X_exact = X[measured[headline]][:exact_tokens].clone() if exact_tokens > 0 else None
    n_exact = 0 if X_exact is None else int(X_exact.shape[0])
    if geometry_tokens is None:
        geometry_tokens = min(DEFAULT_GEOMETRY_TOKENS, n_exact)
    elif geometry_tokens > n_exact:
        raise InputError(f"--geometry-tokens: {geometry_tokens} exceeds the {n_exact} tokens "
                         "with exact codes (--exact-tokens, at most the eval tokens); the "
                         "summaries are taken on exact codes")
    del rows, X
    t_below = time.perf_counter() - t0

    base = {(kind, way): [0.0, 0.0] for kind in ("zero", "mean") for way in ways}
    ce_clean_sum = 0.0
    per = {s.name: {"ce_bad": 0.0, "kl_bad": 0.0, **{
        way: {"ce": 0.0, "kl": 0.0, "l0": 0.0, "sse": 0.0,
              "count": torch.zeros(s.sae.d_sae, dtype=torch.int64)} for way in ways}}
        for s in saes}
    n_pred = 0
    above_calls = 0
    for bi, below in enumerate(tqdm(belows, disable=not progress, desc="eval: layers above",
                                    dynamic_ncols=True)):
        s0 = bi * batch_size
        b_ids = ids_t[s0:s0 + batch_size]
        m = keep_t[s0:s0 + batch_size].to(below.activation.device)
        out_m = outlier_masks[bi]
        has_out = bool(out_m.any())
        where = {"all": m, "kept": m & ~out_m}
        kept_rows = ~out_m[m]  # the rows of act[m] that are no outlier
        pred = m[:, :-1] & m[:, 1:]
        targets = b_ids[:, 1:].to(below.activation.device)
        n_pred += int(pred.sum())
        act = below.activation

        def above(replacement: torch.Tensor | None, below: Below = below) -> torch.Tensor:
            nonlocal above_calls
            above_calls += 1
            return lm.run_above(below, replacement)

        lp_clean = torch.log_softmax(above(None)[:, :-1].float(), dim=-1)[pred]

        def spliced(way: str, value: torch.Tensor, act: torch.Tensor = act,
                    where: dict[str, torch.Tensor] = where, targets: torch.Tensor = targets,
                    pred: torch.Tensor = pred, lp_clean: torch.Tensor = lp_clean
                    ) -> tuple[float, float]:
            """CE and KL sums with ``value`` at the positions ``where[way]`` (one value,
            or one row per position), every other position as it is."""
            rep = act.clone()
            rep[where[way]] = value.to(act.dtype).to(act.device)
            return _ce_kl(above(rep), targets, pred, lp_clean)

        ce = -lp_clean.gather(1, targets[pred].unsqueeze(1)).double().sum()
        ce_clean_sum += float(ce)
        for kind in ("zero", "mean"):
            first: tuple[float, float] = (0.0, 0.0)
            for way in ways:
                if way == "kept" and not (has_out if kind == "zero" else n_out):
                    got = first  # the same replacement at the same positions
                else:
                    got = spliced(way, torch.zeros((), dtype=act.dtype) if kind == "zero"
                                  else mean[way])
                base[(kind, way)][0] += got[0]
                base[(kind, way)][1] += got[1]
                first = got
        x = act[m]
        for s in saes:
            p = per[s.name]
            xs = x.to(s.sae.W_dec.dtype).to(s.sae.W_dec.device)
            with torch.no_grad():
                x_hat, h = s.reconstruct(xs)
                x_bad = s.reconstruct_defective(xs)
            nz = h != 0
            err = ((xs.double() - x_hat.double()) ** 2).sum(1)
            got = (0.0, 0.0)
            for way in ways:
                r = slice(None) if way == "all" else kept_rows.to(nz.device)
                q = p[way]
                q["l0"] += float(nz[r].sum())
                q["count"] += nz[r].sum(0).cpu()
                q["sse"] += float(err[r].sum())
                if way == "all" or has_out:  # else: the first way's splice, the same one
                    got = spliced(way, x_hat[r])
                q["ce"] += got[0]
                q["kl"] += got[1]
            c, k = spliced("all", x_bad)
            p["ce_bad"] += c
            p["kl_bad"] += k
    if n_pred == 0:
        raise InputError("--tokens: the eval windows hold no pair of consecutive data tokens "
                         "to score; ask for more tokens or a larger --ctx")
    ce_clean = ce_clean_sum / n_pred
    common_way = {way: {"ce_zero": base[("zero", way)][0] / n_pred,
                        "kl_zero": base[("zero", way)][1] / n_pred,
                        "ce_mean_ablation": base[("mean", way)][0] / n_pred,
                        "kl_mean_ablation": base[("mean", way)][1] / n_pred} for way in ways}

    def score(base_ce: float, value: float) -> float:
        return (base_ce - value) / (base_ce - ce_clean) if base_ce != ce_clean else float("nan")

    def way_metrics(q: dict[str, Any], way: str) -> dict[str, float]:
        nw, cw = n_way[way], common_way[way]
        ce, kl = q["ce"] / n_pred, q["kl"] / n_pred
        count = q["count"].double()
        return {
            "l0": q["l0"] / nw, "dead_fraction": float((count == 0).double().mean()),
            "rare_fraction": float((count / nw < rare_rate).double().mean()),
            "explained_variance": (1.0 - q["sse"] / total_var[way] if total_var[way] > 0
                                   else float("nan")),
            "mse": q["sse"] / (nw * d), "ce_spliced": ce, "kl_spliced": kl,
            "ce_loss_score": score(cw["ce_zero"], ce),
            "ce_loss_score_mean_ablation": score(cw["ce_mean_ablation"], ce),
            "kl_score": ((cw["kl_zero"] - kl) / cw["kl_zero"] if cw["kl_zero"] > 0
                         else float("nan"))}

    results = {}
    for s in saes:
        p = per[s.name]
        ce_bad, kl_bad = p["ce_bad"] / n_pred, p["kl_bad"] / n_pred
        r = {"path": s.path, "arch": s.sae.arch, "d_sae": s.sae.d_sae,
             "normalisation": {"kind": s.normalisation, "constant": s.constant},
             **way_metrics(p[headline], headline), "rare_rate": float(rare_rate),
             "ce_unnormalised_splice": ce_bad, "kl_unnormalised_splice": kl_bad,
             "ce_loss_score_unnormalised_splice": score(common_way["all"]["ce_zero"], ce_bad)}
        if len(ways) > 1:
            for way in ways:
                r.update({k + WAY_SUFFIX[way]: v for k, v in way_metrics(p[way], way).items()})
        results[s.name] = r
        if X_exact is not None:
            ex = exact_code_report(s, X_exact, tol=exact_tol, geometry_tokens=geometry_tokens)
            results[s.name]["exact"] = ex
            geometry = (ex.pop("geometry") if ex is not None
                        else geometry_report(no_geometry_reason(s)))
        else:
            geometry = geometry_report("not computed: no exact codes (exact tokens 0)")
        results[s.name].update(geometry)
    common = {"ce_clean": ce_clean, **common_way[headline]}
    if len(ways) > 1:
        for way in ways:
            common.update({k + WAY_SUFFIX[way]: v for k, v in common_way[way].items()})
    _check_finite_metrics(lm, layer, hook, common, saes, results)
    return {
        "tokens": n, "tokens_measured": n_way[headline], "excluded_tokens": n_out,
        "outlier_threshold": outlier_threshold,
        "exclude_outliers": bool(outlier_threshold is not None and exclude_outliers),
        "scored_positions": n_pred, "windows": int(len(ids_t)),
        "ctx": int(ids_t.shape[1]), "layer": layer, "hook": hook, "d_in": d,
        **common,
        "saes": results,
        "cost": {"below_calls": len(belows), "above_calls": above_calls,
                 "seconds_below": t_below, "seconds": time.perf_counter() - t0},
    }
