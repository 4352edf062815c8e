r"""The activation cache: harvest a hook point's activations into shards and a manifest.

``harvest(HarvestConfig(...), out)`` (``aensae llm harvest``) writes into ``out``:

- ``shard-00000.safetensors``, ``shard-00001.safetensors``, ...: each shard holds the
  activations of ``shard_windows`` consecutive windows of the (already shuffled) window
  stream, special tokens dropped, rows in a random order (seeded by ``(seed, shard)``):

  - ``activations``: (n, d_in) in the model's dtype;
  - ``tokens``: (n,) int32, the token id at each row;
  - ``positions``: (n,) int32, the row's position in its window;

  so activations are shuffled across windows twice as they are written: by the window
  stream's shuffle buffer (:class:`~aensae.llm.text.WindowStream`) and within a shard.
  A shard is at most ``shard_windows * ctx`` rows; the last one is cut so that the
  cache holds exactly ``tokens`` rows (fewer only when the text runs out, which the
  manifest records as ``text_exhausted``).
- ``manifest.json``: the model (name, kind, weight hash or revision, family), hook,
  layer, ``d_in``, dtype, the text source and the SHA-256 of the documents read, split,
  ``ctx``, token counts, one record per completed shard (tokens, windows, file SHA-256,
  :math:`\sum \lVert x \rVert^2`, ...), and the normalisation statistics over the whole
  cache: ``scalar_constant`` :math:`c = \sqrt{d_{in} / \mathbb{E}\lVert x\rVert^2}`
  (:mod:`aensae.llm.normalise`), the mean and largest token norm.

Special tokens are *dropped* from the cache (``keep_special`` keeps them); the model
still sees them as context.

Resume: shards are written atomically (a temporary file, fsync, rename), and the
manifest, rewritten atomically after each shard, lists the completed ones. A rerun with
the same configuration replays the window stream past the completed shards (tokenising
only; it checks that the text read so far has the same hash) and continues; the result
is byte-for-byte that of an uninterrupted harvest. Memory: the shard buffer, one model
batch and one chunk of rows being written (shards are written row block by row block in
their permuted order, never copied whole), whatever ``tokens`` is; it is estimated
(:func:`harvest_memory`) and refused above a limit before anything is loaded.

Nothing is lost: every input that needs no model is checked before the folder is
touched, one process at a time writes a cache (its lock, ``.aensae.lock``), and
``overwrite`` writes the new cache beside the old one (``.aensae-overwrite``), swapping
it in only when it is complete. Readers check the manifest's structure
(:func:`read_manifest`) and the shards' SHA-256 (:class:`aensae.llm.store.ActivationStore`);
a damaged cache is rebuilt by the command :func:`harvest_command` names.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aensae import __version__
from aensae._dtypes import MODEL_DTYPES
from aensae._io import (
    STAGE_PREFIX,
    atomic_write,
    atomic_write_json,
    check_output_dir,
    folder_lock,
    remove_partial_files,
)
from aensae._validation import InputError, check_memory
from aensae.llm.models import (
    HOOKS,
    ConfigShape,
    LanguageModel,
    check_ctx,
    check_layer,
    config_shape,
    family_of,
    load_config,
    load_model,
)
from aensae.llm.models import resolve_model as _resolve_model
from aensae.llm.normalise import scalar_constant
from aensae.llm.text import SPLITS, WindowStream, check_not_empty, open_text

__all__ = ["FORMAT", "MANIFEST", "HarvestConfig", "harvest", "harvest_command",
           "harvest_memory", "is_shard", "owned_folder", "read_manifest", "shard_name"]

MANIFEST = "manifest.json"
FORMAT = "aensae-activations/1"
#: Where ``--overwrite`` stages the new cache inside ``--out`` until it is complete.
OVERWRITE_STAGE = ".aensae-overwrite"
_SHARD = re.compile(r"shard-\d{5,}\.safetensors")
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int32: "I32"}
#: Fields of HarvestConfig that must match for a cache to be resumed.
_IDENTITY = ("model", "revision", "layer", "hook", "text", "text_column", "split",
             "eval_fraction", "ctx", "dtype", "tokens", "batch_size", "shard_windows",
             "shuffle_windows", "seed", "keep_special", "prepend_bos")


def shard_name(i: int) -> str:
    """File name of shard ``i``."""
    return f"shard-{i:05d}.safetensors"


@dataclass
class HarvestConfig:
    """What to harvest; every field is validated on construction (:class:`InputError`
    naming the command-line option)."""

    model: str
    layer: int
    tokens: int
    hook: str = "resid_post"
    text: str = "python-docs"
    ctx: int = 128
    batch_size: int = 32
    dtype: str = "float32"
    device: str = "auto"
    split: str = "train"
    eval_fraction: float = 0.05
    text_column: str = "text"
    shard_windows: int = 256
    shuffle_windows: int = 1024
    seed: int = 0
    keep_special: bool = False
    prepend_bos: bool = True
    revision: str | None = None

    def __post_init__(self) -> None:
        def positive_int(name: str, value: Any, low: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= {low}; "
                                 f"got {value!r}")

        positive_int("tokens", self.tokens)
        positive_int("layer", self.layer, 0)
        positive_int("ctx", self.ctx, 2)
        positive_int("batch_size", self.batch_size)
        positive_int("shard_windows", self.shard_windows)
        positive_int("shuffle_windows", self.shuffle_windows)
        positive_int("seed", self.seed, 0)
        if self.hook not in HOOKS:
            raise InputError(f"--hook must be one of {', '.join(HOOKS)}; got {self.hook!r}")
        if self.dtype not in MODEL_DTYPES:
            raise InputError(f"--dtype must be one of {', '.join(MODEL_DTYPES)}; got "
                             f"{self.dtype!r}")
        if self.split not in SPLITS:
            raise InputError(f"--split must be one of {', '.join(SPLITS)}; got {self.split!r}")
        if not (isinstance(self.eval_fraction, (int, float)) and not isinstance(
                self.eval_fraction, bool) and 0.0 < self.eval_fraction < 1.0):
            raise InputError(f"--eval-fraction must lie in (0, 1); got {self.eval_fraction!r}")

    def identity(self) -> dict[str, Any]:
        """The fields a resumed cache must share."""
        return {k: getattr(self, k) for k in _IDENTITY}


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def is_shard(name: str) -> bool:
    """Whether ``name`` is the name of a shard file (:func:`shard_name`)."""
    return _SHARD.fullmatch(name) is not None


def harvest_command(identity: Any, out: str | Path) -> str:
    """The ``aensae llm harvest`` command that rebuilds a cache from its manifest's
    ``config`` (options at their defaults left out), with ``--overwrite``."""
    if not isinstance(identity, dict) or not {"model", "layer", "tokens"} <= set(identity):
        return (f"the aensae llm harvest command that wrote it, with --out {out} "
                "--overwrite")
    defaults = HarvestConfig.__dataclass_fields__
    parts = ["aensae llm harvest"]
    for key in _IDENTITY:
        if key not in identity:
            continue
        value = identity[key]
        field = defaults.get(key)
        required = key in ("model", "layer", "tokens")
        if not required and field is not None and value == field.default:
            continue
        if key == "keep_special":
            parts.append("--keep-special" if value else "")
        elif key == "prepend_bos":
            parts.append("--prepend-bos" if value else "--no-prepend-bos")
        elif value is not None:
            text = str(value)
            parts.append(f"{_option(key)} {text if text and ' ' not in text else repr(text)}")
    parts += [f"--out {out}", "--overwrite"]
    return " ".join(p for p in parts if p)


def read_manifest(folder: Path, where: str, remedy: str) -> dict[str, Any]:
    """``folder/manifest.json`` checked for what every reader needs: a JSON object with
    ``format``, ``config``, ``complete``, ``model``, ``hook``, ``layer``, ``d_in``,
    ``tokens`` and ``shards`` (a list of records with a shard ``file`` name, ``tokens``,
    ``windows`` and ``sha256``, adding up to ``tokens``). Anything else is an
    :class:`InputError` naming the file, what is wrong and ``remedy``."""
    path = folder / MANIFEST

    def damaged(what: str) -> InputError:
        return InputError(f"{where} {folder}: {MANIFEST} is damaged ({what}); {remedy}")

    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged(f"{type(err).__name__}: {' '.join(str(err).split())[:120]}") from None
    if not isinstance(man, dict):
        raise damaged(f"a JSON {type(man).__name__}, not an object")
    missing = [k for k in ("format", "config", "complete", "model", "hook", "layer", "d_in",
                           "tokens", "shards") if k not in man]
    if missing:
        raise damaged(f"no {', '.join(missing)}")
    if man["format"] != FORMAT:
        raise damaged(f"format {man['format']!r}, expected {FORMAT!r}")
    if not isinstance(man["config"], dict):
        raise damaged("config is not an object")
    if not isinstance(man["model"], dict):
        raise damaged("model is not an object")
    if not isinstance(man["complete"], bool):
        raise damaged(f"complete is {man['complete']!r}, not true or false")
    for key in ("d_in", "tokens"):
        v = man[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "d_in" else 0):
            raise damaged(f"{key} is {v!r}")
    shards = man["shards"]
    if not isinstance(shards, list):
        raise damaged(f"shards is a {type(shards).__name__}, not a list")
    for i, rec in enumerate(shards):
        ok = (isinstance(rec, dict) and isinstance(rec.get("file"), str)
              and rec["file"] == shard_name(i) and isinstance(rec.get("sha256"), str)
              and isinstance(rec.get("tokens"), int) and not isinstance(rec["tokens"], bool)
              and rec["tokens"] >= 1 and isinstance(rec.get("windows"), int))
        if not ok:
            raise damaged(f"shards[{i}] is not the record of {shard_name(i)}")
    if sum(r["tokens"] for r in shards) != man["tokens"]:
        raise damaged(f"its shards hold {sum(r['tokens'] for r in shards)} tokens, not the "
                      f"{man['tokens']} it records")
    return man


def _cache_entries(out: Path) -> list[Path]:
    """What a cache consists of in ``out``: its manifest and shard files."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name == MANIFEST or is_shard(p.name))


