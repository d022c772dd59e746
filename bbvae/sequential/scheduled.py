"""Scheduled sampling (Bengio et al. 2015) for the sequence models that feed observations back.

Teacher forcing feeds the ground truth ``x_{t-1}`` into the step that predicts ``x_t``; generation
feeds the model's own sample. Scheduled sampling feeds, at training step ``i``, the ground truth
with probability ``eps_i`` and the model's own sample otherwise, decided independently for every
sequence and time step (shared by a sequence's particles), with ``eps_i`` decaying over training:

* ``"linear"``: ``eps_i = max(eps_min, c - k i)`` (``k`` required; ``c = 1``, ``eps_min = 0``);
* ``"exponential"``: ``eps_i = max(eps_min, k ** i)`` with ``0 < k <= 1`` (``eps_min = 0``);
* ``"inverse_sigmoid"``: ``eps_i = max(eps_min, k / (k + exp(i / k)))`` with ``k >= 1``;
* ``"constant"``: ``eps_i = eps`` (ablations and tests).

Every value is clipped to ``[0, 1]``. A spec is a :class:`ScheduledSampling`, a dict
``{"schedule": "linear", "k": 1e-4, ...}`` or a string ``"linear:k=1e-4,eps_min=0.1"``
(:func:`parse_scheduled_sampling`). ``set_scheduled_sampling(loss_or_model, spec)`` attaches it to
every model inside (``model.set_scheduled_sampling``); the :class:`~bbvae.training.Trainer` tells it
the optimizer step before each step (``set_training_step``), and the step is part of the model's
``state_dict`` (so of the trainer's checkpoints).

**What is estimated.** The bound's targets stay the ground truth: each step scores
``log p(x_t, z_t | fed-back history)`` of the true ``x_t``. Under fed-back samples that sum is not a
bound on ``log p(x)`` of the model (whose history is the true past); it is a biased but useful
training signal that exposes the model to its own errors. Only training passes use it: it is
active when the model is in training mode, gradients are enabled, latents are proposed (not given
to be scored) and ``eps_i < 1``. Evaluation, validation, scoring, SMC in eval mode and sampling are
always teacher-forced; ``eps_i = 1`` runs the unchanged teacher-forced code (same numbers).

**The model's own sample** at step ``t`` is the one-step predictive draw that generation would make
from the particle's current history: ``z'_t`` from the prior, ``x̂_t ~ p(x_t | z'_t, history)``
(:class:`~bbvae.sequential.RNN`: ``x̂_t ~ p(x_t | history)``), drawn per particle without a gradient
path. It is not the emission ``p(x_t | z_t, ...)`` of the particle's ``z_t ~ q``, which has seen
``x_t`` and would feed back a reconstruction rather than a prediction. Only the observation is
replaced: the latents the bound scores (VRNN's ``phi_z(z_t)`` in the recurrence, SRNN's chain) stay
the particle's ``z_t ~ q``, and the proposal always sees the true ``x_t``. For SRNN the backward
(smoothing) recurrence of the proposal runs over the ground truth, once per sequence, before any
step (it cannot read samples drawn later in the forward pass); the forward recurrence ``d_t`` of
the generative model is fed the mixed observations, per particle.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "SCHEDULES",
    "ScheduledSampling",
    "parse_scheduled_sampling",
    "set_scheduled_sampling",
    "teacher_forcing",
]

#: Schedule names and their keywords (required ones first).
SCHEDULES: dict[str, tuple[tuple[str, ...], dict[str, float]]] = {
    "linear": (("k",), {"c": 1.0, "eps_min": 0.0}),
    "exponential": (("k",), {"eps_min": 0.0}),
    "inverse_sigmoid": (("k",), {"eps_min": 0.0}),
    "constant": (("eps",), {}),
}
_ARG = "scheduled_sampling"


class ScheduledSampling(nn.Module):
    """The feedback probability ``eps_i`` of training step ``i`` (see the module docstring).

    Args:
        schedule: ``"linear"``, ``"exponential"``, ``"inverse_sigmoid"`` or ``"constant"``.
        **params: the schedule's keywords (``k``, ``c``, ``eps_min``; ``eps`` for ``"constant"``).

    Attributes:
        step (int): the training step ``i`` the schedule is at (set by the Trainer before every
            optimizer step; kept in the ``state_dict`` as ``_extra_state``).
    """

    def __init__(self, schedule: str = "inverse_sigmoid", where: str = "ScheduledSampling", **params: float):
        super().__init__()
        self.schedule, self.params = _check(schedule, params, where, _ARG)
        self.step = 0
        self._force = False  # tests: run the per-step path even when eps = 1

    def eps(self, step: int | None = None) -> float:
        """``eps_i`` (the probability of feeding the ground truth) at ``step`` (default: ``self.step``)."""
        i = self.step if step is None else step
        p = self.params
        if self.schedule == "constant":
            value = p["eps"]
        elif self.schedule == "linear":
            value = max(p["eps_min"], p["c"] - p["k"] * i)
        elif self.schedule == "exponential":
            value = max(p["eps_min"], p["k"] ** i)
        else:
            k = p["k"]
            # k / (k + exp(i/k)) = 1 / (1 + exp(i/k - log k)), without overflow for large i
            value = max(p["eps_min"], 1.0 / (1.0 + math.exp(min(i / k - math.log(k), 700.0))))
        return min(1.0, max(0.0, value))

    def set_training_step(self, step: int) -> None:
        """Move the schedule to training step ``step`` (0-based: the optimizer steps taken so far)."""
        self.step = int(step)

    def spec(self) -> str:
        """The schedule as a string spec, e.g. ``"inverse_sigmoid:k=1000.0,eps_min=0.0"``."""
        return f"{self.schedule}:" + ",".join(f"{k}={v!r}" for k, v in self.params.items())

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.step, dtype=torch.long)

    def set_extra_state(self, state) -> None:
        self.step = int(state)

    def extra_repr(self) -> str:
        return f"{self.spec()}, step={self.step}"


def _check(schedule: Any, params: dict[str, Any], where: str, arg: str) -> tuple[str, dict[str, float]]:
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"{where}: expected {arg} schedule in {tuple(SCHEDULES)}, got {schedule!r}")
    required, defaults = SCHEDULES[schedule]
    unknown = sorted(set(params) - set(required) - set(defaults))
    if unknown:
        allowed = ", ".join((*required, *defaults))
        raise ValueError(f"{where}: {arg} {schedule!r} takes {allowed}; got unknown keyword(s) {unknown}")
    missing = [name for name in required if name not in params]
    if missing:
        example = {"constant": "constant:eps=0.5"}.get(schedule, f"{schedule}:k=...")
        raise ValueError(f"{where}: {arg} {schedule!r} needs {', '.join(missing)} (e.g. {example!r})")
    out: dict[str, float] = {}
    for name, value in {**defaults, **params}.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: expected {arg} {name} to be a finite number, got {value!r}")
        out[name] = float(value)
    k = out.get("k")
    bad = None
    if schedule == "linear" and not (k > 0 and out["c"] > 0):
        bad = f"k > 0 and c > 0, got k={k}, c={out['c']}"
    elif schedule == "exponential" and not 0 < k <= 1:
        bad = f"0 < k <= 1, got k={k}"
    elif schedule == "inverse_sigmoid" and not k >= 1:
        bad = f"k >= 1, got k={k}"
    elif schedule == "constant" and not 0 <= out["eps"] <= 1:
        bad = f"0 <= eps <= 1, got eps={out['eps']}"
    elif "eps_min" in out and not 0 <= out["eps_min"] <= 1:
        bad = f"0 <= eps_min <= 1, got eps_min={out['eps_min']}"
    if bad is not None:
        raise ValueError(f"{where}: {arg} {schedule!r} needs {bad}")
    return schedule, out


_SPEC = re.compile(r"^\s*([a-z_]+)\s*(?::(.*))?$")


def parse_scheduled_sampling(spec: Any, where: str, arg: str = _ARG) -> ScheduledSampling | None:
    """A :class:`ScheduledSampling` from a spec (``None``: off).

    Args:
        spec: ``None``, a :class:`ScheduledSampling` (returned as is), a dict
            ``{"schedule": name, **keywords}`` or a string ``"name:key=value,key=value"``.
        where, arg: the caller and the argument's name, for the error messages.

    Raises:
        ValueError / TypeError naming ``arg``, the value and what was expected.
    """
    if spec is None or isinstance(spec, ScheduledSampling):
        return spec
    if isinstance(spec, dict):
        params = dict(spec)
        schedule = params.pop("schedule", None)
        if schedule is None:
            raise ValueError(
                f"{where}: expected {arg} dict to name its 'schedule' (one of {tuple(SCHEDULES)}), "
                f"got {spec!r}"
            )
    elif isinstance(spec, str):
        match = _SPEC.match(spec)
        if match is None:
            raise ValueError(
                f"{where}: expected {arg} like 'inverse_sigmoid:k=1000' or 'linear:k=1e-4,eps_min=0.1', "
                f"got {spec!r}"
            )
        schedule, params = match.group(1), {}
        for item in filter(None, (part.strip() for part in (match.group(2) or "").split(","))):
            key, sep, text = item.partition("=")
            try:
                params[key.strip()] = float(text) if sep else None
            except ValueError:
                params[key.strip()] = None
            if params[key.strip()] is None:
                raise ValueError(f"{where}: expected {arg} keywords as key=number, got {item!r} in {spec!r}")
    else:
        raise TypeError(
            f"{where}: expected {arg} to be None, a spec string ('inverse_sigmoid:k=1000'), a dict or a "
            f"ScheduledSampling, got {type(spec).__name__}"
        )
    checked, params = _check(schedule, params, where, arg)
    return ScheduledSampling(checked, where=where, **params)


def set_scheduled_sampling(module: nn.Module, spec: Any, where: str = "set_scheduled_sampling") -> list:
    """Attach scheduled sampling (a spec, see :func:`parse_scheduled_sampling`) to every model in ``module``.

    ``module`` is a loss (its views hold the model), a model, or any module holding models; each
    model with a ``set_scheduled_sampling`` method gets its own :class:`ScheduledSampling`. ``None``
    turns it off. Returns the models it was set on.

    Raises:
        ValueError: ``module`` holds no model that feeds observations back.
    """
    parse_scheduled_sampling(spec, where)  # one clear error before touching anything
    models = [m for m in module.modules() if callable(getattr(m, "set_scheduled_sampling", None))]
    if not models:
        raise ValueError(
            f"{where}: scheduled_sampling needs a sequence model that feeds its observations back "
            f"(RNN, VRNN, SRNN, IndependentVAE); {type(module).__name__} holds none"
        )
    for model in models:
        model.set_scheduled_sampling(parse_scheduled_sampling(spec, where) if spec is not None else None)
    return models


@contextlib.contextmanager
def teacher_forcing(model: nn.Module) -> Iterator[None]:
    """Within the block the model is teacher-forced whatever its scheduled sampling says."""
    previous = model.__dict__.get("_ss_off", False)
    model.__dict__["_ss_off"] = True
    try:
        yield
    finally:
        model.__dict__["_ss_off"] = previous


def feedback_masks(model: nn.Module, batch: int, n_steps: int, device: torch.device) -> list | None:
    """The per-step decisions of one training pass: ``T`` tensors ``[batch]`` bool (True: ground truth).

    ``None`` when scheduled sampling is inactive for this pass (see the module docstring): the
    model then runs its teacher-forced code. One vectorised draw ``[batch, T]``; the decisions are
    kept on the model as ``feedback_truth_`` (diagnostics, tests).
    """
    ss = model._modules.get("scheduled_sampling")
    if ss is None or not model.training or not torch.is_grad_enabled() or model.__dict__.get("_ss_off"):
        model.__dict__["_ss_drawn"] = False
        return None
    eps = ss.eps()
    if eps >= 1.0 and not ss._force:
        model.__dict__["_ss_drawn"] = False
        return None
    truth = torch.rand(batch, n_steps, device=device) < eps  # [batch, T]
    model.__dict__["feedback_truth_"] = truth
    model.__dict__["_ss_drawn"] = True
    return list(truth.unbind(1))


def mix_feedback(truth_mask: torch.Tensor, x_t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """The observation fed back: ``x_t`` ``[batch, *obs]`` where ``truth_mask`` ``[batch]``, else ``sample``.

    ``sample`` is ``[batch, K, *obs]``; returns ``[batch, K, *obs]`` in ``sample``'s dtype.
    """
    x_t = x_t.unsqueeze(1).to(sample.dtype)
    mask = truth_mask.reshape(truth_mask.shape[0], 1, *([1] * (sample.dim() - 2)))
    return torch.where(mask, x_t, sample)
