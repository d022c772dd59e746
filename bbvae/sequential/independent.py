"""A sequence VAE with latents independent across time (the VAE-Seq "independent" architecture).

* recurrence over the observed past only: ``h_t = f(h_{t-1}, [phi(x_t), u_t])``, context
  ``c_t = [h_{t-1}, u_t]`` (it does not depend on any ``z``, so :meth:`IndependentVAE.encode`
  runs it once per sequence with a whole-sequence ``nn.LSTM``/``nn.GRU``);
* prior ``p(z_t) = N(0, I)``, the same at every step whatever the history;
* proposal ``q(z_t | c_t, x_t) = N(mu(c_t, phi(x_t)), sigma(...))``, also computed once per
  sequence (it has no particle dependence);
* emission ``p(x_t | z_t, c_t)`` from ``decoder([c_t, z_t])``.

Because the latents do not feed the recurrence, each step's weight depends on that step's
particle alone. The model is the per-step-VAE baseline between :class:`~bbvae.sequential.rnn.RNN` and
:class:`~bbvae.sequential.vrnn.VRNN`. See :mod:`bbvae.sequential.vrnn` for the step contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bbvae.sequential.base import StepOutput
from bbvae.sequential.nets import (
    GaussianHead,
    NeuralSequentialModel,
    causal_context,
    context_after,
    draw_normal,
    make_rnn,
    normal_log_prob,
    particle_context,
    standard_normal_log_prob,
    step_rnn,
    zero_rnn_state,
)


class IndependentVAE(NeuralSequentialModel):
    """Per-step VAE whose recurrence sees only observations; fixed ``N(0, I)`` prior on each ``z_t``.

    Args:
        obs_dim: size of ``x_t``, or the vocabulary size for ``observation="categorical"``.
        latent_size: size of ``z_t``.
        hidden_size: recurrent state size (default ``latent_size``).
        fc_hidden_sizes: hidden layers of every MLP (default ``(latent_size,)``).
        encoded_size: size of ``phi(x_t)`` (default ``latent_size``).
        cell: ``"lstm"`` or ``"gru"``.
        observation: see :class:`~bbvae.sequential.vrnn.VRNN`.
        input_size: size of the side inputs ``u_t`` (0: none).
        x_mean: ``[obs_dim]`` subtracted from ``x`` before ``phi``.
        embedding_size: symbol embedding size for categorical observations.
        encoder: ``phi``, a module ``[..., feature_size] -> [..., encoded_size]``.
        decoder: a module ``[..., hidden_size + input_size + latent_size] -> [..., param_size]``.
        dropout: dropout on every MLP hidden layer and on the recurrence's input, in training mode
            only (it changes the training objective; evaluation runs in eval mode).

    Attributes:
        rnn: the whole-sequence ``nn.LSTM`` / ``nn.GRU``.
        proposal: :class:`~bbvae.sequential.nets.GaussianHead` of ``q(z_t | c_t, x_t)``.
        latent_shape: ``(latent_size,)``.
    """

    has_rsample = True

    def __init__(
        self,
        obs_dim: int,
        latent_size: int = 64,
        hidden_size: int | None = None,
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
        where = "IndependentVAE"
        encoded = self._set_sizes(
            where, obs_dim, latent_size, hidden_size, fc_hidden_sizes, encoded_size, cell, input_size, dropout
        )
        ctx = self.hidden_size + input_size
        fc = self.fc_hidden_sizes
        self._build_io(
            obs_dim, observation, embedding_size, encoder, encoded, decoder, ctx + latent_size, fc, x_mean
        )
        self.rnn = make_rnn(cell, encoded + input_size, self.hidden_size)
        self.proposal = GaussianHead([ctx, encoded], fc, latent_size, dropout=self.dropout)

    # ------------------------------------------------------------------------ inference
    def encode(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ):
        """Per-step items ``{"x", "ctx", "q_loc", "q_scale"}``, all computed once per sequence."""
        x, inputs = self.prepare(x, lengths, inputs)
        xf = self.x_features(x)  # [batch, T, encoded]
        feedback = self.feedback(x)
        if feedback is not None:
            # Scheduled sampling: the recurrence (so c_t and q) runs per step and particle in step(),
            # fed x_t or the model's own draw; q still sees the true x_t through its projection qx.
            qx = self.proposal.project(1, xf)  # [batch, T, first proposal layer]
            us = inputs.unbind(1) if inputs is not None else [None] * x.shape[1]
            return [
                {"x": x_t, "qx": qx_t, "u": u_t, "truth": m_t}
                for x_t, qx_t, u_t, m_t in zip(x.unbind(1), qx.unbind(1), us, feedback)
            ]
        ctx = causal_context(self.rnn, self.recurrent_input(xf), inputs)  # [batch, T, hidden + input]
        q_loc, q_scale = self.proposal.gaussian(ctx, xf)  # [batch, T, latent] each
        return [
            {"x": x_t, "ctx": c_t, "q_loc": m_t, "q_scale": s_t}
            for x_t, c_t, m_t, s_t in zip(x.unbind(1), ctx.unbind(1), q_loc.unbind(1), q_scale.unbind(1))
        ]

    def init_state(self, encoded, n_particles: int) -> dict:
        if "truth" in encoded[0]:  # scheduled sampling: the recurrence of every particle
            x0 = encoded[0]["x"]
            state = zero_rnn_state(self.cell_type, self._like(x0), x0.shape[0], n_particles, self.hidden_size)
            state["z"] = state["h"].new_zeros(x0.shape[0], n_particles, self.latent_size)
            return state
        like = encoded[0]["q_loc"]
        return {"z": like.new_zeros(like.shape[0], n_particles, self.latent_size)}

    def step(self, state: dict, encoded_t: dict, z: torch.Tensor | None = None, reparametrize: bool = True):
        if "truth" in encoded_t:
            return self._scheduled_step(state, encoded_t, z, reparametrize)
        batch, k, _ = state["z"].shape
        q_loc = encoded_t["q_loc"].unsqueeze(1).expand(batch, k, -1)
        q_scale = encoded_t["q_scale"].unsqueeze(1).expand(batch, k, -1)
        if z is None:
            z = draw_normal(q_loc, q_scale, reparametrize and self.has_rsample)
        ctx = encoded_t["ctx"].unsqueeze(1).expand(batch, k, -1)
        params = self.decoder(torch.cat([ctx, z], dim=-1))
        log_px = self.observation.log_prob(params, encoded_t["x"].unsqueeze(1))  # [batch, K]
        log_p = standard_normal_log_prob(z) + log_px
        log_q = normal_log_prob(z, q_loc, q_scale)
        return StepOutput({"z": z}, z, log_p, log_q)

    def _scheduled_step(self, state: dict, encoded_t: dict, z, reparametrize: bool) -> StepOutput:
        """A step whose context ``c_t = [h_{t-1}, u_t]`` comes from the fed-back observations."""
        h = state["h"]  # [batch, K, hidden]
        ctx = particle_context(h, encoded_t["u"])
        q_pre = self.proposal.project(0, ctx) + encoded_t["qx"].unsqueeze(1)
        q_loc, q_scale = self.proposal.params(self.proposal.finish(q_pre))
        if z is None:
            z = draw_normal(q_loc, q_scale, reparametrize and self.has_rsample)
        params = self.decoder(torch.cat([ctx, z], dim=-1))
        log_px = self.observation.log_prob(params, encoded_t["x"].unsqueeze(1))  # [batch, K]
        log_p = standard_normal_log_prob(z) + log_px
        log_q = normal_log_prob(z, q_loc, q_scale)
        with torch.no_grad():  # the model's own x_t: z'_t ~ N(0, I), x_t from the emission
            z_prior = torch.randn_like(z)
            sample = self.observation.sample(self.decoder(torch.cat([ctx, z_prior], dim=-1)))
        xf = self.recurrent_input(self.fed_features(encoded_t["truth"], encoded_t["x"], sample))
        recurrent = {key: value for key, value in state.items() if key != "z"}
        new_state = step_rnn(self.rnn, particle_context(xf, encoded_t["u"]), recurrent)
        new_state["z"] = z
        return StepOutput(new_state, z, log_p, log_q)

    # ----------------------------------------------------------------------- generation
    def generate_init(self, batch_size: int, n_samples: int, like: torch.Tensor) -> dict:
        return zero_rnn_state(self.cell_type, self._like(like), batch_size, n_samples, self.hidden_size)

    def generate_step(self, state: dict, inputs_t: torch.Tensor | None = None):
        h = state["h"]
        batch, n, _ = h.shape
        u = self.step_inputs(inputs_t, batch, n, "IndependentVAE.generate_step")
        ctx = h if u is None else torch.cat([h, u], dim=-1)
        z = torch.randn_like(h.new_empty(batch, n, self.latent_size))
        x = self.observation.sample(self.decoder(torch.cat([ctx, z], dim=-1)))  # [batch, n, *obs]
        xf = self.x_features(x)
        new_state = step_rnn(self.rnn, xf if u is None else torch.cat([xf, u], dim=-1), state)
        return new_state, x, z

    def generation_state(self, state: dict, x: torch.Tensor, lengths=None, inputs=None) -> dict:
        """The recurrence after each prefix ``x`` (the latents carry nothing forward)."""
        x, inputs = self.prepare(x, lengths, inputs)
        return context_after(self.rnn, self.x_features(x), inputs, lengths, state["z"].shape[1])