def _foreign(out: Path) -> list[str]:
    """Entries of ``out`` that are no part of a cache (hidden entries are aensae's own:
    the lock file, temporary files, the staging folders)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")
                  and p.name != MANIFEST and not is_shard(p.name))


def _inspect_out(out: Path, cfg: HarvestConfig, overwrite: bool
                 ) -> tuple[str, dict[str, Any] | None]:
    """What ``out`` holds, read only: ``("fresh", None)`` (start a cache there),
    ``("resume", manifest)`` (a cache of ``cfg`` to continue or return), or ``("replace",
    None)`` (``overwrite``: a cache to be replaced once the new one is complete). A cache
    of another configuration, a damaged manifest (both without ``overwrite``) or a folder
    holding files that are no cache are :class:`InputError`."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if (out / MANIFEST).is_file() and not overwrite:
        manifest = read_manifest(out, "--out", "pass --overwrite to replace the cache, or "
                                 "choose another --out")
        saved, now = manifest["config"], cfg.identity()
        for key in _IDENTITY:
            if saved.get(key) != now[key]:
                raise InputError(f"--out {out}: holds a cache with {key}={saved.get(key)!r}, "
                                 f"this harvest asks {_option(key)} {now[key]!r}; choose "
                                 "another --out or pass --overwrite")
        return "resume", manifest
    foreign = _foreign(out)
    if foreign and not (out / MANIFEST).is_file():
        raise InputError(f"--out {out}: the folder holds other files ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}) and no {MANIFEST}; choose "
                         "an empty or new folder")
    if overwrite and _cache_entries(out):
        return "replace", None
    return "fresh", None


