r"""Reading an activation cache: :class:`ActivationStore`, shuffled batches for the trainer.

``ActivationStore(CACHE).batches(batch_size, seed, start)`` is an endless iterator of
(batch_size, d_in) tensors: the cache read epoch after epoch, each epoch in a fresh
shuffled order. It is a pure function of ``(seed, start)``: batch ``start + i`` of
``batches(B, seed, start)`` is batch ``start + i`` of ``batches(B, seed, 0)``, and
starting at ``start`` costs one buffer load, never a replay. ``batch_source(B, seed)``
is the ``start -> iterator`` callable that :func:`aensae.saes.training.trainer.train` takes to
resume exactly::

    store = ActivationStore("cache")
    train(models, store.batch_source(4096, seed=0), TrainConfig(steps=...))

Shuffle buffer. Epoch ``e`` visits the shards in the order of a permutation drawn from
``(seed, e)``, ``buffer_shards`` shards at a time: those shards' rows are loaded
together (the buffer, about ``buffer_tokens`` rows) and read in the order of a
permutation drawn from ``(seed, e, group)``. Rows were already shuffled across windows
when the cache was written, so a buffer of a few shards mixes the whole text. Memory:
one buffer plus one batch.

Normalisation (``normalisation=``, default ``"scalar"``, see :mod:`aensae.llm.normalise`)
is applied per batch with the cache's own constant (or ``constant=``); ``"none"`` gives
the raw activations.

Outlier tokens (``exclude_above=THRESHOLD``): rows whose norm (float64) exceeds the
threshold are dropped from every buffer before it is shuffled, so an epoch is every kept
row once and the batches are a pure function of ``(seed, start)`` as before, over the
kept rows. :meth:`ActivationStore.outliers` gives the threshold of a multiple of the
cache's median token norm and the scalar constant of the kept rows; the norms are read
once per store (:meth:`ActivationStore.token_norms`).

Data-parallel ranks (:mod:`aensae.saes.training.distributed`) read ``rows=(lo, hi)``: rows
``lo:hi`` of every batch, the same numbers, gathered from the buffer alone (each rank
still loads the buffer's shards).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aensae._dtypes import SAE_DTYPES, torch_dtype
from aensae._validation import InputError
from aensae.llm.cache import MANIFEST, harvest_command, read_manifest
from aensae.llm.normalise import (
    NORMALISATIONS,
    check_constant,
    normalise,
    outlier_threshold,
    scalar_constant,
    token_norms,
)

__all__ = ["ActivationStore"]


class ActivationStore:
    """An activation cache written by :func:`aensae.llm.cache.harvest`.

    Parameters
    ----------
    path : the cache folder
    allow_partial : accept a cache whose harvest has not finished (its completed shards)
    verify : check every shard file against the SHA-256 its manifest records (:meth:`verify`)
        now; a changed, truncated or swapped shard is an error naming it and the command
        that rebuilds the cache. The default: reading a cache for training or evaluation
        is always checked, at the cost of reading every byte once more. Measured on a
        250,000-token SmolLM2 cache (576 wide, float32, 578 MB in 8 shards, 2-core VM):
        0.7-0.9 s with the shards in the page cache (650-800 MB/s, 0.5 s of CPU;
        SHA-256 alone runs at ~930 MB/s there), 2.1 s read from disk (280 MB/s), against
        70-670 s for one training pass of ``llm-quick`` on it.
    where : how errors name the cache (the option ``--cache``, or a grid's folder)

    Attributes
    ----------
    manifest : dict, the cache's ``manifest.json``
    d_in, n_tokens : int
    """

    def __init__(self, path: str | Path, *, allow_partial: bool = False, verify: bool = True,
                 where: str = "--cache") -> None:
        self.path = Path(path)
        self.where = where
        if not (self.path / MANIFEST).is_file():
            raise InputError(f"{where} {self.path}: no {MANIFEST}; not an activation cache")
        self.manifest: dict[str, Any] = read_manifest(
            self.path, where, f"rebuild the cache: {self.rebuild_command(None)}")
        self.rebuild = self.rebuild_command(self.manifest.get("config"))
        man = self.manifest
        if not man["complete"] and not allow_partial:
            raise InputError(f"{where} {self.path}: the harvest has not finished "
                             f"({man['tokens']} of {man.get('tokens_requested', '?')} tokens);"
                             " rerun it to complete the cache")
        self.shards: list[dict[str, Any]] = man["shards"]
        if not self.shards:
            raise InputError(f"{where} {self.path}: holds no completed shard")
        self.sizes = np.array([s["tokens"] for s in self.shards], dtype=np.int64)
        self.n_tokens = int(self.sizes.sum())
        self.d_in = int(man["d_in"])
        norm = man.get("normalisation")
        if not isinstance(norm, dict) or "scalar_constant" not in norm:
            raise InputError(f"{where} {self.path}: {MANIFEST} is damaged (no "
                             f"normalisation.scalar_constant); rebuild the cache: "
                             f"{self.rebuild}")
        check_constant(f"{where} {self.path}: {MANIFEST} normalisation.scalar_constant",
                       norm["scalar_constant"])
        for s in self.shards:
            if not (self.path / s["file"]).is_file():
                raise InputError(f"{where} {self.path}: {s['file']} is missing (the manifest "
                                 f"lists it); rebuild the cache: {self.rebuild}")
        self._norms: list[torch.Tensor] | None = None
        if verify:
            self.verify()

    def rebuild_command(self, identity: Any) -> str:
        """The harvest command that rebuilds this cache (``--overwrite``)."""
        return harvest_command(identity, self.path)

    def __repr__(self) -> str:
        m = self.manifest
        model = m.get("model") if isinstance(m.get("model"), dict) else {}
        return (f"ActivationStore({str(self.path)!r}: {model.get('name')} {m.get('hook')} "
                f"L{m.get('layer')}, {self.n_tokens} tokens x {self.d_in})")

    @property
    def scalar_constant(self) -> float:
        """The scalar normalisation constant ``c`` of this cache."""
        return float(self.manifest["normalisation"]["scalar_constant"])

    def shard(self, i: int) -> dict[str, torch.Tensor]:
        """Shard ``i``: ``activations`` (n, d_in), ``tokens`` (n,), ``positions`` (n,).

        A file that safetensors cannot read (truncated, a garbage header) or whose tensors
        do not match the manifest is an :class:`InputError` naming it."""
        from safetensors.torch import load_file

        rec = self.shards[i]
        path = self.path / rec["file"]
        try:
            tensors = load_file(path)
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: a damaged file
            raise InputError(f"{self.where} {self.path}: {rec['file']} is damaged "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:120]}); "
                             f"rebuild the cache: {self.rebuild}") from None
        acts = tensors.get("activations")
        n = rec["tokens"]
        problem = None
        if acts is None or not acts.is_floating_point():
            problem = "no floating-point activations"
        elif tuple(acts.shape) != (n, self.d_in):
            problem = (f"activations of shape {tuple(acts.shape)}, the manifest records "
                       f"{(n, self.d_in)}")
        elif any(tuple(tensors[k].shape) != (n,) if k in tensors else True
                 for k in ("tokens", "positions")):
            problem = f"no tokens and positions of shape ({n},)"
        if problem is not None:
            raise InputError(f"{self.where} {self.path}: {rec['file']} holds {problem}; "
                             f"rebuild the cache: {self.rebuild}")
        return tensors

    def token_norms(self) -> list[torch.Tensor]:
        """Each shard's token norms (float64, in the shard's row order), read once per
        store."""
        if self._norms is None:
            self._norms = [token_norms(self.shard(i)["activations"])
                           for i in range(len(self.shards))]
        return self._norms

    def outliers(self, factor: float) -> dict[str, Any]:
        """The tokens of this cache whose norm exceeds ``factor`` times its median token
        norm (:func:`aensae.llm.normalise.outlier_threshold`), as a JSON-ready record:
        ``factor``, ``median_norm``, ``threshold``, ``cache_tokens``, ``excluded_tokens``,
        ``kept_tokens`` and ``scalar_constant``, the scalar normalisation constant
        estimated on the kept tokens alone."""
        norms = torch.cat(self.token_norms())
        median, threshold = outlier_threshold(norms, factor)
        kept = norms <= threshold
        n_kept = int(kept.sum())
        constant = (scalar_constant(float(norms[kept].pow(2).sum()), n_kept, self.d_in)
                    if n_kept else None)
        return {"factor": float(factor), "median_norm": median, "threshold": threshold,
                "cache_tokens": self.n_tokens, "excluded_tokens": self.n_tokens - n_kept,
                "kept_tokens": n_kept, "scalar_constant": constant}

    def verify(self) -> None:
        """Check every shard file against the SHA-256 the manifest records for it."""
        for s in self.shards:
            h = hashlib.sha256()
            try:
                with open(self.path / s["file"], "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        h.update(chunk)
            except OSError as err:
                raise InputError(f"{self.where} {self.path}: {s['file']} cannot be read "
                                 f"({err.strerror or err}); rebuild the cache: "
                                 f"{self.rebuild}") from None
            if h.hexdigest() != s["sha256"]:
                raise InputError(f"{self.where} {self.path}: {s['file']} does not match the "
                                 f"SHA-256 in {MANIFEST} (the file changed or is damaged); "
                                 f"rebuild the cache: {self.rebuild}")

    # ------------------------------------------------------------------ batches
    def _groups(self, seed: int, epoch: int, buffer_shards: int) -> list[np.ndarray]:
        order = np.random.default_rng([seed, 0, epoch]).permutation(len(self.shards))
        return [order[i:i + buffer_shards] for i in range(0, len(order), buffer_shards)]

    def _buffer_shards(self, buffer_tokens: int) -> int:
        return max(1, int(buffer_tokens // max(1, int(self.sizes.max()))))

    def batches(self, batch_size: int, seed: int = 0, start: int = 0, *,
                normalisation: str = "scalar", dtype: str = "float32",
                buffer_tokens: int = 2**17, device: str | torch.device = "cpu",
                rows: tuple[int, int] | None = None, exclude_above: float | None = None,
                constant: float | None = None) -> Iterator[torch.Tensor]:
        """Endless shuffled batches (batch_size, d_in), from batch index ``start`` on.

        ``normalisation``: ``"scalar"`` (default), ``"per_token"`` or ``"none"``;
        ``dtype``: ``"float32"`` or ``"float64"``; ``buffer_tokens``: rows held in the
        shuffle buffer (rounded to whole shards, at least one); ``rows = (lo, hi)``:
        rows ``lo:hi`` of each batch alone, shape (hi - lo, d_in); ``exclude_above``:
        leave out every row of norm above it (the module docstring); ``constant``: the
        scalar constant to use instead of the manifest's (``"scalar"`` only).
        """
        for name, value, low in (("batch_size", batch_size, 1), ("seed", seed, 0),
                                 ("start", start, 0), ("buffer_tokens", buffer_tokens, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(f"{name} must be an integer >= {low}; got {value!r}")
        if normalisation not in NORMALISATIONS:
            raise InputError(f"normalisation must be one of {', '.join(NORMALISATIONS)}; "
                             f"got {normalisation!r}")
        if dtype not in SAE_DTYPES:
            raise InputError(f"dtype must be one of {', '.join(SAE_DTYPES)}; got {dtype!r}")
        for name, value in (("exclude_above", exclude_above), ("constant", constant)):
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise InputError(f"{name} must be a positive finite number or None; got "
                                 f"{value!r}")
        if batch_size > self.n_tokens:
            raise InputError(f"batch_size {batch_size} exceeds the {self.n_tokens} tokens of "
                             f"the cache {self.path}: a batch would hold some tokens twice")
        sizes = self.sizes
        if exclude_above is not None:
            sizes = np.array([int((n <= exclude_above).sum()) for n in self.token_norms()],
                             dtype=np.int64)
            if batch_size > int(sizes.sum()):
                raise InputError(f"batch_size {batch_size} exceeds the {int(sizes.sum())} "
                                 f"tokens of the cache {self.path} of norm <= "
                                 f"{exclude_above:g} (outliers left out): a batch would "
                                 "hold some tokens twice")
        lo, hi = (0, int(batch_size)) if rows is None else rows
        if not 0 <= lo < hi <= batch_size:
            raise InputError(f"rows must be (lo, hi) with 0 <= lo < hi <= batch_size "
                             f"{batch_size}; got {rows!r}")
        if normalisation == "scalar":
            constant = self.scalar_constant if constant is None else float(constant)
        return self._batches(int(batch_size), int(seed), int(start), normalisation,
                             torch_dtype(dtype), self._buffer_shards(buffer_tokens),
                             torch.device(device), int(lo), int(hi), sizes,
                             None if exclude_above is None else float(exclude_above),
                             constant if normalisation == "scalar" else None)

    def batch_source(self, batch_size: int, seed: int = 0, **kwargs: Any
                     ) -> Callable[[int], Iterator[torch.Tensor]]:
        """``start -> batches(batch_size, seed, start, **kwargs)``: the trainer's data."""
        self.batches(batch_size, seed, 0, **kwargs)  # validate now, not at the first step

        def source(start: int) -> Iterator[torch.Tensor]:
            return self.batches(batch_size, seed, start, **kwargs)

        return source

    def _batches(self, B: int, seed: int, start: int, normalisation: str,
                 dtype: torch.dtype, G: int, device: torch.device, lo: int, hi: int,
                 shard_sizes: np.ndarray, exclude_above: float | None,
                 constant: float | None) -> Iterator[torch.Tensor]:
        """Batches of ``B`` rows, of which rows ``lo:hi`` are gathered and yielded;
        ``shard_sizes``: the rows of each shard that are read (all, or those of norm <=
        ``exclude_above``)."""
        epoch, offset = divmod(start * B, int(shard_sizes.sum()))
        groups = self._groups(seed, epoch, G)
        sizes = np.array([shard_sizes[g].sum() for g in groups])
        ends = np.cumsum(sizes)
        gi = int(np.searchsorted(ends, offset, side="right"))
        offset -= int(ends[gi] - sizes[gi])
        pieces: list[torch.Tensor] = []
        have = 0
        while True:
            X = torch.cat([self.shard(int(i))["activations"] for i in groups[gi]])
            if exclude_above is not None:
                norms = self.token_norms()
                X = X[torch.cat([norms[int(i)] <= exclude_above for i in groups[gi]])]
            perm = torch.from_numpy(
                np.random.default_rng([seed, 1, epoch, gi]).permutation(len(X)))
            i = offset
            while i < len(X):
                take = min(B - have, len(X) - i)
                # batch rows have .. have + take come from perm[i : i + take]; keep lo:hi
                a, b = max(have, lo), min(have + take, hi)
                if a < b:
                    pieces.append(X.index_select(0, perm[i + a - have:i + b - have]))
                have += take
                i += take
                if have == B:
                    x = (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).to(
                        device=device, dtype=dtype)
                    pieces, have = [], 0
                    yield normalise(x, normalisation, constant)[0]
            del X
            offset = 0
            gi += 1
            if gi == len(groups):
                epoch, gi = epoch + 1, 0
                groups = self._groups(seed, epoch, G)
