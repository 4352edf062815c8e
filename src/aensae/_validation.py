"""Up-front parameter validation shared by every public entry point.

Every error names the parameter, the offending value and what was expected, in the
style of scikit-learn's parameter validation. Nothing is clipped or coerced silently:
the only conversion performed is the documented promotion of real arrays to float64
(numpy) -- integer or float32 input is accepted, complex/object/bool input is not.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = [
    "InputError",
    "check_array",
    "check_finite",
    "check_int",
    "check_real",
    "check_rho",
    "is_torch",
]


class InputError(ValueError):
    """Bad input from the user: a value, a file, a device or an output location.

    The message is one line that names the option or key as the user wrote it, the value
    and what was expected. The command line (:func:`aensae.cli.main`) prints it to stderr
    and exits with status 2; any other exception is a bug and keeps its traceback. It
    subclasses ``ValueError`` so library callers may catch either.
    """


def is_torch(x: Any) -> bool:
    """True when ``x`` is a torch tensor (without importing torch needlessly)."""
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Validate a finite real scalar in an interval and return it as ``float``.

    Raises
    ------
    TypeError
        If ``value`` is not a real number (bools are rejected).
    ValueError
        If ``value`` is NaN/inf or outside the interval.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_fmt(value)} of type "
                        f"{type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    lo_ok = low is None or (v >= low if low_inclusive else v > low)
    hi_ok = high is None or (v <= high if high_inclusive else v < high)
    if not (lo_ok and hi_ok):
        lb = "-inf" if low is None else f"{low:g}"
        hb = "inf" if high is None else f"{high:g}"
        interval = f"{'[' if low_inclusive else '('}{lb}, {hb}{']' if high_inclusive else ')'}"
        raise ValueError(f"{name} must lie in {interval}, got {v!r}")
    return v


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Validate an integer (not bool) in ``[low, high]`` and return it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_fmt(value)} of type "
                        f"{type(value).__name__}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        lb = "-inf" if low is None else str(low)
        hb = "inf" if high is None else str(high)
        raise ValueError(f"{name} must lie in [{lb}, {hb}], got {v}")
    return v


def check_rho(rho: Any, name: str = "rho") -> float:
    """Validate a correlation level ``rho`` in ``[0, 1)``."""
    return check_real(name, rho, low=0.0, high=1.0, high_inclusive=False)


def check_finite(name: str, x: Any) -> None:
    """Raise ``ValueError`` naming ``name`` if array/tensor ``x`` holds NaN or inf."""
    if is_torch(x):
        import torch

        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n_nan = int(torch.isnan(x).sum())
            raise ValueError(f"{name} must be finite; it holds {n_nan} NaN and "
                             f"{int(bad.sum()) - n_nan} inf entries (shape {tuple(x.shape)})")
        return
    arr = np.asarray(x)
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        raise ValueError(f"{name} must be finite; it holds {n_nan} NaN and "
                         f"{int(bad.sum()) - n_nan} inf entries (shape {arr.shape})")


def check_array(
    name: str,
    x: Any,
    *,
    ndim: int | tuple[int, ...] | None = None,
    shape: tuple[int | None, ...] | None = None,
    finite: bool = True,
    allow_empty: bool = False,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Validate a real numpy-convertible array and return it as ``dtype`` (float64).

    Parameters
    ----------
    name : str
        Parameter name used in error messages.
    x : array_like
        The input. Torch tensors are rejected here (use the torch paths explicitly).
    ndim : int or tuple of int, optional
        Allowed number(s) of dimensions.
    shape : tuple, optional
        Expected shape; ``None`` entries are free.
    finite : bool
        Reject NaN/inf.
    allow_empty : bool
        Whether zero-size arrays are accepted.
    """
    if is_torch(x):
        raise TypeError(f"{name} must be a numpy array (got a torch tensor); "
                        "convert it with .detach().cpu().numpy()")
    arr = np.asarray(x)
    if arr.dtype == object or np.issubdtype(arr.dtype, np.complexfloating) or arr.dtype == bool:
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimension(s), "
                             f"got shape {arr.shape}")
    if shape is not None:
        if arr.ndim != len(shape) or any(
            s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)
        ):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if dtype is not None:
        arr = np.ascontiguousarray(arr, dtype=dtype)
    if finite:
        check_finite(name, arr)
    return arr
