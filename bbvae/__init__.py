"""bbvae: black-box variational inference for latent-variable and sequence models in PyTorch.

Layout: the package is built in floors, and imports only go down (a module imports from its own
floor or a lower one, never from a higher one; ``tests/test_layout.py`` checks it):

7. interface: ``bbvae.cli`` (one module per command), ``bbvae.plots`` (pictures of a run),
   ``bbvae.__main__``; ``bbvae.play`` (a game world model and an agent trained in it)
6. estimators: ``bbvae.estimator`` (VAE) with ``bbvae.estimator_data`` (its data checks),
   ``bbvae.estimator_base`` (the parameter contract and the Trainer glue),
   ``bbvae.sequential.estimator`` (SequenceModel) with ``estimator_build``, ``estimator_data`` and
   ``estimator_sampling``, ``bbvae.pretrained`` (shipped models by name)
5. training: ``bbvae.training`` (the Trainer: loop, checkpointing, evaluation, logs, settings,
   data sources), ``bbvae.distributed``
4. data sets: ``bbvae.data`` (piano rolls, text, MIDI, synthetic)
3. losses: ``bbvae.losses`` (ELBO, IWAE, VIMCO, NVIL, RWS, Concrete, FIVO, ...)
2. sequential core: ``bbvae.sequential`` (the step contract, the views, SMC, observation
   families, networks, the shipped sequence models, sampling, evaluation)
1. static models: ``bbvae.models`` (with ``bbvae.models_layered``, the layered SBN),
   ``bbvae.evaluation``, ``bbvae.diagnostics``, ``bbvae.flows``
   (normalising flows from the optional zuko)
0. base: ``bbvae.base`` (InfNet, GenModel), ``bbvae._validation``, ``bbvae._math`` (log-weight
   arithmetic), ``bbvae.checkpoint``, ``bbvae.data.batching`` (SequenceBatch, collate)

A package's ``__init__`` re-exports its own floor; names from a higher floor are imported on first
use (``bbvae.VAE``, ``bbvae.Trainer``, ``bbvae.sequential.SequenceModel``).
"""

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
