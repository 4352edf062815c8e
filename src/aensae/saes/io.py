"""Save and load SAEs: ``sae.safetensors`` + ``cfg.json``, both written atomically.

Tensor names follow SAELens: ``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc``,
``b_dec``, plus each architecture's other parameters and buffers (the AEN-SAE's ``ema``
and ``step``, BatchTopK's ``threshold``, JumpReLU's ``log_threshold`` ...).
``cfg.json`` holds the architecture, ``d_in``, ``d_sae``, the seed, the dtype, the
hyperparameters and the aensae version.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aensae._dtypes import SAE_DTYPES, torch_dtype
from aensae._io import atomic_write, atomic_write_json, read_json_record
from aensae._validation import InputError
from aensae.saes.base import SAE
from aensae.saes.registry import create

__all__ = ["CFG_FILE", "WEIGHTS_FILE", "load", "save"]

WEIGHTS_FILE = "sae.safetensors"
CFG_FILE = "cfg.json"


def save(model: SAE, directory: str | os.PathLike) -> Path:
    """Write ``directory/sae.safetensors`` and ``directory/cfg.json``; return the folder."""
    if not isinstance(model, SAE):
        raise TypeError(f"model must be an aensae SAE, got {type(model).__name__}")
    out = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={
        "arch": model.arch}))
    atomic_write_json(out / CFG_FILE, model.config())
    return out


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Load a model saved by :func:`save`; it gives outputs identical to the saved one.

    A missing file is a ``FileNotFoundError``; a damaged ``cfg.json`` or weights file,
    tensors that do not fit the configuration, or non-finite weights are an
    :class:`~aensae._validation.InputError` naming the file.
    """
    folder = Path(directory)
    cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: directory must hold {CFG_FILE} and "
                                    f"{WEIGHTS_FILE} written by aensae.saes.save")
    cfg = read_json_record(cfg_path, ("arch", "d_in", "d_sae", "hyper"),
                           remedy=f"it must be the {CFG_FILE} aensae.saes.save wrote")
    dtype_name = cfg.get("dtype", "float32")
    if dtype_name not in SAE_DTYPES:
        raise ValueError(f"{cfg_path}: dtype must be one of {sorted(SAE_DTYPES)}, got "
                         f"{dtype_name!r}")
    model = create(cfg["arch"], cfg["d_in"], cfg["d_sae"], seed=cfg.get("seed", 0),
                   dtype=torch_dtype(dtype_name), **cfg["hyper"])
    try:
        tensors = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own SafetensorError (truncated, garbage)
        raise InputError(f"{weights_path} is damaged ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:160]})") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:  # missing, unexpected or wrongly shaped tensors
        raise InputError(f"{weights_path} does not hold the tensors of the {cfg['arch']} "
                         f"SAE that {cfg_path} describes "
                         f"({' '.join(str(err).split())[:200]})") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(f"{weights_path}: {', '.join(bad)} hold NaN or inf; a model with "
                         "non-finite weights gives no meaningful results")
    return model.to(device)
