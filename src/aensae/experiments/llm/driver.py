r"""The LLM grid: ``aensae reproduce --config llm-quick`` (configs with ``[data] kind = "llm"``).

Pipeline (each phase resumable, every file written atomically):

1. **harvest** the train split of ``data.text`` at ``(data.layer, data.hook)`` into
   ``OUT/cache`` (:func:`aensae.llm.cache.harvest`, which resumes from its last shard),
   and the first ``eval.tokens`` data tokens of the eval split into ``OUT/eval-cache``:
   the same windows, in the same order, as the spliced evaluation's
   (:func:`aensae.llm.splice.eval_windows`), so the calibration measures L0 on the eval
   tokens themselves;
2. **cache statistics** (``OUT/llm-stats.json``): activation norms per token, the
   outliers (norm above ``eval.outlier_factor`` times the median: SmolLM2's layer-15
   residual stream has a few tokens of norm ~24,000 against a median ~170), their
   positions and share of :math:`\sum\lVert x\rVert^2`, and the scalar normalisation
   constant with and without them;
3. **training passes** ``OUT/passes/pass-<i>``: each pass trains several SAEs on the
   same batches (:func:`aensae.llm.training.train_on_cache`: one fused Adam, exact
   checkpoint resume), all at the full length ``train.steps``, with dead latents counted
   in windows of ``train.dead_window`` tokens (a tenth of the run by default) and, with
   ``data.exclude_outliers`` (the default), the outlier tokens left out of the batches
   and of the scalar constant. Pass 0 holds the
   calibration ladders of the calibrated families (l1 coefficient of the l1 family,
   ``l0`` coefficient of JumpReLU) and every TopK / BatchTopK run (``k_top`` = the
   target, no calibration); later passes hold the penalties the bracketing search of
   :mod:`aensae.experiments.calibration` asks for next (widening, then refinement); its
   primitives (:func:`~aensae.experiments.calibration.new_state`,
   :func:`~aensae.experiments.calibration.next_penalties`,
   :func:`~aensae.experiments.calibration.finish`) run unchanged, with the L0 of each SAE
   measured on the eval cache (``l0.json`` beside each pass). Because every pass is a
   main-length run, a calibration model within ``calibrate.tolerance`` of its target is
   that target's run; a target reached by no measured penalty gets the interpolated
   penalty, trained in a last pass. ``calibrate.max_passes`` bounds the search passes
   (each widening round is a pass); a target still unbracketed then is unreachable.
   ``OUT/calibration.json`` records every point;
4. **evaluation** ``OUT/evals/group-<i>.json``: the chosen SAEs, ``eval.group_size`` at
   a time, spliced into the model by :func:`aensae.llm.splice.evaluate_saes` (what
   ``aensae llm eval`` does: CE/KL with the normalisation undone, zero and mean
   ablations, the reference's defective splice, exact certified codes for l1-family
   SAEs), plus the EV without the outlier tokens and the centred EV on the eval cache.
   Every metric is measured both ways (``..._all_tokens``, ``..._outliers_excluded``:
   the outlier tokens passed through the spliced and ablated passes unchanged, and left
   out of L0, EV, MSE and the dead fractions); the columns without a suffix follow
   ``data.exclude_outliers``. L0 for the calibration is measured on the same tokens as
   the headline L0;
5. **table, figures, report**: ``OUT/results.csv`` (one row per (family, variant,
   target); ``kind = unreachable`` for targets no penalty reached; the dead-latent
   windows as columns, :func:`aensae.llm.training.window_columns`), ``OUT/figures/``
   and ``OUT/report.md`` (:mod:`aensae.experiments.llm.figures`,
   :mod:`aensae.experiments.llm.report`), swapped in together.

Resume: a rerun skips a complete cache, a pass whose ``run.json`` and ``l0.json``
exist, an eval group whose JSON lists the same SAEs, and redoes the interrupted phase
(a training pass from its checkpoint). ``OUT/config.json`` records the config and its
hash; a folder holding another config's results is refused (``--overwrite`` clears
it), as for the synthetic grid.

Numeric per-SAE keys that ``aensae llm eval`` adds beyond the ones this module names
(Lipschitz, Hoffman summaries, ...) become columns of their own: every number in an
SAE's eval record, nested records flattened, is passed through.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from aensae import __version__
from aensae._io import (
    LOCK_FILE,
    atomic_write_json,
    check_output_dir,
    folder_lock,
    remove_partial_files,
)
from aensae._validation import InputError, check_device
from aensae.experiments.config import DIRECT_K, variant_id
from aensae.experiments.console import hms, log
from aensae.experiments.layout import (
    ANY,
    FIGURES_DIR,
    MANIFEST_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    open_output,
    staged_report,
)
from aensae.experiments.llm.config import LLMGridConfig, check_model_reachable
from aensae.experiments.llm.figures import LLM_FIGURES
from aensae.experiments.llm.schema import (
    LLM_ID_COLUMNS,
    LLM_REQUIRED_COLUMNS,
    check_llm_table,
)
from aensae.experiments.plotting import FORMATS
from aensae.experiments.results import write_table

__all__ = ["FIGURE_FILES", "OUTPUT_ENTRIES", "OUTPUT_TREE", "build_rows", "is_llm_results",
           "manifest_problem", "reproduce_llm", "write_llm_figures"]

STATS_FILE = "llm-stats.json"
CALIBRATION_FILE = "calibration.json"
TIMES_FILE = "phases.json"
#: Everything the LLM grid writes into its folder (what ``--overwrite`` may remove); the
#: synthetic grid's names are included so that either pipeline can clear the other's.
OUTPUT_ENTRIES = (MANIFEST_FILE, "cache", "eval-cache", "passes", "evals", STATS_FILE,
                  CALIBRATION_FILE, TIMES_FILE, RESULTS_FILE, FIGURES_DIR, REPORT_FILE,
                  "calibration", "runs", "groups", "models", "speed.csv")
#: The LLM figures' files (a redraw replaces these alone in ``figures/``).
FIGURE_FILES = frozenset(f"{name}.{ext}" for name in LLM_FIGURES for ext in FORMATS)
#: A cache folder: manifest, shards, an overwrite's staged cache.
_CACHE_TREE: dict[str, Any] = {"manifest.json": None, "shard-*.safetensors": None,
                               ".aensae-overwrite": ANY}
#: A training pass: its run, the L0s, a checkpoint, one folder per SAE.
_PASS_TREE: dict[str, Any] = {
    "run.json": None, "l0.json": None, "checkpoint.pt": None,
    "checkpoint_config.json": None,
    "*": {"sae.safetensors": None, "cfg.json": None, "metrics.json": None}}
#: What the LLM grid writes, at every depth (:func:`aensae.experiments.layout.
#: foreign_entries`): ``--overwrite`` refuses a folder holding anything else, such as a
#: user's folder inside ``passes/``. The synthetic grid's entries are taken whole, so
#: that this pipeline can clear the other's.
OUTPUT_TREE: dict[str, Any] = {
    MANIFEST_FILE: None, "cache": _CACHE_TREE, "eval-cache": _CACHE_TREE,
    "passes": {"pass-*": _PASS_TREE}, "evals": {"group-*.json": None}, STATS_FILE: None,
    CALIBRATION_FILE: None, TIMES_FILE: None, RESULTS_FILE: None,
    FIGURES_DIR: {name: None for name in sorted(FIGURE_FILES)}, REPORT_FILE: None,
    **{name: ANY for name in ("calibration", "runs", "groups", "models", "jobs")},
    "speed.csv": None}

#: How the memory limit of the grid is set (errors name it).
_MEMORY_KEY = "config experiment.max_memory_gb"
#: The config keys behind the options of ``aensae llm train`` (errors name them).
_TRAIN_NAMES = {"--batch-size": "config train.batch_size", "--d-sae": "config train.d_sae",
                "--max-memory": _MEMORY_KEY, "--cache": "cache", "--out": "--out",
                "--outlier-factor": "config eval.outlier_factor"}

#: Keys of an SAE's eval record that are not per-SAE measurements.
_NOT_METRICS = {"path", "arch", "d_sae", "normalisation", "constant", "cost"}


def _clock() -> tuple[float, float]:
    """(wall, process CPU) seconds now: phases record both, since on a shared machine the
    CPU seconds say more about the work than the wall time does."""
    return time.perf_counter(), time.process_time()


def manifest(cfg: LLMGridConfig) -> dict[str, Any]:
    """``OUT/config.json``: the normalised config, its hash, the kind of pipeline."""
    return {"kind": "llm", "config": cfg.to_dict(), "config_hash": cfg.config_hash(),
            "config_name": cfg.name, "source": cfg.source, "seeds": cfg.seeds,
            "aensae_version": __version__}


def manifest_problem(folder: str | Path) -> str | None:
    """Why ``folder/config.json`` cannot be read as a grid's manifest (missing, not JSON,
    not an object), or ``None`` when it can."""
    path = Path(folder) / MANIFEST_FILE
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{type(err).__name__}: {' '.join(str(err).split())[:80]}"
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    return None


def is_llm_results(folder: str | Path) -> bool:
    """Whether ``folder`` holds an LLM grid's results (for ``aensae figures``): its
    ``config.json`` says so; when that manifest is missing or damaged, the table's
    columns decide (the LLM grid's identifying columns, ``pass`` and ``sae`` among them,
    are in no synthetic table)."""
    path = Path(folder) / MANIFEST_FILE
    if manifest_problem(folder) is None:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == "llm"
    try:
        with open(Path(folder) / RESULTS_FILE, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return set(LLM_ID_COLUMNS) <= set(header)


# ----------------------------------------------------------------------------- context
def _harvest_config(cfg: LLMGridConfig, split: str) -> Any:
    """The :class:`~aensae.llm.cache.HarvestConfig` of the train cache or the eval cache."""
    from aensae.llm.cache import HarvestConfig

    d = cfg.data
    tokens = d["tokens"] if split == "train" else cfg.eval["tokens"]
    batch = d["batch_size"] if split == "train" else cfg.eval["batch_size"]
    return HarvestConfig(model=d["model"], layer=d["layer"], tokens=tokens,
                         hook=d["hook"], text=d["text"], ctx=d["ctx"],
                         batch_size=batch, dtype=d["model_dtype"],
                         device=cfg.experiment["device"], split=split,
                         eval_fraction=d["eval_fraction"], text_column=d["text_column"],
                         shard_windows=d["shard_windows"],
                         shuffle_windows=d["shuffle_windows"],
                         seed=cfg.experiment["seed"], revision=d["revision"])


class _Run:
    """What the phases share: the config, the folder, the model (loaded on first use)."""

    def __init__(self, cfg: LLMGridConfig, out: Path, progress: bool) -> None:
        self.cfg, self.out, self.progress = cfg, out, progress
        self._lm: Any = None
        self._windows: tuple[Any, Any] | None = None
        self.times: dict[str, Any] = {}
        path = out / TIMES_FILE
        if path.is_file():
            try:
                times = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                times = None  # a damaged record of times: started afresh
            self.times = times if isinstance(times, dict) else {}

    @property
    def lm(self) -> Any:
        if self._lm is None:
            from aensae.llm.models import load_model

            d = self.cfg.data
            t0 = _clock()
            self._lm = load_model(d["model"], dtype=d["model_dtype"],
                                  device=self.cfg.experiment["device"],
                                  revision=d["revision"], quiet=not self.progress)
            wall, _ = self.record_time("model_load", t0)
            log(f"model {d['model']} loaded in {wall:.1f} s")
        return self._lm

    def record_time(self, phase: str, start: tuple[float, float]) -> tuple[float, float]:
        """Record the wall and process CPU seconds since ``start`` (:func:`_clock`) under
        ``phase`` in ``phases.json``; return them."""
        now = _clock()
        wall, cpu = now[0] - start[0], now[1] - start[1]
        self.times[phase] = {"wall_s": wall, "cpu_s": cpu}
        atomic_write_json(self.out / TIMES_FILE, self.times)
        return wall, cpu

    def harvest_config(self, split: str) -> Any:
        return _harvest_config(self.cfg, split)

    def eval_windows(self) -> tuple[Any, Any]:
        if self._windows is None:
            from aensae.llm.splice import eval_windows

            d = self.cfg.data
            self._windows = eval_windows(
                self.lm, d["text"], self.cfg.eval["tokens"], ctx=d["ctx"],
                eval_fraction=d["eval_fraction"], seed=self.cfg.experiment["seed"],
                text_column=d["text_column"], shuffle_windows=d["shuffle_windows"])
        return self._windows


# ----------------------------------------------------------------------------- phases
def _harvest(run: _Run, split: str, folder: str) -> dict[str, Any]:
    """Phase 1: the train cache or the eval cache (skipped when complete)."""
    from aensae.llm.cache import MANIFEST, harvest, read_manifest

    hcfg = run.harvest_config(split)
    path = run.out / folder
    if (path / MANIFEST).is_file():
        saved = read_manifest(path, folder, f"remove {path} to harvest it again")
        if saved["complete"] and saved["config"] == hcfg.identity():
            return saved
    log(f"harvest: {hcfg.tokens:,} {split} tokens of {hcfg.text} at {hcfg.hook} "
         f"L{hcfg.layer} -> {path}")
    lm = run.lm
    t0 = _clock()
    result = harvest(hcfg, path, model=lm, progress=run.progress,
                     max_memory=run.cfg.experiment["max_memory_gb"],
                     memory_option=_MEMORY_KEY)
    run.record_time(f"harvest_{split}", t0)
    return result


def _load_rows(cache: Path, tokens: bool = False) -> tuple[Any, ...]:
    """Every activation (float64) and position (and token id) of a cache, in shard order."""
    import torch

    from aensae.llm.store import ActivationStore

    store = ActivationStore(cache, where=cache.name)  # shards verified
    acts, pos, ids = [], [], []
    for i in range(len(store.shards)):
        shard = store.shard(i)
        acts.append(shard["activations"].to(torch.float64))
        pos.append(shard["positions"].to(torch.int64))
        ids.append(shard["tokens"].to(torch.int64))
    if tokens:
        return torch.cat(acts), torch.cat(pos), torch.cat(ids)
    return torch.cat(acts), torch.cat(pos)


def _cache_stats(run: _Run) -> dict[str, Any]:
    """Phase 2: token norms, outliers and what they do to the scalar constant."""

    from aensae.llm.normalise import outlier_threshold, scalar_constant, token_norms

    path = run.out / STATS_FILE
    ident = {"cache": _cache_identity(run, "cache"),
             "eval": _cache_identity(run, "eval-cache"),
             "outlier_factor": run.cfg.eval["outlier_factor"], "stats": 3}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("identity") == ident:
            return saved
    factor = run.cfg.eval["outlier_factor"]
    X, pos, ids = _load_rows(run.out / "cache", tokens=True)
    norms = token_norms(X)
    median, threshold = outlier_threshold(norms, factor)
    out_mask = norms > threshold
    sq = norms ** 2
    d_in = X.shape[1]
    n_out = int(out_mask.sum())
    positions: dict[str, int] = {}
    for p in pos[out_mask].tolist():
        positions[str(p)] = positions.get(str(p), 0) + 1
    by_token: dict[str, int] = {}
    for t in ids[out_mask].tolist():
        by_token[str(t)] = by_token.get(str(t), 0) + 1
    pos1 = pos == 1
    rest = int((~out_mask).sum())
    stats = {
        "identity": ident, "outlier_factor": factor, "tokens": int(X.shape[0]),
        "median_norm": median, "mean_norm": float(norms.mean()),
        "max_norm": float(norms.max()), "outlier_threshold": threshold,
        "outlier_tokens": n_out, "outlier_share": n_out / X.shape[0],
        "outlier_positions": dict(sorted(positions.items(), key=lambda kv: int(kv[0]))),
        "outlier_token_ids": dict(sorted(by_token.items(), key=lambda kv: -kv[1])),
        "outlier_sum_sq_share": float(sq[out_mask].sum() / sq.sum()),
        "position1_tokens": int(pos1.sum()),
        "position1_outliers": int((pos1 & out_mask).sum()),
        "position1_median_norm": float(norms[pos1].median()) if pos1.any() else None,
        "scalar_constant": scalar_constant(float(sq.sum()), X.shape[0], d_in),
        "scalar_constant_no_outliers": (scalar_constant(float(sq[~out_mask].sum()), rest,
                                                        d_in) if rest else None),
    }
    E, _ = _load_rows(run.out / "eval-cache")
    e_norms = token_norms(E)
    stats["eval_tokens"] = int(E.shape[0])
    stats["eval_outlier_tokens"] = int((e_norms > threshold).sum())
    stats["eval_outlier_sum_sq_share"] = float(
        (e_norms[e_norms > threshold] ** 2).sum() / (e_norms ** 2).sum())
    atomic_write_json(path, stats)
    return stats


def _cache_identity(run: _Run, folder: str) -> dict[str, Any]:
    from aensae.llm.cache import read_manifest

    man = read_manifest(run.out / folder, folder, f"remove {run.out / folder} to harvest it "
                        "again")
    return {"tokens": man["tokens"], "sha256": [s["sha256"] for s in man["shards"]]}


def _sae_name(fam: str, variant: str, param: str, value: float | int,
              seed: int | None = None) -> str:
    """An SAE's folder name in its pass; ``seed`` (a seed other than the calibration
    seed) is appended as ``-seed<s>``."""
    name = f"{fam}-{variant}-{param}={value!r}"
    return name if seed is None else f"{name}-seed{seed}"


def _pass_specs(run: _Run, members: list[tuple[Any, dict[str, Any], str, Any]],
                seed: int | None = None) -> list[Any]:
    """``(family, hyper, variant, sparsity value)`` -> validated ``SAESpec`` list."""
    from aensae.llm.training import SAESpec
    from aensae.saes import ARCHITECTURES

    specs = []
    for fam, hyper, variant, value in members:
        h = ARCHITECTURES[fam.arch].validate_hyper({**hyper, fam.sparsity_param: value})
        specs.append(SAESpec(fam.arch, h, _sae_name(fam.name, variant, fam.sparsity_param,
                                                    value, seed)))
    return specs


def _train_pass(run: _Run, index: int, members: list[tuple[Any, dict[str, Any], str, Any]],
                seed: int | None = None) -> dict[str, float]:
    """Train one pass (or find it finished); return the eval-cache L0 of each SAE.

    Every SAE of a pass sees the same batches, drawn from the calibration seed
    (``experiment.seed``), or from ``seed``: a pass of another seed of
    ``experiment.seeds``, whose SAE names end in ``-seed<s>``."""
    from aensae.llm.splice import load_spliced_sae
    from aensae.llm.training import TrainRun, train_on_cache

    cfg = run.cfg
    folder = run.out / "passes" / f"pass-{index}"
    specs = _pass_specs(run, members, seed)
    l0_path = folder / "l0.json"
    names = [s.name for s in specs]
    if (folder / "run.json").is_file() and l0_path.is_file():
        saved = json.loads(l0_path.read_text(encoding="utf-8"))
        if sorted(saved) == sorted(names):
            return saved
    tr = cfg.train
    pass_seed = cfg.experiment["seed"] if seed is None else seed
    log(f"pass {index}: {len(specs)} SAEs x {tr['steps']} steps of {tr['batch_size']} "
         f"tokens, on the same batches (seed {pass_seed})")
    t0 = _clock()
    train_on_cache(TrainRun(
        cache=run.out / "cache", specs=specs, d_sae=tr["d_sae"], steps=tr["steps"],
        batch_size=tr["batch_size"], out=folder, lr=tr["lr"],
        lr_warmup_steps=tr["lr_warmup_steps"], dead_window=cfg.dead_window,
        normalisation=tr["normalisation"], seed=pass_seed,
        checkpoint_every=tr["checkpoint_every"], device=cfg.experiment["device"],
        dtype=cfg.experiment["dtype"], progress=run.progress,
        extra={"grid": cfg.name, "pass": index, "pass_seed": pass_seed},
        max_memory=cfg.experiment["max_memory_gb"], names=_TRAIN_NAMES,
        outlier_factor=(cfg.eval["outlier_factor"] if cfg.data["exclude_outliers"]
                        else None)))
    run.record_time(f"pass_{index}", t0)
    X = _measured_eval_activations(run)
    l0s = {}
    for name in names:
        import torch

        s = load_spliced_sae(folder / name)
        with torch.no_grad():
            _, h = s.reconstruct(X.to(s.sae.W_dec.dtype))
        l0s[name] = float((h != 0).sum(dim=1).double().mean())
    atomic_write_json(l0_path, l0s)
    return l0s


def _eval_activations(run: _Run) -> Any:
    if not hasattr(run, "_eval_x"):
        run._eval_x = _load_rows(run.out / "eval-cache")[0]  # type: ignore[attr-defined]
    return run._eval_x  # type: ignore[attr-defined]


def _measured_eval_activations(run: _Run) -> Any:
    """The eval cache's activations on which L0 is measured: all of them, or, with
    ``data.exclude_outliers``, those of norm at most the outlier threshold (the
    evaluation's headline L0 is measured on the same tokens)."""
    X = _eval_activations(run)
    if not run.cfg.data["exclude_outliers"]:
        return X
    from aensae.llm.normalise import token_norms

    stats = _cache_stats(run)
    return X[token_norms(X) <= stats["outlier_threshold"]]


def _calibrate_and_train(run: _Run, on_phase: Callable[[str], None] | None
                         ) -> list[dict[str, Any]]:
    """Phase 3: the passes; return one plan entry per (family, variant, run target, seed).

    The calibration seed's passes search each calibrated family's penalties for its run
    targets (``target_l0`` itself, or with ``calibrate.frontier`` the points on either
    side of each target); every other seed of ``experiment.seeds`` then trains the chosen
    penalties (and the direct ``k`` of TopK families) in a pass of its own."""
    from aensae.experiments.calibration import (
        add_points,
        finish,
        initial_ladder,
        new_state,
        next_penalties,
    )

    cfg = run.cfg
    tol = cfg.calibrate["tolerance"]
    states: dict[tuple[str, str], Any] = {}
    todo: dict[tuple[str, str], list[float]] = {}
    direct: list[tuple[Any, dict[str, Any], str, Any]] = []
    variants = [(fam, hyper, variant_id(hyper)) for fam in cfg.families
                for hyper in fam.variants()]
    for fam, hyper, variant in variants:
        if fam.arch in DIRECT_K:
            direct += [(fam, hyper, variant, max(1, int(round(t)))) for t in fam.target_l0]
            continue
        bounds = tuple(fam.calibrate_range)  # type: ignore[arg-type]
        states[(fam.name, variant)] = (fam, hyper, new_state(
            bounds, list(fam.run_targets(cfg.frontier))))
        todo[(fam.name, variant)] = initial_ladder(bounds, cfg.calibrate["ladder"])
    where: dict[tuple[str, str, Any], tuple[int, str]] = {}  # (fam, variant, value) -> SAE
    index = 0
    pending: list[tuple[Any, dict[str, Any], str, Any]] = list(direct)
    while True:
        for key, ps in todo.items():
            fam, hyper, _ = states[key]
            pending += [(fam, hyper, key[1], p) for p in ps]
        if not pending:
            break
        l0s = _train_pass(run, index, pending)
        for fam, _, variant, value in pending:
            where[(fam.name, variant, value)] = (
                index, _sae_name(fam.name, variant, fam.sparsity_param, value))
        for key, ps in todo.items():
            st = states[key][2]
            add_points(st, [l0s[_sae_name(key[0], key[1], states[key][0].sparsity_param, p)]
                            for p in ps], ps)
        _write_calibration(run, states, where)
        if on_phase is not None:
            on_phase(f"pass-{index}")
        index += 1
        pending = []
        todo = {}
        if index >= cfg.calibrate["max_passes"]:
            log(f"calibration: stopped after calibrate.max_passes = {index} passes; "
                 "targets not bracketed by then are reported unreachable")
            break
        for key, (_, _, st) in states.items():
            nxt = next_penalties(st, cfg.calibrate["rounds"], tol)
            if nxt:
                todo[key] = nxt
    # the chosen penalty per target; an interpolated one is trained in a last pass
    plan: list[dict[str, Any]] = []
    last: list[tuple[Any, dict[str, Any], str, Any]] = []
    for fam, hyper, variant in variants:
        if fam.arch in DIRECT_K:
            for t in fam.target_l0:
                k = max(1, int(round(t)))
                plan.append({"family": fam, "hyper": hyper, "variant": variant, "target": t,
                             "value": k, "extrapolated": False})
            continue
        res = finish(states[(fam.name, variant)][2], tol)
        for t in fam.run_targets(cfg.frontier):
            if t in res["penalties"]:
                p = res["penalties"][t]
                plan.append({"family": fam, "hyper": hyper, "variant": variant, "target": t,
                             "value": p, "extrapolated": res["extrapolated"][t]})
                if (fam.name, variant, p) not in where and all(
                        (m[0].name, m[2], m[3]) != (fam.name, variant, p) for m in last):
                    last.append((fam, hyper, variant, p))
            else:
                plan.append({"family": fam, "hyper": hyper, "variant": variant, "target": t,
                             "unreachable": res["unreachable"][t],
                             "limits": states[(fam.name, variant)][2]["limits"]})
    if last:
        _train_pass(run, index, last)
        for fam, _, variant, value in last:
            where[(fam.name, variant, value)] = (
                index, _sae_name(fam.name, variant, fam.sparsity_param, value))
        _write_calibration(run, states, where)
        if on_phase is not None:
            on_phase(f"pass-{index}")
    calibration_seed = cfg.experiment["seed"]
    for entry in plan:
        entry["seed"] = calibration_seed
        if "value" in entry:
            entry["pass"], entry["sae"] = where[(entry["family"].name, entry["variant"],
                                                 entry["value"])]
    chosen = [e for e in plan if "value" in e]
    members = []
    for e in chosen:  # one SAE per (family, variant, value): two targets may share one
        m = (e["family"], e["hyper"], e["variant"], e["value"])
        if all((x[0].name, x[2], x[3]) != (m[0].name, m[2], m[3]) for x in members):
            members.append(m)
    index += 1 if last else 0
    for seed in cfg.seeds:
        if seed == calibration_seed or not members:
            continue
        _train_pass(run, index, members, seed)
        for e in chosen:
            name = _sae_name(e["family"].name, e["variant"], e["family"].sparsity_param,
                             e["value"], seed)
            plan.append({**e, "seed": seed, "pass": index, "sae": name})
        if on_phase is not None:
            on_phase(f"pass-{index}")
        index += 1
    return plan


def _write_calibration(run: _Run, states: dict[tuple[str, str], Any],
                       where: dict[tuple[str, str, Any], tuple[int, str]]) -> None:
    rec = {f"{name}/{variant}": {"arch": fam.arch, "param": fam.sparsity_param,
                                 "hyper": hyper, "bounds": st["bounds"],
                                 "limits": st["limits"], "targets": st["targets"],
                                 "points": st["points"], "refined": st["refined"]}
           for (name, variant), (fam, hyper, st) in states.items()}
    trained = [{"family": k[0], "variant": k[1], "value": k[2], "pass": v[0], "sae": v[1]}
               for k, v in where.items()]
    atomic_write_json(run.out / CALIBRATION_FILE, {"variants": rec, "trained": trained})


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of an eval record (not booleans), nested records flattened: a nested
    key keeps its name unless it would repeat one already taken, then ``parent.key``."""
    out: dict[str, float] = {}
    nested = []
    for k, v in record.items():
        if k in _NOT_METRICS:
            continue
        if isinstance(v, dict):
            nested.append((k, v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = float(v)
    for k, v in nested:
        for kk, vv in _flatten(v).items():
            out[kk if kk not in out else f"{k}.{kk}"] = vv
    return out


def _evaluate(run: _Run, plan: list[dict[str, Any]], stats: dict[str, Any],
              on_phase: Callable[[str], None] | None) -> dict[str, dict[str, Any]]:
    """Phase 4: the chosen SAEs, ``eval.group_size`` per spliced evaluation."""
    saes = sorted({(e["pass"], e["sae"]) for e in plan if "sae" in e})
    size = run.cfg.eval["group_size"]
    groups = [saes[i:i + size] for i in range(0, len(saes), size)]
    results: dict[str, dict[str, Any]] = {}
    for gi, members in enumerate(groups):
        keys = [f"pass-{p}/{n}" for p, n in members]
        path = run.out / "evals" / f"group-{gi}.json"
        rec = None
        if path.is_file():
            rec = json.loads(path.read_text(encoding="utf-8"))
            if rec.get("members") != keys:
                rec = None
        if rec is None:
            t0 = _clock()
            rec = _eval_group(run, members, keys, stats)
            atomic_write_json(path, rec)
            run.record_time(f"eval_{gi}", t0)
            if on_phase is not None:
                on_phase(f"eval-{gi}")
        for key in keys:
            results[key] = {**rec["saes"][key], "_common": rec["common"],
                            "_seconds": rec["seconds"] / len(keys)}
    return results


def _eval_group(run: _Run, members: list[tuple[int, str]], keys: list[str],
                stats: dict[str, Any]) -> dict[str, Any]:
    import torch

    from aensae.llm.normalise import token_norms
    from aensae.llm.splice import (
        COMMON_BOTH_WAYS,
        WAY_SUFFIX,
        evaluate_saes,
        load_spliced_sae,
    )
    from aensae.metrics import explained_variance, explained_variance_centred

    cfg = run.cfg
    spliced = []
    for (p, n), key in zip(members, keys, strict=True):
        s = load_spliced_sae(run.out / "passes" / f"pass-{p}" / n)
        s.name = key
        spliced.append(s)
    log(f"eval: {len(spliced)} SAEs spliced into {cfg.data['model']} on "
         f"{cfg.eval['tokens']:,} eval tokens")
    t0 = time.perf_counter()
    ids, keep = run.eval_windows()
    exclude = bool(cfg.data["exclude_outliers"])
    res = evaluate_saes(run.lm, spliced, ids, keep, cfg.data["layer"], cfg.data["hook"],
                        batch_size=cfg.eval["batch_size"], progress=run.progress,
                        exact_tokens=cfg.eval["exact_tokens"],
                        exact_tol=cfg.eval["exact_tol"],
                        outlier_threshold=stats["outlier_threshold"],
                        exclude_outliers=exclude, rare_rate=cfg.eval["rare_rate"])
    X = _eval_activations(run)
    norms = token_norms(X)
    inlier = (norms <= stats["outlier_threshold"]).numpy()
    Xn = X.numpy()
    # the reference's defective splice is measured on every token: its mean-ablation
    # baseline is every token's too
    ce_mean_all = res.get("ce_mean_ablation_all_tokens", res["ce_mean_ablation"])
    saes = {}
    for s in spliced:
        r = dict(res["saes"][s.name])
        with torch.no_grad():
            x_hat, _ = s.reconstruct(X.to(s.sae.W_dec.dtype))
        xh = x_hat.to(torch.float64).numpy()
        r["explained_variance_no_outliers"] = explained_variance(Xn[inlier], xh[inlier])
        centred = {"all": explained_variance_centred(Xn, xh),
                   "kept": explained_variance_centred(Xn[inlier], xh[inlier])}
        r["explained_variance_centred"] = centred["kept" if exclude else "all"]
        for way, value in centred.items():
            r[f"explained_variance_centred{WAY_SUFFIX[way]}"] = value
        r["explained_variance_eval_cache"] = explained_variance(Xn, xh)
        base = ce_mean_all - res["ce_clean"]
        r["ce_loss_score_unnormalised_splice_mean_ablation"] = (
            (ce_mean_all - r["ce_unnormalised_splice"]) / base if base != 0 else math.nan)
        saes[s.name] = r
    common = {k: res[k] for k in ("tokens", "scored_positions", "windows", "ctx", "d_in",
                                  "ce_clean", "ce_zero", "ce_mean_ablation", "kl_zero",
                                  "kl_mean_ablation")}
    common.update({k + suffix: res[k + suffix] for k in COMMON_BOTH_WAYS
                   for suffix in WAY_SUFFIX.values() if k + suffix in res})
    common["eval_excluded_tokens"] = res.get("excluded_tokens", 0) if exclude else 0
    common["eval_tokens_measured"] = res.get("tokens_measured", res["tokens"])
    common["eval_outlier_tokens"] = int((~inlier).sum())
    return {"members": keys, "common": common, "saes": saes, "cost": res["cost"],
            "seconds": time.perf_counter() - t0, "device": str(run.lm.device)}


# ----------------------------------------------------------------------------- rows
def build_rows(cfg: LLMGridConfig, out: Path, plan: list[dict[str, Any]],
               evals: dict[str, dict[str, Any]], stats: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (family, variant, target): provenance, training, evaluation."""
    from aensae.llm.cache import read_manifest
    from aensae.llm.training import hold_ramp_steps, window_columns

    man = read_manifest(out / "cache", "cache", f"remove {out / 'cache'} to harvest it again")
    tr, d = cfg.train, cfg.data
    prov = {"config_name": cfg.name, "config_hash": cfg.config_hash(),
            "aensae_version": __version__, "model": d["model"], "layer": d["layer"],
            "hook": d["hook"], "text": d["text"], "cache_tokens": man["tokens"],
            "d_in": man["d_in"], "d_sae": tr["d_sae"], "steps": tr["steps"],
            "batch_size": tr["batch_size"], "lr": tr["lr"],
            "normalisation": tr["normalisation"],
            "normalisation_constant": (man["normalisation"]["scalar_constant"]
                                       if tr["normalisation"] == "scalar" else None),
            "calibration_seed": cfg.experiment["seed"], "calibrate_frontier": cfg.frontier,
            "outlier_factor": stats["outlier_factor"], "exact_tokens": cfg.eval["exact_tokens"],
            "exclude_outliers": cfg.data["exclude_outliers"],
            "outlier_threshold": stats["outlier_threshold"],
            "train_excluded_tokens": (stats["outlier_tokens"] if cfg.data["exclude_outliers"]
                                      else 0),
            "rare_rate": cfg.eval["rare_rate"],
            "cache_median_norm": stats["median_norm"], "cache_max_norm": stats["max_norm"],
            "cache_outlier_tokens": stats["outlier_tokens"],
            "cache_outlier_position1": stats["outlier_positions"].get("1", 0),
            "cache_position1_tokens": stats["position1_tokens"],
            "cache_position1_median_norm": stats["position1_median_norm"],
            "cache_outlier_distinct_token_ids": len(stats["outlier_token_ids"]),
            "cache_outlier_sum_sq_share": stats["outlier_sum_sq_share"],
            "cache_scalar_constant": stats["scalar_constant"],
            "cache_scalar_constant_no_outliers": stats["scalar_constant_no_outliers"]}
    rows = []
    tol = cfg.calibrate["tolerance"]
    several = len(cfg.seeds) > 1
    for e in plan:
        fam = e["family"]
        seed_tag = f"-s{e['seed']}" if several else ""
        base = {**prov, "seed": e["seed"], "family": fam.name, "arch": fam.arch,
                "init": e["hyper"].get("init", "tied"), "target_l0": float(e["target"]),
                "variant": e["variant"], "calibrated": fam.calibrated,
                "calibrated_param": fam.sparsity_param,
                **{f"hp_{k}": v for k, v in e["hyper"].items()}}
        if "sae" not in e:
            lo, hi = e["unreachable"]
            rows.append({**base, "kind": "unreachable", "l0_seen_min": lo, "l0_seen_max": hi,
                         "penalty_searched_min": e["limits"][0],
                         "penalty_searched_max": e["limits"][1],
                         "run_id": f"unreachable-{fam.name}-{e['variant']}-t{e['target']:g}"})
            continue
        key = f"pass-{e['pass']}/{e['sae']}"
        folder = out / "passes" / f"pass-{e['pass']}" / e["sae"]
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        cfg_json = json.loads((folder / "cfg.json").read_text(encoding="utf-8"))
        ev = dict(evals[key])
        common = ev.pop("_common")
        seconds = ev.pop("_seconds")
        hyper = cfg_json.get("hyper", {})
        llm_rec = cfg_json.get("llm") or {}
        used = (llm_rec.get("normalisation") or {}).get("constant")
        row = {**base, "kind": "sae",
               "run_id": f"{fam.name}-{e['variant']}-t{e['target']:g}{seed_tag}",
               "pass": e["pass"], "sae": e["sae"], "calibrated_value": e["value"],
               "calibration_extrapolated": e["extrapolated"],
               **{f"hp_{k}": v for k, v in hyper.items() if isinstance(v, (int, float, str))},
               "dead_window_tokens": metrics["dead_window_tokens"],
               **window_columns(metrics["dead"], tr["batch_size"],
                                hold_ramp_steps(hyper, tr["steps"])),
               "train_loss_last": metrics.get("train_loss_last"),
               "train_seconds": metrics.get("seconds"), "device": metrics.get("device"),
               "eval_seconds": seconds, "eval_tokens": common["tokens"],
               "eval_outlier_tokens": common["eval_outlier_tokens"],
               "eval_excluded_tokens": common.get("eval_excluded_tokens", 0),
               "eval_tokens_measured": common.get("eval_tokens_measured", common["tokens"]),
               **{k: v for k, v in common.items() if k.startswith(("ce_", "kl_"))}}
        if used is not None:  # the constant the SAE was trained and spliced with
            row["normalisation_constant"] = used
        row.update(_flatten(ev))
        l0 = row.get("l0")
        ratio = l0 / e["target"] if isinstance(l0, float) and e["target"] > 0 else None
        row["l0_ratio"] = ratio
        row["l0_matched"] = ("yes" if ratio is not None and 1 / tol <= ratio <= tol
                             else "no")
        rows.append(row)
    return rows


def write_llm_figures(results_dir: str | Path) -> list[Path]:
    """Check ``results.csv``, draw the LLM figures and the report, swap them in together;
    return the figure paths, then the report's."""
    from aensae.experiments.llm.figures import draw_llm_figures
    from aensae.experiments.llm.report import write_llm_report

    results_dir = Path(results_dir)
    check_llm_table(results_dir / RESULTS_FILE)
    with folder_lock("RESULTS_DIR", results_dir), \
            staged_report(results_dir, FIGURE_FILES) as stage:
        files = draw_llm_figures(results_dir, stage / FIGURES_DIR)
        write_llm_report(results_dir, stage / REPORT_FILE)
    return [results_dir / FIGURES_DIR / p.name for p in files] + [results_dir / REPORT_FILE]


# ----------------------------------------------------------------------------- main
def _largest_pass(cfg: LLMGridConfig) -> int:
    """SAEs trained together in the largest pass: pass 0, the calibration ladders of the
    calibrated families and every direct-k run (later passes hold at most as many)."""
    n = 0
    for fam in cfg.families:
        per = len(fam.target_l0) if fam.arch in DIRECT_K else cfg.calibrate["ladder"]
        n += len(fam.variants()) * max(1, per)
    return max(1, n)


def check_llm_reproduce(cfg: LLMGridConfig, out: str | Path) -> Path:
    """Checks before any work: the model can be had here (and its config: layer, window
    length), the device, the sizes against the memory limit, the text, ``out``."""
    from aensae.llm.cache import _check_harvest_memory
    from aensae.llm.models import check_ctx, config_shape
    from aensae.llm.text import check_not_empty, open_text

    shape = config_shape(check_model_reachable(cfg))
    check_device("config experiment.device", cfg.experiment["device"])
    d, tr = cfg.data, cfg.train
    if tr["batch_size"] > d["tokens"]:
        raise InputError(f"config train.batch_size {tr['batch_size']} exceeds data.tokens "
                         f"{d['tokens']}: each batch would hold some tokens twice")
    check_ctx("config data.ctx", d["ctx"], shape, d["model"])
    limit = cfg.experiment["max_memory_gb"]
    for split in ("train", "eval"):
        _check_harvest_memory(_harvest_config(cfg, split), shape, True, limit,
                              override=_MEMORY_KEY)
    _check_grid_train_memory(cfg, shape.d_model, limit)
    out = check_output_dir("--out", out)
    source = open_text(d["text"], text_column=d["text_column"])
    check_not_empty(source, "train", d["eval_fraction"])
    check_not_empty(source, "eval", d["eval_fraction"])
    return out


def _check_grid_train_memory(cfg: LLMGridConfig, d_in: int, limit: float | None) -> None:
    """The largest training pass against the memory limit (the estimate of
    :func:`aensae.llm.training.train_memory`, with a shuffle buffer of the whole
    ``data.tokens`` at most)."""
    from aensae._dtypes import torch_dtype
    from aensae._validation import check_memory

    tr = cfg.train
    e = torch_dtype(cfg.experiment["dtype"]).itemsize
    n = _largest_pass(cfg)
    params = n * 4 * (2 * d_in * tr["d_sae"] + 4 * tr["d_sae"] + d_in) * e
    step = (6 * tr["batch_size"] * tr["d_sae"] + 3 * tr["batch_size"] * d_in) * e
    rows = min(cfg.data["tokens"], 2**17 + cfg.data["shard_windows"] * cfg.data["ctx"])
    buffer = rows * (2 * d_in * 4 + 8)
    key = "config train.d_sae" if params >= step else "config train.batch_size"
    check_memory(f"{key} {tr['d_sae'] if params >= step else tr['batch_size']}",
                 params + step + buffer,
                 f"a training pass ({n} SAEs of {tr['d_sae']} latents on {d_in}-wide "
                 f"activations, batches of {tr['batch_size']})", limit_gib=limit,
                 override=_MEMORY_KEY)


def _lock_subfolders(out: Path, held: ExitStack) -> None:
    """Take the lock of every folder below ``out`` that has a lock file (a cache or a
    training pass, which ``aensae llm harvest`` / ``llm train`` may be writing on their
    own): ``--overwrite`` never removes a folder, or a lock file, that another process
    holds."""
    if not out.is_dir():
        return
    for folder in sorted(p.parent for p in out.glob(f"*/{LOCK_FILE}")) + sorted(
            p.parent for p in out.glob(f"passes/*/{LOCK_FILE}")):
        held.enter_context(folder_lock("--out", folder))


def reproduce_llm(cfg: LLMGridConfig, out: str | Path, *, progress: bool = True,
                  draw: bool = True, overwrite: bool = False,
                  on_phase: Callable[[str], None] | None = None) -> Path:
    """Run the LLM grid ``cfg`` into ``out`` (resumable); return the results table's path.

    ``on_phase(name)`` is called after each phase finished (``harvest``, ``pass-<i>``,
    ``eval-<i>``; tests use it to interrupt a run part-way).
    """
    from aensae.experiments.llm.config import check_hub_model

    check_hub_model(cfg.data["model"], cfg.data["revision"])

    try:
        import aensae.llm  # noqa: F401
    except ImportError as err:
        raise InputError(f"config data.kind 'llm': {err}") from None
    out = check_llm_reproduce(cfg, out)
    with folder_lock("--out", out):  # one writer: taken after the checks, before any write
        with ExitStack() as held:
            if overwrite:
                _lock_subfolders(out, held)
            open_output(out, manifest(cfg), OUTPUT_TREE, overwrite=overwrite)
        # what a killed run left (the caches and training passes clean their own folders)
        remove_partial_files(out / "evals")
        return _reproduce_locked(cfg, out, progress, draw, on_phase)


def _reproduce_locked(cfg: LLMGridConfig, out: Path, progress: bool, draw: bool,
                      on_phase: Callable[[str], None] | None) -> Path:
    """The phases of :func:`reproduce_llm`, with ``out`` locked."""
    import torch

    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg.experiment["threads"]:
        torch.set_num_threads(cfg.experiment["threads"])
    try:
        run = _Run(cfg, out, progress)
        log(f"aensae reproduce: LLM config {cfg.name!r} ({cfg.source}) -> {out}")
        _harvest(run, "train", "cache")
        _harvest(run, "eval", "eval-cache")
        if on_phase is not None:
            on_phase("harvest")
        stats = _cache_stats(run)
        log(f"cache: {stats['tokens']:,} tokens, median norm {stats['median_norm']:.4g}, "
             f"{stats['outlier_tokens']} outlier tokens (norm > {stats['outlier_threshold']:.4g}"
             f") holding {stats['outlier_sum_sq_share']:.1%} of sum ||x||^2")
        plan = _calibrate_and_train(run, on_phase)
        evals = _evaluate(run, plan, stats, on_phase)
        rows = build_rows(cfg, out, plan, evals, stats)
    finally:
        torch.set_num_threads(threads)
    table = out / RESULTS_FILE
    write_table(table, rows, first=LLM_ID_COLUMNS, required=LLM_REQUIRED_COLUMNS)
    log(f"results: {table} ({len(rows)} rows) in {hms(time.perf_counter() - t_start)}")
    if draw:
        files = write_llm_figures(out)
        log(f"figures: {len(files) - 1} files in {out / 'figures'}; report: "
             f"{out / 'report.md'}")
    return table