@contextmanager
def owned_folder(where: str, folder: Path) -> Iterator[Path]:
    """Hold ``folder``'s lock (:func:`aensae._io.folder_lock`) for the block; a folder the
    block created is removed again when the block fails and leaves it empty."""
    created = not folder.exists()
    try:
        with folder_lock(where, folder):
            yield folder
    except BaseException:
        if created:
            try:
                folder.rmdir()  # only when empty: nothing of value is lost
            except OSError:
                pass
        raise


def _swap_in(out: Path, stage: Path) -> None:
    """Replace the cache in ``out`` by the complete one in ``stage``: the old manifest and
    shards are moved aside, the new shards and then the new manifest moved in, the old
    ones deleted last; a failure part-way moves everything back. The lock file and any
    other entry of ``out`` stay as they are."""
    aside = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out))
    old = [p.name for p in _cache_entries(out)]
    old.sort(key=lambda n: n != MANIFEST)  # the old manifest first: out stops being a cache
    new = sorted(p.name for p in stage.iterdir() if is_shard(p.name)) + [MANIFEST]
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in old:
            os.rename(out / name, aside / name)
            moved_old.append(name)
        for name in new:  # the manifest last: out is a cache again only when whole
            os.rename(stage / name, out / name)
            moved_new.append(name)
    except BaseException:
        for name in reversed(moved_new):
            os.rename(out / name, stage / name)
        for name in reversed(moved_old):
            os.rename(aside / name, out / name)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def _element_size(dtype: str) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]


