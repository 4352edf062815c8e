r"""One trainer for every architecture: Adam, several SAEs per pass, exact resume.

Each optimizer step ``t = 0, 1, ...`` of each model, on the shared batch ``x_t``:

1. ``model.compute_grads(x_t)`` -- the loss and its gradients (autograd, or a hand-derived
   backward checked against autograd);
2. optional clipping of the model's global gradient norm to ``grad_clip``;
3. Adam with learning rate ``lr * min(1, (t + 1) / lr_warmup_steps)`` (``lr`` when there
   is no warmup);
4. decoder rows projected onto the unit sphere, then ``model.after_step`` (EMA of the
   AEN-SAE, BatchTopK threshold, ...);
5. dead-latent tracking on the batch's codes (:class:`~aensae.saes.dead.DeadTracker`).

Every model sees only the batch, and its Adam moments are its own: the models share one
Adam instance (a single fused kernel per step for all of them), but Adam is elementwise,
so training several models together gives exactly the weights each would get alone on
the same batches. All losses and gradients of a step are checked before any update, so
every model's codes of the step are held until then (one (B, d_sae) tensor per model).

Data: any iterable of batches, or a callable ``start -> iterator`` that yields batches
from batch index ``start`` on (used to resume without replaying the stream). A batch is a
tensor ``X`` (B, d_in) or a tuple ``(X, H)`` whose true codes ``H`` are not used for
training. Checkpoints (``checkpoint.pt``, written atomically) hold the step, every
model's parameters and buffers, optimizer states, dead trackers, loss history and the
torch RNG state; resuming gives the same final weights as an uninterrupted run.

Stacked runs (``stack=True``, every model in a stacked group): items 1-5 for all models
are one step with no host reads (:class:`~aensae.saes.training.static_step.StaticStep`): the
checks of item 1 are flags on the device, read every ``sync_every`` steps, and a failing
step stops every update from then on, so the error names the failing step and the models
stay as they were before it. On CUDA that step is captured in a CUDA graph and replayed
(``graph``); ``ModelResult.path`` and ``path_steps`` record which step ran.

Data-parallel (``train(..., world=World)``, :mod:`aensae.saes.training.distributed`): each rank's
data yield its equal share of every batch; after item 1 the gradients are averaged over
the ranks (DDP) and the losses and batch statistics reduced, so items 2-5 act on the
global batch's, identically on every rank. Rank 0 writes the checkpoints (with the
number of ranks, which a resume must match) while the others wait.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.adam import adam as _functional_adam

from aensae import __version__
from aensae._dtypes import SAE_DTYPES, torch_dtype
from aensae._io import atomic_write
from aensae._validation import InputError, check_int, check_real
from aensae.saes.base import SAE, LossOutput
from aensae.saes.collectives import batch_context
from aensae.saes.dead import DeadTracker
from aensae.saes.training.distributed import GradSync, World
from aensae.saes.training.stacked import PATH_SEPARATE, StackedGroup, group_models, step_path
from aensae.saes.training.static_step import GRAPH_CHOICES, StaticStep, resolve_graph_mode

__all__ = ["CHECKPOINT_FILE", "ModelResult", "TrainConfig", "resolve_device", "train"]

CHECKPOINT_FILE = "checkpoint.pt"
#: What every checkpoint holds (:meth:`_Run.state_dict`).
_CHECKPOINT_KEYS = ("step", "config", "model_configs", "models", "optims", "dead", "results",
                    "rng")
#: Configuration fields a resumed run must share with its checkpoint.
_RESUME_KEYS = ("lr", "adam_betas", "adam_eps", "grad_clip", "lr_warmup_steps", "dead_window",
                "dead_last", "dtype", "seed", "stack")


@dataclass
class TrainConfig:
    """Training configuration (validated on construction).

    Attributes
    ----------
    steps : int >= 1
        Optimizer steps (one batch each).
    lr : float > 0
        Adam learning rate.
    adam_betas : (float, float)
    adam_eps : float > 0
    grad_clip : float > 0 or None
        Max global gradient norm per model (``None``: no clipping).
    lr_warmup_steps : int >= 0
        Linear learning-rate warmup length (0: none).
    dead_window : int >= 1
        Dead-latent window in samples.
    dead_last : int >= 1
        Windows in the reported median dead fraction.
    eval_every : int >= 0
        Run the evaluation callback every this many steps (0: only at the end).
    checkpoint_every : int >= 0
        Write a checkpoint every this many steps (0: never; needs ``checkpoint_dir``).
    device : str
        ``"auto"`` (CUDA when available, else CPU) or a torch device string.
    dtype : str
        ``"float32"`` or ``"float64"``.
    seed : int >= 0
        Seed of the global torch RNG at the start of training.
    progress : bool
        Show a tqdm progress bar.
    stack : bool
        Compute the losses and gradients of the models of one family (ReLU family, TopK,
        BatchTopK, JumpReLU) that share ``d_sae`` with batched products
        (:mod:`aensae.saes.training.stacked`); faster for sweeps, equal to separate training up to
        floating-point rounding instead of bit for bit. ``ModelResult.path`` records
        which path each model took.
    graph : ``"auto"``, ``"off"`` or ``"emulate"``
        For a run whose models are all stacked: ``auto`` captures the step in a CUDA
        graph on a CUDA device (eager elsewhere), ``off`` never does, ``emulate`` uses
        the CPU stand-in for CUDA graphs (:class:`aensae.saes.training.graphs.EmulatedGraph`; for
        tests, slow). Replays equal the eager step (checked at capture); not part of a
        run's configuration.
    sync_every : int >= 0
        Steps between host reads of a stacked run's losses and checks (0: 1 on the CPU,
        64 on other devices). Not part of a run's configuration.
    """

    steps: int
    lr: float = 1e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float | None = None
    lr_warmup_steps: int = 0
    dead_window: int = 65536
    dead_last: int = 5
    eval_every: int = 0
    checkpoint_every: int = 0
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    progress: bool = False
    stack: bool = False
    graph: str = "auto"
    sync_every: int = 0

    def __post_init__(self) -> None:
        check_int("steps", self.steps, low=1)
        check_real("lr", self.lr, low=0.0, low_inclusive=False)
        if len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas must be a pair, got {self.adam_betas!r}")
        self.adam_betas = tuple(  # type: ignore[assignment]
            check_real(f"adam_betas[{i}]", b, low=0.0, high=1.0, high_inclusive=False)
            for i, b in enumerate(self.adam_betas))
        check_real("adam_eps", self.adam_eps, low=0.0, low_inclusive=False)
        if self.grad_clip is not None:
            check_real("grad_clip", self.grad_clip, low=0.0, low_inclusive=False)
        check_int("lr_warmup_steps", self.lr_warmup_steps, low=0)
        check_int("dead_window", self.dead_window, low=1)
        check_int("dead_last", self.dead_last, low=1)
        check_int("eval_every", self.eval_every, low=0)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        check_int("seed", self.seed, low=0)
        if self.dtype not in SAE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(SAE_DTYPES)}, got {self.dtype!r}")
        if self.graph not in GRAPH_CHOICES:
            raise ValueError(f"graph must be one of {', '.join(GRAPH_CHOICES)}, got "
                             f"{self.graph!r}")
        check_int("sync_every", self.sync_every, low=0)
        resolve_device(self.device)

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based)."""
        if self.lr_warmup_steps == 0:
            return self.lr
        return self.lr * min(1.0, (step + 1) / self.lr_warmup_steps)

    def lr_final(self, step: int) -> bool:
        """Whether the learning rate stays :meth:`lr_at` ``(step)`` from step ``step`` on."""
        return step + 1 >= self.lr_warmup_steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else -> ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto' or a torch device string, got {device!r}"
                         ) from err


