"""bbvae: black-box variational inference for latent-variable and sequence models in PyTorch."""

from bbvae import diagnostics, losses, models
from bbvae._validation import is_validation_enabled, set_validation
from bbvae.base import GenModel, InfNet, NotFittedError
from bbvae.evaluation import log_likelihood

__version__ = "0.1.0"


_LAZY = {"VAE": "bbvae.estimator", "Trainer": "bbvae.training", "set_seed": "bbvae.training"}


def __getattr__(name):
    # The estimator and the trainer pull in more machinery; import them only when asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bbvae' has no attribute {name!r}")


__all__ = [
    "VAE",
    "Trainer",
    "GenModel",
    "InfNet",
    "NotFittedError",
    "diagnostics",
    "is_validation_enabled",
    "log_likelihood",
    "losses",
    "models",
    "set_seed",
    "set_validation",
]
