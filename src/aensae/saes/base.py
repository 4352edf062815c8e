r"""The shared base of every amortized sparse autoencoder in aensae.

Encoder and decoder (SAELens layout: ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in))::

    pre   = (x - b_dec) @ W_enc + b_enc
    h     = act(pre)                          (architecture-specific)
    x_hat = h @ W_dec + b_dec

Decoder rows (the atoms) have unit norm: they are initialised so and projected back onto
the unit sphere after every optimizer step (:meth:`SAE.project_decoder`).

Initialisation, the hyperparameter ``init`` every architecture has (:data:`INIT`):

- ``"tied"`` (the default): atoms drawn i.i.d. standard normal and normalised,
  ``W_enc = W_dec.T`` exactly, ``b_enc = b_dec = 0``. This is the convention of SAELens
  and of Gao et al. 2024 ("Scaling and evaluating sparse autoencoders", encoder
  initialised to the transpose of the decoder).
- ``"independent"``: the encoder drawn as ``torch.nn.Linear(d_in, d_sae)`` draws its weight
  and bias, ``kaiming_uniform_(a = sqrt(5))``, i.e. every entry of ``W_enc`` and ``b_enc``
  uniform on ``[-1/sqrt(d_in), 1/sqrt(d_in)]``; the decoder drawn as
  ``torch.nn.Linear(d_sae, d_in, bias=False)`` draws its weight (uniform on
  ``[-1/sqrt(d_sae), 1/sqrt(d_sae)]``), then its atoms normalised; ``b_dec = 0``. This is
  the AEN-SAE paper's reference implementation (PyTorch's default ``nn.Linear``
  initialisation for the encoder, decoder columns normalised).

Both are deterministic functions of the model seed (a private generator; for
``"independent"`` the draws are, in order, the encoder weight, the encoder bias and the
decoder weight, each in float32 as ``nn.Linear`` draws them, in its ``(out, in)`` layout,
then transposed into the SAELens layout).

Architectures with an l1 objective compute their loss with :func:`aensae.objective.sae_loss`,
the one place the loss scaling lives::

    L = mean_{b,d} (x - x_hat)^2 + l1 * mean_b sum_i w_i |h_bi| + l2 * mean_b sum_i h_bi^2

and describe the exact problem their codes approximate through :meth:`SAE.exact_problem`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from aensae import __version__
from aensae._validation import InputError, check_int, check_real
from aensae.objective import ExactProblem, sae_loss, sae_to_exact

__all__ = ["INIT", "INIT_CHOICES", "SAE", "Hyper", "LossOutput", "check_batch", "init_weights"]

#: The initialisations (see the module docstring); the first is the default.
INIT_CHOICES: tuple[str, ...] = ("tied", "independent")


@dataclass(frozen=True)
class Hyper:
    """Specification of one hyperparameter: default, kind and allowed interval.

    ``kind`` is ``"real"``, ``"int"`` or ``"choice"`` (one of the strings ``choices``);
    ``low``/``high`` bound a number (inclusive unless ``low_inclusive``/``high_inclusive``
    say otherwise); ``doc`` is a one-line description.
    """

    default: float | int | str
    kind: str = "real"
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    doc: str = ""
    choices: tuple[str, ...] = ()

    def check(self, name: str, value: Any) -> float | int | str:
        """Validate ``value`` for the hyperparameter ``name`` and return it."""
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise InputError(f"{name} must be one of {', '.join(self.choices)}, got "
                                 f"{value!r}")
            return value
        if self.kind == "int":
            return check_int(name, value,
                             low=None if self.low is None else int(self.low),
                             high=None if self.high is None else int(self.high))
        return check_real(name, value, low=self.low, high=self.high,
                          low_inclusive=self.low_inclusive, high_inclusive=self.high_inclusive)


#: The ``init`` hyperparameter shared by every architecture.
INIT = Hyper("tied", kind="choice", choices=INIT_CHOICES,
             doc="initialisation: tied (W_enc = W_dec^T, zero biases; SAELens, Gao et al. "
                 "2024) or independent (torch.nn.Linear's draws; the AEN-SAE reference)")


def init_weights(init: str, d_in: int, d_sae: int, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in))`` in float64.

    See the module docstring for the two schemes; ``b_dec`` is zero in both.
    """
    gen = torch.Generator().manual_seed(seed)
    if init == "tied":
        w = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64)
        w = w / w.norm(dim=1, keepdim=True)
        return w.T.contiguous(), torch.zeros(d_sae, dtype=torch.float64), w
    if init == "independent":
        # nn.Linear(d_in, d_sae): weight (d_sae, d_in), kaiming_uniform_(a=sqrt(5)), i.e.
        # bound = gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + 5)): 1 / sqrt(fan_in)
        enc = torch.empty(d_sae, d_in)
        nn.init.kaiming_uniform_(enc, a=math.sqrt(5), generator=gen)
        bound = 1.0 / math.sqrt(d_in)
        b_enc = torch.empty(d_sae)
        nn.init.uniform_(b_enc, -bound, bound, generator=gen)
        # nn.Linear(d_sae, d_in, bias=False): weight (d_in, d_sae); atoms are its columns
        dec = torch.empty(d_in, d_sae)
        nn.init.kaiming_uniform_(dec, a=math.sqrt(5), generator=gen)
        w_dec = dec.T.to(torch.float64)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        return enc.T.to(torch.float64).contiguous(), b_enc.to(torch.float64), w_dec.contiguous()
    raise InputError(f"init must be one of {', '.join(INIT_CHOICES)}, got {init!r}")


