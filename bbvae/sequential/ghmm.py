"""The linear-Gaussian state space model ("Gaussian HMM"), whose exact likelihood is a test oracle.

    z_1 ~ N(mu0, S0),   z_t = A z_{t-1} + N(0, Q),   x_t = C z_t + N(0, R)

with ``S0``, ``Q``, ``R`` diagonal (log-scale parameters) and ``A``, ``C`` full. ``exact_log_prob`` runs
the Kalman filter (as in the FIVO reference's fivo/models/ghmm.py, which exposes the exact marginal
likelihood for the same purpose).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal
from torch.nn import functional as F

from bbvae._validation import check_positive_int, check_tensor, shape_str
from bbvae.models import mlp
from bbvae.sequential.base import SequentialModel, StepOutput, check_sequence_args

_PROPOSALS = ("prior", "network", "optimal")
_SOFTPLUS_ONE = math.log(math.e - 1.0)

#: torch's argument checks read tensor values (a device sync) on every construction inside the
#: time loop; the models' inputs are checked once per call instead.
_FAST = {"validate_args": False}


class GaussianHMM(SequentialModel):
    """Linear-Gaussian state space model with a choice of proposal.

    Args:
        z_dim: latent dimension.
        x_dim: observation dimension.
        proposal: ``"prior"`` (bootstrap filter: q = p(z_t | z_{t-1})), ``"network"`` (a Gaussian
            q(z_t | z_{t-1}, x_t) with diagonal scale whose mean and (softplus-)scale are an affine
            map, or an MLP with ``hidden`` layers, of ``[z_{t-1}, x_t]``; ``z_0 = 0``; it starts
            as N(0, I)), or ``"optimal"`` (the
            locally optimal p(z_t | z_{t-1}, x_t) in closed form, so that the incremental weight is
            p(x_t | z_{t-1})).
        hidden: hidden layer sizes of the proposal network.
        covariance: the ``"network"`` proposal's covariance: ``"diag"`` (a diagonal scale from the
            network, as above) or ``"full"`` (the network gives the mean only; the scale is one
            learned lower-triangular factor ``proposal_scale_tril()`` ``[z_dim, z_dim]`` shared by all
            steps and particles, starting at ``I``). With ``hidden=()`` the ``"full"`` family has the
            form of the locally optimal proposal (mean affine in ``[z_{t-1}, x_t]``, constant
            covariance) after the first step.
        transition_scale: initial standard deviation of the transition noise (diagonal of sqrt Q).
        emission_scale: initial standard deviation of the emission noise (diagonal of sqrt R).

    Observations are ``x`` ``[batch, T, x_dim]``; latents ``[..., z_dim]``.

    Attributes:
        init_loc (Parameter): ``[z_dim]`` mu0.
        init_log_scale (Parameter): ``[z_dim]`` log of sqrt(diag S0).
        transition (Parameter): ``[z_dim, z_dim]`` A.
        transition_log_scale (Parameter): ``[z_dim]`` log of sqrt(diag Q).
        emission (Parameter): ``[x_dim, z_dim]`` C.
        emission_log_scale (Parameter): ``[x_dim]`` log of sqrt(diag R).
    """

    has_rsample = True

    def __init__(
        self,
        z_dim: int,
        x_dim: int,
        proposal: str = "prior",
        hidden: Sequence[int] = (),
        covariance: str = "diag",
        transition_scale: float = 1.0,
        emission_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive_int("z_dim", z_dim, "GaussianHMM")
        check_positive_int("x_dim", x_dim, "GaussianHMM")
        if proposal not in _PROPOSALS:
            raise ValueError(f"GaussianHMM: expected proposal in {_PROPOSALS}, got {proposal!r}")
        if covariance not in ("diag", "full"):
            raise ValueError(f"GaussianHMM: expected covariance 'diag' or 'full', got {covariance!r}")
        if covariance == "full" and proposal != "network":
            raise ValueError(
                "GaussianHMM: covariance='full' is an option of the 'network' proposal, "
                f"got proposal={proposal!r}"
            )
        self.z_dim = z_dim
        self.x_dim = x_dim
        self.proposal = proposal
        self.hidden = tuple(hidden)
        self.covariance = covariance
        self.transition_scale = transition_scale
        self.emission_scale = emission_scale
        self.latent_shape = (z_dim,)
        self.init_loc = nn.Parameter(torch.zeros(z_dim))
        self.init_log_scale = nn.Parameter(torch.zeros(z_dim))
        self.transition = nn.Parameter(torch.eye(z_dim))
        self.transition_log_scale = nn.Parameter(torch.full((z_dim,), math.log(transition_scale)))
        self.emission = nn.Parameter(torch.eye(x_dim, z_dim) + 0.1 * torch.randn(x_dim, z_dim))
        self.emission_log_scale = nn.Parameter(torch.full((x_dim,), math.log(emission_scale)))
        if proposal == "network":
            n_out = 2 * z_dim if covariance == "diag" else z_dim  # (loc, raw scale) or loc
            width = self.hidden[0] if self.hidden else n_out
            # The first layer is split so that its x part runs once per sequence, batched over T.
            self.proposal_x = nn.Linear(x_dim, width)
            self.proposal_z = nn.Linear(z_dim, width, bias=False)
            self.proposal_rest = (
                nn.Sequential(nn.Tanh(), mlp([*self.hidden, n_out])) if self.hidden else nn.Identity()
            )
            if covariance == "full":
                # Raw factor: strict lower triangle as is, log of the diagonal (zero: the factor is I).
                self.proposal_scale_tril_raw = nn.Parameter(torch.zeros(z_dim, z_dim))
            # Start from q = N(0, I) whatever the input: the output layer is zero.
            last = self.proposal_rest[-1][-1] if self.hidden else None
            for layer in (last,) if last is not None else (self.proposal_x, self.proposal_z):
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------------------------ pieces
    def proposal_scale_tril(self) -> torch.Tensor:
        """The full-covariance proposal's shared Cholesky factor ``[z_dim, z_dim]`` (exp on the diagonal)."""
        raw = self.proposal_scale_tril_raw
        return torch.tril(raw, diagonal=-1) + torch.diag_embed(raw.diagonal().exp())

    def _noise(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Standard deviations ``(sqrt diag S0, sqrt diag Q, sqrt diag R)``."""
        return self.init_log_scale.exp(), self.transition_log_scale.exp(), self.emission_log_scale.exp()

    def _optimal_terms(self) -> dict[str, torch.Tensor]:
        """Constants of p(z_t | z_{t-1}, x_t) = N(M_z z_{t-1} + M_x x_t (+ m_0), P) for t = 1 and t > 1."""
        s0, sq, sr = self._noise()
        c = self.emission
        ct_rinv_c = c.T @ (c / sr.pow(2).unsqueeze(1))  # C^T R^-1 C
        terms = {}
        for name, prior_var in (("first", s0.pow(2)), ("next", sq.pow(2))):
            precision = torch.diag(1.0 / prior_var) + ct_rinv_c
            chol_prec = torch.linalg.cholesky(precision)
            cov = torch.cholesky_inverse(chol_prec)
            terms[f"{name}_scale_tril"] = torch.linalg.cholesky(cov)
            terms[f"{name}_gain_x"] = cov @ (c.T / sr.pow(2))  # P C^T R^-1   [z, x]
            terms[f"{name}_gain_prior"] = cov / prior_var  # P S^-1  [z, z], applied to the prior mean
        return terms

    # ---------------------------------------------------------------------------- contract
    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs=None) -> list[dict]:
        self._check_x(x, "encode")
        x = _zero_padding(x, lengths)
        steps = x.unbind(1)
        features = self.proposal_x(x).unbind(1) if self.proposal == "network" else [None] * len(steps)
        optimal = self._optimal_terms() if self.proposal == "optimal" else None
        return [
            {"x": x_t, "t": t, "feature": f_t, "optimal": optimal}
            for t, (x_t, f_t) in enumerate(zip(steps, features))
        ]

    def init_state(self, encoded, n_particles: int) -> torch.Tensor:
        x0 = encoded[0]["x"]
        return x0.new_zeros(x0.shape[0], n_particles, self.z_dim)  # z_0, unused at t = 1

    def _prior(self, z_prev: torch.Tensor, first: bool) -> Independent:
        s0, sq, _ = self._noise()
        if first:
            return Independent(
                Normal(self.init_loc.expand_as(z_prev), s0.expand_as(z_prev), **_FAST), 1, **_FAST
            )
        return Independent(Normal(z_prev @ self.transition.T, sq.expand_as(z_prev), **_FAST), 1, **_FAST)

    def _emission(self, z: torch.Tensor) -> Independent:
        loc = z @ self.emission.T  # [batch, K, x_dim]
        return Independent(Normal(loc, self.emission_log_scale.exp().expand_as(loc), **_FAST), 1, **_FAST)

    def step(
        self, state: torch.Tensor, encoded_t: dict, z: torch.Tensor | None = None, reparametrize: bool = True
    ):
        z_prev = state  # [batch, K, z_dim]
        first = encoded_t["t"] == 0
        prior = self._prior(z_prev, first)
        x_t = encoded_t["x"].unsqueeze(1)  # [batch, 1, x_dim]
        if self.proposal == "prior":
            proposal = prior
        elif self.proposal == "network":
            hidden = encoded_t["feature"].unsqueeze(1) + self.proposal_z(z_prev)
            if self.covariance == "full":
                loc = self.proposal_rest(hidden)  # [batch, K, z_dim]
                proposal = MultivariateNormal(loc, scale_tril=self.proposal_scale_tril(), **_FAST)
            else:
                loc, raw_scale = self.proposal_rest(hidden).chunk(2, dim=-1)
                # softplus(raw + log(e - 1)) is 1 at raw = 0 and grows linearly, so a particle far out
                # cannot blow the next step's scale up exponentially.
                scale = F.softplus(raw_scale + _SOFTPLUS_ONE)
                proposal = Independent(Normal(loc, scale, **_FAST), 1, **_FAST)
        else:
            terms = encoded_t["optimal"]
            name = "first" if first else "next"
            loc = prior.base_dist.loc @ terms[f"{name}_gain_prior"].T + x_t @ terms[f"{name}_gain_x"].T
            proposal = MultivariateNormal(loc, scale_tril=terms[f"{name}_scale_tril"], **_FAST)
        if z is None:
            z = proposal.rsample() if reparametrize else proposal.sample()
        log_q = proposal.log_prob(z)
        log_prior = log_q if self.proposal == "prior" else prior.log_prob(z)
        log_p = log_prior + self._emission(z).log_prob(x_t)
        return StepOutput(z, z, log_p, log_q)

    def generate_init(self, batch_size: int, n_samples: int, like: torch.Tensor) -> dict:
        return {
            "z": like.new_zeros(batch_size, n_samples, self.z_dim),
            "started": torch.zeros(batch_size, n_samples, 1, dtype=torch.bool, device=like.device),
        }

    def generation_state(self, state: torch.Tensor, x: torch.Tensor, lengths=None, inputs=None) -> dict:
        """The generation state after filtering a prefix: the last latent, marked as started."""
        started = torch.ones(*state.shape[:2], 1, dtype=torch.bool, device=state.device)
        return {"z": state, "started": started}

    def generate_step(self, state: dict, inputs_t=None):
        z_prev, started = state["z"], state["started"]
        first = self._prior(z_prev, first=True)
        later = self._prior(z_prev, first=False)
        loc = torch.where(started, later.base_dist.loc, first.base_dist.loc)
        scale = torch.where(started, later.base_dist.scale, first.base_dist.scale)
        z = Normal(loc, scale, **_FAST).sample()
        x = self._emission(z).sample()
        return {"z": z, "started": torch.ones_like(started)}, x, z

    # --------------------------------------------------------------------------- exact
    def sample(self, n: int = 1, length: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` sequences: ``(x [n, length, x_dim], z [n, length, z_dim])``."""
        return self.gen_model.sample(n, length)

    def exact_log_prob(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x_{1:T}) by the Kalman filter: ``[batch]`` (steps past ``lengths`` not scored)."""
        self._check_x(x, "exact_log_prob")
        _, _, masks = check_sequence_args(x, lengths, None, "GaussianHMM.exact_log_prob")
        x = _zero_padding(x, lengths)
        s0, sq, sr = self._noise()
        a, c = self.transition, self.emission
        eye = torch.eye(self.z_dim, dtype=a.dtype, device=a.device)
        r = torch.diag(sr.pow(2))
        mean = self.init_loc.expand(x.shape[0], self.z_dim)  # [batch, z]
        cov = torch.diag(s0.pow(2))  # [z, z], the same for every sequence
        total = None
        for t, x_t in enumerate(x.unbind(1)):
            if t > 0:
                mean = mean @ a.T
                cov = a @ cov @ a.T + torch.diag(sq.pow(2))
            innovation_cov = c @ cov @ c.T + r
            chol = torch.linalg.cholesky(innovation_cov)
            residual = x_t - mean @ c.T  # [batch, x]
            log_lik = MultivariateNormal(torch.zeros_like(residual), scale_tril=chol, **_FAST).log_prob(
                residual
            )
            gain = torch.cholesky_solve(c @ cov, chol).T  # P C^T S^-1   [z, x]
            mean = mean + residual @ gain.T
            joseph = eye - gain @ c
            cov = joseph @ cov @ joseph.T + gain @ r @ gain.T
            if masks is not None:
                log_lik = torch.where(masks[t], log_lik, 0.0)
            total = log_lik if total is None else total + log_lik
        return total

    def _check_x(self, x, method: str) -> None:
        check_tensor("x", x, f"GaussianHMM.{method}")
        if x.dim() != 3 or x.shape[-1] != self.x_dim:
            raise ValueError(
                f"GaussianHMM.{method}: expected x of shape [batch, T, {self.x_dim}], "
                f"got {shape_str(list(x.shape))}"
            )


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """``x`` ``[batch, T, x_dim]`` with every step past ``lengths`` zeroed.

    Padding is masked out of every bound, but values used and then masked still reach the
    backward pass: NaN padding (a common convention) would make every gradient NaN.
    """
    if lengths is None:
        return x
    valid = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device).unsqueeze(1)  # [batch, T]
    return torch.where(valid.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
