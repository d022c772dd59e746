"""Observation families of the neural sequence models: how ``x_t`` is scored, drawn and featurised.

An :class:`Observation` turns the decoder's output ``params`` ``[..., param_size]`` into
``p(x_t | params)`` and turns ``x_t`` into a float feature vector for the encoder. Shipped:
:class:`BernoulliObservation` (binary vectors, e.g. 88-key piano rolls), :class:`NormalObservation`
(real vectors, mean and learned scale predicted by the decoder), :class:`CategoricalObservation`
(one symbol per step, ``x`` long ``[batch, T]``, embedded for features) and, in
:mod:`bbvae.sequential.mixture`, ``GaussianMixtureObservation`` (``"gmm"``: a mixture of diagonal
Gaussians on the frame, the VRNN paper's GMM outputs). Any callable
``params -> torch Distribution`` is accepted too (:class:`CallableObservation`);
:func:`make_observation` builds a family from a name, an instance or such a callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal
from torch.nn import functional as F

from bbvae._validation import check_positive_int, check_tensor, shape_str
from bbvae.sequential.gaussian import RAW_SCALE_BIAS, draw_normal, normal_log_prob

__all__ = [
    "BernoulliObservation",
    "CallableObservation",
    "CategoricalObservation",
    "NormalObservation",
    "Observation",
    "make_observation",
]


class Observation(nn.Module):
    """A family of observation distributions ``p(x_t | params)``.

    Subclasses set ``obs_shape`` (per-step shape of ``x_t``), ``param_size`` (the decoder's output
    size), ``feature_size`` (size of :meth:`features`) and ``dtype_kind`` (``"float"`` or ``"long"``),
    and implement :meth:`distribution`; :meth:`log_prob` and :meth:`sample` may be overridden by
    faster closed forms.
    """

    obs_shape: tuple[int, ...] = ()
    param_size: int = 0
    feature_size: int = 0
    dtype_kind: str = "float"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """A float feature vector of (centred) observations: ``[..., *obs_shape] -> [..., feature_size]``."""
        n = len(self.obs_shape)
        flat = x.flatten(start_dim=x.dim() - n) if n else x.unsqueeze(-1)
        return flat if flat.is_floating_point() else flat.float()

    def distribution(self, params: torch.Tensor) -> Distribution:
        """``p(x_t | params)``: batch shape ``params.shape[:-1]``, event shape ``obs_shape``."""
        raise NotImplementedError

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | params)`` summed over the event: ``[...]`` for params ``[..., param_size]``."""
        return self.distribution(params).log_prob(x)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        """Draw ``x`` ``[..., *obs_shape]`` (no gradient path)."""
        return self.distribution(params).sample()

    def init_bias(self, bias: torch.Tensor, mean: torch.Tensor) -> None:
        """Set the decoder's output ``bias`` ``[param_size]`` so the emission starts at ``mean``."""
        raise NotImplementedError(f"{type(self).__name__} does not support init_output_bias")

    def check_x(self, x: torch.Tensor, where: str) -> None:
        """Raise unless ``x`` is ``[batch, T, *obs_shape]`` of the family's dtype kind."""
        check_tensor("x", x, where)
        expected = ["batch", "T", *self.obs_shape]
        if x.dim() != len(expected) or tuple(x.shape[2:]) != tuple(self.obs_shape):
            raise ValueError(
                f"{where}: expected x of shape {shape_str(expected)}, got {shape_str(list(x.shape))}"
            )
        if self.dtype_kind == "long" and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
            raise TypeError(
                f"{where}: expected x to be an integer (long) tensor of symbols, got dtype {x.dtype}"
            )
        if self.dtype_kind == "float" and not x.is_floating_point():
            raise TypeError(f"{where}: expected x to be a floating-point tensor, got dtype {x.dtype}")


