"""``SequenceModel``: a scikit-learn-style estimator for sequence models (VRNN, SRNN, RNN, ...).

``SequenceModel(model="vrnn", bound="fivo", ...).fit(data)`` builds the model for the data (the
observation family, its size, the FIVO centring and output-bias initialisation), trains it with a
:class:`~bbvae.training.Trainer` and returns the estimator. ``score(X)`` is the bound in nats per
time step, ``score_samples(X)`` the bound of every sequence, ``sample(n, length)`` draws new
sequences and ``sample_continuations(prefixes, ...)`` continues given beginnings.

Data ``X`` may be

* a :class:`~bbvae.data.PianoRollData`, :class:`~bbvae.data.TextData`,
  :class:`~bbvae.data.AudioData` (raw audio frames; its training chunks) or
  :class:`~bbvae.data.SyntheticData` (``fit`` uses the ``"train"`` split, and ``"valid"`` for
  validation when ``eval_every`` or ``patience`` is set; ``score`` takes a ``split``, by default
  ``"test"``); text is cut into pieces of ``max_length`` characters (100 by default);
* a torch ``Dataset`` of sequences (items ``x_i`` or ``(x_i, inputs_i)``, see
  :mod:`bbvae.data.datasets`), or a ``DataLoader`` over one: ``fit`` then trains on the
  DataLoader's batches as they come (its sampler, workers, pinning; ``max_length`` does not cut
  them) and reads the model's statistics from its Dataset;
* a list of ``N`` tensors or arrays ``[T_i, D]`` (float) or ``[T_i]`` (integer symbols), ragged;
* a :class:`~bbvae.data.SequenceBatch` (``x [N, T, ...]``, ``lengths [N]``), or a Tensor
  ``[N, T, ...]`` of equal-length sequences.

Side ``inputs`` of the data sets are not used: the piano-roll and text loaders' inputs are the
previous observation, which VRNN, SRNN, RNN and IndependentVAE already feed into their own
recurrence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from bbvae.data.datasets import SequenceDataset
from bbvae.estimator_base import (
    EstimatorMixin,
    check_int,
    check_is_fitted,
    make_trainer,
    trainer_results,
)
from bbvae.sequential.base import SequentialModel
from bbvae.sequential.bounds import EVAL_BOUNDS, sequence_bounds
from bbvae.sequential.estimator_build import BOUNDS, MODELS, OBSERVATIONS, SequenceModelBuilder
from bbvae.sequential.estimator_data import is_dataset, is_text, to_sequences
from bbvae.sequential.estimator_sampling import SequenceModelSampling
from bbvae.training import Callback

__all__ = [
    "BOUNDS",
    "EVAL_BOUNDS",
    "MODELS",
    "OBSERVATIONS",
    "SequenceModel",
    "sequence_bounds",
    "to_sequences",
]

# The bound each training objective estimates (what score reports by default).
_EVAL_OF = {"elbo": "elbo", "iwae": "iwae", "fivo": "fivo", "vimco": "iwae", "nvil": "elbo", "rws": "iwae"}
_EVAL_SEED = 1_000_003


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Run the block on a seeded copy of the global generators (restored afterwards)."""
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


