"""The two module types every bbvae model is made of: ``InfNet`` (q(z|x)) and ``GenModel`` (p(x, z)).

Shape order throughout: ``batch, n_samples, *event``. Latents are
``[batch, n_samples, *latent_shape]`` and log-probabilities ``[batch, n_samples]``.

A subclass writes ``forward``, returning a dict of distribution parameters, and the
methods that turn ``params_`` into ``torch.distributions`` objects
(``InfNet.distribution``; ``GenModel.prior`` and ``GenModel.likelihood``). Sampling and
scoring then come from the base. A latent type that torch does not have is plugged in
by overriding ``sample`` / ``log_prob`` (and ``rsample`` if it has one) directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributions import Distribution

from bbvae._validation import check_tensor, shape_str


class NotFittedError(ValueError, AttributeError):
    """Raised when a model is used before the step that gives it state (forward pass, fit)."""


def _store_params(module: nn.Module, params, where: str) -> None:
    if params is module:  # forward set params_ itself and returned self
        if "params_" not in vars(module):
            raise TypeError(f"{where}: forward returned self but did not set self.params_")
        return
    if not isinstance(params, dict):
        raise TypeError(
            f"{where}: forward must return a dict of distribution parameters (or self), "
            f"got {type(params).__name__}"
        )
    module.params_ = params


class InfNet(nn.Module):
    """Base class of inference networks q(z | x).

    Calling ``inf_net(x, **context)`` runs ``forward``, stores the returned parameter
    dict in ``params_`` and returns ``inf_net``, so calls chain:
    ``z = inf_net(x).rsample(16)``.

    Attributes:
        params_ (dict[str, Tensor]): parameters of q(z|x) from the last forward pass,
            each with leading dimension ``batch``.
    """

    def __call__(self, x, **context) -> InfNet:
        params = super().__call__(x, **context)
        _store_params(self, params, f"{type(self).__name__}.forward")
        self._batch_size = x.shape[0] if isinstance(x, torch.Tensor) else None
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return "params_" in vars(self)

    # ----------------------------------------------------------------- subclass hooks
    def distribution(self) -> Distribution:
        """q(z|x) as a torch Distribution of batch shape ``[batch]`` built from ``params_``.

        Its ``event_shape`` is the latent shape (wrap elementwise distributions in
        ``torch.distributions.Independent``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement distribution(), or override "
            "sample() and log_prob() (and rsample() if q is reparametrizable)"
        )

    # ------------------------------------------------------------------ sampling, scoring
    @property
    def has_rsample(self) -> bool:
        """Whether q(z|x) has a reparametrized sampler (needed by pathwise estimators)."""
        if type(self).rsample is not InfNet.rsample:
            return True
        if type(self).distribution is InfNet.distribution:
            return False
        return self._distribution("has_rsample").has_rsample

    def sample(self, n_samples: int = 1) -> torch.Tensor:
        """Draw latents without a gradient path: ``[batch, n_samples, *latent_shape]``."""
        dist = self._distribution("sample")
        return dist.sample((n_samples,)).movedim(0, 1)

    def rsample(self, n_samples: int = 1) -> torch.Tensor:
        """Reparametrized draw, differentiable in ``params_``: ``[batch, n_samples, *latent_shape]``."""
        dist = self._distribution("rsample")
        if not dist.has_rsample:
            raise TypeError(
                f"{type(self).__name__}.rsample: q(z|x) is a {type(dist).__name__}, which has no "
                "reparametrized sampler; use a score-function estimator (ELBO(estimator='score'), "
                "NVIL, VIMCO, RWS) or a relaxation (Concrete)"
            )
        return dist.rsample((n_samples,)).movedim(0, 1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) of latents ``z`` ``[batch, n_samples, *latent_shape]``: ``[batch, n_samples]``."""
        dist = self._distribution("log_prob")
        self.check_latents(z, tuple(dist.event_shape), "log_prob")
        return dist.log_prob(z.movedim(1, 0)).movedim(0, 1)

    # ------------------------------------------------------------------------- helpers
    def check_latents(self, z, latent_shape: tuple[int, ...], method: str) -> None:
        """Raise a ValueError unless ``z`` is ``[batch, n_samples, *latent_shape]``."""
        where = f"{type(self).__name__}.{method}"
        check_tensor("z", z, where)
        batch = self._batch_size
        ok = z.dim() == 2 + len(latent_shape) and tuple(z.shape[2:]) == tuple(latent_shape)
        ok = ok and (batch is None or z.shape[0] == batch)
        if not ok:
            expected = [batch if batch is not None else "batch", "n_samples", *latent_shape]
            raise ValueError(
                f"{where}: expected z of shape {shape_str(expected)}, got {shape_str(list(z.shape))}"
            )

    @contextlib.contextmanager
    def params_detached(self) -> Iterator[InfNet]:
        """Within the block, ``params_`` carry no gradient (for sticking-the-landing, DReG).

        Latents drawn before the block keep their own gradient path; only scoring
        inside the block sees the detached parameters.
        """
        self._require_forward("params_detached")
        saved = self.params_
        self.params_ = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in saved.items()}
        try:
            yield self
        finally:
            self.params_ = saved

    def _require_forward(self, method: str) -> None:
        if "params_" not in vars(self):
            raise NotFittedError(
                f"{type(self).__name__}.{method}: no parameters yet; call the network on a batch "
                f"first, e.g. inf_net(x).{method}(...)"
            )

    def _distribution(self, method: str) -> Distribution:
        self._require_forward(method)
        return self.distribution()


class GenModel(nn.Module):
    """Base class of generative models p(x, z) = p(z) p(x | z).

    Calling ``gen_model(x, z, **context)`` runs ``forward``, stores the returned
    parameter dict in ``params_`` and returns ``gen_model``:
    ``log_p = gen_model(x, z).log_prob(x, z)``. ``forward`` receives ``x=None`` when
    the model is sampled, so a model whose likelihood depends on z alone ignores x.

    Attributes:
        params_ (dict[str, Tensor]): parameters of p from the last forward pass, with
            leading dimensions ``[batch, n_samples]`` where they depend on z.
    """

    def __call__(self, x, z, **context) -> GenModel:
        params = super().__call__(x, z, **context)
        _store_params(self, params, f"{type(self).__name__}.forward")
        self._z_shape = tuple(z.shape) if isinstance(z, torch.Tensor) else None
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return "params_" in vars(self)

    # ----------------------------------------------------------------- subclass hooks
    def prior(self) -> Distribution:
        """p(z): event shape is the latent shape; batch shape broadcasts to ``[batch, n_samples]``."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement prior() and likelihood(), or override log_prob()"
        )

    def likelihood(self) -> Distribution:
        """p(x | z) from ``params_``: batch shape ``[batch, n_samples]``, event shape the data's."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement prior() and likelihood(), or override log_prob()"
        )

    # --------------------------------------------------------------------------- scoring
    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of ``z`` ``[batch, n_samples, *latent_shape]``: ``[batch, n_samples]``."""
        self._check_z(z, "log_prior")
        return self._as_batch_samples(self.prior().log_prob(z), z, "prior().log_prob(z)")

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) of data ``x`` ``[batch, *obs_shape]``: ``[batch, n_samples]``."""
        self._check_z(z, "log_likelihood")
        check_tensor("x", x, f"{type(self).__name__}.log_likelihood")
        if x.shape[0] != z.shape[0]:
            raise ValueError(
                f"{type(self).__name__}.log_likelihood: x has batch size {x.shape[0]} but z has "
                f"{z.shape[0]} (z is [batch, n_samples, ...])"
            )
        lik = self.likelihood()
        return self._as_batch_samples(lik.log_prob(x.unsqueeze(1)), z, "likelihood().log_prob(x)")

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Joint log p(x, z): ``[batch, n_samples]``."""
        return self.log_prior(z) + self.log_likelihood(x, z)

    # -------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` joint samples: ``(x [n, *obs_shape], z [n, *latent_shape])``."""
        prior = self.prior()
        if len(prior.batch_shape) != 0:
            raise NotImplementedError(
                f"{type(self).__name__}.sample: the prior has batch shape "
                f"{shape_str(list(prior.batch_shape))}; override sample() for conditional priors"
            )
        z = prior.sample((n, 1))  # [n, 1, *latent_shape]: n rows of one sample each
        self(None, z)
        x = self.likelihood().sample()  # [n, 1, *obs_shape]
        return x.squeeze(1), z.squeeze(1)

    # --------------------------------------------------------------------------- helpers
    def _check_z(self, z, method: str) -> None:
        where = f"{type(self).__name__}.{method}"
        if "params_" not in vars(self):
            raise NotFittedError(
                f"{where}: no parameters yet; call the model first, e.g. gen_model(x, z).{method}(...)"
            )
        check_tensor("z", z, where)
        if z.dim() < 2 or (self._z_shape is not None and tuple(z.shape) != self._z_shape):
            expected = list(self._z_shape) if self._z_shape else ["batch", "n_samples", "..."]
            raise ValueError(
                f"{where}: expected z of shape {shape_str(expected)} (the z of the last forward "
                f"pass), got {shape_str(list(z.shape))}"
            )

    def _as_batch_samples(self, log_p: torch.Tensor, z: torch.Tensor, what: str) -> torch.Tensor:
        expected = tuple(z.shape[:2])
        if tuple(log_p.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}: {what} has shape {shape_str(list(log_p.shape))}, expected "
                f"{shape_str(list(expected))} = [batch, n_samples]; wrap elementwise distributions "
                "in torch.distributions.Independent so that log_prob sums over event dimensions"
            )
        return log_p
