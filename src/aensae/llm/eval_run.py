"""The work of ``aensae llm eval``: SAEs spliced into a language model, on the eval split.

:func:`run_eval` takes an :class:`EvalRun` (every option of ``aensae llm eval`` as a
field): it loads each SAE (an SAE folder, or every SAE of an ``aensae llm train`` output
folder), the model, and the eval windows of the text, then reports per SAE L0, dead
fraction, explained variance, MSE, the CE of the clean, spliced, zero- and mean-ablated
passes, ``ce_loss_score`` (both baselines), KL and ``kl_score``, the reference's
defective splice, and for l1-family SAEs exact certified codes with their geometry
(:func:`aensae.llm.splice.evaluate_saes`).

SAEs trained with outlier tokens left out (``cfg.json`` ``llm.outliers``, see
:mod:`aensae.llm.training`) are evaluated with the same threshold: the outlier tokens are
passed through unchanged and every metric is reported both ways (``..._all_tokens``,
``..._outliers_excluded``; the keys without a suffix are the latter).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aensae import __version__
from aensae._io import atomic_write_json
from aensae._validation import InputError
from aensae.llm.models import (
    check_ctx,
    check_layer,
    config_shape,
    family_of,
    load_config,
    load_model,
    resolve_model,
)
from aensae.llm.splice import (
    eval_windows,
    evaluate_saes,
    load_spliced_sae,
    outlier_threshold_of,
)
from aensae.llm.text import check_not_empty, open_text

__all__ = ["EvalRun", "run_eval", "sae_folders"]


@dataclass(frozen=True)
class EvalRun:
    """One ``aensae llm eval``; the defaults are the command's. ``layer`` / ``hook`` None:
    the hook point the SAEs were trained on; ``json``: where the record is written."""

    sae: tuple[str | Path, ...]
    model: str
    tokens: int
    text: str = "python-docs"
    layer: int | None = None
    hook: str | None = None
    ctx: int = 128
    batch_size: int = 8
    text_column: str = "text"
    eval_fraction: float = 0.05
    keep_special: bool = False
    prepend_bos: bool = True
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    revision: str | None = None
    exact_tokens: int = 4096
    exact_tol: float = 1e-10
    geometry_tokens: int | None = None
    force: bool = False
    json: str | Path | None = None
    progress: bool = True


def sae_folders(items: Sequence[str | Path]) -> list[Path]:
    folders = []
    for item in items:
        path = Path(item)
        if (path / "run.json").is_file() and not (path / "cfg.json").is_file():
            try:
                names = list(json.loads((path / "run.json").read_text())["saes"])
            except (ValueError, KeyError, TypeError) as err:
                raise InputError(f"--sae {item}: run.json is damaged ({err})") from None
            folders += [path / n for n in names]
        elif path.is_dir():
            folders.append(path)
        else:
            raise InputError(f"--sae {item}: no such folder")
    return folders


def run_eval(run: EvalRun) -> dict[str, Any]:
    """Evaluate the SAEs of ``run`` spliced into its model; return the record (written to
    ``run.json`` when set). The options' values are checked by ``aensae llm eval``.

    Everything that needs no model weights is checked before the model loads: each SAE's
    files (weights finite, ``cfg.json``'s ``llm`` record and normalisation constant, a
    SAELens folder's shapes), the text and its eval split, and, from the model's config
    alone, the hook point (an SAE's recorded layer is reported under the ``cfg.json`` key
    or SAELens field it came from), the window length and each SAE's ``d_in``.
    """
    saes = [load_spliced_sae(f) for f in sae_folders(run.sae)]
    names = [s.name for s in saes]
    if len(set(names)) != len(names):
        for i, s in enumerate(saes):  # same folder names from different runs
            s.name = f"{i}:{s.name}"
    threshold = outlier_threshold_of(saes)
    source = open_text(run.text, text_column=run.text_column)
    check_not_empty(source, "eval", run.eval_fraction)
    msource = resolve_model(run.model, run.revision)
    mconfig = load_config(msource)
    family_of(mconfig.model_type, run.model)
    shape = config_shape(mconfig)
    for s in saes:
        if s.llm is not None and run.layer is None:
            check_layer(f"--sae {s.path}: {s.origin or 'cfg.json'} gives layer "
                        f"{s.llm['layer']}, which", s.llm["layer"], shape, run.model)
    trained = {(s.llm["layer"], s.llm["hook"]) for s in saes if s.llm is not None}
    layer, hook = run.layer, run.hook
    if layer is None or hook is None:
        if len(trained) != 1:
            raise InputError("--layer and --hook are needed: the SAEs record "
                             + ("no hook point" if not trained else
                                f"several hook points {sorted(trained)}"))
        t_layer, t_hook = next(iter(trained))
        layer = t_layer if layer is None else layer
        hook = t_hook if hook is None else hook
    if run.layer is not None:
        check_layer("--layer", run.layer, shape, run.model)
    check_ctx("--ctx", run.ctx, shape, run.model)
    for s in saes:
        if s.sae.d_in != shape.d_model:
            raise InputError(f"--sae {s.path or s.name}: d_in {s.sae.d_in} does not match "
                             f"the width {shape.d_model} of hook {hook} of {run.model}")
    lm = load_model(run.model, dtype=run.dtype, device=run.device, revision=run.revision,
                    quiet=not run.progress)
    lm.check_hook(layer, hook)
    ids, keep = eval_windows(lm, run.text, run.tokens, ctx=run.ctx,
                             eval_fraction=run.eval_fraction, seed=run.seed,
                             text_column=run.text_column, prepend_bos=run.prepend_bos,
                             keep_special=run.keep_special)
    if int(keep.sum()) < run.tokens:
        print(f"aensae llm eval: warning: --text {run.text}: the eval split ran out after "
              f"{int(keep.sum())} of the {run.tokens} tokens asked", file=sys.stderr)
    res = evaluate_saes(lm, saes, ids, keep, layer, hook, batch_size=run.batch_size,
                        force=run.force, progress=run.progress,
                        exact_tokens=run.exact_tokens, exact_tol=run.exact_tol,
                        geometry_tokens=run.geometry_tokens, outlier_threshold=threshold)
    res = {**res, "model": lm.describe(), "text": run.text, "seed": run.seed,
           "eval_fraction": run.eval_fraction, "aensae_version": __version__,
           "device": str(lm.device)}
    if run.json is not None:
        atomic_write_json(run.json, res)
    return res
