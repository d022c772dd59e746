"""How :class:`~bbvae.sequential.SequenceModel` checks its settings and builds its model and loss.

The methods here are :class:`SequenceModelBuilder`'s, a mixin of the estimator: parameter checks
(``fit`` validates, ``__init__`` only stores), the observation family for the data, the model from
its name (with the FIVO centring and output-bias initialisation) and the loss from the bound's name.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from bbvae._validation import shape_str
from bbvae.estimator_base import check_choice, check_float, check_int, check_random_state, resolve_device
from bbvae.losses.base import Loss
from bbvae.losses.per_step import PerStep
from bbvae.sequential.base import SequentialModel
from bbvae.sequential.bounds import EVAL_BOUNDS
from bbvae.sequential.chunks import CHUNK_OPTIONS, check_chunk
from bbvae.sequential.estimator_data import DataInfo, data_info, is_binary, to_sequences
from bbvae.sequential.scheduled import parse_scheduled_sampling
from bbvae.training.rng import set_seed

__all__ = ["BOUNDS", "MODELS", "OBSERVATIONS", "SequenceModelBuilder"]

#: Model names of :class:`~bbvae.sequential.SequenceModel`.
MODELS = ("vrnn", "srnn", "rnn", "independent", "ghmm")
#: Training objectives of :class:`~bbvae.sequential.SequenceModel`.
BOUNDS = ("elbo", "iwae", "fivo", "vimco", "nvil", "rws")
OBSERVATIONS = ("auto", "bernoulli", "normal", "categorical", "gmm")
_NORMALIZE = ("length", "sequence")
_RESAMPLING = ("multinomial", "systematic", "stratified")
_DEFAULT_LATENT = 64


class SequenceModelBuilder:
    """Settings checks and model / loss construction of :class:`~bbvae.sequential.SequenceModel`."""

    def _validate_params(self) -> torch.device | None:
        where = type(self).__name__
        if not isinstance(self.model, SequentialModel):
            if not isinstance(self.model, str):
                raise TypeError(
                    f"{where}: expected model to be a name in {MODELS} or a SequentialModel, "
                    f"got {type(self.model).__name__}"
                )
            check_choice("model", self.model, MODELS, where)
        check_choice("bound", self.bound, BOUNDS, where)
        check_int("latent_size", self.latent_size, where, optional=True)
        check_int("hidden_size", self.hidden_size, where, optional=True)
        check_int("n_samples", self.n_samples, where)
        if self.bound in ("vimco", "rws") and self.n_samples < 2:
            raise ValueError(f"{where}: bound={self.bound!r} needs n_samples >= 2, got {self.n_samples}")
        check_choice("cell", self.cell, ("lstm", "gru"), where)
        check_choice("observation", self.observation, OBSERVATIONS, where)
        check_int("n_components", self.n_components, where)
        check_choice("proposal", self.proposal, ("network", "prior", "optimal"), where)
        check_choice("resampling", self.resampling, _RESAMPLING, where)
        check_float("ess_threshold", self.ess_threshold, where, strict=False)
        if self.ess_threshold > 1:
            raise ValueError(f"{where}: expected ess_threshold in [0, 1], got {self.ess_threshold}")
        check_choice("normalize", self.normalize, _NORMALIZE, where)
        check_float("learning_rate", self.learning_rate, where)
        check_int("batch_size", self.batch_size, where)
        check_int("max_steps", self.max_steps, where, optional=True)
        check_int("max_epochs", self.max_epochs, where, optional=True)
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError(f"{where}: set max_steps or max_epochs (or both), got neither")
        if self.clip_grad_norm is not None:
            check_float("clip_grad_norm", self.clip_grad_norm, where)
        check_float("weight_decay", self.weight_decay, where, strict=False)
        check_int("warmup_steps", self.warmup_steps, where, minimum=0)
        check_float("dropout", self.dropout, where, strict=False)
        if self.dropout >= 1:
            raise ValueError(f"{where}: expected dropout in [0, 1), got {self.dropout}")
        check_int("max_length", self.max_length, where, optional=True)
        check_int("length_bucketing", self.length_bucketing, where, optional=True)
        if self.eval_bound is not None:
            check_choice("eval_bound", self.eval_bound, EVAL_BOUNDS, where)
        check_int("n_samples_eval", self.n_samples_eval, where, optional=True)
        check_int("eval_every", self.eval_every, where, optional=True)
        check_int("patience", self.patience, where, optional=True)
        check_int("log_every", self.log_every, where)
        check_int("checkpoint_every", self.checkpoint_every, where)
        check_random_state(self.random_state, where)
        parse_scheduled_sampling(self.scheduled_sampling, where)
        if not isinstance(self.compile, bool):
            raise TypeError(f"{where}: expected compile to be a bool, got {self.compile!r}")
        check_chunk("remat_chunk", self.remat_chunk, where)
        check_chunk("tbptt_chunk", self.tbptt_chunk, where)
        if self.scheduled_sampling is not None:
            feeds_back = (
                callable(getattr(self.model, "set_scheduled_sampling", None))
                if isinstance(self.model, SequentialModel)
                else self.model != "ghmm"
            )
            if not feeds_back:
                name = self.model if isinstance(self.model, str) else type(self.model).__name__
                raise ValueError(
                    f"{where}: scheduled_sampling needs a model that feeds its observations back "
                    f"('vrnn', 'srnn', 'rnn', 'independent'), got model={name!r}"
                )
        if self.model == "ghmm" and self.observation not in ("auto", "normal"):
            raise ValueError(
                f"{where}: model='ghmm' has Gaussian observations, got observation={self.observation!r}"
            )
        return resolve_device(self.device, where)

    # ------------------------------------------------------------------ building
    def _observation_for(self, info: DataInfo, seqs: list[torch.Tensor], where: str) -> str:
        requested = self.observation
        if info.kind == "long":
            if requested not in ("auto", "categorical"):
                raise ValueError(
                    f"{where}: the data are integer symbols, which need observation='categorical', "
                    f"got observation={requested!r}"
                )
            if self.model == "ghmm":
                raise ValueError(f"{where}: model='ghmm' needs real-valued data [T, D], got integer symbols")
            if info.n_categories < 2:
                raise ValueError(
                    f"{where}: categorical data need at least 2 symbols, got {info.n_categories}"
                )
            return "categorical"
        if requested == "categorical":
            raise ValueError(
                f"{where}: observation='categorical' needs integer symbol sequences [T], got float data"
            )
        if self.model == "ghmm":
            return "normal"
        if requested == "auto":
            return "bernoulli" if is_binary(seqs) else "normal"
        if requested == "bernoulli" and not is_binary(seqs):
            raise ValueError(f"{where}: observation='bernoulli' needs 0/1 data, got other values")
        return requested

    def _build_model(self, info: DataInfo, observation: str, device) -> SequentialModel:
        from bbvae.sequential.ghmm import GaussianHMM
        from bbvae.sequential.independent import IndependentVAE
        from bbvae.sequential.rnn import RNN
        from bbvae.sequential.srnn import SRNN
        from bbvae.sequential.vrnn import VRNN

        if isinstance(self.model, SequentialModel):
            model = copy.deepcopy(self.model)
            if self.scheduled_sampling is not None:
                model.set_scheduled_sampling(self.scheduled_sampling)
            return model.to(device) if device is not None else model
        dim = info.n_categories if observation == "categorical" else info.obs_shape[0]
        if self.model == "ghmm":
            model = GaussianHMM(self.latent_size or dim, dim, proposal=self.proposal)
            return model.to(device) if device is not None else model
        latent = self.latent_size or _DEFAULT_LATENT
        dtype = torch.get_default_dtype()
        x_mean = info.mean.to(dtype) if observation != "categorical" else None
        family = observation
        if observation == "gmm":
            from bbvae.sequential.mixture import GaussianMixtureObservation

            family = GaussianMixtureObservation(dim, self.n_components)
        common = dict(cell=self.cell, observation=family, x_mean=x_mean, dropout=self.dropout)
        if self.model == "rnn":
            model = RNN(dim, hidden_size=self.hidden_size or latent, **common)
        else:
            cls = {"vrnn": VRNN, "srnn": SRNN, "independent": IndependentVAE}[self.model]
            model = cls(dim, latent_size=latent, hidden_size=self.hidden_size, **common)
        # The FIVO initialisation: the emission starts at the training mean (Bernoulli: logit(mean)).
        model.init_output_bias(info.mean.to(dtype))
        if self.scheduled_sampling is not None:
            model.set_scheduled_sampling(self.scheduled_sampling)
        return model.to(device) if device is not None else model

    def _build_loss(self, model: SequentialModel) -> Loss:
        from bbvae.losses.elbo import ELBO
        from bbvae.losses.fivo import FIVO
        from bbvae.losses.iwae import IWAE
        from bbvae.losses.nvil import NVIL
        from bbvae.losses.rws import RWS
        from bbvae.losses.vimco import VIMCO

        q, p, k = model.inf_net, model.gen_model, self.n_samples
        if self.bound == "fivo":
            return FIVO(
                q,
                p,
                k,
                resampling=self.resampling,
                ess_threshold=self.ess_threshold,
                normalize=self.normalize,
            )
        if self.bound == "elbo":
            loss = ELBO(q, p, k, estimator="auto" if model.has_rsample else "score")
        elif self.bound == "iwae":
            loss = IWAE(q, p, k)
        elif self.bound == "vimco":
            loss = VIMCO(q, p, k)
        elif self.bound == "nvil":
            # The default NVIL baseline is an MLP of the flattened x, which ragged batches change
            # the size of; sequences use the running centring and scaling only.
            loss = NVIL(q, p, k, baseline=False)
        else:
            loss = RWS(q, p, k)
        return PerStep(loss) if self.normalize == "length" else loss

    # ------------------------------------------------------------------ setup
    def _setup(self, X: Any, where: str):
        """Validate, read the training data and build ``model_`` and ``loss_`` (untrained)."""
        device = self._validate_params()
        if self.random_state is not None:
            set_seed(self.random_state)
        train = to_sequences(X, "train", self.max_length, where)
        info = data_info(X, train, where)
        observation = (
            self._observation_for(info, train, where)
            if not isinstance(self.model, SequentialModel)
            else "custom"
        )
        model = self._build_model(info, observation, device)
        if self.compile:
            model.compile_step()
        for name in CHUNK_OPTIONS:  # (None leaves a given model's own setting)
            if getattr(self, name) is not None:
                setattr(model, name, getattr(self, name))
        self.model_ = model
        self.loss_ = self._build_loss(model)
        self.observation_ = observation
        self.obs_shape_ = info.obs_shape
        self.n_categories_ = info.n_categories
        self.vocabulary_ = info.vocabulary
        self.mean_length_ = max(1, round(sum(s.shape[0] for s in train) / len(train)))
        return train

    def _check_sequences(self, seqs: list[torch.Tensor], where: str, name: str = "X") -> list[torch.Tensor]:
        first = seqs[0]
        if self.n_categories_ is not None:
            if first.is_floating_point() or first.dim() != 1:
                raise ValueError(
                    f"{where}: expected {name} to hold integer symbol sequences [T] (as in fit), got steps "
                    f"of shape {shape_str(list(first.shape[1:]))} ({first.dtype})"
                )
            top = max(int(s.max()) for s in seqs)
            low = min(int(s.min()) for s in seqs)
            if low < 0 or top >= self.n_categories_:
                raise ValueError(
                    f"{where}: expected {name} to hold symbols in 0..{self.n_categories_ - 1} (as in fit), "
                    f"got {low}..{top}"
                )
        elif tuple(first.shape[1:]) != tuple(self.obs_shape_) or not first.is_floating_point():
            hint = ""
            if not first.is_floating_point() and tuple(first.shape[1:]) == tuple(self.obs_shape_):
                hint = "; integer frames (0/1 piano rolls, counts) must be cast to float first"
            expected = shape_str(["T", *self.obs_shape_])
            got = f"{shape_str(list(first.shape[1:]))} ({first.dtype})"
            raise ValueError(
                f"{where}: expected {name} to hold float sequences {expected} (as in fit), got steps of "
                f"shape {got}{hint}"
            )
        return seqs
