"""A plain autoregressive RNN: no stochastic state, exact likelihood by teacher forcing.

``h_t = f(h_{t-1}, [phi(x_t), u_t])`` (LSTM/GRU) and ``p(x_t | x_{<t}) = decoder([h_{t-1}, u_t])``.
The whole likelihood depends on ``x`` alone, so :meth:`RNN.encode` computes every step's
``log p(x_t | x_{<t})`` at once (one recurrence call over ``[batch, T]``). In the step contract the
latent is empty (``latent_shape = (0,)``, ``log q = 0``), so every bound (ELBO, IWAE, FIVO) equals
:meth:`RNN.exact_log_prob` for any number of particles: the RNN is the deterministic baseline of
the latent-variable models. See :mod:`bbvae.sequential.vrnn` for the step contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bbvae.sequential.base import StepOutput
from bbvae.sequential.nets import (
    NeuralSequentialModel,
    causal_context,
    context_after,
    length_mask,
    make_rnn,
    particle_context,
    step_rnn,
    zero_rnn_state,
)


class RNN(NeuralSequentialModel):
    """Autoregressive RNN with an exact, teacher-forced log-likelihood.

    Args:
        obs_dim: size of ``x_t``, or the vocabulary size for ``observation="categorical"``.
        hidden_size: recurrent state size.
        fc_hidden_sizes: hidden layers of the encoder and decoder MLPs (default ``(hidden_size,)``).
        encoded_size: size of ``phi(x_t)`` (default ``hidden_size``).
        cell: ``"lstm"`` or ``"gru"``.
        observation: see :class:`~bbvae.sequential.vrnn.VRNN`.
        input_size: size of the side inputs ``u_t`` (0: none).
        x_mean: ``[obs_dim]`` subtracted from ``x`` before ``phi``.
        embedding_size: symbol embedding size for categorical observations.
        encoder: ``phi``, a module ``[..., feature_size] -> [..., encoded_size]``.
        decoder: a module ``[..., hidden_size + input_size] -> [..., param_size]``.
        dropout: dropout on every MLP hidden layer and on the recurrence's input, in training mode
            only (it changes the training objective; evaluation runs in eval mode).

    Attributes:
        rnn: the whole-sequence ``nn.LSTM`` / ``nn.GRU``.
        latent_shape: ``(0,)``.
    """

    has_rsample = True

    def __init__(
        self,
        obs_dim: int,
        hidden_size: int = 64,
        fc_hidden_sizes: Sequence[int] | None = None,
        encoded_size: int | None = None,
        cell: str = "lstm",
        observation="bernoulli",
        input_size: int = 0,
        x_mean: torch.Tensor | None = None,
        embedding_size: int | None = None,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        where = "RNN"
        encoded = self._set_sizes(
            where, obs_dim, None, hidden_size, fc_hidden_sizes, encoded_size, cell, input_size, dropout
        )
        self.latent_shape = (0,)
        ctx = hidden_size + input_size
        self._build_io(
            obs_dim, observation, embedding_size, encoder, encoded, decoder, ctx, self.fc_hidden_sizes, x_mean
        )
        self.rnn = make_rnn(cell, encoded + input_size, hidden_size)

    def step_log_probs(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log p(x_t | x_{<t}, u_{<=t})`` of every step, ``[batch, T]`` (padding scored as zeros)."""
        x, inputs = self.prepare(x, lengths, inputs)
        return self._log_px(x, inputs)

    def _log_px(self, x: torch.Tensor, inputs: torch.Tensor | None) -> torch.Tensor:
        ctx = causal_context(
            self.rnn, self.recurrent_input(self.x_features(x)), inputs
        )  # [batch, T, hidden + input]
        return self.observation.log_prob(self.decoder(ctx), x)  # [batch, T]

    def exact_log_prob(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log p(x)`` ``[batch]``: the teacher-forced log-likelihood over each sequence's valid steps."""
        log_px = self.step_log_probs(x, lengths, inputs)
        if lengths is not None:
            log_px = torch.where(length_mask(lengths, x.shape[1], x.device), log_px, 0.0)
        return log_px.sum(1)

    # ------------------------------------------------------------------------ inference
    def encode(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ):
        """Per-step items ``{"x", "log_px"}`` with ``log_px`` ``[batch]`` = ``log p(x_t | x_{<t})``.

        Under scheduled sampling (training only) ``{"x", "u", "truth"}``: the recurrence then runs
        per step and particle in :meth:`step`, fed ``x_t`` where ``truth`` ``[batch]``, else a draw of
        ``p(x_t | fed-back past)``.
        """
        x, inputs = self.prepare(x, lengths, inputs)
        feedback = self.feedback(x)
        if feedback is not None:
            us = inputs.unbind(1) if inputs is not None else [None] * x.shape[1]
            return [{"x": x_t, "u": u_t, "truth": m_t} for x_t, u_t, m_t in zip(x.unbind(1), us, feedback)]
        log_px = self._log_px(x, inputs)
        return [{"x": x_t, "log_px": lp_t} for x_t, lp_t in zip(x.unbind(1), log_px.unbind(1))]

    def init_state(self, encoded, n_particles: int) -> dict:
        if "truth" in encoded[0]:  # scheduled sampling: the recurrence of every particle
            x0 = encoded[0]["x"]
            return zero_rnn_state(self.cell_type, self._like(x0), x0.shape[0], n_particles, self.hidden_size)
        like = encoded[0]["log_px"]
        return {"z": like.new_zeros(like.shape[0], n_particles, 0)}

    def step(self, state: dict, encoded_t: dict, z: torch.Tensor | None = None, reparametrize: bool = True):
        if "truth" in encoded_t:
            return self._scheduled_step(state, encoded_t, z)
        empty = state["z"]  # [batch, K, 0]
        batch, k, _ = empty.shape
        log_p = encoded_t["log_px"].unsqueeze(1).expand(batch, k)
        log_q = torch.zeros_like(log_p)
        return StepOutput(state, empty if z is None else z, log_p, log_q)

    def _scheduled_step(self, state: dict, encoded_t: dict, z: torch.Tensor | None) -> StepOutput:
        """One step of the recurrence fed the mixed observation (leaves ``[batch, K, hidden]``)."""
        h = state["h"]
        batch, k, _ = h.shape
        ctx = particle_context(h, encoded_t["u"])
        params = self.decoder(ctx)
        log_p = self.observation.log_prob(params, encoded_t["x"].unsqueeze(1))  # [batch, K]
        with torch.no_grad():
            sample = self.observation.sample(params)  # the model's own x_t, per particle
        xf = self.recurrent_input(self.fed_features(encoded_t["truth"], encoded_t["x"], sample))
        new_state = step_rnn(self.rnn, particle_context(xf, encoded_t["u"]), state)
        empty = h.new_zeros(batch, k, 0)
        return StepOutput(new_state, empty if z is None else z, log_p, torch.zeros_like(log_p))

    # ----------------------------------------------------------------------- generation
    def generate_init(self, batch_size: int, n_samples: int, like: torch.Tensor) -> dict:
        return zero_rnn_state(self.cell_type, self._like(like), batch_size, n_samples, self.hidden_size)

    def generate_step(self, state: dict, inputs_t: torch.Tensor | None = None):
        h = state["h"]
        batch, n, _ = h.shape
        u = self.step_inputs(inputs_t, batch, n, "RNN.generate_step")
        ctx = h if u is None else torch.cat([h, u], dim=-1)
        x = self.observation.sample(self.decoder(ctx))  # [batch, n, *obs]
        xf = self.x_features(x)
        new_state = step_rnn(self.rnn, xf if u is None else torch.cat([xf, u], dim=-1), state)
        return new_state, x, h.new_zeros(batch, n, 0)

    def generation_state(self, state: dict, x: torch.Tensor, lengths=None, inputs=None) -> dict:
        """The recurrence after each prefix ``x`` (``state`` only gives the number of samples)."""
        x, inputs = self.prepare(x, lengths, inputs)
        return context_after(self.rnn, self.x_features(x), inputs, lengths, state["z"].shape[1])
