"""Default exact penalties for the true spiked dictionary (``aensae geometry`` and
``aensae bench solvers``)."""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_LAM1", "default_lam1"]

#: Calibrated lam1 per rho for the true dictionary (see :func:`default_lam1`).
DEFAULT_LAM1 = {0.0: 0.5, 0.5: 10.0, 0.9: 20.0}


def default_lam1(rho: float) -> float:
    """``lam1`` for the true dictionary (n=256, m=1024, k=16, lam2=0.05) at ``rho``.

    Calibrated so that exact elastic-net codes hold about 16-32 non-zeros (median support
    16, 28 and about 27 at rho = 0, 0.5, 0.9); other rho interpolate ``log lam1`` linearly
    between the calibrated points (and hold the end values outside them).
    """
    if rho in DEFAULT_LAM1:
        return DEFAULT_LAM1[rho]
    rhos = sorted(DEFAULT_LAM1)
    return float(np.exp(np.interp(rho, rhos, [np.log(DEFAULT_LAM1[r]) for r in rhos])))
