"""Hidden Markov model with categorical states: exact by the forward algorithm, a proving ground for
score-function estimators (its latents cannot be reparametrized)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from bbvae._validation import check_positive_int, check_tensor, is_validation_enabled, shape_str
from bbvae.models import mlp
from bbvae.sequential.base import SequentialModel, StepOutput, check_sequence_args

_PROPOSALS = ("network", "prior", "optimal")

#: torch's argument checks read tensor values (a device sync) on every construction inside the
#: time loop; the models' inputs are checked once per call instead.
_FAST = {"validate_args": False}


class DiscreteHMM(SequentialModel):
    """HMM ``z_1 ~ Cat(pi)``, ``z_t | z_{t-1} ~ Cat(P[z_{t-1}])``, ``x_t | z_t ~ p(x | z_t)``.

    Args:
        n_states: number of hidden states ``S``.
        n_obs: number of observation symbols (categorical observations, ``x`` long ``[batch, T]``).
        obs_dim: observation dimension (Normal or user emission with float ``x`` ``[batch, T, obs_dim]``).
        emission: ``"categorical"`` (default; needs ``n_obs``), ``"normal"`` (per-state mean and
            scale, diagonal; needs ``obs_dim``) or an ``nn.Module`` mapping one-hot states ``[S, S]`` to
            a torch Distribution of batch shape ``[S]`` (give ``n_obs`` for integer observations or
            ``obs_dim`` for float vectors, which the proposal network reads).
        proposal: ``"network"`` (default: a learned q(z_t | z_{t-1}, x_t) with logits
            ``W[z_{t-1}] + g(x_t)``, ``g`` an embedding of ``x_t`` or an MLP of it; this family contains
            the optimal proposal for categorical observations), ``"prior"`` (q = p(z_t | z_{t-1})) or
            ``"optimal"`` (the exact p(z_t | z_{t-1}, x_t); the incremental weight is p(x_t | z_{t-1})).
        hidden: hidden layer sizes of ``g`` for float observations.

    Latents are long ``[..., ]`` state indices (``latent_shape = ()``); ``has_rsample = False``.

    Attributes:
        init_logits (Parameter): ``[S]``.
        transition_logits (Parameter): ``[S, S]``, row = previous state.
        emission_logits (Parameter): ``[S, n_obs]`` (categorical emission).
        emission_loc, emission_log_scale (Parameter): ``[S, obs_dim]`` (normal emission).
    """

    has_rsample = False
    latent_shape = ()

    def __init__(
        self,
        n_states: int,
        n_obs: int | None = None,
        obs_dim: int | None = None,
        emission: str | nn.Module = "categorical",
        proposal: str = "network",
        hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        where = "DiscreteHMM"
        check_positive_int("n_states", n_states, where)
        if proposal not in _PROPOSALS:
            raise ValueError(f"{where}: expected proposal in {_PROPOSALS}, got {proposal!r}")
        if isinstance(emission, str) and emission not in ("categorical", "normal"):
            raise ValueError(
                f"{where}: expected emission 'categorical', 'normal' or an nn.Module, got {emission!r}"
            )
        if not isinstance(emission, (str, nn.Module)):
            raise TypeError(
                f"{where}: expected emission to be a string or an nn.Module, got {type(emission).__name__}"
            )
        if emission == "categorical" and n_obs is None:
            raise ValueError(f"{where}: emission='categorical' needs n_obs (the number of symbols)")
        if emission == "normal" and obs_dim is None:
            raise ValueError(f"{where}: emission='normal' needs obs_dim")
        if isinstance(emission, nn.Module) and (n_obs is None) == (obs_dim is None):
            raise ValueError(
                f"{where}: with a custom emission module give exactly one of n_obs (integer observations) "
                "or obs_dim (float observations)"
            )
        if n_obs is not None:
            check_positive_int("n_obs", n_obs, where)
        if obs_dim is not None:
            check_positive_int("obs_dim", obs_dim, where)
        self.n_states = n_states
        self.n_obs = n_obs
        self.obs_dim = obs_dim
        self.emission = emission
        self.proposal = proposal
        self.hidden = tuple(hidden)
        self.discrete_obs = n_obs is not None
        self.init_logits = nn.Parameter(torch.zeros(n_states))
        self.transition_logits = nn.Parameter(torch.zeros(n_states, n_states))
        if emission == "categorical":
            self.emission_logits = nn.Parameter(torch.randn(n_states, n_obs))
        elif emission == "normal":
            self.emission_loc = nn.Parameter(torch.randn(n_states, obs_dim))
            self.emission_log_scale = nn.Parameter(torch.zeros(n_states, obs_dim))
        if proposal == "network":
            # logits of q(z_t | z_{t-1}, x_t) = W[z_{t-1}] + g(x_t); row S of W is for t = 1.
            self.proposal_transition = nn.Parameter(torch.zeros(n_states + 1, n_states))
            if self.discrete_obs:
                self.proposal_obs = nn.Embedding(n_obs, n_states)
                nn.init.zeros_(self.proposal_obs.weight)
            else:
                self.proposal_obs = mlp([obs_dim, *self.hidden, n_states])

    # ------------------------------------------------------------------------------ pieces
    def emission_distribution(self) -> Distribution:
        """p(x | z = s) for every state ``s``: a Distribution of batch shape ``[S]``."""
        if self.emission == "categorical":
            return Categorical(logits=self.emission_logits, **_FAST)
        if self.emission == "normal":
            return Independent(Normal(self.emission_loc, self.emission_log_scale.exp(), **_FAST), 1, **_FAST)
        eye = torch.eye(self.n_states, dtype=self.init_logits.dtype, device=self.init_logits.device)
        dist = self.emission(eye)
        if not isinstance(dist, Distribution) or tuple(dist.batch_shape) != (self.n_states,):
            raise ValueError(
                f"DiscreteHMM: the emission module must return a torch Distribution of batch shape "
                f"[{self.n_states}] for one-hot states [{self.n_states}, {self.n_states}], got "
                f"{type(dist).__name__}"
                + (f" of batch shape {list(dist.batch_shape)}" if isinstance(dist, Distribution) else "")
            )
        return dist

    def emission_log_probs(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x_t | z_t = s) for every step and state: ``[batch, T, S]`` (0 past ``lengths``)."""
        x, mask = self._safe_x(x, lengths, "emission_log_probs")
        return self._emission_log_probs(x, mask)

    def _emission_log_probs(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, n_steps = x.shape[:2]
        obs_shape = x.shape[2:]
        flat = x.reshape(batch * n_steps, 1, *obs_shape)
        log_probs = self.emission_distribution().log_prob(flat).reshape(batch, n_steps, self.n_states)
        if mask is not None:
            log_probs = torch.where(mask.unsqueeze(-1), log_probs, 0.0)
        return log_probs

    def _safe_x(self, x, lengths, method: str):
        """Check ``x`` and replace entries past ``lengths`` by the first step (valid by construction)."""
        where = f"DiscreteHMM.{method}"
        check_tensor("x", x, where)
        if self.discrete_obs:
            if x.dim() != 2 or x.dtype.is_floating_point or x.dtype.is_complex:
                raise ValueError(
                    f"{where}: expected integer symbols x of shape [batch, T], got "
                    f"{shape_str(list(x.shape))} of dtype {x.dtype}"
                )
        elif x.dim() != 3 or x.shape[-1] != self.obs_dim:
            raise ValueError(
                f"{where}: expected x of shape [batch, T, {self.obs_dim}], got {shape_str(list(x.shape))}"
            )
        _, _, masks = check_sequence_args(x, lengths, None, where)
        mask = None
        if masks is not None:
            mask = torch.stack(masks, dim=1)  # [batch, T]
            shaped = mask.reshape(*mask.shape, *([1] * (x.dim() - 2)))
            x = torch.where(shaped, x, x[:, :1])
        if self.discrete_obs and is_validation_enabled():
            bad = (x < 0) | (x >= self.n_obs)
            if bool(bad.any()):
                b, t = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"{where}: expected symbols in [0, {self.n_obs}), got x[{b}, {t}] = {int(x[b, t])}"
                )
        return x, mask

    # ---------------------------------------------------------------------------- contract
    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs=None) -> list[dict]:
        x_safe, mask = self._safe_x(x, lengths, "encode")
        emission = self._emission_log_probs(x_safe, mask)  # [batch, T, S]
        features = [None] * x.shape[1]
        if self.proposal == "network":
            features = self.proposal_obs(x_safe).unbind(1)  # each [batch, S]
        return [
            {"emission": e_t, "t": t, "feature": f_t}
            for t, (e_t, f_t) in enumerate(zip(emission.unbind(1), features))
        ]

    def init_state(self, encoded, n_particles: int) -> torch.Tensor:
        e0 = encoded[0]["emission"]
        return torch.zeros(e0.shape[0], n_particles, dtype=torch.long, device=e0.device)

    def _prior_log_probs(self, z_prev: torch.Tensor, first: bool) -> torch.Tensor:
        """log p(z_t = s | z_{t-1}) ``[batch, K, S]``."""
        if first:
            return torch.log_softmax(self.init_logits, dim=0).expand(*z_prev.shape, self.n_states)
        return torch.log_softmax(self.transition_logits, dim=1)[z_prev]

    def step(
        self, state: torch.Tensor, encoded_t: dict, z: torch.Tensor | None = None, reparametrize: bool = True
    ):
        z_prev = state  # [batch, K] long
        first = encoded_t["t"] == 0
        prior = self._prior_log_probs(z_prev, first)  # [batch, K, S]
        emission = encoded_t["emission"].unsqueeze(1)  # [batch, 1, S]
        joint = prior + emission  # log p(x_t, z_t = s | z_{t-1})
        if self.proposal == "prior":
            q_logits = prior
        elif self.proposal == "optimal":
            q_logits = torch.log_softmax(joint, dim=-1)
        else:
            row = torch.full_like(z_prev, self.n_states) if first else z_prev
            q_logits = torch.log_softmax(
                self.proposal_transition[row] + encoded_t["feature"].unsqueeze(1), dim=-1
            )
        if z is None:
            with torch.no_grad():
                z = Categorical(logits=q_logits, **_FAST).sample()  # [batch, K]
        index = z.unsqueeze(-1)
        log_q = torch.gather(q_logits, -1, index).squeeze(-1)
        log_p = torch.gather(joint.expand_as(q_logits), -1, index).squeeze(-1)
        return StepOutput(z, z, log_p, log_q)

    def generate_init(self, batch_size: int, n_samples: int, like: torch.Tensor) -> dict:
        return {
            "z": torch.zeros(batch_size, n_samples, dtype=torch.long, device=like.device),
            "started": torch.zeros(batch_size, n_samples, dtype=torch.bool, device=like.device),
        }

    def generation_state(self, state: torch.Tensor, x: torch.Tensor, lengths=None, inputs=None) -> dict:
        """The generation state after filtering a prefix: the last state, marked as started."""
        return {"z": state, "started": torch.ones_like(state, dtype=torch.bool)}

    def generate_step(self, state: dict, inputs_t=None):
        z_prev, started = state["z"], state["started"]
        logits = torch.where(
            started.unsqueeze(-1), self._prior_log_probs(z_prev, False), self._prior_log_probs(z_prev, True)
        )
        z = Categorical(logits=logits, **_FAST).sample()  # [batch, n]
        per_state = self.emission_distribution().sample(z.shape)  # [batch, n, S, *obs]
        index = z.reshape(*z.shape, 1, *([1] * (per_state.dim() - 3)))
        x = torch.gather(per_state, 2, index.expand(*z.shape, 1, *per_state.shape[3:])).squeeze(2)
        return {"z": z, "started": torch.ones_like(started)}, x, z

    # ---------------------------------------------------------------------------- exact
    def sample(self, n: int = 1, length: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` sequences: ``(x [n, length, *obs_shape], z [n, length])``."""
        return self.gen_model.sample(n, length)

    def exact_log_prob(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x_{1:T}) by the forward algorithm in log space: ``[batch]``."""
        emission = self.emission_log_probs(x, lengths)  # [batch, T, S], 0 past lengths
        _, _, masks = check_sequence_args(x, lengths, None, "DiscreteHMM.exact_log_prob")
        log_trans = torch.log_softmax(self.transition_logits, dim=1)  # [S, S]
        alpha = None
        for t, e_t in enumerate(emission.unbind(1)):
            if alpha is None:
                alpha = torch.log_softmax(self.init_logits, dim=0) + e_t  # [batch, S]
                continue
            new = torch.logsumexp(alpha.unsqueeze(2) + log_trans, dim=1) + e_t
            alpha = new if masks is None else torch.where(masks[t].unsqueeze(1), new, alpha)
        return torch.logsumexp(alpha, dim=1)
