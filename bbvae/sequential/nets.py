"""Networks of the neural sequence models (VRNN, SRNN, RNN, IndependentVAE) and their shared base.

* :class:`MultiInputMLP`: an MLP on several inputs whose first layer is split per input, so an input
  shared by all particles, e.g. a feature of ``x_t``, is projected once per sequence rather than
  once per particle and step; :class:`GaussianHead`: a diagonal Gaussian from such an MLP.
* :class:`NeuralSequentialModel`: the base the four shipped models share (observation family,
  ``x_mean`` centring, encoder and decoder defaults, argument checks, padding hygiene).

Padding hygiene: :meth:`NeuralSequentialModel.prepare` replaces every entry of ``x`` and ``inputs``
past a sequence's length by zeros before any network sees it, so garbage (even NaN or an
out-of-vocabulary index) past the lengths can change neither a bound nor a gradient.

The building blocks the models use live in their own modules and are re-exported here:
observation families in :mod:`bbvae.sequential.observations`, recurrences in
:mod:`bbvae.sequential.recurrences`, Gaussian helpers in :mod:`bbvae.sequential.gaussian`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from bbvae._validation import check_positive_int, check_tensor, shape_str
from bbvae.models import mlp
from bbvae.sequential.base import SequentialModel, length_mask
from bbvae.sequential.gaussian import (
    MIN_SCALE,
    RAW_SCALE_BIAS,
    draw_normal,
    normal_log_prob,
    positive_scale,
    standard_normal_log_prob,
)
from bbvae.sequential.observations import (
    BernoulliObservation,
    CallableObservation,
    CategoricalObservation,
    NormalObservation,
    Observation,
    make_observation,
)
from bbvae.sequential.recurrences import (
    causal_context,
    check_cell,
    context_after,
    final_rnn_state,
    make_cell,
    make_rnn,
    particle_context,
    reverse_padded,
    shift_right,
    step_cell,
    step_rnn,
    zero_rnn_state,
)
from bbvae.sequential.scheduled import feedback_masks, mix_feedback, parse_scheduled_sampling

__all__ = [
    "MIN_SCALE",
    "RAW_SCALE_BIAS",
    "BernoulliObservation",
    "CallableObservation",
    "CategoricalObservation",
    "GaussianHead",
    "MultiInputMLP",
    "NeuralSequentialModel",
    "NormalObservation",
    "Observation",
    "causal_context",
    "check_cell",
    "context_after",
    "draw_normal",
    "final_rnn_state",
    "length_mask",
    "make_cell",
    "make_observation",
    "make_rnn",
    "normal_log_prob",
    "particle_context",
    "positive_scale",
    "reverse_padded",
    "shift_right",
    "standard_normal_log_prob",
    "step_cell",
    "step_rnn",
    "zero_rnn_state",
]


class MultiInputMLP(nn.Module):
    """An MLP on the concatenation of several inputs, with its first layer split per input.

    ``net(a, b)`` equals an MLP applied to ``cat([a, b], -1)`` (inputs broadcast against each
    other), but the first layer is ``W_a a + W_b b + bias``, so a caller can project an input that
    all particles share once (``net.project(i, b)``, batched over time) and finish each step with
    ``net.finish(net.project(0, a) + projected_b)``. Hidden layers use ReLU (as the FIVO reference).

    Args:
        in_sizes: sizes of the inputs, in order.
        hidden_sizes: hidden layer sizes (``()``: the first layer is the output layer).
        out_size: output size.
        dropout: dropout after every hidden activation (training mode only).
    """

    def __init__(
        self, in_sizes: Sequence[int], hidden_sizes: Sequence[int], out_size: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_sizes = tuple(in_sizes)
        self.hidden_sizes = tuple(hidden_sizes)
        self.out_size = out_size
        first = self.hidden_sizes[0] if self.hidden_sizes else out_size
        self.inputs = nn.ModuleList(nn.Linear(n, first, bias=False) for n in self.in_sizes)
        self.bias = nn.Parameter(torch.zeros(first))
        # Initialise like one nn.Linear on the concatenated input (fan-in = the total size).
        bound = 1.0 / math.sqrt(max(1, sum(self.in_sizes)))
        with torch.no_grad():
            for layer in self.inputs:
                layer.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)
        if self.hidden_sizes:
            hidden = mlp([*self.hidden_sizes, out_size], activation=nn.ReLU, dropout=dropout)
            first_activation = nn.Sequential(nn.ReLU(), nn.Dropout(dropout)) if dropout > 0 else nn.ReLU()
            self.tail = nn.Sequential(first_activation, hidden)  # (state-dict names as without dropout)
        else:
            self.tail = nn.Identity()

    def project(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """First-layer (bias-free) contribution of input ``i``: ``[..., in_sizes[i]] -> [..., first]``."""
        return self.inputs[i](x)

    def finish(self, pre: torch.Tensor) -> torch.Tensor:
        """Add the bias to the summed projections and run the remaining layers."""
        return self.tail(pre + self.bias)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) != len(self.in_sizes):
            raise ValueError(f"MultiInputMLP: expected {len(self.in_sizes)} inputs, got {len(xs)}")
        pre = self.project(0, xs[0])
        for i, x in enumerate(xs[1:], start=1):
            pre = pre + self.project(i, x)
        return self.finish(pre)


class GaussianHead(MultiInputMLP):
    """A diagonal Gaussian whose mean and standard deviation are a :class:`MultiInputMLP` of inputs.

    ``loc, scale = head.params(head(a, b))`` (or from ``head.finish(...)``); the scale is
    ``softplus(raw + 0.25) + 1e-4``.
    """

    def __init__(
        self, in_sizes: Sequence[int], hidden_sizes: Sequence[int], size: int, dropout: float = 0.0
    ) -> None:
        super().__init__(in_sizes, hidden_sizes, 2 * size, dropout)
        self.size = size

    def params(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split an output ``[..., 2 * size]`` into ``(loc, scale)``, each ``[..., size]``."""
        loc, raw = out.split(self.size, dim=-1)
        return loc, positive_scale(raw)

    def gaussian(self, *xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of the inputs ``xs`` (see :class:`MultiInputMLP`)."""
        return self.params(self(*xs))


class NeuralSequentialModel(SequentialModel):
    """Shared plumbing of the shipped neural sequence models.

    Holds the observation family (``self.observation``), the ``x_mean`` buffer, the encoder of
    ``x_t`` (``self.encoder``: float features ``[..., observation.feature_size]`` ->
    ``[..., encoded_size]``) and the decoder (``self.decoder``: ``[..., decoder_input_size]`` ->
    observation parameters ``[..., param_size]``), built by subclasses with :meth:`_build_io`.

    A subclass then only writes its recurrences and heads. To write a new model, subclass
    :class:`~bbvae.sequential.base.SequentialModel` (or this class) and implement ``encode``,
    ``init_state``, ``step`` (and ``generate_init`` / ``generate_step`` to sample); every loss in
    :mod:`bbvae.losses` and the SMC bounds then work through ``model.inf_net`` / ``model.gen_model``.
    """

    def _set_sizes(
        self,
        where: str,
        obs_dim: int,
        latent_size: int | None,
        hidden_size: int | None,
        fc_hidden_sizes: Sequence[int] | None,
        encoded_size: int | None,
        cell: str,
        input_size: int,
        dropout: float = 0.0,
    ) -> int:
        """Check and store the sizes every neural model shares; return the feature size.

        Unset sizes default to ``latent_size`` (the FIVO convention), or to ``hidden_size`` for a
        model without latents (``latent_size=None``). Also checks and stores ``dropout``.
        """
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"{where}: expected dropout in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        if latent_size is not None:
            check_positive_int("latent_size", latent_size, where)
        else:
            check_positive_int("hidden_size", hidden_size, where)
        check_positive_int("input_size", input_size, where, minimum=0)
        check_cell(cell, where)
        default = hidden_size if latent_size is None else latent_size
        self.obs_dim = obs_dim
        self.hidden_size = default if hidden_size is None else hidden_size
        check_positive_int("hidden_size", self.hidden_size, where)
        self.fc_hidden_sizes = (default,) if fc_hidden_sizes is None else tuple(fc_hidden_sizes)
        self.cell_type = cell
        self.input_size = input_size
        if latent_size is not None:
            self.latent_size = latent_size
            self.latent_shape = (latent_size,)
        return default if encoded_size is None else encoded_size

    def _build_io(
        self,
        obs_dim: int,
        observation,
        embedding_size: int | None,
        encoder: nn.Module | None,
        encoded_size: int,
        decoder: nn.Module | None,
        decoder_input_size: int,
        fc_hidden_sizes: Sequence[int],
        x_mean: torch.Tensor | None,
    ) -> None:
        where = type(self).__name__
        family = make_observation(observation, obs_dim, embedding_size, where)
        self.observation = family
        if family.param_size < 0 and decoder is None:
            raise ValueError(
                f"{where}: a custom observation callable needs a decoder that outputs its parameters "
                "(pass decoder=...)"
            )
        for name, module in (("encoder", encoder), ("decoder", decoder)):
            if module is not None and not callable(module):
                raise TypeError(
                    f"{where}: expected {name} to be an nn.Module or callable, got {type(module).__name__}"
                )
        check_positive_int("encoded_size", encoded_size, where)
        self.encoded_size = encoded_size
        self.decoder_input_size = decoder_input_size
        hidden = list(fc_hidden_sizes)
        drop = self.dropout
        self.encoder = (
            encoder
            if encoder is not None
            else mlp([family.feature_size, *hidden, encoded_size], nn.ReLU, dropout=drop)
        )
        if decoder is None:
            decoder = mlp([decoder_input_size, *hidden, family.param_size], nn.ReLU, dropout=drop)
        self.decoder = decoder
        if x_mean is not None:
            check_tensor("x_mean", x_mean, where)
            if family.dtype_kind != "float":
                raise ValueError(
                    f"{where}: x_mean centres real-valued observations; {type(family).__name__} has none"
                )
            if tuple(x_mean.shape) != tuple(family.obs_shape):
                raise ValueError(
                    f"{where}: expected x_mean of shape {shape_str(list(family.obs_shape))}, "
                    f"got {shape_str(list(x_mean.shape))}"
                )
            x_mean = x_mean.detach().clone()
        self.register_buffer("x_mean", x_mean)

    # ------------------------------------------------------------------ scheduled sampling
    def set_scheduled_sampling(self, spec) -> NeuralSequentialModel:
        """Feed back the model's own samples while training (:mod:`bbvae.sequential.scheduled`).

        ``spec``: ``"inverse_sigmoid:k=1000"``, a dict, a
        :class:`~bbvae.sequential.scheduled.ScheduledSampling`, or ``None`` (off: teacher forcing).
        The schedule becomes the submodule ``scheduled_sampling``. Returns the model.
        """
        schedule = parse_scheduled_sampling(spec, f"{type(self).__name__}.set_scheduled_sampling")
        if schedule is None:
            self._modules.pop("scheduled_sampling", None)
        else:
            self.scheduled_sampling = schedule
        return self

    def feedback(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """This pass's feedback decisions, ``T`` tensors ``[batch]`` bool (True: the ground truth), or
        ``None`` for a teacher-forced pass (see :func:`~bbvae.sequential.scheduled.feedback_masks`)."""
        return feedback_masks(self, x.shape[0], x.shape[1], x.device)

    def fed_features(self, truth: torch.Tensor, x_t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Features ``[batch, K, encoded]`` of the fed-back observation: ``x_t`` ``[batch, *obs]``
        where ``truth`` ``[batch]``, else the model's own ``sample`` ``[batch, K, *obs]``."""
        return self.x_features(mix_feedback(truth, x_t, sample))

    # ------------------------------------------------------------------------- helpers
    def recurrent_input(self, inp: torch.Tensor) -> torch.Tensor:
        """Dropout on the input of a recurrence (training mode only; identity when ``dropout=0``)."""
        if self.dropout > 0 and self.training:
            return F.dropout(inp, self.dropout, training=True)
        return inp

    def x_features(self, x: torch.Tensor) -> torch.Tensor:
        """``encoder(features(x - x_mean))``: ``[..., *obs_shape] -> [..., encoded_size]`` (one call)."""
        if self.x_mean is not None:
            x = x - self.x_mean.to(x.dtype)
        feats = self.observation.features(x)
        param = next(iter(self.encoder.parameters()), None)
        if param is not None and feats.dtype != param.dtype:
            feats = feats.to(param.dtype)  # e.g. binary data stored as float32 scored by a float64 model
        return self.encoder(feats)

    def prepare(
        self, x: torch.Tensor, lengths: torch.Tensor | None, inputs: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check ``x``, ``lengths``, ``inputs`` and zero every entry past each sequence's length."""
        where = f"{type(self).__name__}.encode"
        self.observation.check_x(x, where)
        if self.observation.dtype_kind == "long" and x.dtype != torch.long:
            x = x.long()  # embedding and gather index with int64
        batch, n_steps = x.shape[:2]
        if self.input_size > 0:
            if inputs is None:
                raise ValueError(
                    f"{where}: the model was built with input_size={self.input_size}; pass inputs "
                    f"[batch, T, {self.input_size}]"
                )
            check_tensor("inputs", inputs, where)
            if tuple(inputs.shape) != (batch, n_steps, self.input_size):
                raise ValueError(
                    f"{where}: expected inputs of shape [{batch}, {n_steps}, {self.input_size}], "
                    f"got {shape_str(list(inputs.shape))}"
                )
        elif inputs is not None:
            raise ValueError(
                f"{where}: got side inputs {shape_str(list(inputs.shape))} but the model was built with "
                "input_size=0 (pass input_size=d_in to use them)"
            )
        if inputs is not None:
            inputs = inputs.to(self._dtype())
        if lengths is None:
            return x, inputs
        mask = length_mask(lengths, n_steps, x.device)  # [batch, T]
        x = torch.where(mask.reshape(batch, n_steps, *([1] * (x.dim() - 2))), x, torch.zeros_like(x))
        if inputs is not None:
            inputs = torch.where(mask.unsqueeze(-1), inputs, torch.zeros_like(inputs))
        return x, inputs

    def step_inputs(
        self, inputs_t: torch.Tensor | None, batch: int, n: int, where: str
    ) -> torch.Tensor | None:
        """Side inputs of one generation step as ``[batch, n, input_size]`` (or ``None``)."""
        if self.input_size == 0:
            if inputs_t is not None:
                raise ValueError(f"{where}: got side inputs but the model was built with input_size=0")
            return None
        if inputs_t is None:
            raise ValueError(f"{where}: the model was built with input_size={self.input_size}; pass inputs_t")
        if inputs_t.dim() == 2:
            inputs_t = inputs_t.unsqueeze(1)
        if inputs_t.dim() != 3 or inputs_t.shape[-1] != self.input_size or inputs_t.shape[0] != batch:
            raise ValueError(
                f"{where}: expected inputs_t of shape [{batch}, {n}, {self.input_size}] or "
                f"[{batch}, {self.input_size}], got {shape_str(list(inputs_t.shape))}"
            )
        return inputs_t.to(self._dtype()).expand(batch, n, self.input_size)

    def _dtype(self) -> torch.dtype:
        return next(iter(self.parameters())).dtype

    def generation_state(self, state, x: torch.Tensor, lengths=None, inputs=None):
        """The generation state that continues ``x`` from the filtering ``state`` after its last step.

        ``state`` is what :meth:`step` returned at each sequence's last valid step (leaves
        ``[batch, n, ...]``). Models whose filtering state is their generation state return it.
        """
        return state

    @torch.no_grad()
    def init_output_bias(self, mean: torch.Tensor) -> None:
        """Start the emission at ``mean``: for Bernoulli observations the output bias becomes
        ``logit(mean)`` (clamped away from 0 and 1), the FIVO reference initialisation.

        Args:
            mean: ``[*obs_shape]`` e.g. the training-set mean of piano-roll frames (Normal: the mean
                of x; Categorical: symbol frequencies ``[V]``).
        """
        where = f"{type(self).__name__}.init_output_bias"
        check_tensor("mean", mean, where)
        linear = None
        for module in self.decoder.modules():
            if isinstance(module, nn.Linear):
                linear = module
        if linear is None or linear.bias is None or linear.out_features != self.observation.param_size:
            raise TypeError(
                f"{where}: the decoder's last layer must be an nn.Linear with a bias and "
                f"{self.observation.param_size} outputs"
            )
        expected = (
            (self.observation.n_categories,) if isinstance(self.observation, CategoricalObservation) else None
        )
        expected = expected or tuple(self.observation.obs_shape)
        if tuple(mean.shape) != expected:
            raise ValueError(
                f"{where}: expected mean of shape {shape_str(list(expected))}, "
                f"got {shape_str(list(mean.shape))}"
            )
        self.observation.init_bias(linear.bias, mean.to(linear.bias))

    def _like(self, like: torch.Tensor) -> torch.Tensor:
        """A floating tensor on ``like``'s device to create states with (``like`` or a parameter)."""
        if like.is_floating_point():
            return like
        param = next(iter(self.parameters()))
        return param.new_empty((), device=like.device)