def harvest_memory(cfg: HarvestConfig, shape: ConfigShape, *, weights: bool = True,
                   element_size: int | None = None) -> list[tuple[str, str, int]]:
    """An estimate of the memory a harvest holds at once, as ``(what, option, bytes)``
    parts (``option``: the one that sets that part's size):

    - the model's weights (:meth:`ConfigShape.weight_bytes`; ``weights=False`` when the
      model is loaded already);
    - the shard buffer: ``shard_windows * ctx`` rows of ``d_model`` activations plus the
      token ids and positions (int32);
    - one forward batch: ``batch_size * ctx`` positions of the block's hidden states
      (residual, attention and MLP inputs and outputs, about ``6 d + 2 intermediate``
      values) and the extracted rows; with ``eager`` attention also the scores and
      probabilities (``2 batch_size * heads * ctx^2`` values, the square of ``ctx``).
      The default ``sdpa`` kernels hold none of them: a forward of SmolLM2 at ``ctx``
      4096, 2 windows, grew the process by 0.13 GB where the scores alone would be 2.4 GB.
    """
    e = element_size or _element_size(cfg.dtype)
    d, rows = shape.d_model, cfg.shard_windows * cfg.ctx
    positions = cfg.batch_size * cfg.ctx
    parts = [("the shard buffer", "--shard-windows", rows * (d * e + 8)),
             ("one forward batch's hidden states", "--batch-size",
              positions * ((6 * d + 2 * shape.intermediate) * e + 8))]
    if shape.attention == "eager":
        parts.append(("one forward batch's attention scores", "--ctx",
                      2 * cfg.batch_size * shape.heads * cfg.ctx * cfg.ctx * e))
    if weights:
        parts.insert(0, ("the model's weights", "--model", shape.weight_bytes(e)))
    return parts


def _check_harvest_memory(cfg: HarvestConfig, shape: ConfigShape, weights: bool,
                          max_memory: float | None, element_size: int | None = None,
                          override: str = "--max-memory") -> None:
    parts = harvest_memory(cfg, shape, weights=weights, element_size=element_size)
    need = sum(b for _, _, b in parts)
    what, option, _ = max(parts, key=lambda p: p[2])
    value = {"--model": cfg.model, "--shard-windows": cfg.shard_windows,
             "--batch-size": cfg.batch_size, "--ctx": cfg.ctx}[option]
    check_memory(f"{option} {value}", need,
                 f"the harvest (mostly {what}, at --ctx {cfg.ctx}, --batch-size "
                 f"{cfg.batch_size}, --shard-windows {cfg.shard_windows})",
                 limit_gib=max_memory, override=override)


def _write_shard(path: Path, tensors: list[tuple[str, torch.Tensor]], perm: np.ndarray,
                 metadata: dict[str, str], chunk: int = 4096) -> str:
    """Write rows ``perm`` of each tensor as a safetensors file, atomically; return its
    SHA-256. Rows are gathered ``chunk`` at a time, so no permuted copy is held whole."""
    header: dict[str, Any] = {}
    offset = 0
    n = len(perm)
    for name, t in tensors:
        row = t[0].numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": [n, *t.shape[1:]],
                        "data_offsets": [offset, offset + n * row]}
        offset += n * row
    header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    blob += b" " * (-len(blob) % 8)
    sha = hashlib.sha256()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            head = struct.pack("<Q", len(blob)) + blob
            fh.write(head)
            sha.update(head)
            for _, t in tensors:
                for i in range(0, n, chunk):
                    idx = torch.from_numpy(perm[i:i + chunk])
                    data = t.index_select(0, idx).contiguous().view(torch.uint8).numpy()
                    fh.write(data.data)
                    sha.update(data.data)

    atomic_write(path, write)
    return sha.hexdigest()


