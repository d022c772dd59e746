"""Sequence models (VRNN, SRNN, Gaussian and discrete HMMs) and sequential Monte Carlo.

:class:`SequenceModel` (the estimator) sits on a higher floor than the rest of this package (see
:mod:`bbvae`); it is imported on first use, so that the losses can import the sequential core.
"""

from bbvae.sequential.base import (
    ParticleRun,
    SequentialModel,
    StepOutput,
    generate,
    run_particles,
    tree_map,
)
from bbvae.sequential.discrete_hmm import DiscreteHMM
from bbvae.sequential.evaluate import evaluate
from bbvae.sequential.flow_proposal import FlowProposal
from bbvae.sequential.ghmm import GaussianHMM
from bbvae.sequential.independent import IndependentVAE
from bbvae.sequential.mixture import GaussianMixtureObservation
from bbvae.sequential.observations import (
    BernoulliObservation,
    CategoricalObservation,
    NormalObservation,
    Observation,
    make_observation,
)
from bbvae.sequential.rnn import RNN
from bbvae.sequential.sampling import filter_prefix, sample_continuations, sample_sequences
from bbvae.sequential.scheduled import ScheduledSampling, set_scheduled_sampling
from bbvae.sequential.smc import (
    SMCResult,
    multinomial_resampling,
    smc,
    stratified_resampling,
    systematic_resampling,
)
from bbvae.sequential.srnn import SRNN
from bbvae.sequential.views import SequentialGenModel, SequentialInfNet
from bbvae.sequential.vrnn import VRNN

_LAZY = {"SequenceModel": "bbvae.sequential.estimator"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bbvae.sequential' has no attribute {name!r}")


__all__ = [
    "RNN",
    "SRNN",
    "VRNN",
    "BernoulliObservation",
    "CategoricalObservation",
    "DiscreteHMM",
    "FlowProposal",
    "GaussianHMM",
    "GaussianMixtureObservation",
    "IndependentVAE",
    "NormalObservation",
    "Observation",
    "ParticleRun",
    "SMCResult",
    "ScheduledSampling",
    "SequenceModel",
    "SequentialGenModel",
    "SequentialInfNet",
    "SequentialModel",
    "StepOutput",
    "evaluate",
    "filter_prefix",
    "generate",
    "make_observation",
    "multinomial_resampling",
    "run_particles",
    "sample_continuations",
    "sample_sequences",
    "set_scheduled_sampling",
    "smc",
    "stratified_resampling",
    "systematic_resampling",
    "tree_map",
]
