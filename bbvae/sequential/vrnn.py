"""The variational recurrent neural network (VRNN; Chung et al. 2015), as in the FIVO reference.

Per step, with ``h_{t-1}`` the recurrent state, ``u_t`` optional side inputs and
``c_t = [h_{t-1}, u_t]``:

* prior ``p(z_t | c_t) = N(mu_p(c_t), sigma_p(c_t))`` (diagonal Gaussian, MLP),
* proposal ``q(z_t | c_t, x_t) = N(mu_q(c_t, phi_x(x_t)), sigma_q(...))``,
* emission ``p(x_t | z_t, c_t)`` from ``decoder([c_t, phi_z(z_t)])`` (Bernoulli, Normal, Categorical
  or a user's family),
* recurrence ``h_t = f(h_{t-1}, [phi_x(x_t), phi_z(z_t), u_t])`` with an LSTM or GRU cell.

q and p share the recurrence, which runs once per step for all particles (one cell call on the
flattened ``[batch * K]`` batch). ``phi_x(x_t)`` and its projection into the proposal's first
layer depend on ``x`` alone, so :meth:`VRNN.encode` computes them once per sequence, batched over
``[batch, T]``.

How a sequence model plugs into bbvae (the step contract of :mod:`bbvae.sequential.base`): a
:class:`~bbvae.sequential.base.SequentialModel` implements ``encode(x, lengths, inputs)`` (x-only
work, once per sequence, returned as a per-step list taken with ``unbind(1)``),
``init_state(encoded, K)`` (leaves ``[batch, K, ...]``), ``step(state, encoded_t, z=None,
reparametrize=True) -> StepOutput(state, z_t, log p(x_t, z_t | past), log q(z_t | past, x))``, and
``generate_init`` / ``generate_step`` to sample. Then ``IWAE(model.inf_net, model.gen_model, K)``,
every other loss of :mod:`bbvae.losses`, FIVO and :func:`bbvae.sequential.smc.smc` work unchanged::

    model = VRNN(obs_dim=88, latent_size=64)
    model.init_output_bias(train_mean)                     # FIVO initialisation
    loss = IWAE(model.inf_net, model.gen_model, n_samples=4)
    loss(x, lengths=lengths).backward()                    # x [batch, T, 88]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bbvae.models import mlp
from bbvae.sequential.base import StepOutput
from bbvae.sequential.nets import (
    GaussianHead,
    NeuralSequentialModel,
    draw_normal,
    make_cell,
    normal_log_prob,
    step_cell,
    zero_rnn_state,
)
from bbvae.sequential.vrnn_fused import fused_applies, fused_step, fused_weights


class VRNN(NeuralSequentialModel):
    """Variational RNN with diagonal Gaussian latents (reparametrizable).

    Args:
        obs_dim: size of ``x_t`` (88 for piano rolls), or the vocabulary size for
            ``observation="categorical"`` (then ``x`` is long ``[batch, T]``).
        latent_size: size of ``z_t`` (FIVO default 64).
        hidden_size: recurrent state size (default ``latent_size``).
        fc_hidden_sizes: hidden layers of every MLP (default ``(latent_size,)``).
        encoded_size: size of ``phi_x(x_t)`` and ``phi_z(z_t)`` (default ``latent_size``).
        cell: ``"lstm"`` or ``"gru"``.
        observation: ``"bernoulli"``, ``"normal"``, ``"categorical"``, an
            :class:`~bbvae.sequential.nets.Observation`, or a callable ``params -> Distribution``
            (then ``decoder`` is required).
        input_size: size of the side inputs ``u_t`` (0: none).
        x_mean: ``[obs_dim]`` subtracted from ``x`` before ``phi_x`` (FIVO centring).
        embedding_size: symbol embedding size for categorical observations.
        encoder: ``phi_x``, a module ``[..., feature_size] -> [..., encoded_size]`` (default: MLP).
        decoder: a module ``[..., decoder_input_size] -> [..., param_size]`` where
            ``decoder_input_size = hidden_size + input_size + encoded_size`` (default: MLP).
        resq: the proposal predicts its mean as a residual on the prior's mean (the FIVO
            reference's "res_q" parametrisation; Fraccaro et al. 2016, section 3.3).
        dropout: dropout on every MLP hidden layer and on the recurrent cell's input, in training
            mode only (evaluation, sampling and SMC scoring run in eval mode). It changes the
            training objective: the bound is then that of a randomly thinned network.

    Attributes:
        cell: the ``nn.LSTMCell`` / ``nn.GRUCell`` (called once per step).
        prior, proposal: :class:`~bbvae.sequential.nets.GaussianHead` of ``p(z_t|.)``, ``q(z_t|.)``.
        z_encoder: ``phi_z``.
        latent_shape: ``(latent_size,)``.
    """

    has_rsample = True
    #: Run the fused step where it applies (:mod:`bbvae.sequential.vrnn_fused`); False: the general
    #: step, which calls the cell and every MLP as modules (e.g. for forward hooks).
    fuse = True

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
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        where = "VRNN"
        encoded = self._set_sizes(
            where, obs_dim, latent_size, hidden_size, fc_hidden_sizes, encoded_size, cell, input_size, dropout
        )
        self.resq = bool(resq)
        ctx = self.hidden_size + input_size
        self._build_io(
            obs_dim,
            observation,
            embedding_size,
            encoder,
            encoded,
            decoder,
            ctx + encoded,
            self.fc_hidden_sizes,
            x_mean,
        )
        fc = self.fc_hidden_sizes
        self.z_encoder = mlp([latent_size, *fc, encoded], nn.ReLU, dropout=self.dropout)
        self.prior = GaussianHead([ctx], fc, latent_size, dropout=self.dropout)
        self.proposal = GaussianHead([ctx, encoded], fc, latent_size, dropout=self.dropout)
        self.cell = make_cell(cell, 2 * encoded + input_size, self.hidden_size)

    # ------------------------------------------------------------------------ inference
    def encode(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ):
        """Per-step items ``{"x", "xf", "qx", "u"}``: ``x_t``, ``phi_x(x_t)``, its proposal projection.

        Where the fused step applies (:mod:`bbvae.sequential.vrnn_fused`) the items are instead
        ``{"x", "xf", "u", "pre", "fused"}``: ``"pre"`` ``[batch, 1, 3F + 4H]`` the x-only
        pre-activations, ``"fused"`` the stacked weights (the same dict in every item).

        Under scheduled sampling (training only) each item also holds ``"truth"`` ``[batch]`` bool:
        the recurrence is then fed ``phi_x`` of ``x_t`` or of the model's own draw, per step.
        """
        x, inputs = self.prepare(x, lengths, inputs)
        feedback = self.feedback(x)
        xf = self.x_features(x)  # [batch, T, encoded]: one encoder call per sequence
        us = inputs.unbind(1) if inputs is not None else [None] * x.shape[1]
        if feedback is None and fused_applies(self):  # the fused step (bbvae.sequential.vrnn_fused)
            fused, pre = fused_weights(self, xf, inputs)
            return [
                {"x": x_t, "xf": xf_t, "u": u_t, "pre": pre_t, "fused": fused}
                for x_t, xf_t, u_t, pre_t in zip(x.unbind(1), xf.unbind(1), us, pre.unbind(0))
            ]
        qx = self.proposal.project(1, xf)  # [batch, T, first proposal layer]
        items = [
            {"x": x_t, "xf": xf_t, "qx": qx_t, "u": u_t}
            for x_t, xf_t, qx_t, u_t in zip(x.unbind(1), xf.unbind(1), qx.unbind(1), us)
        ]
        if feedback is not None:
            for item, truth_t in zip(items, feedback):
                item["truth"] = truth_t
        return items

    def init_state(self, encoded, n_particles: int) -> dict:
        like = encoded[0]["xf"]
        return zero_rnn_state(self.cell_type, like, like.shape[0], n_particles, self.hidden_size)

    def _context(self, h: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        if u is None:
            return h
        return torch.cat([h, u.expand(*h.shape[:2], u.shape[-1])], dim=-1)  # [batch, K, hidden + input]

    def step(self, state: dict, encoded_t: dict, z: torch.Tensor | None = None, reparametrize: bool = True):
        if "fused" in encoded_t:
            return StepOutput(*fused_step(self, state, encoded_t, z, reparametrize))
        h = state["h"]
        batch, k, _ = h.shape
        u = encoded_t["u"].unsqueeze(1) if encoded_t["u"] is not None else None
        ctx = self._context(h, u)  # [batch, K, C]
        p_loc, p_scale = self.prior.gaussian(ctx)
        q_pre = self.proposal.project(0, ctx) + encoded_t["qx"].unsqueeze(1)
        q_loc, q_scale = self.proposal.params(self.proposal.finish(q_pre))
        if self.resq:
            q_loc = q_loc + p_loc
        if z is None:
            z = draw_normal(q_loc, q_scale, reparametrize and self.has_rsample)
        zf = self.z_encoder(z)  # [batch, K, encoded]
        params = self.decoder(torch.cat([ctx, zf], dim=-1))
        log_px = self.observation.log_prob(params, encoded_t["x"].unsqueeze(1))  # [batch, K]
        log_p = normal_log_prob(z, p_loc, p_scale) + log_px
        log_q = normal_log_prob(z, q_loc, q_scale)
        if "truth" in encoded_t:  # scheduled sampling: phi_x of the fed-back observation
            xf = self._fed_back(ctx, p_loc, p_scale, encoded_t)
        else:
            xf = encoded_t["xf"].unsqueeze(1).expand(batch, k, -1)
        parts = [xf, zf]
        if u is not None:
            parts.append(u.expand(batch, k, -1))
        cell_in = self.recurrent_input(torch.cat(parts, dim=-1))
        new_state = step_cell(self.cell, cell_in, state)  # the one cell call of the step
        return StepOutput(new_state, z, log_p, log_q)

    def _fed_back(self, ctx, p_loc, p_scale, encoded_t: dict) -> torch.Tensor:
        """``phi_x`` ``[batch, K, encoded]`` of ``x_t`` or of the predictive draw generation would make:
        ``z'_t`` from the prior, ``x_t ~ p(x_t | z'_t, h_{t-1})`` (no gradient through the draw)."""
        with torch.no_grad():
            z_prior = draw_normal(p_loc, p_scale, reparametrize=False)
            params = self.decoder(torch.cat([ctx, self.z_encoder(z_prior)], dim=-1))
            sample = self.observation.sample(params)  # [batch, K, *obs]
        return self.fed_features(encoded_t["truth"], encoded_t["x"], sample)

    # ----------------------------------------------------------------------- generation
    def generate_init(self, batch_size: int, n_samples: int, like: torch.Tensor) -> dict:
        return zero_rnn_state(self.cell_type, self._like(like), batch_size, n_samples, self.hidden_size)

    def generate_step(self, state: dict, inputs_t: torch.Tensor | None = None):
        h = state["h"]
        batch, n, _ = h.shape
        u = self.step_inputs(inputs_t, batch, n, "VRNN.generate_step")
        ctx = self._context(h, u)
        p_loc, p_scale = self.prior.gaussian(ctx)
        z = draw_normal(p_loc, p_scale, reparametrize=False)
        zf = self.z_encoder(z)
        x = self.observation.sample(self.decoder(torch.cat([ctx, zf], dim=-1)))  # [batch, n, *obs]
        parts = [self.x_features(x), zf] + ([u] if u is not None else [])
        return step_cell(self.cell, torch.cat(parts, dim=-1), state), x, z
