"""Loss objects: each takes ``(inf_net, gen_model)`` and returns a scalar to minimise.

Its value is the negative bound averaged over the batch; its gradient is the estimator's.
"""

from bbvae.losses.arm import ARM, ARMS, DisARM
from bbvae.losses.base import Loss, effective_sample_size, log_mean_exp, normalized_weights
from bbvae.losses.concrete import Concrete, GumbelSoftmax
from bbvae.losses.elbo import ELBO
from bbvae.losses.fivo import FIVO
from bbvae.losses.iwae import IWAE
from bbvae.losses.nvil import NVIL
from bbvae.losses.per_step import PerStep
from bbvae.losses.rebar import REBAR
from bbvae.losses.relax import RELAX
from bbvae.losses.rloo import RLOO
from bbvae.losses.rws import RWS
from bbvae.losses.vimco import VIMCO
from bbvae.losses.wake_sleep import WakeSleep

__all__ = [
    "ARM",
    "ARMS",
    "REBAR",
    "RELAX",
    "RLOO",
    "DisARM",
    "ELBO",
    "FIVO",
    "IWAE",
    "NVIL",
    "RWS",
    "VIMCO",
    "Concrete",
    "GumbelSoftmax",
    "Loss",
    "PerStep",
    "WakeSleep",
    "effective_sample_size",
    "log_mean_exp",
    "normalized_weights",
]