class SequenceModel(SequenceModelBuilder, SequenceModelSampling, EstimatorMixin):
    """A latent sequence model fit by a variational bound, with the scikit-learn estimator API.

    ``fit`` trains a freshly built model (or a **deep copy** of the ``model`` instance given), so
    the constructor's arguments are never modified; the trained model is ``model_``.

    Args:
        model: ``"vrnn"``, ``"srnn"``, ``"rnn"`` (no latents; exact likelihood), ``"independent"``
            (:class:`~bbvae.sequential.independent.IndependentVAE`), ``"ghmm"`` (linear-Gaussian
            state space model, real-valued data only), or a
            :class:`~bbvae.sequential.SequentialModel` instance (trained as given: ``latent_size``,
            ``hidden_size``, ``cell``, ``observation`` and ``proposal`` are then not used).
        bound: the training objective: ``"elbo"``, ``"iwae"``, ``"fivo"``, ``"vimco"``, ``"nvil"``
            (without input-dependent baseline) or ``"rws"``.
        latent_size: size of ``z_t`` (None: 64, or the observation size for ``"ghmm"``); for
            ``"rnn"`` the default recurrent size.
        hidden_size: recurrent state size (None: ``latent_size``).
        n_samples: samples / particles per sequence in the training bound (K).
        cell: ``"lstm"`` or ``"gru"``.
        observation: ``"auto"`` (integer symbols: ``"categorical"``; 0/1 floats:
            ``"bernoulli"``; other floats: ``"normal"``), or one of those names, or ``"gmm"``
            (real frames: a mixture of ``n_components`` diagonal Gaussians, see
            :class:`~bbvae.sequential.GaussianMixtureObservation`).
        n_components: mixture components of ``observation="gmm"`` (the VRNN paper's 20).
        proposal: the GaussianHMM's proposal (``"network"``, ``"prior"``, ``"optimal"``).
        resampling: ``"multinomial"``, ``"systematic"`` or ``"stratified"`` (FIVO and its score).
        ess_threshold: FIVO resamples where ESS < ``ess_threshold * K``.
        normalize: ``"length"`` (the FIVO reference: the training loss is the batch mean of
            ``bound / length``, for every bound) or ``"sequence"`` (nats per sequence).
        optimizer: see :class:`~bbvae.training.Trainer`.
        learning_rate: Adam's learning rate (the FIVO reference's 2e-4 by default).
        batch_size: sequences per step (4 in the FIVO reference).
        max_steps, max_epochs: when to stop (at least one must be set).
        clip_grad_norm: gradient clipping (None: none).
        weight_decay: decoupled weight decay (AdamW; with ``optimizer="adam"`` the optimizer
            becomes AdamW). It regularises towards small weights: the objective is then no longer
            the bound alone.
        lr_schedule: ``None``, ``"plateau"`` (halve on a plateau of the validation bound),
            ``"cosine"``, ``"step"`` or a callable ``optimizer -> scheduler``; see
            :class:`~bbvae.training.Trainer`.
        lr_schedule_kwargs: keywords of the scheduler.
        warmup_steps: linear learning-rate warm-up over the first steps.
        ema_decay: keep an exponential moving average of the weights with this decay (e.g.
            0.999); validation, model selection and the fitted model use the average.
        dropout: dropout of the built-in neural models (MLP hidden layers and recurrent inputs;
            training only, see :class:`~bbvae.sequential.VRNN`).
        scheduled_sampling: feed the model's own samples back while training (Bengio et al.
            2015; :mod:`bbvae.sequential.scheduled`): ``"inverse_sigmoid:k=1000"``,
            ``"linear:k=1e-4,eps_min=0.1"``, ``"exponential:k=0.999"``, a dict such as
            ``{"schedule": "inverse_sigmoid", "k": 1000}``, or None (teacher forcing). A biased
            training signal, not a bound; validation and ``score`` stay teacher-forced.
        compile: run the model's step compiled (``model.compile_step()``, see
            :mod:`bbvae.sequential.compiled`): 1.4-1.6x faster on the CPU for small batches and
            few particles (batch 4, K = 4), slower at hundreds of rows; the first steps compile
            (tens of seconds). Falls back to eager, with a warning, where compilation fails.
        remat_chunk: activation checkpointing over chunks of this many time steps (set as
            ``model_.remat_chunk``): the same bound and gradients, the activations of one chunk
            kept instead of the whole sequence's, one more forward pass; for long sequences
            (MuseData, Piano-midi). None: off. See :mod:`bbvae.sequential.chunks`.
        tbptt_chunk: truncated backpropagation through time, the state detached every this many
            steps (set as ``model_.tbptt_chunk``): the same bound, a different (biased) gradient
            estimator. None: off.
        max_length: text data sets: the length of the pieces the text is cut into (None: 100);
            other data: sequences are cut to their first ``max_length`` steps (None: kept whole).
        length_bucketing: batch sequences of similar length (pools of this many batches sorted by
            length, see :class:`~bbvae.training.Trainer`); None: plain shuffling.
        eval_bound: the bound :meth:`score` reports (``"elbo"``, ``"iwae"``, ``"fivo"``,
            ``"exact"``); None: the one the training objective estimates (FIVO for ``"fivo"``,
            IWAE for ``"iwae"``, ``"vimco"``, ``"rws"``, the ELBO for ``"elbo"``, ``"nvil"``).
        n_samples_eval: samples / particles per sequence in :meth:`score` (None: ``n_samples``).
        eval_every: steps between validations (None: once per epoch, when there is validation
            data; see :meth:`fit`).
        patience: early stopping after this many validations without improvement.
        restore_best: with validation, the fitted model is the best-validation one
            (``best_step_``), not the last iterate.
        log_every: steps between logging points (``loss_history_`` updates, callbacks).
        checkpoint_every: steps between the trainer's checkpoints (``logdir/last.pt``).
        device: where to train and evaluate (None: torch's default device).
        logdir: the trainer's directory for ``last.pt``, ``best.pt`` and ``log.jsonl``.
        progress: show a progress bar.
        callbacks: functions ``fn(estimator)`` run at every logging point (``loss_history_`` and
            ``n_iter_`` hold the progress so far; return True to stop) and/or
            :class:`~bbvae.training.Callback` objects.
        random_state: int seeding the model's initialisation, the batch order and every draw
            of training; None draws a seed (kept in ``seed_``).

    Attributes:
        model_ (SequentialModel): the trained model.
        loss_ (Loss): the loss that was optimised (with ``normalize="length"`` and a bound other than
            FIVO, a wrapper dividing by the lengths, whose ``inner`` is the bound's loss).
        trainer_ (Trainer): the trainer that ran.
        loss_history_ (list[float]): the training loss of every step (negative bound, per step
            with ``normalize="length"``).
        valid_history_ (list[float]): validation bounds, nats per time step.
        best_valid_ (float | None): the best validation bound (None without validation).
        best_step_ (int | None): the step it was reached at: the fitted model's step when
            ``restore_best`` (the default).
        n_iter_ (int): optimizer steps taken.
        n_epochs_ (int): complete passes over the training data.
        seed_ (int): the seed used.
        observation_ (str): the observation family used (``"bernoulli"``, ...).
        obs_shape_ (tuple[int, ...]): the shape of one step, ``(D,)`` or ``()`` for symbols.
        n_categories_ (int | None): the number of symbols (categorical data).
        vocabulary_ (Vocabulary | None): the text vocabulary when fit on a TextData.
        mean_length_ (int): the mean training sequence length (the default sample length).
    """

    def __init__(
        self,
        model: str | SequentialModel = "vrnn",
        bound: str = "fivo",
        latent_size: int | None = None,
        hidden_size: int | None = None,
        n_samples: int = 4,
        cell: str = "lstm",
        observation: str = "auto",
        n_components: int = 20,
        proposal: str = "network",
        resampling: str = "multinomial",
        ess_threshold: float = 0.5,
        normalize: str = "length",
        optimizer: str | Callable = "adam",
        learning_rate: float = 2e-4,
        batch_size: int = 4,
        max_steps: int | None = 1000,
        max_epochs: int | None = None,
        clip_grad_norm: float | None = None,
        weight_decay: float = 0.0,
        lr_schedule: str | Callable | None = None,
        lr_schedule_kwargs: dict | None = None,
        warmup_steps: int = 0,
        ema_decay: float | None = None,
        dropout: float = 0.0,
        scheduled_sampling: str | dict | None = None,
        compile: bool = False,
        remat_chunk: int | None = None,
        tbptt_chunk: int | None = None,
        max_length: int | None = None,
        length_bucketing: int | None = None,
        eval_bound: str | None = None,
        n_samples_eval: int | None = None,
        eval_every: int | None = None,
        patience: int | None = None,
        restore_best: bool = True,
        log_every: int = 50,
        checkpoint_every: int = 1000,
        device: str | torch.device | None = None,
        logdir: str | None = None,
        progress: bool = False,
        callbacks: Sequence[Callable | Callback] | None = None,
        random_state: int | None = None,
    ) -> None:
        self.model = model
        self.bound = bound
        self.latent_size = latent_size
        self.hidden_size = hidden_size
        self.n_samples = n_samples
        self.cell = cell
        self.observation = observation
        self.n_components = n_components
        self.proposal = proposal
        self.resampling = resampling
        self.ess_threshold = ess_threshold
        self.normalize = normalize
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.clip_grad_norm = clip_grad_norm
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.lr_schedule_kwargs = lr_schedule_kwargs
        self.warmup_steps = warmup_steps
        self.ema_decay = ema_decay
        self.dropout = dropout
        self.scheduled_sampling = scheduled_sampling
        self.compile = compile
        self.remat_chunk = remat_chunk
        self.tbptt_chunk = tbptt_chunk
        self.max_length = max_length
        self.length_bucketing = length_bucketing
        self.eval_bound = eval_bound
        self.n_samples_eval = n_samples_eval
        self.eval_every = eval_every
        self.patience = patience
        self.restore_best = restore_best
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.device = device
        self.logdir = logdir
        self.progress = progress
        self.callbacks = callbacks
        self.random_state = random_state

    @classmethod
    def pretrained(cls, name: str, device: str | torch.device | None = None) -> SequenceModel:
        """A fitted estimator with shipped weights, e.g. ``"jsb-vrnn-fivo"`` (see :mod:`bbvae.pretrained`)."""
        from bbvae.pretrained import load

        return load(name, device=device)

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, X_valid=None, resume: bool | str = False) -> SequenceModel:
        """Build the model for ``X`` and train it.

        Args:
            X: training data (see the module docstring); for a data set its ``"train"`` split.
            y: ignored (scikit-learn API).
            X_valid: validation sequences (same forms). Without it, a data set's ``"valid"``
                split is used when ``eval_every`` or ``patience`` is set. Validation reports
                ``eval_bound`` in nats per time step (``valid_history_``).
            resume: continue from ``logdir/last.pt`` (``True``), if present (``"auto"``), or
                from a checkpoint path (see :meth:`bbvae.training.Trainer.fit`).

        Returns:
            self.
        """
        where = f"{type(self).__name__}.fit"
        train = self._setup(X, where)
        valid = None
        if X_valid is not None:
            valid = self._check_sequences(
                to_sequences(X_valid, "valid", self.max_length, where, "X_valid"), where, "X_valid"
            )
        elif is_dataset(X) and (self.eval_every is not None or self.patience is not None):
            if not is_text(X) or len(X.split("valid")) > 0:
                valid = self._check_sequences(to_sequences(X, "valid", self.max_length, where), where)
        trainer = make_trainer(
            self,
            self.loss_,
            where,
            evaluate_fn=self._validation_bound,
            length_bucketing=self.length_bucketing,
        )
        trainer.fit(X if isinstance(X, DataLoader) else SequenceDataset(train), valid, resume=resume)
        trainer_results(self, trainer)
        self.model_.eval()
        return self

    def load(self, X, path) -> SequenceModel:
        """Build the model for data ``X`` (as :meth:`fit` would) and load a trainer checkpoint.

        ``SequenceModel(**same_params).load(data, "runs/x/last.pt")`` restores what ``fit`` with
        ``logdir="runs/x"`` trained, without training.

        Args:
            X: the training data the model was fit on (its size, statistics and vocabulary shape
                the model).
            path: a checkpoint written by the trainer (``last.pt`` or ``best.pt``).

        Returns:
            self, fitted.
        """
        from bbvae.checkpoint import load_checkpoint

        where = f"{type(self).__name__}.load"
        self._setup(X, where)
        state = load_checkpoint(path, map_location="cpu", expected_format="bbvae.trainer")
        try:
            self.loss_.load_state_dict(state["model_state"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ValueError(
                f"{where}: the checkpoint {str(path)!r} does not match this model ({first}); build the "
                "estimator with the parameters it was trained with"
            ) from None
        self.loss_history_ = list(state.get("loss_history", []))
        self.valid_history_ = list(state.get("valid_history", []))
        self.n_iter_ = int(state.get("step", 0))
        self.n_epochs_ = int(state.get("epoch", 0))
        self.seed_ = state.get("config", {}).get("seed")
        self.model_.eval()
        return self

    # ------------------------------------------------------------------ scoring
    def _eval_settings(self) -> tuple[str, int]:
        bound = self.eval_bound or _EVAL_OF[self.bound]
        if bound == "exact" and not callable(getattr(self.model_, "exact_log_prob", None)):
            raise ValueError(
                f"{type(self).__name__}: eval_bound='exact', but {type(self.model_).__name__} has no "
                "exact_log_prob"
            )
        return bound, self.n_samples_eval or self.n_samples

    def _bounds(self, seqs: list[torch.Tensor]) -> torch.Tensor:
        bound, k = self._eval_settings()
        return sequence_bounds(
            self.model_,
            seqs,
            bound=bound,
            n_samples=k,
            batch_size=max(self.batch_size, 128),
            resampling=self.resampling,
            ess_threshold=self.ess_threshold,
        )

    def _validation_bound(self, loss: nn.Module, seqs: list[torch.Tensor]) -> float:
        """The trainer's validation: ``eval_bound`` in nats per step, with the same noise every time."""
        param = next(iter(self.model_.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        seed = (self.trainer_.seed_ if hasattr(self.trainer_, "seed_") else 0) + _EVAL_SEED
        with _seeded(seed, device):
            total = float(self._bounds(seqs).sum())
        return total / sum(s.shape[0] for s in seqs)

    def score_samples(self, X, split: str = "test", random_state: int | None = None) -> torch.Tensor:
        """The bound (``eval_bound``, ``n_samples_eval`` particles) of every sequence, nats per sequence.

        Args:
            X: sequences (see the module docstring); for a data set, its split ``split``.
            split: the split of a data set to score.
            random_state: an int to draw the Monte Carlo noise from a generator seeded with it
                (two calls then give the same numbers; the global generators are left as they
                were); None draws from the global generators.

        Returns:
            ``[N]`` float64 tensor on the CPU.
        """
        check_is_fitted(self, "score_samples")
        where = f"{type(self).__name__}.score_samples"
        seqs = self._check_sequences(to_sequences(X, split, self.max_length, where), where)
        return self._seeded_bounds(seqs, random_state, where)

    def score(self, X, y=None, split: str = "test", random_state: int | None = None) -> float:
        """The bound in **nats per time step**: the sum of the sequences' bounds over the total length.

        This is how sequence-model papers (and the FIVO reference) report bounds; it is not the
        mean of :meth:`score_samples` (nats per sequence) unless all sequences have one step.
        ``random_state``: see :meth:`score_samples`.
        """
        check_is_fitted(self, "score")
        where = f"{type(self).__name__}.score"
        seqs = self._check_sequences(to_sequences(X, split, self.max_length, where), where)
        return float(self._seeded_bounds(seqs, random_state, where).sum()) / sum(s.shape[0] for s in seqs)

    def _seeded_bounds(self, seqs: list[torch.Tensor], random_state: int | None, where: str) -> torch.Tensor:
        if random_state is None:
            return self._bounds(seqs)
        check_int("random_state", random_state, where, minimum=0)
        param = next(iter(self.model_.parameters()), None)
        with _seeded(random_state, param.device if param is not None else torch.device("cpu")):
            return self._bounds(seqs)
