r"""Dead-latent tracking over windows counted in samples.

A latent is dead in a window when it never fired (``h_i != 0``) on any sample of the
window. Windows are consecutive and close at the first batch boundary at which at least
``window`` samples have been seen; each closed window records its dead fraction and its
exact sample count (equal to ``window`` when the batch size divides it). The tracker
reports the final window's fraction and the median over the last ``last`` windows, since
one window alone is volatile, and ``trend``: the last window's fraction minus that of
the window ``last - 1`` windows before it (how much the fraction still moves).

With a ``probe`` (the trainer passes :meth:`aensae.saes.base.SAE.regime`), each closed
window also records the model's state at its end (for adaptive SAEs the fractions of
weights at ``w_max`` / ``w_min`` and quantiles of the weights and EMA) with the samples
seen so far: ``summary()["regime"]``, one dict per window.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from aensae._validation import check_int

__all__ = ["DeadTracker", "fired_latents"]


def fired_latents(h: torch.Tensor) -> torch.Tensor:
    """``(h != 0).any(0)`` computed as ``(h.amax(0) > 0) | (h.amin(0) < 0)`` (finite ``h``)."""
    return (h.amax(0) > 0) | (h.amin(0) < 0)


class DeadTracker:
    """Per-window dead fractions of ``d_sae`` latents.

    Parameters
    ----------
    d_sae : int
        Number of latents.
    window : int
        Window length in samples (tokens for LLM activations).
    last : int
        Number of final windows whose median is reported.
    probe : callable returning a dict of floats, optional
        Called at the end of every window; its dict is recorded with the window.
    """

    def __init__(self, d_sae: int, window: int, last: int = 5,
                 probe: Callable[[], dict[str, float]] | None = None) -> None:
        self.d_sae = check_int("d_sae", d_sae, low=1)
        self.window = check_int("window", window, low=1)
        self.last = check_int("last", last, low=1)
        self.probe = probe
        self.fired: torch.Tensor | None = None
        self.samples = 0
        self.fractions: list[float] = []
        self.window_samples: list[int] = []
        self.regime: list[dict[str, Any]] = []

    def update(self, h: torch.Tensor, fired: torch.Tensor | None = None,
               samples: int | None = None) -> None:
        """Account for a batch of codes ``h`` (B, d_sae).

        ``fired`` (d_sae,) bool, when the caller already knows it, must equal
        ``(h != 0).any(0)``; otherwise it is computed as
        ``(max_b h_bi > 0) | (min_b h_bi < 0)`` (two reductions, faster than a boolean
        tensor of the batch's size). ``samples`` (default ``B``) is the batch's size; in a
        data-parallel step, ``fired`` and ``samples`` are those of the global batch, of
        which ``h`` holds this rank's rows.
        """
        if h.ndim != 2 or h.shape[1] != self.d_sae:
            raise ValueError(f"h must have shape (B, {self.d_sae}), got {tuple(h.shape)}")
        if fired is None:
            fired = fired_latents(h)
        self.fired = fired if self.fired is None else self.fired.logical_or_(fired)
        if self.add_samples(h.shape[0] if samples is None else samples):
            self.close_window(int(self.fired.sum()))

    def add_samples(self, samples: int) -> bool:
        """Count ``samples`` more; ``True`` when the window is full (then call
        :meth:`close_window`). For callers that accumulate the fired latents themselves
        (on the device: :class:`~aensae.saes.training.static_step.StaticStep`)."""
        self.samples += samples
        return self.samples >= self.window

    def close_window(self, n_fired: int) -> None:
        """Record the full window: ``n_fired`` of ``d_sae`` latents fired in it."""
        self.fractions.append(1.0 - n_fired / self.d_sae)
        self.window_samples.append(self.samples)
        seen = sum(self.window_samples)
        self.regime.append({"samples_seen": seen, "dead": self.fractions[-1],
                            **(self.probe() if self.probe is not None else {})})
        self.fired = None
        self.samples = 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: the window, every window's fraction, final, median-of-last,
        trend over the last windows and the per-window ``regime`` records.

        ``final``, ``median_last`` and ``trend`` are ``None`` before the first window
        closes (``trend`` is 0 with one window).
        """
        tail = self.fractions[-self.last:]
        return {
            "trend": (tail[-1] - tail[0]) if tail else None,
            "regime": [dict(r) for r in self.regime],
            "window_samples": self.window,
            "windows": len(self.fractions),
            "fractions": list(self.fractions),
            "samples_per_window": list(self.window_samples),
            "final": self.fractions[-1] if self.fractions else None,
            "median_last": statistics.median(tail) if tail else None,
            "last": self.last,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume tracking exactly."""
        return {"window": self.window, "last": self.last, "samples": self.samples,
                "fired": None if self.fired is None else self.fired.detach().cpu().clone(),
                "fractions": list(self.fractions), "window_samples": list(self.window_samples),
                "regime": [dict(r) for r in self.regime]}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore a state saved by :meth:`state_dict`."""
        if state["window"] != self.window:
            raise ValueError(f"checkpoint dead window {state['window']} != configured "
                             f"window {self.window}")
        self.last = state["last"]
        self.samples = state["samples"]
        self.fired = None if state["fired"] is None else state["fired"].to(device)
        self.fractions = list(state["fractions"])
        self.window_samples = list(state["window_samples"])
        self.regime = [dict(r) for r in state.get("regime", [])]