@dataclass
class ModelResult:
    """Outcome of training one model."""

    name: str
    arch: str
    steps: int
    train_loss: list[float] = field(default_factory=list)
    last_terms: dict[str, float] = field(default_factory=dict)
    dead: dict[str, Any] = field(default_factory=dict)
    evals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""  # the device trained on: what ``TrainConfig.device`` resolved to
    # the step it took most often (aensae.saes.training.stacked.PATHS), the steps of each path
    # (over every session of a resumed run) and, when a graph was not used, why
    path: str = ""
    path_steps: dict[str, int] = field(default_factory=dict)
    path_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


def _make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """Fused Adam (``capturable`` for a step captured in a graph), else foreach Adam."""
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": cfg.adam_betas, "eps": cfg.adam_eps}
    try:
        return torch.optim.Adam(params, fused=True, capturable=capturable, **kwargs)
    except (RuntimeError, ValueError):  # fused kernels unavailable for this device/dtype
        return torch.optim.Adam(params, foreach=True, **kwargs)


class _AdamStep:
    """``optim.step()`` for a single-group Adam, through torch's functional ``adam``.

    The optimizer keeps the state (created by its own first ``step()``, saved and loaded
    in its own format); later steps hand the same tensors and hyperparameters to
    :func:`torch.optim.adam.adam` (public: in the module's ``__all__``), the function
    ``Adam.step`` calls, so the update is the same kernel on the same arguments (a test
    compares the trained weights with ``torch.optim.Adam`` bit for bit). It skips
    ``Adam.step``'s per-call bookkeeping (hooks, regrouping the state every call): Python
    work that, between the step's large matrix products, runs with cold caches and costs
    several times what it costs in isolation. The tensor lists are cached and rebuilt
    after :meth:`invalidate` (a loaded state); while a parameter has no gradient or no
    state yet, ``optim.step()`` itself runs.
    """

    def __init__(self, optim: torch.optim.Adam) -> None:
        if len(optim.param_groups) != 1:
            raise ValueError("_AdamStep supports a single parameter group")
        self.optim = optim
        self.params: list[torch.Tensor] = list(optim.param_groups[0]["params"])
        self._lists: tuple[list[torch.Tensor], ...] | None = None

    def invalidate(self) -> None:
        """Forget the cached state tensors (call after the optimizer's state is replaced)."""
        self._lists = None

    def step(self, lr: float, found_inf: torch.Tensor | None = None) -> None:
        """One Adam step of every parameter with learning rate ``lr``.

        ``found_inf`` (fused Adam only): a 0-d float32 device tensor; where it is 1 the
        step changes nothing (``torch._fused_adam_`` skips it), as under AMP's scaler.
        """
        group = self.optim.param_groups[0]
        group["lr"] = lr
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads) or (
                self._lists is None and any(p not in self.optim.state for p in self.params)):
            self.optim.found_inf = found_inf  # read by Adam.step (the AMP protocol)
            self.optim.step()  # skips gradient-less parameters / creates the state
            return
        if self._lists is None:
            states = [self.optim.state[p] for p in self.params]
            self._lists = ([s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                           [s["step"] for s in states])
        exp_avgs, exp_avg_sqs, steps = self._lists
        beta1, beta2 = group["betas"]
        with torch.no_grad():  # as Adam.step (differentiable=False)
            _functional_adam(
                self.params, grads, exp_avgs, exp_avg_sqs, [], steps,
                foreach=group["foreach"], capturable=group["capturable"],
                differentiable=group["differentiable"], fused=group["fused"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, lr=lr,
                weight_decay=group["weight_decay"], eps=group["eps"],
                maximize=group["maximize"], found_inf=found_inf)

    def state_tensors(self) -> list[torch.Tensor]:
        """Every state tensor of the optimizer (moments and step counts)."""
        return [t for p in self.params for t in self.optim.state.get(p, {}).values()
                if isinstance(t, torch.Tensor)]


def _unpack(batch: Any, step: int, d_in: int) -> torch.Tensor:
    X = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"batch at step {step} must be a torch.Tensor (B, {d_in}) or a tuple "
                        f"(X, H) of tensors, got {type(X).__name__}")
    if X.ndim != 2 or X.shape[1] != d_in:
        raise ValueError(f"batch at step {step} must have shape (B, {d_in}), "
                         f"got {tuple(X.shape)}")
    if X.shape[0] == 0:
        raise ValueError(f"batch at step {step} is empty (shape {tuple(X.shape)})")
    return X


class _Run:
    """State of one training run over several models."""

    def __init__(self, models: dict[str, SAE], cfg: TrainConfig,
                 world: World | None = None) -> None:
        self.models = models
        self.cfg = cfg
        self.world = world
        self.device = resolve_device(cfg.device) if world is None else world.device
        self.dtype = torch_dtype(cfg.dtype)
        d_ins = {m.d_in for m in models.values()}
        if len(d_ins) != 1:
            raise ValueError(f"all models trained together must share d_in, got "
                             f"{ {k: m.d_in for k, m in models.items()} }")
        self.d_in = d_ins.pop()
        for model in models.values():
            model.to(device=self.device, dtype=self.dtype)
            model.train()
            model.set_run_length(cfg.steps)  # adaptive models: a hold as a fraction of it
        self.dead = {k: DeadTracker(m.d_sae, cfg.dead_window, cfg.dead_last, probe=m.regime)
                     for k, m in models.items()}
        self.results = {k: ModelResult(k, m.arch, 0) for k, m in models.items()}
        self.step = 0
        self._last_terms: dict[str, dict[str, torch.Tensor]] = {}
        # stacked groups: one per (family, d_sae) of the stackable models
        # (aensae.saes.training.stacked).
        # Not under data parallelism: the stacked kernels compute BatchTopK's top-k, TopK's
        # AuxK normaliser and the AEN statistics over the local rows only, while a DDP step
        # needs them over the global batch (aensae.saes.training.distributed); each model then takes
        # the separate path, which gives the same numbers to rounding.
        self.groups: list[tuple[list[str], StackedGroup]] = (
            group_models(models) if cfg.stack and world is None else [])
        stacked = {k for names, _ in self.groups for k in names}
        self.paths = {k: step_path(k in stacked) for k in models}
        self.path_note = ""
        all_stacked = bool(self.groups) and len(stacked) == len(models)
        # One Adam over every model's parameters: Adam is elementwise, so each model gets
        # the update it would get alone, and the fused kernel runs once per step instead
        # of once per model. Checkpoints still hold one Adam state dict per model.
        self.params = {k: list(m.parameters()) for k, m in models.items()}
        self.optim = _make_optimizer([p for ps in self.params.values() for p in ps], cfg,
                                     capturable=all_stacked)
        self.adam = _AdamStep(self.optim)
        # a run of stacked groups alone takes the step without host reads (and graphs)
        self.static: StaticStep | None = None
        if all_stacked and self.optim.param_groups[0]["fused"]:
            self.static = StaticStep(
                self.groups, self.adam.step, self.adam.state_tensors,
                mode=resolve_graph_mode(cfg.graph, self.device),
                sync_every=cfg.sync_every or (1 if self.device.type == "cpu" else 64),
                grad_clip=cfg.grad_clip)
        elif all_stacked:
            self.path_note = (f"fused Adam is unavailable for {cfg.dtype} on {self.device}: "
                              "the stacked step checks its losses on the host each step")
        elif self.groups and cfg.graph != "off" and resolve_graph_mode(
                cfg.graph, self.device) != "eager":
            lone = sorted(set(models) - stacked)
            self.path_note = (f"model(s) {', '.join(map(repr, lone))} cannot be stacked, so "
                              "the stacked groups run eagerly with host checks each step")
        self._session_steps = 0
        # data-parallel: gradients averaged and step statistics reduced over the ranks
        self.sync = None if world is None else GradSync(models, world)

    # -------------------------------------------------------------- one step
    def step_all(self, X: torch.Tensor) -> None:
        self._session_steps += 1
        if self.static is not None:
            if not self.static.prepared:
                self.static.prepare(self.step, [self.results[k].train_loss
                                                for k in self.static.names],
                                    [self.dead[k] for k in self.static.names])
            self.static.run(X, self.step, self.cfg.lr_at(self.step),
                            self.cfg.lr_final(self.step))
            self.step += 1
            return
        X = X.to(device=self.device, dtype=self.dtype)
        # The batch is not scanned for NaN/inf up front: every loss contains the mean of
        # (x - x_hat)^2, so a NaN/inf entry makes the first model's loss non-finite, and
        # _check_loss then inspects the batch (before any update) to name the cause.
        lr = self.cfg.lr_at(self.step)
        outs: dict[str, LossOutput] = {}
        with batch_context(self.world):
            for names, group in self.groups:
                outs.update(zip(names, group.compute_grads(X), strict=True))
            for name, model in self.models.items():
                if name not in outs:
                    outs[name] = model.compute_grads(X)
        if self.sync is not None:  # X is this rank's share: make it the global batch's
            self.sync.reduce(outs, X.shape[0])
        # every loss and gradient is checked before any model is updated
        for name, model in self.models.items():
            out = outs[name]
            self._check_loss(name, model, out, X)
            if self.cfg.grad_clip is not None:
                try:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip,
                                                   error_if_nonfinite=True)
                except RuntimeError as err:
                    raise FloatingPointError(f"non-finite gradient of model {name!r} "
                                             f"({model.arch}) at step {self.step}") from err
        self.adam.step(lr)
        for _, group in self.groups:
            group.project_decoders()  # one batched projection per stacked group
        for name, model in self.models.items():
            out = outs[name]
            if self.paths[name] == PATH_SEPARATE:
                model.project_decoder()
            model.after_step(out)
            self.dead[name].update(out.h, out.stats.get("fired"), out.stats.get("samples"))
        self.step += 1

    def _check_loss(self, name: str, model: SAE, out: LossOutput, X: torch.Tensor) -> None:
        value = float(out.loss)
        if not math.isfinite(value):
            n_bad = int((~torch.isfinite(X)).sum())
            if n_bad:
                raise FloatingPointError(f"batch at step {self.step} holds {n_bad} NaN/inf "
                                         f"entries (shape {tuple(X.shape)})")
            raise FloatingPointError(f"loss of model {name!r} ({model.arch}) is {value} at "
                                     f"step {self.step}; training stopped before the update")
        self.results[name].train_loss.append(value)
        self._last_terms[name] = out.terms  # converted to floats only when reported

    def flush(self) -> None:
        """Read a stacked run's pending steps back (losses, checks); see StaticStep.flush."""
        if self.static is not None and self.static.prepared:
            self.static.flush()

    def sync_terms(self) -> None:
        """Copy the latest loss terms of every model into its result, as floats."""
        if self.static is not None and self.static.prepared and self.static.terms:
            for name, terms in self.static.last_terms().items():
                self.results[name].last_terms = terms
            return
        for name, terms in self._last_terms.items():
            self.results[name].last_terms = {k: float(v) for k, v in terms.items()}

    def record_paths(self) -> None:
        """Add this session's steps to every result's ``path_steps``; set ``path`` (the
        most taken, the later on a tie) and ``path_note``."""
        if self.static is not None:
            counts = dict(self.static.path_steps)
            self.static.path_steps.clear()
            note = self.static.note or self.path_note
        else:
            counts = None
            note = self.path_note
        for k, res in self.results.items():
            steps = counts if counts is not None else {self.paths[k]: self._session_steps}
            for path, n in steps.items():
                if n:
                    res.path_steps[path] = res.path_steps.get(path, 0) + n
            if res.path_steps:
                res.path = max(reversed(list(res.path_steps)), key=res.path_steps.__getitem__)
            else:
                res.path = self.paths[k]
            if note:
                res.path_note = note
        self._session_steps = 0

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        self.flush()
        self.sync_terms()
        self.record_paths()
        if self.static is not None and self.static.prepared:
            self.static.sync_trackers()
        return {
            "aensae_version": __version__,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model_configs": {k: m.config() for k, m in self.models.items()},
            "models": {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()}
                       for k, m in self.models.items()},
            "optims": {k: self._optim_state(k) for k in self.models},
            "dead": {k: d.state_dict() for k, d in self.dead.items()},
            "results": {k: r.to_dict() for k, r in self.results.items()},
            "rng": torch.get_rng_state(),
            "cuda_rng": (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []),
            "world_size": self.world_size,
        }

    @property
    def world_size(self) -> int:
        """Number of data-parallel ranks (1: a single process)."""
        return 1 if self.world is None else self.world.size

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        missing = sorted(set(_CHECKPOINT_KEYS) - set(state))
        if missing:
            raise InputError(f"checkpoint {path} is not a complete aensae checkpoint (no "
                             f"{', '.join(missing)}); delete it to start that training afresh")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            raise InputError(f"checkpoint {path} was written by a run on {saved_world} "
                             f"data-parallel rank(s), this run has {self.world_size}; resume "
                             f"with the same number (torchrun --nproc-per-node "
                             f"{saved_world}), or pass --overwrite to start afresh")
        saved_cfg, now_cfg = state["config"], self.cfg.to_dict()
        for key in _RESUME_KEYS:
            if saved_cfg[key] != now_cfg[key]:
                raise ValueError(f"checkpoint {path} was trained with {key}={saved_cfg[key]!r}, "
                                 f"this run has {key}={now_cfg[key]!r}; exact resume needs "
                                 "the same value")
        if set(state["models"]) != set(self.models):
            raise ValueError(f"checkpoint {path} holds models {sorted(state['models'])}, "
                             f"this run trains {sorted(self.models)}")
        for k, m in self.models.items():
            saved, now = state["model_configs"][k], m.config()
            for key in ("arch", "d_in", "d_sae", "hyper", "seed"):
                if saved[key] != now[key]:
                    raise ValueError(f"checkpoint {path}: model {k!r} has {key}={saved[key]!r}"
                                     f", this run has {key}={now[key]!r}")
            m.load_state_dict(state["models"][k])
            self._load_optim_state(k, state["optims"][k])
            self.dead[k].load_state_dict(state["dead"][k], self.device)
            self.results[k] = ModelResult(**state["results"][k])
        self.step = int(state["step"])
        if self.static is not None:  # re-read at the next step: state tensors were replaced
            self.static.invalidate()
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def _optim_state(self, name: str) -> dict[str, Any]:
        """Model ``name``'s part of the shared Adam, as the state dict of an Adam of its own."""
        params = self.params[name]
        group = {k: v for k, v in self.optim.param_groups[0].items() if k != "params"}
        group["capturable"] = False  # the format of every run: any run resumes from it
        return {"state": {i: self.optim.state[p] for i, p in enumerate(params)
                          if p in self.optim.state},
                "param_groups": [{**group, "params": list(range(len(params)))}]}

    def _load_optim_state(self, name: str, saved: dict[str, Any]) -> None:
        """Inverse of :meth:`_optim_state`; torch's own loader places and casts the tensors."""
        params = self.params[name]
        single = _make_optimizer(params, self.cfg)
        single.load_state_dict(saved)
        for p in params:
            self.optim.state.pop(p, None)
            if p in single.state:
                self.optim.state[p] = single.state[p]
        self.adam.invalidate()

    def save_checkpoint(self, path: Path) -> None:
        """Rank 0 writes ``path`` atomically; the other ranks wait until it is written."""
        if self.world is None or self.world.is_main:
            state = self.state_dict()
            atomic_write(path, lambda tmp: torch.save(state, tmp))
        if self.world is not None:
            self.world.barrier()