class BernoulliObservation(Observation):
    """Independent Bernoulli units (e.g. piano-roll frames): ``params`` are the ``obs_dim`` logits."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        check_positive_int("obs_dim", obs_dim, "BernoulliObservation")
        self.obs_dim = obs_dim
        self.obs_shape = (obs_dim,)
        self.param_size = obs_dim
        self.feature_size = obs_dim

    def distribution(self, params: torch.Tensor) -> Distribution:
        return Independent(Bernoulli(logits=params, validate_args=False), 1)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # log sigmoid(l) x + log sigmoid(-l) (1 - x) = x l - softplus(l)
        return (x * params - F.softplus(params)).sum(-1)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params))

    def init_bias(self, bias: torch.Tensor, mean: torch.Tensor) -> None:
        eps = 1e-5 if mean.dtype == torch.float64 else 1e-4
        bias.copy_(torch.logit(mean.clamp(eps, 1.0 - eps)))


class NormalObservation(Observation):
    """Independent Gaussians with a mean and a learned scale, both predicted by the decoder.

    ``params`` is ``[loc (obs_dim), raw scale (obs_dim)]``; the standard deviation is
    ``softplus(raw + 0.25) + min_scale``.
    """

    def __init__(self, obs_dim: int, min_scale: float = 1e-3) -> None:
        super().__init__()
        check_positive_int("obs_dim", obs_dim, "NormalObservation")
        if not min_scale > 0:
            raise ValueError(f"NormalObservation: expected min_scale > 0, got {min_scale}")
        self.obs_dim = obs_dim
        self.min_scale = min_scale
        self.obs_shape = (obs_dim,)
        self.param_size = 2 * obs_dim
        self.feature_size = obs_dim

    def _loc_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = params.split(self.obs_dim, dim=-1)
        return loc, F.softplus(raw + RAW_SCALE_BIAS) + self.min_scale

    def distribution(self, params: torch.Tensor) -> Distribution:
        loc, scale = self._loc_scale(params)
        return Independent(Normal(loc, scale, validate_args=False), 1)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loc, scale = self._loc_scale(params)
        return normal_log_prob(x, loc, scale)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        loc, scale = self._loc_scale(params)
        return draw_normal(loc, scale, reparametrize=False)

    def init_bias(self, bias: torch.Tensor, mean: torch.Tensor) -> None:
        bias[: self.obs_dim].copy_(mean)


class CategoricalObservation(Observation):
    """One symbol out of ``n_categories`` per step (characters): ``x`` is long ``[batch, T]``.

    ``params`` are the ``n_categories`` logits; features are a learned embedding of the symbol.

    Args:
        n_categories: vocabulary size V.
        embedding_size: size of the symbol embedding (default ``min(V, 64)``).
    """

    dtype_kind = "long"

    def __init__(self, n_categories: int, embedding_size: int | None = None) -> None:
        super().__init__()
        check_positive_int("n_categories", n_categories, "CategoricalObservation", minimum=2)
        self.n_categories = n_categories
        self.embedding_size = embedding_size
        size = min(n_categories, 64) if embedding_size is None else embedding_size
        check_positive_int("embedding_size", size, "CategoricalObservation")
        self.obs_shape = ()
        self.param_size = n_categories
        self.feature_size = size
        self.embedding = nn.Embedding(n_categories, size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)

    def distribution(self, params: torch.Tensor) -> Distribution:
        return Categorical(logits=params, validate_args=False)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(params, dim=-1)
        index = x.unsqueeze(-1).expand(*log_probs.shape[:-1], 1)
        return torch.gather(log_probs, -1, index).squeeze(-1)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        flat = params.reshape(-1, self.n_categories)
        return torch.multinomial(torch.softmax(flat, dim=-1), 1).reshape(params.shape[:-1])

    def init_bias(self, bias: torch.Tensor, mean: torch.Tensor) -> None:
        tiny = torch.finfo(mean.dtype).tiny
        bias.copy_(mean.clamp_min(tiny).log())


class CallableObservation(Observation):
    """A user's ``distribution_fn(params) -> torch Distribution`` as an observation family.

    The distribution must have batch shape ``params.shape[:-1]`` and event shape ``obs_shape``;
    features of ``x_t`` are its values flattened (as floats). Its ``param_size`` is whatever the
    user's decoder outputs, so a decoder must be given with it.
    """

    def __init__(
        self, distribution_fn: Callable[[torch.Tensor], Distribution], obs_shape: Sequence[int]
    ) -> None:
        super().__init__()
        if not callable(distribution_fn):
            raise TypeError(f"CallableObservation: expected a callable, got {type(distribution_fn).__name__}")
        self.distribution_fn = distribution_fn
        self.obs_shape = tuple(obs_shape)
        self.param_size = -1
        self.feature_size = math.prod(self.obs_shape)

    def distribution(self, params: torch.Tensor) -> Distribution:
        return self.distribution_fn(params)

    def check_x(self, x: torch.Tensor, where: str) -> None:
        check_tensor("x", x, where)
        expected = ["batch", "T", *self.obs_shape]
        if x.dim() != len(expected) or tuple(x.shape[2:]) != self.obs_shape:
            raise ValueError(
                f"{where}: expected x of shape {shape_str(expected)}, got {shape_str(list(x.shape))}"
            )


_FAMILIES = ("bernoulli", "normal", "categorical", "gmm")


def make_observation(observation, obs_dim: int, embedding_size: int | None, where: str) -> Observation:
    """An :class:`Observation` from a name, an ``Observation``, or a callable ``params -> Distribution``."""
    if isinstance(observation, Observation):
        return observation
    if isinstance(observation, str):
        check_positive_int("obs_dim", obs_dim, where)
        if observation == "bernoulli":
            return BernoulliObservation(obs_dim)
        if observation == "normal":
            return NormalObservation(obs_dim)
        if observation == "categorical":
            return CategoricalObservation(obs_dim, embedding_size)
        if observation == "gmm":  # 20 components; pass a GaussianMixtureObservation for another K
            from bbvae.sequential.mixture import GaussianMixtureObservation

            return GaussianMixtureObservation(obs_dim)
        raise ValueError(
            f"{where}: expected observation in {_FAMILIES}, an Observation or a callable params -> "
            f"Distribution, got {observation!r}"
        )
    if callable(observation):
        return CallableObservation(observation, (obs_dim,))
    raise TypeError(
        f"{where}: expected observation to be one of {_FAMILIES}, an Observation or a callable, "
        f"got {type(observation).__name__}"
    )
