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
their permuted order, never copied whole), whatever ``tokens`` is.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aensae import __version__
from aensae._dtypes import MODEL_DTYPES
from aensae._io import atomic_write, atomic_write_json, remove_partial_files
from aensae._validation import InputError
from aensae.llm.models import HOOKS, LanguageModel, family_of, load_config, load_model
from aensae.llm.models import resolve_model as _resolve_model
from aensae.llm.normalise import scalar_constant
from aensae.llm.text import SPLITS, WindowStream, check_not_empty, open_text

__all__ = ["FORMAT", "MANIFEST", "HarvestConfig", "harvest", "shard_name"]

MANIFEST = "manifest.json"
FORMAT = "aensae-activations/1"
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


def _prepare_out(out: Path, cfg: HarvestConfig, overwrite: bool) -> dict[str, Any] | None:
    """Check ``out``; return the manifest of a cache to resume (``None``: start afresh)."""
    man_path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if overwrite and out.is_dir():
        for p in list(out.glob("shard-*.safetensors")) + [man_path]:
            p.unlink(missing_ok=True)
    if man_path.is_file():
        try:
            manifest = json.loads(man_path.read_text())
            saved = manifest["config"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"--out {out}: {MANIFEST} is not an aensae activation manifest; "
                             "choose another --out") from None
        now = cfg.identity()
        for key in _IDENTITY:
            if saved.get(key) != now[key]:
                raise InputError(f"--out {out}: holds a cache with {key}={saved.get(key)!r}, "
                                 f"this harvest asks {_option(key)} {now[key]!r}; choose "
                                 "another --out or pass --overwrite")
        return manifest
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")
                            and not p.name.startswith("shard-")):
        raise InputError(f"--out {out}: the folder holds other files and no {MANIFEST}; "
                         "choose an empty or new folder")
    return None


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


def harvest(cfg: HarvestConfig, out: str | Path, *, model: LanguageModel | None = None,
            progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Harvest ``cfg.tokens`` activations of hook point ``(cfg.layer, cfg.hook)`` into ``out``.

    Parameters
    ----------
    cfg : HarvestConfig
    out : folder of the cache (created; resumed when it holds a cache of ``cfg``)
    model : a loaded :class:`LanguageModel` to use instead of loading ``cfg.model``
        (its source must be ``cfg.model``'s); ``cfg.dtype`` and ``cfg.device`` are then
        those of the model as given.
    progress : show a tqdm bar (tokens/s, ETA)
    overwrite : delete a cache found in ``out`` and start afresh

    Returns
    -------
    the manifest (also written to ``out/manifest.json``)
    """
    from tqdm.auto import tqdm

    if not isinstance(cfg, HarvestConfig):
        raise TypeError(f"cfg must be a HarvestConfig, got {type(cfg).__name__}")
    out = Path(out)
    existing = _prepare_out(out, cfg, overwrite)
    if existing is not None and existing.get("complete"):
        return existing
    source = open_text(cfg.text, text_column=cfg.text_column)
    if model is None:
        msource = _resolve_model(cfg.model, cfg.revision)
        config = load_config(msource)
        family_of(config.model_type, cfg.model)
        n_layers = int(config.num_hidden_layers)
        if cfg.layer >= n_layers:
            raise InputError(f"--layer must lie in [0, {n_layers - 1}] for {cfg.model} "
                             f"({n_layers} blocks); got {cfg.layer}")
    check_not_empty(source, cfg.split, cfg.eval_fraction)
    if model is None:
        model = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device,
                           revision=cfg.revision)
    model.check_hook(cfg.layer, cfg.hook)
    if existing is not None and existing["model"]["fingerprint"] != model.fingerprint:
        raise InputError(f"--out {out}: holds a cache of {cfg.model} with weights "
                         f"{existing['model']['fingerprint']}, the model now has "
                         f"{model.fingerprint}; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out)  # what a killed harvest left

    stream = WindowStream(source, model.tokenizer, cfg.ctx, split=cfg.split,
                          eval_fraction=cfg.eval_fraction, buffer=cfg.shuffle_windows,
                          seed=cfg.seed, prepend_bos=cfg.prepend_bos)
    windows = iter(stream)
    shards: list[dict[str, Any]] = list(existing["shards"]) if existing else []
    skip = sum(s["windows"] for s in shards)
    if skip:
        done = sum(1 for _ in itertools.islice(windows, skip))
        if done < skip or stream.text_sha256() != shards[-1]["text_sha256"]:
            raise InputError(f"--text {cfg.text}: the text differs from the one this cache "
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
    started = existing["started"] if existing else time.strftime("%Y-%m-%dT%H:%M:%SZ",
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

