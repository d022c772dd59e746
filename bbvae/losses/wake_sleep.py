"""Classic wake-sleep (Hinton, Dayan, Frey & Neal 1995)."""

from __future__ import annotations

import torch

from bbvae.losses.base import Loss


class WakeSleep(Loss):
    """Wake-sleep: p learns from q's guesses, q learns from p's dreams.

    * Wake phase (p): ``z_k ~ q(z|x)`` without gradient; p's gradient is
      ``(1/K) sum_k grad_theta log p(x, z_k)``. q receives nothing from this phase.
    * Sleep phase (q): ``(x', z') ~ p`` from ``gen_model.sample(batch)``; q's gradient is
      ``grad_phi log q(z'|x')`` (maximum likelihood of q on dreams, i.e. it decreases
      ``KL(p(z|x) || q(z|x))`` averaged over the model's own data). ``inf_net`` is called on
      the dreams without context, so q must work on x alone.

    No reparametrization is needed. The two phases do not follow the gradient of a single
    objective. The reported value (``loss_history_``, ``bound_``) is the ELBO estimate
    ``(1/K) sum_k (log p(x, z_k) - log q(z_k|x))`` (the single-sample ELBO for K = 1).

    Args:
        inf_net, gen_model, n_samples: see :class:`~bbvae.losses.Loss` (K wake samples).

    Attributes:
        loss_history_, log_p_, log_q_, bound_: see :class:`~bbvae.losses.Loss`.
    """

    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.inf_net(x, **context)
        z = q.sample(self.n_samples).detach()  # [batch, K, *latent]: no gradient path
        log_q = q.log_prob(z).detach()  # [batch, K]: only reported
        log_p = self.gen_model(x, z).log_prob(x, z)  # [batch, K]
        bound = self.record(log_p, log_q).detach().mean(dim=1)  # [batch]
        x_sleep, z_sleep = self.gen_model.sample(x.shape[0])  # [batch, *obs], [batch, *latent]
        log_q_sleep = self.inf_net(x_sleep).log_prob(z_sleep.unsqueeze(1)).squeeze(1)  # [batch]
        return bound, log_p.mean(dim=1) + log_q_sleep