@dataclass
class LossOutput:
    """What one training forward pass returns.

    Attributes
    ----------
    loss : Tensor
        Scalar training loss.
    x_hat : Tensor (B, d_in)
    h : Tensor (B, d_sae)
        Codes of the batch (with graph when the loss was computed by autograd).
    terms : dict of str -> float-like Tensor
        The loss's parts (``mse``, ``l1``, ``l2``, ``aux`` ...), detached scalars.
    stats : dict
        Quantities :meth:`SAE.after_step` needs (e.g. BatchTopK's smallest kept value).
    """

    loss: torch.Tensor
    x_hat: torch.Tensor
    h: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def check_batch(name: str, x: Any, d_in: int) -> torch.Tensor:
    """Validate a batch of inputs: a floating torch tensor of shape (B, d_in), B >= 1.

    Finiteness is checked separately (by the trainer, once per batch) because it costs a
    pass over the data.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, {d_in}), "
                        f"got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != d_in:
        raise ValueError(f"{name} must have shape (B, {d_in}), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    return x


class SAE(nn.Module):
    """Base class of the sparse autoencoders (see the module docstring).

    Subclasses set :attr:`arch` and :attr:`HYPER` and implement :meth:`activation`; those
    with penalties other than weighted l1 + l2 override :meth:`loss`.

    Parameters
    ----------
    d_in : int
        Input dimension ``n``.
    d_sae : int
        Number of latents ``m``.
    seed : int
        Seed of the initialisation (a private generator; the global RNG is untouched).
    dtype : torch.dtype
        Parameter dtype (float32 or float64).
    **hyper
        Architecture hyperparameters; see ``type(self).HYPER``. Unknown names are an error.
    """

    arch: ClassVar[str] = ""
    HYPER: ClassVar[Mapping[str, Hyper]] = {}
    #: Whether codes are constrained to be non-negative (ReLU-type encoders).
    NONNEG: ClassVar[bool] = True

    def __init__(self, d_in: int, d_sae: int, *, seed: int = 0,
                 dtype: torch.dtype = torch.float32, **hyper: Any) -> None:
        super().__init__()
        self.d_in = check_int("d_in", d_in, low=1)
        self.d_sae = check_int("d_sae", d_sae, low=1)
        self.seed = check_int("seed", seed, low=0)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.hyper = self.validate_hyper(hyper)
        w_enc, b_enc, w_dec = init_weights(str(self.hyper["init"]), self.d_in, self.d_sae,
                                           self.seed)
        self.W_dec = nn.Parameter(w_dec.to(dtype))
        self.W_enc = nn.Parameter(w_enc.to(dtype))
        self.b_enc = nn.Parameter(b_enc.to(dtype))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in, dtype=dtype))

    # ------------------------------------------------------------------ hyperparameters
    @classmethod
    def validate_hyper(cls, hyper: Mapping[str, Any]) -> dict[str, float | int | str]:
        """Fill defaults and validate ``hyper`` against :attr:`HYPER`.

        Raises
        ------
        ValueError
            For a name the architecture does not have, listing the valid names.
        """
        unknown = sorted(set(hyper) - set(cls.HYPER))
        if unknown:
            valid = ", ".join(sorted(cls.HYPER)) or "(none)"
            raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)} for architecture "
                             f"{cls.arch!r}; valid hyperparameters: {valid}")
        out: dict[str, float | int | str] = {}
        for name, spec in cls.HYPER.items():
            out[name] = spec.check(name, hyper.get(name, spec.default))
        cls.check_hyper_relations(out)
        return out

    @classmethod
    def check_hyper_relations(cls, hyper: dict[str, float | int]) -> None:
        """Check constraints that involve several hyperparameters (none by default)."""

    def config(self) -> dict[str, Any]:
        """JSON-ready description: arch, d_in, d_sae, seed, hyperparameters, version."""
        return {"arch": self.arch, "d_in": self.d_in, "d_sae": self.d_sae, "seed": self.seed,
                "dtype": str(self.W_dec.dtype).removeprefix("torch."),
                "hyper": dict(self.hyper), "aensae_version": __version__}

    # ------------------------------------------------------------------ model
    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc``, shape (B, d_sae)."""
        return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """Map pre-activations (B, d_sae) to codes; implemented by each architecture."""
        raise NotImplementedError(f"{type(self).__name__} must implement activation()")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``h = act(pre_activation(x))`` of a batch ``x`` (B, d_in) -> (B, d_sae)."""
        check_batch("x", x, self.d_in)
        return self.activation(self.pre_activation(x))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``h @ W_dec + b_dec`` of codes ``h`` (B, d_sae) -> (B, d_in)."""
        if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[1] != self.d_sae:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"h must be a tensor of shape (B, {self.d_sae}), got {shape}")
        return torch.addmm(self.b_dec, h, self.W_dec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x_hat, h)``."""
        h = self.encode(x)
        return self.decode(h), h

    # ------------------------------------------------------------------ objective
    @property
    def l1(self) -> float:
        """Coefficient of the l1 term in the SAE scaling (0 when the model has none)."""
        return float(self.hyper.get("l1", 0.0))

    @property
    def l2(self) -> float:
        """Coefficient of the l2 term in the SAE scaling (0 when the model has none)."""
        return float(self.hyper.get("l2", 0.0))

    def l1_weights(self) -> torch.Tensor | None:
        """Current per-latent l1 weights (d_sae,), detached; ``None`` means all ones."""
        return None

    def step_weights(self, mean_abs: torch.Tensor) -> torch.Tensor | None:
        """The l1 weights of a training step whose batch has ``mean_b |h_b|`` =
        ``mean_abs`` (adaptive models may update their statistics with it first, see
        :meth:`aensae.saes.adaptive_lasso.AdaptiveLassoSAE.step_weights`); otherwise
        :meth:`l1_weights`."""
        return self.l1_weights()

    def loss_weights(self, h: torch.Tensor) -> torch.Tensor | None:
        """:meth:`step_weights` of the codes ``h`` (B, d_sae) of a training batch."""
        return self.l1_weights()

    def set_run_length(self, steps: int) -> None:
        """Told by the trainer how many optimizer steps the run has (adaptive models fix
        their hold with it); nothing for other architectures."""

    def regime(self) -> dict[str, float]:
        """Diagnostics of the model's adaptive state (empty: none), recorded at every
        dead-latent window of training."""
        return {}

    def has_l1_objective(self) -> bool:
        """Whether the model is trained on the (weighted) l1 + l2 objective."""
        return "l1" in self.HYPER

    def loss(self, x: torch.Tensor) -> LossOutput:
        """Training loss of a batch via :func:`aensae.objective.sae_loss`."""
        x_hat, h = self(x)
        w = self.loss_weights(h)
        loss = sae_loss(x, x_hat, h, self.l1, self.l2, w)
        with torch.no_grad():
            diff = x - x_hat
            a = h.abs() if w is None else h.abs() * w
            terms = {"mse": (diff * diff).mean(), "l1": self.l1 * a.sum(-1).mean(),
                     "l2": self.l2 * (h * h).sum(-1).mean()}
        return LossOutput(loss, x_hat, h, terms)

    def compute_grads(self, x: torch.Tensor) -> LossOutput:
        """Compute the loss of ``x`` and leave its gradients in ``.grad`` (autograd).

        Architectures with a hand-derived backward override this; a test checks every
        override against autograd. Gradients are *assigned*, not accumulated.
        """
        for p in self.parameters():
            p.grad = None
        out = self.loss(x)
        out.loss.backward()
        out.loss = out.loss.detach()
        out.h = out.h.detach()
        out.x_hat = out.x_hat.detach()
        return out

    def after_step(self, out: LossOutput) -> None:
        """Update the model's buffers after an optimizer step (EMA, thresholds, step)."""

    @torch.no_grad()
    def project_decoder(self) -> None:
        """Project every decoder row (atom) back onto the unit sphere."""
        norms = torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True)
        if float(norms.amin()) == 0.0:  # one reduction; the count only when raising
            bad = int((norms == 0).sum())
            raise FloatingPointError(f"{bad} decoder row(s) of {self.arch} have zero norm; "
                                     "they cannot be projected onto the unit sphere")
        self.W_dec.div_(norms)

    def exact_problem(self) -> ExactProblem | None:
        """The exact sparse-coding problem this encoder's codes approximate.

        ``D = W_dec.T`` (float64, (d_in, d_sae)), ``(lam1, lam2) = sae_to_exact(l1, l2, d_in)``,
        ``weights`` = current l1 weights (float64 (d_sae,)) or ``None``, ``nonneg`` for
        ReLU encoders, ``offset = b_dec``. ``None`` for architectures without an l1 objective.
        """
        if not self.has_l1_objective():
            return None
        lam1, lam2 = sae_to_exact(self.l1, self.l2, self.d_in)
        w = self.l1_weights()
        with torch.no_grad():
            D = self.W_dec.detach().to("cpu", torch.float64).numpy().T.copy()
            offset = self.b_dec.detach().to("cpu", torch.float64).numpy().copy()
            weights = None if w is None else w.detach().to("cpu", torch.float64).numpy().copy()
        return ExactProblem(D=D, lam1=lam1, lam2=lam2, weights=weights, nonneg=self.NONNEG,
                            offset=offset)

    def extra_repr(self) -> str:
        hyper = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in self.hyper.items())
        return f"arch={self.arch}, d_in={self.d_in}, d_sae={self.d_sae}, {hyper}"

