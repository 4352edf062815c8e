"""Plotting helpers both grids' figures use: family order and colours, seed-averaged
curves, log axes with plain ticks, and :func:`render`, which writes every figure as PNG
and SVG byte-identically for the same table (fixed backend, style and SVG hash salt; no
timestamps). matplotlib is imported inside the functions that draw.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AUTHORS_CLASS", "FAMILY_ORDER", "FORMATS", "family_colors", "family_list",
           "init_of", "num", "plain_log_ticks", "point_key", "render", "run_inits",
           "seed_curve"]

#: The authors' model classes -> aensae architectures.
AUTHORS_CLASS = {"VanillaSAE": "relu_l1", "ElasticNetSAE": "elastic_net",
                 "AdaptiveLassoSAE": "adaptive_lasso", "AdaptiveElasticNetSAE": "aen",
                 "TopKSAE": "topk"}

FORMATS = ("png", "svg")


FAMILY_ORDER = ("relu_l1", "elastic_net", "adaptive_lasso", "aen", "topk", "topk_auxk", "batchtopk",
          "jumprelu")


def num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def family_list(rows: list[dict[str, Any]]) -> list[str]:
    names = {r["family"] for r in rows}
    last = len(FAMILY_ORDER)
    return sorted(names, key=lambda f: (FAMILY_ORDER.index(f) if f in FAMILY_ORDER else last, f))


def family_colors(families: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {f: cmap(i % 10) for i, f in enumerate(families)}


def point_key(r: dict[str, Any]) -> tuple:
    """Runs that differ only by seed share a key (target L0, or all hyperparameters)."""
    if r.get("target_l0") is not None:
        return (r["variant"], r["target_l0"])
    return (r["variant"], tuple(sorted((k, str(v)) for k, v in r.items() if k.startswith("hp_"))))


def seed_curve(rows: list[dict[str, Any]], x: str, y: Callable[[dict[str, Any]], float]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Seed-averaged (x, y) points sorted by x."""
    pts: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        pts[point_key(r)].append((num(r[x]), y(r)))
    with warnings.catch_warnings():  # a key whose values are all NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        xy = sorted((float(np.nanmean([p[0] for p in v])),
                     float(np.nanmean([p[1] for p in v]))) for v in pts.values())
    arr = np.array(xy, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def plain_log_ticks(ax: Any, axis: str = "x") -> None:
    """Plain numbers (0.05, 2, 50) rather than powers of ten on a log axis: each tick
    with the digits it needs (``format(v, "g")``; a shared precision would print 0.05
    as 0.1 beside 0.1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    a = ax.xaxis if axis == "x" else ax.yaxis
    a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    a.set_major_formatter(FuncFormatter(lambda v, _pos: format(float(f"{v:.6g}"), "g")))
    a.set_minor_formatter(NullFormatter())


def init_of(r: dict[str, Any]) -> str:
    return str(r.get("init") or "tied")


def run_inits(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({init_of(r) for r in rows}, key=lambda i: (i != "tied", i))


def render(figures: list[tuple[str, Callable[..., None], tuple[float, float]]],
           rows: list[dict[str, Any]], extra: Any, out_dir: Path) -> list[Path]:
    """Draw ``(name, fn, size)`` figures, ``fn(fig, rows, extra)``, into ``out_dir`` as
    PNG and SVG, byte-identical for the same inputs (fixed backend and style, no
    timestamps, a fixed SVG hash salt); each file written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    style = {"svg.hashsalt": "aensae", "svg.fonttype": "none", "figure.dpi": 100,
             "savefig.dpi": 120, "font.size": 9, "path.simplify": True}
    meta = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
    with plt.style.context("default"), matplotlib.rc_context(style):
        for name, fn, size in figures:
            fig = plt.figure(figsize=size, layout="constrained")
            try:
                fn(fig, rows, extra)
                for ext in FORMATS:
                    path = out_dir / f"{name}.{ext}"
                    tmp = out_dir / f".{name}.tmp.{ext}"
                    fig.savefig(tmp, format=ext, metadata=meta[ext])
                    tmp.replace(path)
                    written.append(path)
                    # the layout is settled by the first save; keep it for the others
                    fig.set_layout_engine("none")
            finally:
                plt.close(fig)
    return written
