"""Up-front parameter validation shared by every public entry point.

Every error names the parameter, the offending value and what was expected, in the
style of scikit-learn's parameter validation. Nothing is clipped or coerced silently:
the only conversion performed is the documented promotion of real arrays to float64
(numpy) -- integer or float32 input is accepted, complex/object/bool input is not.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "NAME_RULE",
    "InputError",
    "check_array",
    "check_device",
    "check_finite",
    "check_int",
    "check_name",
    "check_real",
    "check_rho",
    "check_threads",
    "is_torch",
    "max_threads",
    "user_input",
]


class InputError(ValueError):
    """Bad input from the user: a value, a file, a device or an output location.

    The message is one line that names the option or key as the user wrote it, the value
    and what was expected. The command line (:func:`aensae.cli.main`) prints it to stderr
    and exits with status 2; any other exception is a bug and keeps its traceback. It
    subclasses ``ValueError`` so library callers may catch either.
    """


@contextmanager
def user_input(prefix: str = "") -> Iterator[None]:
    """Turn the ``ValueError`` / ``TypeError`` of checks inside the block into :class:`InputError`.

    For blocks that only *validate* what the user gave (``check_int("--steps", ...)``,
    an architecture's ``validate_hyper``): the message, prefixed by ``prefix``, already
    names the option. Never wrap real work in it, or a bug would lose its traceback.
    """
    try:
        yield
    except InputError:
        raise
    except (TypeError, ValueError) as err:
        raise InputError(f"{prefix}{err}") from None


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


# ----------------------------------------------------------------------------- user input
#: Names that become folder or file names (experiments, families): the rule in words.
NAME_RULE = ("a letter or digit, then letters, digits, '.', '_' or '-' (at most 100 "
             "characters, no '..')")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(where: str, value: Any) -> str:
    """A name that is safe as one path component, or :class:`InputError` stating the rule.

    ``where`` is the key as the user wrote it (``experiment.name``, ``family "x"``). The
    rule (:data:`NAME_RULE`) keeps names inside the output folder: no separators, no
    ``..``, no leading dot or dash.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise InputError(f"{where}: must be {NAME_RULE}, got {_fmt(value)}")
    return value


def max_threads() -> int:
    """The largest thread count accepted anywhere: this machine's cores (``os.cpu_count()``)."""
    return os.cpu_count() or 1


def check_threads(where: str, value: Any, *, allow_zero: bool = True,
                  here: bool = True) -> int:
    """A thread count in ``[1, os.cpu_count()]`` (or 0, "the libraries' defaults").

    More threads than cores never helps, and a huge count crashes native thread pools
    (OpenBLAS aborts, then the process segfaults), so the bound is checked up front.
    ``here=False``: the threads run on another machine (a SLURM or Ray node, whose
    scheduler refuses requests beyond its cores), so only ``>= 1`` (or 0) is checked.
    """
    cores = max_threads()
    low = 0 if allow_zero else 1
    zero = "0 (the libraries' defaults) or " if allow_zero else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or int(value) < low:
        rule = f"in [1, {cores}] (this machine's cores, os.cpu_count())" if here else ">= 1"
        raise InputError(f"{where}: must be {zero}an integer {rule}, got {_fmt(value)}")
    if here and int(value) > cores:
        raise InputError(f"{where}: must be {zero}an integer in [1, {cores}] (this machine's "
                         f"cores, os.cpu_count()), got {_fmt(value)}")
    return int(value)


def check_device(where: str, device: Any, *, here: bool = True) -> str:
    """Check that a torch device string names a device present here; return it unchanged.

    ``"auto"`` (CUDA when available, else CPU) and ``"cpu"`` always pass; ``"cuda"`` /
    ``"cuda:i"`` need CUDA with more than ``i`` devices, ``"mps"`` Apple's backend. The
    message names ``where`` (``--device``, ``[experiment] device``) so that a missing
    GPU is reported before any data is generated or a model is trained. ``here=False``:
    the device belongs to another machine (a SLURM or Ray node), so only its name is
    checked.
    """
    import torch

    if not isinstance(device, str) or not device:
        raise InputError(f"{where}: must be 'auto', 'cpu' or a torch device such as 'cuda' "
                         f"or 'cuda:1', got {_fmt(device)}")
    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{where}: must be 'auto', 'cpu' or a torch device such as 'cuda' "
                         f"or 'cuda:1', got {device!r}") from None
    if dev.type == "cpu" or (not here and dev.type in ("cuda", "mps")):
        return device
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"{where}: {device!r} is not available: this torch "
                             f"({torch.__version__}) sees no CUDA device; use 'cpu' or "
                             "'auto'")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"{where}: {device!r} is not available: {count} CUDA "
                             f"device(s), indices 0..{count - 1}")
        return device
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"{where}: 'mps' is not available on this machine")
        return device
    raise InputError(f"{where}: device type {dev.type!r} is not supported; use 'auto', "
                     "'cpu' or 'cuda[:i]'")


# ----------------------------------------------------------------------------- memory
def available_memory() -> int:
    """Bytes of memory available to a new allocation here: ``MemAvailable`` of
    ``/proc/meminfo`` (Linux), else the free physical pages (``os.sysconf``)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no way to tell
        return 2**63 - 1


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(where: str, need: float, what: str, *, limit_gib: float | None,
                 override: str) -> None:
    """Refuse, before any allocation, work whose estimated memory exceeds the limit.

    ``need`` is the estimate in bytes of what ``where`` (the option or key that sets the
    size) makes the command hold at once, ``what`` says what it is. The limit is
    ``limit_gib`` GiB when given (the option or config key ``override``), else the memory
    available now (:func:`available_memory`). The error names both and how to override.
    """
    if limit_gib is not None:
        limit, source = float(limit_gib) * 2**30, f"the limit {override} {limit_gib:g}"
    else:
        limit, source = float(available_memory()), "the memory available on this machine"
    if need > limit:
        raise InputError(f"{where}: {what} needs about {_gib(need)}, more than {source} "
                         f"({_gib(limit)}); choose smaller sizes, or set {override} (GiB) "
                         "to allow it")

