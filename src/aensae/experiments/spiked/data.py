r"""Data and joint training shared by calibration and the grid's tasks.

For a data point ``(rho, seed)`` the true dictionary is ``spiked_dictionary(n, m, rho,
seed=seed)``; training batch ``t`` is batch ``t`` of ``SyntheticStream(D, k, batch_size,
seed=seed)``; the held-out set is batch :data:`EVAL_INDEX` of a stream of ``eval.samples``
signals with the same seed (never a training batch: training uses indices below
``steps``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aensae._dtypes import torch_dtype
from aensae.experiments.spiked.config import GridConfig, canonical_hash

__all__ = ["CACHE_DIR", "EVAL_INDEX", "DataPoint", "cache_has", "cache_load", "cache_save",
           "data_point", "run_cache_key",
           "model_key", "train_models", "train_resumable"]

#: Folder (inside a results folder) of models trained to full length during calibration.
CACHE_DIR = "models"

#: Batch index of the held-out evaluation set (as in ``aensae train``).
EVAL_INDEX = 2**40


def memory_terms(*, n: int, m: int, d_sae: int, batch_size: int, eval_samples: int,
                 models: int, dtype_bytes: int, exact: bool = True) -> dict[str, float]:
    """Bytes one task holds at once, by what sets them (the keys name the sizes).

    - the true dictionary ``D`` (n x m): float64 and a float32 copy, ``12 n m``;
    - the held-out set ``X`` (samples x n) and its dense true codes (samples x m), float64;
    - with ``exact``, the exact solver's Gram matrix, float64: ``8 max(m, d_sae)^2``;
    - ``models`` SAEs of ``d_sae`` latents trained together: encoder and decoder, their
      gradients and two Adam moments (6 n d_sae values each), and a batch's activations
      (about 6 batch d_sae values each).

    An estimate of the largest allocations, not an accounting of every buffer.
    """
    terms = {
        "data.n, data.m": 12.0 * n * m,
        "eval.samples": 8.0 * eval_samples * (n + m),
        "data.d_sae (models trained together)":
            float(models) * dtype_bytes * 6.0 * d_sae * (n + batch_size),
    }
    if exact:
        terms["data.m, data.d_sae (exact Gram matrix)"] = 8.0 * max(m, d_sae) ** 2
    return terms


@dataclass
class DataPoint:
    """Dictionary, training stream and held-out set of one ``(rho, seed)``."""

    rho: float
    seed: int
    dictionary: Any
    stream: Any
    X_eval: np.ndarray
    H_eval: np.ndarray


def data_point(grid: GridConfig, rho: float, seed: int) -> DataPoint:
    """Build the :class:`DataPoint` of ``(rho, seed)`` for ``grid``."""
    from aensae.synthetic import SyntheticStream, spiked_dictionary

    d = grid.data
    dic = spiked_dictionary(d["n"], d["m"], rho, seed=seed)
    common = {"lo": d["lo"], "hi": d["hi"], "nonneg": d["nonneg"], "noise_std": d["noise_std"],
              "seed": seed}
    stream = SyntheticStream(dic.D, d["k"], grid.train["batch_size"], **common)
    X, H = SyntheticStream(dic.D, d["k"], grid.eval["samples"], **common).batch(EVAL_INDEX)
    return DataPoint(rho, seed, dic, stream, X, H)


def train_models(
    grid: GridConfig,
    models: Mapping[str, Any],
    point: DataPoint,
    steps: int,
    checkpoint_dir: Path | None,
    *,
    progress: bool,
) -> dict[str, Any]:
    """Train ``models`` together on the stream of ``point`` for ``steps`` steps.

    With ``checkpoint_dir`` the trainer checkpoints every ``train.checkpoint_every`` steps
    and resumes from a checkpoint found there; callers key the folder by the set of
    models, so a checkpoint always belongs to the same set.
    """

    from aensae.saes import TrainConfig, train

    cfg = TrainConfig(
        steps=steps, lr=grid.train["lr"], dead_window=grid.train["dead_window"],
        dead_last=grid.train["dead_last"],
        checkpoint_every=(grid.train["checkpoint_every"] if checkpoint_dir is not None else 0),
        device=grid.experiment["device"], dtype=grid.experiment["dtype"], seed=point.seed,
        stack=grid.train["stack"], graph=grid.train["graph"], progress=progress)
    dtype = torch_dtype(grid.experiment["dtype"])
    stream = point.stream

    def data(start: int):
        return stream.torch_signal_batches(steps - start, start=start, dtype=dtype)

    return train(dict(models), data, cfg, checkpoint_dir=checkpoint_dir)


def train_resumable(grid: GridConfig, models: Mapping[str, Any], point: DataPoint,
                    steps: int, folder: Path | None, what: str, *, progress: bool
                    ) -> tuple[dict[str, Any], float]:
    """:func:`train_models` checkpointing into ``folder`` (none when ``None``), resumed
    from a checkpoint found there (``what`` names the training in the log line). Returns
    the results and the wall seconds. The caller removes ``folder`` once it has saved
    the models: a kill before that resumes from the last checkpoint."""
    import time

    from aensae._io import remove_partial_files
    from aensae.experiments.console import log
    from aensae.saes.training.trainer import CHECKPOINT_FILE

    if folder is not None:
        remove_partial_files(folder)  # a checkpoint write that a kill cut short
        if (folder / CHECKPOINT_FILE).is_file():
            log(f"{what} {folder.name}: resuming from its checkpoint")
    t0 = time.perf_counter()
    results = train_models(grid, models, point, steps, folder, progress=progress)
    return results, time.perf_counter() - t0


# ----------------------------------------------------------------------------- model cache
def model_key(grid: GridConfig, arch: str, hyper: dict[str, Any], rho: float,
              seed: int) -> str:
    """Hash of everything that determines a trained model of ``grid``'s main length.

    Training is deterministic and models trained together equal models trained apart, so
    two trainings with the same key give the same model, bit for bit (the stacked path
    is equal only to rounding: with ``train.stack`` on nothing is cached).
    """
    return canonical_hash({"arch": arch, "hyper": hyper, "rho": rho, "seed": seed,
                           "data": grid.data_record(), "train": grid.train_record(),
                           "d_sae": grid.d_sae, "dtype": grid.experiment["dtype"],
                           "device": grid.experiment["device"]}, 16)


def run_cache_key(grid: GridConfig, spec: Any) -> str | None:
    """The model-cache key of a planned run (:func:`model_key` of its architecture,
    hyperparameters, rho and seed); ``None`` with ``train.stack`` on, where nothing is
    cached."""
    if grid.train["stack"]:
        return None
    return model_key(grid, spec.arch, spec.hyper, spec.rho, spec.seed)


def cache_has(out: Path, key: str) -> bool:
    """Whether a complete model is kept under ``key`` (its ``result.json``, written last)."""
    return (Path(out) / CACHE_DIR / key / "result.json").is_file()


def cache_save(out: Path, key: str, model: Any, result: dict[str, Any]) -> None:
    """Keep a model trained to the main length (and its training record) under ``key``.

    The key's folder is first cleared of what a killed writer left there (a cancelled Ray
    task, a SIGKILL mid-``save``): only the task that trains ``key`` writes into it.
    """
    from aensae._io import atomic_write_json, remove_partial_files
    from aensae.saes import save

    folder = Path(out) / CACHE_DIR / key
    remove_partial_files(folder)
    save(model, folder)
    atomic_write_json(folder / "result.json", result)  # last: the "complete" marker


def cache_load(out: Path, key: str) -> tuple[Any, dict[str, Any]] | None:
    """``(model, training record)`` saved under ``key``, or ``None``."""
    from aensae._io import read_json_record
    from aensae.saes import load

    if not cache_has(out, key):
        return None
    folder = Path(out) / CACHE_DIR / key
    remedy = f"delete {folder} (a cached model, trained again when needed)"
    return load(folder), read_json_record(folder / "result.json", remedy=remedy)
