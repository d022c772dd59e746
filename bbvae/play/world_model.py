"""A world model of an environment: a bbvae sequence model (VRNN or SRNN) of real episodes.

An episode ``s_0, a_0, r_1, s_1, ..., a_{T-1}, r_T, s_T`` becomes a sequence of ``T + 1``
observations with the actions as side inputs (shapes per step):

* observation ``x_t = [s_t / state_scale (obs_dim), r_t, d_t]`` with ``d_t`` whether ``s_t`` is
  terminal; at ``t = 0``: ``r_0 = 0``, ``d_0 = 0``;
* side input ``u_t = [one_hot(a_{t-1}) (n_actions), s_{t-1} / state_scale (obs_dim)]``, zeros at ``t = 0``
  (the FIVO convention of feeding the previous frame, plus the action).

The observation family (:class:`TransitionObservation`) is a diagonal Gaussian for the state and the
reward and a Bernoulli for termination whose logit depends on the drawn state; the decoder
(:class:`ResidualDecoder`) predicts the state's mean as ``s_{t-1}`` plus a learned change, the usual
choice of model-based RL.

The model is trained on windows of at most ``window`` steps cut from the episodes (overlapping by
half), each starting from a zero recurrent state, so an imagined rollout may start from any real state:
:meth:`WorldModel.filter_start` runs the model's filtering step on that state (the step contract of
:mod:`bbvae.sequential`), then :meth:`WorldModel.imagine_step` draws the next state with reparametrised
noise, so a rollout is differentiable in the actions fed to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Distribution, constraints
from torch.nn import functional as F

from bbvae.losses import ELBO, FIVO, IWAE
from bbvae.models import mlp
from bbvae.play.env import Episode
from bbvae.sequential import SRNN, VRNN, Observation, evaluate
from bbvae.training import SequenceData, Trainer

_LOSSES = ("elbo", "iwae", "fivo")
_MODELS = {"vrnn": VRNN, "srnn": SRNN}


class TransitionDistribution(Distribution):
    """``N(loc, scale)`` on the first ``n_real`` entries, then ``Bernoulli(logit)`` on the last, where the
    termination logit ``base_logits + termination(x[..., :n_state])`` depends on the drawn state.

    Batch shape ``loc.shape[:-1]``, event shape ``[n_real + 1]``. ``log_prob`` is
    ``log N(x_real) + log Bernoulli(x_done | logit(x_real))``, the chain rule within one step.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        base_logits: torch.Tensor,
        termination: nn.Module,
        n_state: int,
    ) -> None:
        self.loc, self.scale, self.base_logits = loc, scale, base_logits
        self.termination, self.n_state = termination, n_state
        super().__init__(loc.shape[:-1], torch.Size([loc.shape[-1] + 1]), validate_args=False)

    def logits(self, real: torch.Tensor) -> torch.Tensor:
        """Termination logits ``[...]`` given the Gaussian entries ``real`` ``[..., n_real]``."""
        state = real[..., : self.n_state]
        return self.base_logits + self.termination(torch.cat([state, state.abs()], -1)).squeeze(-1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        real, done = x[..., :-1], x[..., -1]
        gauss = (-0.5 * ((real - self.loc) / self.scale).square() - self.scale.log()).sum(-1)
        gauss = gauss - 0.918938533204672741 * self.loc.shape[-1]  # 0.5 log(2 pi) per entry
        logits = self.logits(real)
        return gauss + done * logits - F.softplus(logits)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        """Reparametrised Gaussian entries (noise drawn first), then termination given them (no gradient)."""
        shape = torch.Size(sample_shape) + self.loc.shape
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        real = self.loc.expand(shape) + self.scale.expand(shape) * noise
        done = torch.bernoulli(torch.sigmoid(self.logits(real).detach()))
        return torch.cat([real, done.unsqueeze(-1)], dim=-1)

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


class TransitionObservation(Observation):
    """Observation family of one transition: a state, a reward, a termination flag.

    ``x_t`` ``[..., n_state + 2]`` is ``[state (n_state), reward, done (0/1)]``. The state and the reward
    are independent Gaussians with the decoder's ``[loc, raw scale]`` (standard deviation
    ``softplus(raw + 0.25) + min_scale``); termination is Bernoulli with logit
    ``decoder logit + termination([state, |state|])``, a small MLP of the drawn state, so the model can
    learn a termination rule of the new state (CartPole ends when the angle or the position leaves a
    symmetric range; the ``|state|`` features make such a rule nearly linear).
    ``params``: ``[loc (n_state + 1), raw scale (n_state + 1), logit (1)]``.

    Args:
        n_state: size of the state.
        min_scale: floor of the standard deviations (in the units of ``x``).
        termination_hidden: hidden layers of the termination MLP.
    """

    def __init__(
        self, n_state: int, min_scale: float = 0.01, termination_hidden: Sequence[int] = (32, 32)
    ) -> None:
        super().__init__()
        if not (isinstance(n_state, int) and n_state >= 1):
            raise ValueError(f"TransitionObservation: expected n_state >= 1, got {n_state!r}")
        if not min_scale > 0:
            raise ValueError(f"TransitionObservation: expected min_scale > 0, got {min_scale!r}")
        self.n_state = n_state
        self.n_real = n_state + 1
        self.min_scale = min_scale
        self.obs_shape = (n_state + 2,)
        self.param_size = 2 * self.n_real + 1
        self.feature_size = n_state + 2
        self.termination = mlp([2 * n_state, *termination_hidden, 1], nn.ReLU)

    def distribution(self, params: torch.Tensor) -> TransitionDistribution:
        loc, raw, logits = params.split([self.n_real, self.n_real, 1], dim=-1)
        scale = F.softplus(raw + 0.25) + self.min_scale
        return TransitionDistribution(loc, scale, logits.squeeze(-1), self.termination, self.n_state)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return self.distribution(params).sample()


class ResidualDecoder(nn.Module):
    """An MLP whose first ``len(skip)`` outputs add the input entries ``skip`` (the previous state).

    ``out = mlp(inp); out[..., :k] += inp[..., skip]``: the decoder predicts the change of state.

    Args:
        in_size, hidden_sizes, out_size: the MLP (ReLU).
        skip: ``(start, stop)`` of the previous state within the decoder's input.
    """

    def __init__(
        self, in_size: int, hidden_sizes: Sequence[int], out_size: int, skip: tuple[int, int]
    ) -> None:
        super().__init__()
        self.net = mlp([in_size, *hidden_sizes, out_size], nn.ReLU)
        self.skip = skip

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        out = self.net(inp)
        start, stop = self.skip
        k = stop - start
        return torch.cat([out[..., :k] + inp[..., start:stop], out[..., k:]], dim=-1)


class WorldModel(nn.Module):
    """A sequence model of episodes, and imagined steps from it.

    Args:
        obs_dim: size of the environment's state (4 for CartPole).
        n_actions: number of discrete actions (2 for CartPole).
        model: ``"vrnn"`` or ``"srnn"``.
        latent_size, hidden_size, fc_hidden_sizes, encoded_size, cell: the sequence model's sizes.
        min_scale: floor of the predicted standard deviations (normalised units).
        window: length of the training windows cut from episodes.

    Attributes:
        model: the :class:`~bbvae.sequential.VRNN` / ``SRNN``, observation dim ``obs_dim + 2``, side
            inputs ``n_actions + obs_dim``.
        state_scale: ``[obs_dim]`` buffer set by :meth:`set_scales` (ones until then).
        reward_range: ``[2]`` buffer, the smallest and largest real reward (set by :meth:`set_scales`).
        trainer_: the :class:`~bbvae.Trainer` of the last :meth:`fit`.
    """

    def __init__(
        self,
        obs_dim: int = 4,
        n_actions: int = 2,
        model: str = "vrnn",
        latent_size: int = 8,
        hidden_size: int = 64,
        fc_hidden_sizes: Sequence[int] = (128,),
        encoded_size: int = 32,
        cell: str = "lstm",
        min_scale: float = 0.01,
        window: int = 64,
    ) -> None:
        super().__init__()
        if model not in _MODELS:
            raise ValueError(f"WorldModel: expected model in {tuple(_MODELS)}, got {model!r}")
        if not (isinstance(window, int) and window >= 2):
            raise ValueError(f"WorldModel: expected window >= 2, got {window!r}")
        self.obs_dim, self.n_actions, self.kind, self.window = obs_dim, n_actions, model, window
        self.observation = TransitionObservation(obs_dim, min_scale)
        fc = tuple(fc_hidden_sizes)
        input_size = n_actions + obs_dim
        if model == "vrnn":  # decoder([h, u, phi_z(z)]) (VRNN module docstring)
            decoder_in, skip = hidden_size + input_size + encoded_size, hidden_size + n_actions
        else:  # decoder([z, d, u]) (SRNN module docstring)
            decoder_in, skip = latent_size + hidden_size + input_size, latent_size + hidden_size + n_actions
        decoder = ResidualDecoder(decoder_in, fc, self.observation.param_size, (skip, skip + obs_dim))
        self.model = _MODELS[model](
            obs_dim + 2,
            latent_size=latent_size,
            hidden_size=hidden_size,
            fc_hidden_sizes=fc,
            encoded_size=encoded_size,
            cell=cell,
            observation=self.observation,
            input_size=input_size,
            decoder=decoder,
        )
        self.register_buffer("state_scale", torch.ones(obs_dim))
        self.register_buffer("reward_range", torch.tensor([-float("inf"), float("inf")]))

    # ------------------------------------------------------------------ data
    @torch.no_grad()
    def set_scales(self, episodes: Sequence[Episode]) -> None:
        """Set ``state_scale`` to the per-dimension standard deviation of the states of ``episodes`` and
        ``reward_range`` to the smallest and largest reward seen."""
        states = torch.cat([e.states for e in episodes])
        self.state_scale.copy_(states.std(0).clamp_min(1e-3))
        rewards = torch.cat([e.rewards for e in episodes])
        self.reward_range.copy_(torch.stack([rewards.min(), rewards.max()]))

    def episode_tensors(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [T + 1, obs_dim + 2], u [T + 1, n_actions + obs_dim])`` of one episode (module doc)."""
        states = episode.states.to(self.state_scale) / self.state_scale
        n = states.shape[0]
        rewards = torch.cat([states.new_zeros(1), episode.rewards.to(states)])
        done = states.new_zeros(n)
        done[-1] = float(episode.terminated)
        x = torch.cat([states, rewards[:, None], done[:, None]], dim=1)
        actions = F.one_hot(episode.actions, self.n_actions).to(states)
        u = torch.cat([actions, states[:-1]], dim=1)
        return x, torch.cat([u.new_zeros(1, u.shape[1]), u])

    def windows(self, episodes: Sequence[Episode]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Training windows of at most ``window`` steps, starting every ``window // 2`` steps."""
        xs, us = [], []
        stride = self.window // 2
        for e in episodes:
            x, u = self.episode_tensors(e)
            for start in range(0, max(1, x.shape[0] - stride), stride):
                xs.append(x[start : start + self.window])
                us.append(u[start : start + self.window])
        return xs, us

    def padded(self, episodes: Sequence[Episode]):
        """Whole episodes as one padded batch ``(x [N, T_max, d], lengths [N], u [N, T_max, d_in])``."""
        pairs = [self.episode_tensors(e) for e in episodes]
        x = nn.utils.rnn.pad_sequence([p[0] for p in pairs], batch_first=True)
        u = nn.utils.rnn.pad_sequence([p[1] for p in pairs], batch_first=True)
        lengths = torch.tensor([p[0].shape[0] for p in pairs], dtype=torch.long)
        return x, lengths, u

    # ------------------------------------------------------------------ fitting and scoring
    def make_loss(self, loss: str = "elbo", n_samples: int = 1):
        """The bbvae loss ``"elbo"``, ``"iwae"`` or ``"fivo"`` on this model."""
        if loss not in _LOSSES:
            raise ValueError(f"WorldModel: expected loss in {_LOSSES}, got {loss!r}")
        q, p = self.model.inf_net, self.model.gen_model
        if loss == "fivo":
            return FIVO(q, p, n_particles=n_samples)
        return IWAE(q, p, n_samples=n_samples) if loss == "iwae" else ELBO(q, p, n_samples=n_samples)

    def fit(
        self,
        episodes: Sequence[Episode],
        loss: str = "elbo",
        n_samples: int = 1,
        max_steps: int = 500,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        seed: int = 0,
    ) -> WorldModel:
        """Train the sequence model on windows of ``episodes`` with :class:`~bbvae.Trainer`."""
        xs, us = self.windows(episodes)
        self.trainer_ = Trainer(
            self.make_loss(loss, n_samples),
            learning_rate=learning_rate,
            batch_size=batch_size,
            max_steps=max_steps,
            clip_grad_norm=None,  # a global clip would starve the small termination gradients
            use_inputs=True,
            progress=False,
            seed=seed,
            log_every=max(1, max_steps),
        )
        self.trainer_.fit(SequenceData(xs, us))
        return self

    def log_likelihood(self, episodes: Sequence[Episode], n_samples: int = 16) -> dict[str, float]:
        """Held-out bounds of whole episodes in nats per step: ``{"elbo", "iwae", "fivo"}``."""
        x, lengths, u = self.padded(episodes)
        out = evaluate(self.model, x, lengths, inputs=u, bounds=("elbo", "iwae", "fivo"), n_samples=n_samples)
        return {name: value["per_step"] for name, value in out.items()}

    # ------------------------------------------------------------------ imagination
    def inputs(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Side input ``[B, n_actions + obs_dim]`` from ``s_{t-1}`` ``[B, obs_dim]`` and a one-hot."""
        return torch.cat([action.to(state), state / self.state_scale], dim=-1)

    def filter_start(
        self, prev_state: torch.Tensor, prev_action: torch.Tensor, state: torch.Tensor, first: torch.Tensor
    ):
        """The model's state after observing the real state ``state`` ``[B, obs_dim]``.

        Args:
            prev_state, prev_action: ``s_{t-1}`` ``[B, obs_dim]`` and ``a_{t-1}`` ``[B]`` long (ignored
                where ``first``).
            first: ``[B]`` bool, whether ``state`` is an episode's ``s_0``.

        Returns:
            the generation state (leaves ``[B, 1, ...]``), filtered with one particle from q.
        """
        u = self.inputs(prev_state, F.one_hot(prev_action, self.n_actions))
        u = torch.where(first[:, None], torch.zeros_like(u), u)
        reward = (~first).to(state)
        x = torch.cat([state / self.state_scale, reward[:, None], torch.zeros_like(reward)[:, None]], 1)
        x, u = x[:, None], u[:, None]  # [B, 1, d]
        encoded = self.model.encode(x, None, u)
        out = self.model.step(self.model.init_state(encoded, 1), encoded[0])
        return self.model.generation_state(out.state, x, None, u)

    def imagine_step(self, state, prev_state: torch.Tensor, action: torch.Tensor):
        """One imagined step with reparametrised noise (differentiable in ``action`` and ``prev_state``).

        Draws exactly what ``model.generate_step`` draws (same random stream), but keeps the gradient path.

        Args:
            state: the model's generation state (leaves ``[B, 1, ...]``).
            prev_state: ``s_{t-1}`` ``[B, obs_dim]`` (physical units).
            action: ``[B, n_actions]`` one-hot or relaxed one-hot ``a_{t-1}``.

        Returns:
            ``(state, s_t [B, obs_dim], r_t [B], termination logit [B], x_t [B, 1, d])``; ``r_t`` is the
            predicted mean reward clamped to ``reward_range`` (so a policy cannot exploit the
            model's extrapolation of rewards).
        """
        m = self.model
        u = self.inputs(prev_state, action)[:, None]  # [B, 1, d_in]
        ctx = torch.cat([state["h"], u], dim=-1)
        if self.kind == "vrnn":
            p_loc, p_scale = m.prior.gaussian(ctx)
            z = p_loc + p_scale * torch.randn_like(p_loc)
            zf = m.z_encoder(z)
            dist = self.observation.distribution(m.decoder(torch.cat([ctx, zf], dim=-1)))
            x = dist.rsample()
            new_state = _step_cell(m.cell, torch.cat([m.x_features(x), zf, u], dim=-1), state)
        else:
            p_loc, p_scale = m.prior.gaussian(state["z"], ctx)
            z = p_loc + p_scale * torch.randn_like(p_loc)
            dist = self.observation.distribution(m.decoder(torch.cat([z, ctx], dim=-1)))
            x = dist.rsample()
            recurrent = {key: value for key, value in state.items() if key != "z"}
            new_state = _step_rnn(m.forward_rnn, torch.cat([m.x_features(x), u], dim=-1), recurrent)
            new_state["z"] = z
        real = x[:, 0, :-1]  # [B, obs_dim + 1]
        done_logit = dist.logits(real[:, None])[:, 0]
        reward = torch.clamp(dist.loc[:, 0, self.obs_dim], self.reward_range[0], self.reward_range[1])
        return new_state, real[:, : self.obs_dim] * self.state_scale, reward, done_logit, x


def _step_cell(cell: nn.RNNCellBase, inp: torch.Tensor, state: dict) -> dict:
    """One LSTMCell/GRUCell step on ``[B, K, in]`` with state leaves ``[B, K, hidden]``."""
    b, k, _ = inp.shape
    h = state["h"].reshape(b * k, -1)
    if "c" in state:
        h, c = cell(inp.reshape(b * k, -1), (h, state["c"].reshape(b * k, -1)))
        return {"h": h.reshape(b, k, -1), "c": c.reshape(b, k, -1)}
    return {"h": cell(inp.reshape(b * k, -1), h).reshape(b, k, -1)}


def _step_rnn(rnn: nn.RNNBase, inp: torch.Tensor, state: dict) -> dict:
    """One step of a whole-sequence LSTM/GRU on ``[B, K, in]`` with state leaves ``[B, K, hidden]``."""
    b, k, _ = inp.shape
    h = state["h"].reshape(1, b * k, -1)
    if "c" in state:
        _, (h, c) = rnn(inp.reshape(b * k, 1, -1), (h, state["c"].reshape(1, b * k, -1)))
        return {"h": h.reshape(b, k, -1), "c": c.reshape(b, k, -1)}
    _, h = rnn(inp.reshape(b * k, 1, -1), h)
    return {"h": h.reshape(b, k, -1)}
