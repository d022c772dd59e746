"""bbvae: black-box variational inference for latent-variable and sequence models in PyTorch."""

from bbvae import losses, models
from bbvae._validation import is_validation_enabled, set_validation
from bbvae.base import GenModel, InfNet, NotFittedError

__version__ = "0.1.0"

__all__ = [
    "GenModel",
    "InfNet",
    "NotFittedError",
    "is_validation_enabled",
    "losses",
    "models",
    "set_validation",
]