def _normalisation_stats(shards: list[dict[str, Any]], d_in: int) -> dict[str, Any]:
    n = sum(s["tokens"] for s in shards)
    if n == 0:
        return {"default": "scalar", "tokens": 0}
    sum_sq = math.fsum(s["sum_sq_norm"] for s in shards)
    return {
        "default": "scalar",
        "scalar_constant": scalar_constant(sum_sq, n, d_in),
        "mean_squared_norm": sum_sq / n,
        "mean_norm": math.fsum(s["sum_norm"] for s in shards) / n,
        "max_norm": max(s["max_norm"] for s in shards),
        "tokens": n,
        "estimated_on": "every token of the cache",
        "formula": "c = sqrt(d_in / mean(||x||^2)); per_token: x * sqrt(d_in) / ||x||",
    }


class _TextChanged(InputError):
    """The text read while replaying a resumed cache is not the one it was harvested from."""


def harvest(cfg: HarvestConfig, out: str | Path, *, model: LanguageModel | None = None,
            progress: bool = True, overwrite: bool = False,
            max_memory: float | None = None,
            memory_option: str = "--max-memory") -> dict[str, Any]:
    """Harvest ``cfg.tokens`` activations of hook point ``(cfg.layer, cfg.hook)`` into ``out``.

    Parameters
    ----------
    cfg : HarvestConfig
    out : folder of the cache (created; resumed when it holds a cache of ``cfg``)
    model : a loaded :class:`LanguageModel` to use instead of loading ``cfg.model``
        (its source must be ``cfg.model``'s); ``cfg.dtype`` and ``cfg.device`` are then
        those of the model as given.
    progress : show a tqdm bar (tokens/s, ETA)
    overwrite : replace a cache found in ``out``. The new cache is written into
        ``out/.aensae-overwrite`` and swapped in only when complete, so a failure (bad
        input found late, Ctrl-C, a crash) leaves the old cache as it was; the disk
        holds both until then. A rerun resumes the staged cache.
    max_memory : refuse, before anything is loaded, a harvest whose estimated memory
        (:func:`harvest_memory`) exceeds this many GiB (``None``: the memory available
        on this machine); ``memory_option`` is how the error names the setting.

    Every input that needs no model is checked first (the configuration, ``out`` and
    what it holds, the text, the model's config: layer, window length, memory), then
    ``out``'s lock is taken (:func:`aensae._io.folder_lock`: a second writer is refused),
    and only then is the model loaded and anything written.

    Returns
    -------
    the manifest (also written to ``out/manifest.json``)
    """
    if not isinstance(cfg, HarvestConfig):
        raise TypeError(f"cfg must be a HarvestConfig, got {type(cfg).__name__}")
    out = check_output_dir("--out", out)
    state, existing = _inspect_out(out, cfg, overwrite)
    if state == "resume" and existing is not None and existing["complete"]:
        return existing
    source = open_text(cfg.text, text_column=cfg.text_column)
    if model is None:
        msource = _resolve_model(cfg.model, cfg.revision)
        config = load_config(msource)
        family_of(config.model_type, cfg.model)
        shape = config_shape(config)
        check_layer("--layer", cfg.layer, shape, cfg.model)
        element_size = None
    else:
        model.check_hook(cfg.layer, cfg.hook)
        shape = model.shape
        element_size = torch.empty((), dtype=model.dtype).element_size()
    check_ctx("--ctx", cfg.ctx, shape, cfg.model)
    _check_harvest_memory(cfg, shape, model is None, max_memory, element_size,
                          memory_option)
    check_not_empty(source, cfg.split, cfg.eval_fraction)
    with owned_folder("--out", out):
        state, existing = _inspect_out(out, cfg, overwrite)  # again, now that it is ours
        if state == "resume" and existing is not None and existing["complete"]:
            return existing
        if model is None:
            model = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device,
                               revision=cfg.revision, quiet=not progress)
        model.check_hook(cfg.layer, cfg.hook)
        remove_partial_files(out)  # what a killed harvest (or swap) left
        if state != "replace":
            if existing is not None and _fingerprint(existing) != model.fingerprint:
                raise InputError(f"--out {out}: holds a cache of {cfg.model} with weights "
                                 f"{_fingerprint(existing)}, the model now has "
                                 f"{model.fingerprint}; choose another --out or pass "
                                 "--overwrite")
            shutil.rmtree(out / OVERWRITE_STAGE, ignore_errors=True)  # an abandoned one
            return _harvest_into(cfg, out, existing, source, model, progress)
        stage = out / OVERWRITE_STAGE
        staged = _staged_cache(stage, cfg, model)
        try:
            final = _harvest_into(cfg, stage, staged, source, model, progress)
        except _TextChanged:  # the staged part came from other text: start it afresh
            shutil.rmtree(stage, ignore_errors=True)
            final = _harvest_into(cfg, stage, None, source, model, progress)
        _swap_in(out, stage)
        return final