def _batches(data: Iterable[Any] | Callable[[int], Iterable[Any]], start: int) -> Iterator[Any]:
    if callable(data) and not hasattr(data, "__iter__"):
        return iter(data(start))
    it = iter(data)
    for i in range(start):
        try:
            next(it)
        except StopIteration:
            raise ValueError(f"data ended after {i} batches while skipping {start} batches "
                             "to resume") from None
    return it


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved in ``path``; a file torch cannot read back as a dict (truncated,
    overwritten, not a checkpoint) is an :class:`InputError` naming it."""
    import pickle
    import zipfile

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as err:
        raise InputError(f"checkpoint {path} is damaged ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); delete it to start that "
                         "training afresh") from None
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {path} is damaged (holds a {type(state).__name__}, not a "
                         "checkpoint); delete it to start that training afresh")
    return state


def train(
    models: SAE | Mapping[str, SAE],
    data: Iterable[Any] | Callable[[int], Iterable[Any]],
    config: TrainConfig,
    *,
    eval_fn: Callable[[SAE], dict[str, Any]] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    world: World | None = None,
) -> dict[str, ModelResult]:
    """Train one or several SAEs on the same batches.

    Parameters
    ----------
    models : SAE or mapping name -> SAE
        Models to train (moved in place to the configured device and dtype). A single
        model is named ``"model"``.
    data : iterable of batches, or callable ``start -> iterable``
        ``config.steps`` batches (B, d_in) or ``(X, H)``; see the module docstring.
    config : TrainConfig
    eval_fn : callable ``model -> dict``, optional
        Evaluation run every ``config.eval_every`` steps and after the last step; its
        results are appended to ``ModelResult.evals`` with the step.
    checkpoint_dir : path, optional
        Folder of ``checkpoint.pt``; with ``resume`` a checkpoint found there is loaded and
        training continues from its step.
    resume : bool
    world : World, optional
        Data-parallel training (:mod:`aensae.saes.training.distributed`, under ``torchrun``):
        ``data`` yields this rank's equal share of each global batch, the models train
        on ``world.device`` with gradients averaged by DDP and losses, dead latents and
        the models' batch statistics reduced over the ranks, so every rank ends with the
        weights one process gets on the whole batches (up to rounding). Rank 0 writes
        the checkpoints; a checkpoint resumes only with the same number of ranks.

    Returns
    -------
    dict name -> ModelResult

    Raises
    ------
    FloatingPointError
        When a batch, a loss or (with clipping) a gradient is not finite, naming the step
        (and the model); the failing update is not applied.
    """
    from tqdm.auto import tqdm

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if isinstance(models, SAE):
        models = {"model": models}
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be an SAE or a non-empty mapping name -> SAE")
    for k, m in models.items():
        if not isinstance(m, SAE):
            raise TypeError(f"models[{k!r}] must be an aensae SAE, got {type(m).__name__}")
    if config.checkpoint_every and checkpoint_dir is None:
        raise ValueError("checkpoint_every > 0 needs a checkpoint_dir")
    run = _Run(dict(models), config, world)
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE
    if ckpt is not None and resume and ckpt.is_file():
        # loaded on the CPU (RNG states must stay there); tensors move to the device on load
        run.load_state_dict(_read_checkpoint(ckpt), ckpt)
    else:
        torch.manual_seed(config.seed)
    start = run.step
    t0 = time.perf_counter()
    it = _batches(data, start)
    bar = tqdm(total=config.steps, initial=start, desc="train", dynamic_ncols=True,
               disable=not config.progress or (world is not None and not world.is_main))
    try:
        while run.step < config.steps:
            try:
                batch = next(it)
            except StopIteration:
                raise ValueError(f"data ended at step {run.step}, before steps="
                                 f"{config.steps}") from None
            run.step_all(_unpack(batch, run.step, run.d_in))
            bar.update(1)
            last = run.step == config.steps
            evaluate = eval_fn is not None and (last or (config.eval_every and
                                                         run.step % config.eval_every == 0))
            if last or evaluate:  # a stacked run's pending steps are checked first
                run.flush()
            if config.progress and run.step % 50 == 0:
                bar.set_postfix({k: f"{r.train_loss[-1]:.4g}"
                                 for k, r in list(run.results.items())[:4] if r.train_loss})
            if evaluate:
                assert eval_fn is not None
                for k, m in run.models.items():
                    run.results[k].evals.append({"step": run.step, **eval_fn(m)})
            if ckpt is not None and config.checkpoint_every and (
                    run.step % config.checkpoint_every == 0 or last):
                run.save_checkpoint(ckpt)
    finally:
        bar.close()
        if run.sync is not None:
            # the DDP wrapper goes now, on every rank at the same point: left to a traceback
            # that outlives the process group, its gloo teardown waits for a peer that has
            # moved on (an interrupted run then hangs instead of exiting)
            run.sync.close()
    elapsed = time.perf_counter() - t0
    run.flush()
    run.sync_terms()
    run.record_paths()
    for k, m in run.models.items():
        for pname, p in m.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise FloatingPointError(f"parameter {pname} of model {k!r} ({m.arch}) is not "
                                         f"finite after step {run.step}")
        res = run.results[k]
        res.steps = run.step
        res.device = str(run.device)  # set here, not at start: a resume may change it
        res.dead = run.dead[k].summary()
        res.seconds += elapsed
    return run.results
