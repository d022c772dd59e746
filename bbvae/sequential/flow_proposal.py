"""A per-step normalising-flow proposal for VRNN, SRNN and GaussianHMM (optional zuko, ``bbvae[flows]``).

:class:`FlowProposal` wraps a trained or fresh :class:`~bbvae.sequential.VRNN`,
:class:`~bbvae.sequential.SRNN` or :class:`~bbvae.sequential.GaussianHMM` and replaces its Gaussian
proposal ``q(u_t | .)`` by ``z_t = T_c^{-1}(u_t)``, with ``T_c`` a conditional flow (zuko's Real NVP,
MAF or NSF) whose context ``c_t`` is what the wrapped model's proposal sees (VRNN:
``[h_{t-1}, phi_x(x_t)]``; SRNN: ``[z_{t-1}, proj(a_t)]``; GaussianHMM: ``[z_{t-1}, x_t]``, with
``z_0 = 0``, on top of any of its proposals). By the change of variables

    log q(z_t | .) = log q_gauss(T_c(z_t) | .) + log |det dT_c / dz_t|,

and the prior, emission and recurrence are the wrapped model's, evaluated at ``z_t``. The wrapped
model is not modified: each step calls its ``step`` twice (once to draw or score ``u_t``, once to
weigh ``z_t`` and advance), so a step costs about twice the wrapped one. Generation is the wrapped
model's (the prior is unchanged). With the flow at the identity (the default start) the wrapper is
exactly the wrapped model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bbvae.flows import identity_init, make_flow
from bbvae.sequential.base import SequentialModel, StepOutput

__all__ = ["FlowProposal"]


class FlowProposal(SequentialModel):
    """A VRNN, SRNN or GaussianHMM whose per-step proposal is a conditional flow on its Gaussian one.

    Args:
        model: the :class:`~bbvae.sequential.VRNN`, :class:`~bbvae.sequential.SRNN` or
            :class:`~bbvae.sequential.GaussianHMM` to wrap (its parameters are trained with the
            flow's; freeze them with ``requires_grad_(False)`` to train the proposal alone).
        flow: ``"realnvp"``, ``"maf"`` or ``"nsf"``.
        transforms: flow layers.
        hidden: hidden layers of every flow layer's network.
        identity: start the flow at the identity (the wrapper then equals ``model``).

    Attributes:
        model: the wrapped model; flow: the zuko flow (``flow.transform(c)`` maps ``z_t`` to ``u_t``).
    """

    def __init__(
        self,
        model: SequentialModel,
        flow: str = "realnvp",
        transforms: int = 2,
        hidden: Sequence[int] = (64, 64),
        identity: bool = True,
    ) -> None:
        super().__init__()
        from bbvae.sequential.ghmm import GaussianHMM
        from bbvae.sequential.srnn import SRNN
        from bbvae.sequential.vrnn import VRNN

        where = "FlowProposal"
        # (state leaf, or None for a state that is the leaf itself; per-step encoded item)
        if isinstance(model, VRNN):
            self._keys = ("h", "xf")
            context, latent = model.hidden_size + model.encoded_size, model.latent_size
        elif isinstance(model, SRNN):
            self._keys = ("z", "qa")
            context, latent = model.latent_size + model.proposal.inputs[1].out_features, model.latent_size
        elif isinstance(model, GaussianHMM):
            self._keys = (None, "x")  # the state is z_{t-1} [batch, K, z_dim]
            context, latent = model.z_dim + model.x_dim, model.z_dim
        else:
            raise TypeError(
                f"{where}: expected a VRNN, SRNN or GaussianHMM to wrap, got {type(model).__name__}"
            )
        self.model = model
        self.latent_shape = tuple(model.latent_shape)
        self.has_rsample = bool(model.has_rsample)
        self.flow = make_flow(flow, latent, context, transforms, hidden, where)
        if identity:
            identity_init(self.flow)

    # ------------------------------------------------------------------------ delegation
    def encode(self, x, lengths=None, inputs=None):
        return self.model.encode(x, lengths, inputs)

    def init_state(self, encoded, n_particles: int):
        return self.model.init_state(encoded, n_particles)

    def reorder(self, state, ancestors: torch.Tensor):
        return self.model.reorder(state, ancestors)

    def generate_init(self, batch_size: int, n_samples: int, like: torch.Tensor):
        return self.model.generate_init(batch_size, n_samples, like)

    def generate_step(self, state, inputs_t: torch.Tensor | None = None):
        return self.model.generate_step(state, inputs_t)

    def generation_state(self, state, x: torch.Tensor, lengths=None, inputs=None):
        return self.model.generation_state(state, x, lengths, inputs)

    # --------------------------------------------------------------------------- the step
    def _transform(self, state, encoded_t):
        """``T_c`` (``z_t -> u_t``) with the context ``[batch, K, C]`` of this step."""
        leaf = state if self._keys[0] is None else state[self._keys[0]]  # [batch, K, *]
        item = encoded_t[self._keys[1]].unsqueeze(1).expand(*leaf.shape[:2], -1)  # [batch, K, *]
        return self.flow.transform(torch.cat([leaf, item.to(leaf.dtype)], dim=-1))

    def step(self, state, encoded_t, z: torch.Tensor | None = None, reparametrize: bool = True):
        t = self._transform(state, encoded_t)
        if z is None and reparametrize and self.has_rsample:
            first = self.model.step(state, encoded_t, None, True)  # u_t ~ q_gauss, pathwise
            z = t.inv(first.z)
            # log q(z) = log q_gauss(u) + log|det dT/dz| at u = T(z): the same function of the
            # parameters along the pathwise draw, so its gradient is the pathwise one.
            _, ladj = t.call_and_ladj(z)
            log_q = first.log_q + ladj
        else:
            if z is None:  # a draw without gradient path; log q keeps its gradient below
                with torch.no_grad():
                    z = t.inv(self.model.step(state, encoded_t, None, False).z)
            u, ladj = t.call_and_ladj(z)
            log_q = self.model.step(state, encoded_t, u, reparametrize).log_q + ladj
        out = self.model.step(state, encoded_t, z, reparametrize)
        return StepOutput(out.state, z, out.log_p, log_q)
