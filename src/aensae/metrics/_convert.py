"""Conversion of metric inputs (numpy arrays or torch tensors) to validated float64 arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from aensae._validation import check_array, is_torch


def as_float64(name: str, x: Any, *, ndim: int | tuple[int, ...] = 2) -> np.ndarray:
    """Return ``x`` as a finite float64 numpy array with the allowed number of dimensions.

    Torch tensors are converted with ``x.detach().cpu().double().numpy()``.
    """
    if is_torch(x):
        x = x.detach().cpu().double().numpy()
    return check_array(name, x, ndim=ndim)


def as_batch(name: str, x: Any) -> np.ndarray:
    """A (B, d) float64 array; a 1-D input is one sample, shape (1, d)."""
    arr = as_float64(name, x, ndim=(1, 2))
    return arr[None, :] if arr.ndim == 1 else arr


def check_same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    """Raise ``ValueError`` naming both parameters if the shapes differ."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}"
        )
