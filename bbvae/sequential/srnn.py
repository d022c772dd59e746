"""The stochastic recurrent neural network (SRNN; Fraccaro et al. 2016).

A deterministic forward recurrence over the observed past, then a stochastic state-space layer:

* ``d_t = f(d_{t-1}, [phi(x_{t-1}), u_{t-1}])`` (LSTM/GRU, ``d`` before any ``x_t``) and the
  context ``c_t = [d_t, u_t]``: it depends on ``x`` alone, so :meth:`SRNN.encode` runs it once per
  sequence with a whole-sequence ``nn.LSTM``/``nn.GRU``;
* prior ``p(z_t | z_{t-1}, c_t) = N(mu_p, sigma_p)`` (MLP of ``[z_{t-1}, c_t]``);
* emission ``p(x_t | z_t, c_t)`` from ``decoder([z_t, c_t])``;
* smoothing proposal ``q(z_t | z_{t-1}, a_t)`` with ``a_t = g(a_{t+1}, [c_t, phi(x_t)])`` a
  backward recurrence (also once per sequence in ``encode``; each sequence is reversed within its
  own length, so padding never reaches it). With ``resq=True`` (the paper's "Resq") the proposal
  predicts a residual on the prior mean: ``mu_q = mu_p + MLP(z_{t-1}, a_t)``.

Both Gaussians' first layers are split (:class:`~bbvae.sequential.nets.MultiInputMLP`), so the
parts that depend on ``c_t`` and ``a_t`` are projected once per sequence; a step only multiplies
``z_{t-1}`` per particle. The filtering state is ``{"z": z_t}``; generation also carries the forward
recurrence (``{"z", "h"[, "c"]}``), rebuilt after a prefix by :meth:`SRNN.generation_state`.

See :mod:`bbvae.sequential.vrnn` for how a model plugs into every loss and SMC.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bbvae._validation import check_positive_int
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
    reverse_padded,
    step_rnn,
    zero_rnn_state,
)


class SRNN(NeuralSequentialModel):
    """Stochastic RNN with a smoothing (backward-recurrence) Gaussian proposal.

    Args:
        obs_dim: size of ``x_t``, or the vocabulary size for ``observation="categorical"``.
        latent_size: size of ``z_t``.
        hidden_size: size of the forward recurrence ``d_t`` (default ``latent_size``).
        fc_hidden_sizes: hidden layers of every MLP (default ``(latent_size,)``).
        encoded_size: size of ``phi(x_t)`` (default ``latent_size``).
        cell: ``"lstm"`` or ``"gru"`` (both recurrences).
        observation: see :class:`~bbvae.sequential.vrnn.VRNN`.
        input_size: size of the side inputs ``u_t`` (0: none).
        x_mean: ``[obs_dim]`` subtracted from ``x`` before ``phi`` (FIVO centring).
        embedding_size: symbol embedding size for categorical observations.
        encoder: ``phi``, a module ``[..., feature_size] -> [..., encoded_size]``.
        decoder: a module ``[..., latent_size + hidden_size + input_size] -> [..., param_size]``.
        resq: predict the proposal mean as a residual on the prior mean.
        dropout: dropout on every MLP hidden layer and on the recurrences' inputs, in training mode
            only (it changes the training objective; evaluation runs in eval mode).
        backward_size: size of the backward recurrence ``a_t`` (default ``hidden_size``).

    Attributes:
        forward_rnn, backward_rnn: the whole-sequence recurrences (one call each per ``encode``).
        prior, proposal: :class:`~bbvae.sequential.nets.GaussianHead`.
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
        resq: bool = True,
        backward_size: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        where = "SRNN"
        encoded = self._set_sizes(
            where, obs_dim, latent_size, hidden_size, fc_hidden_sizes, encoded_size, cell, input_size, dropout
        )
        self.backward_size = self.hidden_size if backward_size is None else backward_size
        check_positive_int("backward_size", self.backward_size, where)
        self.resq = bool(resq)
        ctx = self.hidden_size + input_size
        fc = self.fc_hidden_sizes
        self._build_io(
            obs_dim, observation, embedding_size, encoder, encoded, decoder, latent_size + ctx, fc, x_mean
        )
        self.forward_rnn = make_rnn(cell, encoded + input_size, self.hidden_size)
        self.backward_rnn = make_rnn(cell, ctx + encoded, self.backward_size)
        self.prior = GaussianHead([latent_size, ctx], fc, latent_size, dropout=self.dropout)
        self.proposal = GaussianHead([latent_size, self.backward_size], fc, latent_size, dropout=self.dropout)

    # ------------------------------------------------------------------------ inference
    def encode(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ):
        """Per-step items ``{"x", "ctx", "pc", "qa"}``: ``x_t``, ``c_t`` and the projections of
        ``c_t`` (prior) and ``a_t`` (proposal), all computed once per sequence."""
        x, inputs = self.prepare(x, lengths, inputs)
        feedback = self.feedback(x)
        xf = self.x_features(x)  # [batch, T, encoded]
        ctx = causal_context(self.forward_rnn, self.recurrent_input(xf), inputs)  # [batch, T, hidden + input]
        backward_in = reverse_padded(self.recurrent_input(torch.cat([ctx, xf], dim=-1)), lengths)
        a = reverse_padded(self.backward_rnn(backward_in)[0], lengths)  # [batch, T, backward]
        qa = self.proposal.project(1, a)
        if feedback is not None:
            # Scheduled sampling: the proposal's backward pass above stays on the ground truth;
            # the forward recurrence d_t runs per step and particle in step(), on fed-back x.
            us = inputs.unbind(1) if inputs is not None else [None] * x.shape[1]
            return [
                {"x": x_t, "qa": qa_t, "u": u_t, "truth": m_t}
                for x_t, qa_t, u_t, m_t in zip(x.unbind(1), qa.unbind(1), us, feedback)
            ]
        pc = self.prior.project(1, ctx)
        return [
            {"x": x_t, "ctx": c_t, "pc": pc_t, "qa": qa_t}
            for x_t, c_t, pc_t, qa_t in zip(x.unbind(1), ctx.unbind(1), pc.unbind(1), qa.unbind(1))
        ]

    def init_state(self, encoded, n_particles: int) -> dict:
        if "truth" in encoded[0]:  # scheduled sampling: z and the forward recurrence d, per particle
            x0 = encoded[0]["x"]
            state = zero_rnn_state(self.cell_type, self._like(x0), x0.shape[0], n_particles, self.hidden_size)
            state["z"] = state["h"].new_zeros(x0.shape[0], n_particles, self.latent_size)
            return state
        like = encoded[0]["ctx"]
        return {"z": like.new_zeros(like.shape[0], n_particles, self.latent_size)}

    def step(self, state: dict, encoded_t: dict, z: torch.Tensor | None = None, reparametrize: bool = True):
        z_prev = state["z"]  # [batch, K, latent]
        batch, k, _ = z_prev.shape
        if "truth" in encoded_t:
            return self._scheduled_step(state, encoded_t, z, reparametrize)
        ctx = encoded_t["ctx"].unsqueeze(1).expand(batch, k, -1)
        pc = encoded_t["pc"].unsqueeze(1)
        z, log_p, log_q, _ = self._weigh(z_prev, pc, ctx, encoded_t, z, reparametrize)
        return StepOutput({"z": z}, z, log_p, log_q)

    def _weigh(self, z_prev, pc, ctx, encoded_t: dict, z, reparametrize: bool):
        """Propose (or score) ``z_t`` and weigh it: ``(z, log_p, log_q, (p_loc, p_scale))``.

        ``pc``: the prior's projection of ``c_t`` (``[batch, 1 or K, first]``); ``ctx``: ``c_t``
        ``[batch, K, hidden + input]``.
        """
        p_pre = self.prior.project(0, z_prev) + pc
        p_loc, p_scale = self.prior.params(self.prior.finish(p_pre))
        q_pre = self.proposal.project(0, z_prev) + encoded_t["qa"].unsqueeze(1)
        q_loc, q_scale = self.proposal.params(self.proposal.finish(q_pre))
        if self.resq:
            q_loc = q_loc + p_loc
        if z is None:
            z = draw_normal(q_loc, q_scale, reparametrize and self.has_rsample)
        params = self.decoder(torch.cat([z, ctx], dim=-1))
        log_px = self.observation.log_prob(params, encoded_t["x"].unsqueeze(1))  # [batch, K]
        log_p = normal_log_prob(z, p_loc, p_scale) + log_px
        log_q = normal_log_prob(z, q_loc, q_scale)
        return z, log_p, log_q, (p_loc, p_scale)

    def _scheduled_step(self, state: dict, encoded_t: dict, z, reparametrize: bool) -> StepOutput:
        """A step whose context ``c_t = [d_t, u_t]`` comes from the fed-back observations (per particle)."""
        d = state["h"]  # [batch, K, hidden]
        ctx = particle_context(d, encoded_t["u"])
        pc = self.prior.project(1, ctx)
        z, log_p, log_q, (p_loc, p_scale) = self._weigh(state["z"], pc, ctx, encoded_t, z, reparametrize)
        with torch.no_grad():  # the model's own x_t: z'_t from the prior, x_t from the emission
            z_prior = draw_normal(p_loc, p_scale, reparametrize=False)
            sample = self.observation.sample(self.decoder(torch.cat([z_prior, ctx], dim=-1)))
        xf = self.recurrent_input(self.fed_features(encoded_t["truth"], encoded_t["x"], sample))
        recurrent = {key: value for key, value in state.items() if key != "z"}
        new_state = step_rnn(self.forward_rnn, particle_context(xf, encoded_t["u"]), recurrent)
        new_state["z"] = z
        return StepOutput(new_state, z, log_p, log_q)

    # ----------------------------------------------------------------------- generation
    def generate_init(self, batch_size: int, n_samples: int, like: torch.Tensor) -> dict:
        state = zero_rnn_state(self.cell_type, self._like(like), batch_size, n_samples, self.hidden_size)
        state["z"] = state["h"].new_zeros(batch_size, n_samples, self.latent_size)
        return state

    def generate_step(self, state: dict, inputs_t: torch.Tensor | None = None):
        h = state["h"]
        batch, n, _ = h.shape
        u = self.step_inputs(inputs_t, batch, n, "SRNN.generate_step")
        ctx = h if u is None else torch.cat([h, u], dim=-1)
        p_loc, p_scale = self.prior.gaussian(state["z"], ctx)
        z = draw_normal(p_loc, p_scale, reparametrize=False)
        x = self.observation.sample(self.decoder(torch.cat([z, ctx], dim=-1)))  # [batch, n, *obs]
        xf = self.x_features(x)
        rnn_in = xf if u is None else torch.cat([xf, u], dim=-1)
        recurrent = {key: value for key, value in state.items() if key != "z"}
        new_state = step_rnn(self.forward_rnn, rnn_in, recurrent)
        new_state["z"] = z
        return new_state, x, z

    def generation_state(self, state: dict, x: torch.Tensor, lengths=None, inputs=None) -> dict:
        """``{"z": state["z"], "h", "c"}``: the filtered ``z_t`` plus the forward recurrence after ``x``."""
        x, inputs = self.prepare(x, lengths, inputs)
        new_state = context_after(self.forward_rnn, self.x_features(x), inputs, lengths, state["z"].shape[1])
        new_state["z"] = state["z"]
        return new_state
