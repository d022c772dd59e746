"""Loss objects: each takes ``(inf_net, gen_model)`` and returns a scalar to minimise."""

from bbvae.losses.base import Loss, effective_sample_size, log_mean_exp, normalized_weights
from bbvae.losses.elbo import ELBO
from bbvae.losses.iwae import IWAE

__all__ = [
    "ELBO",
    "IWAE",
    "Loss",
    "effective_sample_size",
    "log_mean_exp",
    "normalized_weights",
]