def _fingerprint(manifest: dict[str, Any]) -> Any:
    rec = manifest.get("model")
    return rec.get("fingerprint") if isinstance(rec, dict) else None


def _staged_cache(stage: Path, cfg: HarvestConfig, model: LanguageModel
                  ) -> dict[str, Any] | None:
    """The manifest of a staged (``--overwrite``) cache of ``cfg`` and ``model`` to resume,
    else ``None`` after removing whatever the staging folder held (it is aensae's own)."""
    if (stage / MANIFEST).is_file():
        try:
            man = read_manifest(stage, "--out", "")
        except InputError:
            man = None
        if (man is not None and man["config"] == cfg.identity()
                and _fingerprint(man) == model.fingerprint):
            return man
    shutil.rmtree(stage, ignore_errors=True)
    return None


def _harvest_into(cfg: HarvestConfig, out: Path, existing: dict[str, Any] | None,
                  source: Any, model: LanguageModel, progress: bool) -> dict[str, Any]:
    """The harvest itself, into ``out`` (the cache folder or the staging folder of an
    overwrite), continuing ``existing`` (a manifest of ``cfg``) when given."""
    from tqdm.auto import tqdm

    if existing is not None and existing["complete"]:
        return existing
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out)
    stream = WindowStream(source, model.tokenizer, cfg.ctx, split=cfg.split,
                          eval_fraction=cfg.eval_fraction, buffer=cfg.shuffle_windows,
                          seed=cfg.seed, prepend_bos=cfg.prepend_bos)
    windows = iter(stream)
    shards: list[dict[str, Any]] = list(existing["shards"]) if existing else []
    skip = sum(s["windows"] for s in shards)
    if skip:
        done = sum(1 for _ in itertools.islice(windows, skip))
        if done < skip or stream.text_sha256() != shards[-1].get("text_sha256"):
            raise _TextChanged(f"--text {cfg.text}: the text differs from the one this cache "
                               f"in {out} was harvested from; choose another --out or pass "
                               "--overwrite")
    d_in, W, ctx = model.d_model, cfg.shard_windows, cfg.ctx
    act_dtype = model.dtype
    rows_max = W * ctx
    acts = torch.empty((rows_max, d_in), dtype=act_dtype)
    toks = torch.empty(rows_max, dtype=torch.int32)
    poss = torch.empty(rows_max, dtype=torch.int32)
    positions = np.tile(np.arange(ctx, dtype=np.int32), (cfg.batch_size, 1))
    total = sum(s["tokens"] for s in shards)
    exhausted = bool(existing and existing.get("text_exhausted"))
    started = (existing or {}).get("started") or time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime())
    seconds = float(existing.get("seconds", 0.0)) if existing else 0.0
    t0 = time.perf_counter()

    def manifest(complete: bool) -> dict[str, Any]:
        import transformers

        return {
            "format": FORMAT,
            "config": cfg.identity(),
            "model": model.describe(),
            "hook": cfg.hook,
            "layer": cfg.layer,
            "d_in": d_in,
            "dtype": str(act_dtype).removeprefix("torch."),
            "device": str(model.device),
            "text": {**source.describe(), "sha256": stream.text_sha256(),
                     "documents_read": stream.documents,
                     "skipped_non_utf8": source.skipped_non_utf8},
            "split": cfg.split,
            "eval_fraction": cfg.eval_fraction,
            "ctx": ctx,
            "tokenizer": stream.info.describe(),
            "special_tokens": "kept" if cfg.keep_special else "dropped",
            "tokens_requested": cfg.tokens,
            "tokens": total,
            "windows": sum(s["windows"] for s in shards),
            "shard_windows": W,
            "tokens_per_shard": [s["tokens"] for s in shards],
            "shards": shards,
            "normalisation": _normalisation_stats(shards, d_in),
            "complete": complete,
            "text_exhausted": exhausted,
            "seed": cfg.seed,
            "started": started,
            "seconds": seconds + time.perf_counter() - t0,
            "versions": {"aensae": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__,
                         "python": sys.version.split()[0]},
        }

    bar = tqdm(total=cfg.tokens, initial=total, unit="tok", unit_scale=True,
               disable=not progress, dynamic_ncols=True,
               desc=f"harvest {cfg.hook} L{cfg.layer}")
    try:
        while total < cfg.tokens and not exhausted:
            fill = n_windows = 0
            sum_sq = sum_norm = 0.0
            max_norm = 0.0
            while n_windows < W and total + fill < cfg.tokens:
                need = -(-(cfg.tokens - total - fill) // ctx)  # windows, if all tokens kept
                batch = list(itertools.islice(windows, min(cfg.batch_size, W - n_windows,
                                                           need)))
                if not batch:
                    exhausted = True
                    break
                ids = np.stack(batch)
                a = model.activations(torch.from_numpy(ids).long(), cfg.layer, cfg.hook)
                keep = stream.info.keep_mask(ids, cfg.keep_special).reshape(-1)
                idx = torch.from_numpy(np.flatnonzero(keep))
                take = min(len(idx), cfg.tokens - total - fill)
                idx = idx[:take]
                rows = a.reshape(-1, d_in).index_select(0, idx.to(a.device)).cpu()
                acts[fill:fill + take] = rows
                toks[fill:fill + take] = torch.from_numpy(ids.reshape(-1))[idx]
                poss[fill:fill + take] = torch.from_numpy(positions[:len(batch)].reshape(-1))[idx]
                norms = torch.linalg.vector_norm(rows.double(), dim=1)
                sum_sq += float((norms * norms).sum())
                sum_norm += float(norms.sum())
                max_norm = max(max_norm, float(norms.max()) if take else 0.0)
                fill += take
                n_windows += len(batch)
                bar.update(take)
            if fill == 0:
                break
            i = len(shards)
            perm = np.random.default_rng([cfg.seed, i]).permutation(fill)
            name = shard_name(i)
            sha = _write_shard(out / name, [("activations", acts[:fill]),
                                            ("tokens", toks[:fill]), ("positions", poss[:fill])],
                               perm, {"format": FORMAT, "shard": str(i)})
            shards.append({"file": name, "tokens": fill, "windows": n_windows, "sha256": sha,
                           "sum_sq_norm": sum_sq, "sum_norm": sum_norm, "max_norm": max_norm,
                           "text_sha256": stream.text_sha256()})
            total += fill
            bar.set_postfix(shards=len(shards))
            atomic_write_json(out / MANIFEST, manifest(complete=False))
    finally:
        bar.close()
    if total == 0:
        raise InputError(f"--text {cfg.text}: the {cfg.split} split holds fewer than one "
                         f"window of --ctx {ctx} tokens")
    if exhausted and total < cfg.tokens:
        print(f"aensae llm harvest: warning: --text {cfg.text} ran out after {total} tokens "
              f"of the {cfg.tokens} asked (recorded as text_exhausted in the manifest)",
              file=sys.stderr)
    final = manifest(complete=True)
    atomic_write_json(out / MANIFEST, final)
    return final

