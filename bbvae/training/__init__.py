"""The training loop behind the estimators and the ``bbvae`` command line: :class:`Trainer`.

``Trainer(loss, ...).fit(train_data, valid_data)`` maximises the loss's bound by stochastic
gradient steps on ``loss.parameters()`` (the inference network's, the generative model's and any
the loss owns, such as NVIL's baseline; shared parameters count once). One step is
``zero_grad(set_to_none=True)``, ``loss(batch)``, ``backward()``, optional gradient clipping,
``optimizer.step()``; nothing reads a tensor's value in the step, so accelerators never wait for
the host, except at logging points (every ``log_every`` steps), evaluations and checkpoints.

Data: torch.utils.data
----------------------
Training and validation data are ``torch.utils.data`` Datasets or DataLoaders (Tensors, lists of
sequences and whole-split SequenceBatches are turned into Datasets); see
:mod:`bbvae.training.data` for what is accepted and for exact resumption. A batch is either

* a Tensor ``[batch, *obs_shape]`` (static models): the step calls ``loss(x)``, or
* a :class:`~bbvae.data.SequenceBatch` ``(x [batch, T, *obs], lengths [batch], inputs)``: the step
  calls ``loss(x, lengths=lengths)``, plus ``inputs=inputs`` when the trainer has
  ``use_inputs=True``.

Batches living on another device than the loss's parameters are moved there, and float batches
take the parameters' dtype (the trainer never picks a device itself). The data sets of
:mod:`bbvae.data` give their splits as Datasets: ``Trainer(...).fit(data.dataset("train"))``.

Validation
----------
Every ``eval_every`` steps (or at the end of every epoch when ``eval_every`` is None) the trainer
computes the validation bound under ``torch.no_grad()`` in ``eval()`` mode: the sum of the
per-data-point bounds (``estimate``'s first output) divided by the number of data points
(Tensor batches) or by the total number of valid time steps, ``sum(lengths)`` (sequence
batches): nats per time step, as sequence-model papers report. Evaluation draws its
Monte Carlo noise from a forked generator seeded the same way at every evaluation, so it
never perturbs training's random stream and successive evaluations share their noise.

Distributed
-----------
Under ``torchrun`` with ``WORLD_SIZE > 1`` :meth:`Trainer.fit` joins the process group
(:func:`bbvae.distributed.init_from_env`, gloo), wraps the loss in DistributedDataParallel,
gives each rank the rows ``rank::world_size`` of every global batch of ``batch_size`` rows, and
lets only rank 0 write checkpoints and logs. See :mod:`bbvae.distributed`.
"""

from bbvae.training.callbacks import Callback
from bbvae.training.checkpointing import (
    BEST_CHECKPOINT,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    LAST_CHECKPOINT,
    NonFiniteLossError,
)
from bbvae.training.data import DatasetSplit, SequenceData, as_dataset
from bbvae.training.logs import LOG_FIELDS
from bbvae.training.rng import set_seed
from bbvae.training.tensorboard import TensorBoardLogger
from bbvae.training.trainer import Trainer

__all__ = [
    "BEST_CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "LAST_CHECKPOINT",
    "LOG_FIELDS",
    "Callback",
    "DatasetSplit",
    "NonFiniteLossError",
    "SequenceData",
    "TensorBoardLogger",
    "Trainer",
    "as_dataset",
    "set_seed",
]
