"""Sequence models (VRNN, SRNN, Gaussian and discrete HMMs) and sequential Monte Carlo."""

from bbvae.sequential.base import (
    ParticleRun,
    SequentialGenModel,
    SequentialInfNet,
    SequentialModel,
    StepOutput,
    generate,
    run_particles,
    tree_map,
)
from bbvae.sequential.discrete_hmm import DiscreteHMM
from bbvae.sequential.estimator import SequenceModel
from bbvae.sequential.evaluate import evaluate
from bbvae.sequential.ghmm import GaussianHMM
from bbvae.sequential.independent import IndependentVAE
from bbvae.sequential.rnn import RNN
from bbvae.sequential.sampling import filter_prefix, sample_continuations, sample_sequences
from bbvae.sequential.smc import (
    SMCResult,
    multinomial_resampling,
    smc,
    stratified_resampling,
    systematic_resampling,
)
from bbvae.sequential.srnn import SRNN
from bbvae.sequential.vrnn import VRNN

__all__ = [
    "RNN",
    "SRNN",
    "VRNN",
    "DiscreteHMM",
    "GaussianHMM",
    "IndependentVAE",
    "ParticleRun",
    "SMCResult",
    "SequenceModel",
    "SequentialGenModel",
    "SequentialInfNet",
    "SequentialModel",
    "StepOutput",
    "evaluate",
    "filter_prefix",
    "generate",
    "multinomial_resampling",
    "run_particles",
    "sample_continuations",
    "sample_sequences",
    "smc",
    "stratified_resampling",
    "systematic_resampling",
    "tree_map",
]
