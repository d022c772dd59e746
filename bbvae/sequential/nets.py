"""Building blocks of the neural sequence models (VRNN, SRNN, RNN, IndependentVAE).

* **Observation families** (:class:`Observation`): how ``x_t`` is scored and drawn given the
  decoder's output ``params`` ``[..., param_size]``, and how ``x_t`` is turned into a float feature
  vector for the encoder. Shipped: :class:`BernoulliObservation` (binary vectors, e.g. 88-key piano
  rolls), :class:`NormalObservation` (real vectors, mean and learned scale predicted by the decoder)
  and :class:`CategoricalObservation` (one symbol per step, ``x`` long ``[batch, T]``, embedded for
  features). Any callable ``params -> torch Distribution`` is accepted too
  (:class:`CallableObservation`).
* **Recurrences**: :func:`make_cell` (``nn.LSTMCell`` / ``nn.GRUCell``, stepped once per time step on
  all particles at once by :func:`step_cell`) and :func:`make_rnn` (``nn.LSTM`` / ``nn.GRU`` over
  whole sequences, for recurrences that depend on ``x`` alone). Recurrent states are dicts
  ``{"h": ..., "c": ...}`` (``"c"`` for LSTMs only) with leaves ``[batch, n_particles, hidden]``.
* **Networks**: :class:`MultiInputMLP` (an MLP on several inputs whose first layer is split per
  input, so an input shared by all particles, e.g. a feature of ``x_t``, is projected once per
  sequence rather than once per particle and step) and :class:`GaussianHead` (a diagonal Gaussian
  from such an MLP).
* :class:`NeuralSequentialModel`: the base the four shipped models share (observation family,
  ``x_mean`` centring, encoder and decoder defaults, argument checks, padding hygiene).

Padding hygiene: :meth:`NeuralSequentialModel.prepare` replaces every entry of ``x`` and ``inputs``
past a sequence's length by zeros before any network sees it, so garbage (even NaN or an
out-of-vocabulary index) past the lengths can change neither a bound nor a gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal
from torch.nn import functional as F

from bbvae._validation import check_positive_int, check_tensor, shape_str
from bbvae.models import mlp
from bbvae.sequential.base import SequentialModel

_CELLS = ("lstm", "gru")
_LOG_2PI = math.log(2.0 * math.pi)
#: Offset added to raw scales before the softplus (the FIVO reference's ``raw_sigma_bias``).
RAW_SCALE_BIAS = 0.25
#: Floor added to every predicted standard deviation, so log-densities stay finite.
MIN_SCALE = 1e-4


# ---------------------------------------------------------------------------- Gaussians
def normal_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Diagonal Gaussian log-density summed over the last dim: ``[..., L] -> [...]``."""
    return (-0.5 * ((z - loc) / scale).square() - scale.log()).sum(-1) - 0.5 * _LOG_2PI * z.shape[-1]


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dim: ``[..., L] -> [...]``."""
    return -0.5 * z.square().sum(-1) - 0.5 * _LOG_2PI * z.shape[-1]


def draw_normal(loc: torch.Tensor, scale: torch.Tensor, reparametrize: bool = True) -> torch.Tensor:
    """``loc + scale * eps`` with ``eps ~ N(0, I)`` drawn on ``loc``'s device and dtype.

    With ``reparametrize=False`` the draw carries no gradient path.
    """
    if reparametrize:
        return loc + scale * torch.randn_like(loc)
    with torch.no_grad():
        return loc + scale * torch.randn_like(loc)


def positive_scale(raw: torch.Tensor) -> torch.Tensor:
    """``softplus(raw + 0.25) + 1e-4``: the standard deviation of a predicted Gaussian."""
    return F.softplus(raw + RAW_SCALE_BIAS) + MIN_SCALE


# ---------------------------------------------------------------------------- networks
class MultiInputMLP(nn.Module):
    """An MLP on the concatenation of several inputs, with its first layer split per input.

    ``net(a, b)`` equals an MLP applied to ``cat([a, b], -1)`` (inputs broadcast against each
    other), but the first layer is ``W_a a + W_b b + bias``, so a caller can project an input that
    all particles share once (``net.project(i, b)``, batched over time) and finish each step with
    ``net.finish(net.project(0, a) + projected_b)``. Hidden layers use ReLU (as the FIVO reference).

    Args:
        in_sizes: sizes of the inputs, in order.
        hidden_sizes: hidden layer sizes (``()``: the first layer is the output layer).
        out_size: output size.
    """

    def __init__(self, in_sizes: Sequence[int], hidden_sizes: Sequence[int], out_size: int) -> None:
        super().__init__()
        self.in_sizes = tuple(in_sizes)
        self.hidden_sizes = tuple(hidden_sizes)
        self.out_size = out_size
        first = self.hidden_sizes[0] if self.hidden_sizes else out_size
        self.inputs = nn.ModuleList(nn.Linear(n, first, bias=False) for n in self.in_sizes)
        self.bias = nn.Parameter(torch.zeros(first))
        # Initialise like one nn.Linear on the concatenated input (fan-in = the total size).
        bound = 1.0 / math.sqrt(max(1, sum(self.in_sizes)))
        with torch.no_grad():
            for layer in self.inputs:
                layer.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)
        if self.hidden_sizes:
            self.tail = nn.Sequential(nn.ReLU(), mlp([*self.hidden_sizes, out_size], activation=nn.ReLU))
        else:
            self.tail = nn.Identity()

    def project(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """First-layer (bias-free) contribution of input ``i``: ``[..., in_sizes[i]] -> [..., first]``."""
        return self.inputs[i](x)

    def finish(self, pre: torch.Tensor) -> torch.Tensor:
        """Add the bias to the summed projections and run the remaining layers."""
        return self.tail(pre + self.bias)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) != len(self.in_sizes):
            raise ValueError(f"MultiInputMLP: expected {len(self.in_sizes)} inputs, got {len(xs)}")
        pre = self.project(0, xs[0])
        for i, x in enumerate(xs[1:], start=1):
            pre = pre + self.project(i, x)
        return self.finish(pre)


class GaussianHead(MultiInputMLP):
    """A diagonal Gaussian whose mean and standard deviation are a :class:`MultiInputMLP` of inputs.

    ``loc, scale = head.params(head(a, b))`` (or from ``head.finish(...)``); the scale is
    ``softplus(raw + 0.25) + 1e-4``.
    """

    def __init__(self, in_sizes: Sequence[int], hidden_sizes: Sequence[int], size: int) -> None:
        super().__init__(in_sizes, hidden_sizes, 2 * size)
        self.size = size

    def params(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split an output ``[..., 2 * size]`` into ``(loc, scale)``, each ``[..., size]``."""
        loc, raw = out.split(self.size, dim=-1)
        return loc, positive_scale(raw)

    def gaussian(self, *xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of the inputs ``xs`` (see :class:`MultiInputMLP`)."""
        return self.params(self(*xs))


# ---------------------------------------------------------------------------- recurrences
def check_cell(cell: str, where: str) -> str:
    if cell not in _CELLS:
        raise ValueError(f"{where}: expected cell in {_CELLS}, got {cell!r}")
    return cell


def make_cell(cell: str, input_size: int, hidden_size: int) -> nn.RNNCellBase:
    """An ``nn.LSTMCell`` (``cell="lstm"``) or ``nn.GRUCell`` (``"gru"``), stepped with :func:`step_cell`."""
    check_cell(cell, "make_cell")
    return (nn.LSTMCell if cell == "lstm" else nn.GRUCell)(input_size, hidden_size)


def make_rnn(cell: str, input_size: int, hidden_size: int) -> nn.RNNBase:
    """A batch-first one-layer ``nn.LSTM`` / ``nn.GRU`` run over whole sequences ``[batch, T, input]``."""
    check_cell(cell, "make_rnn")
    return (nn.LSTM if cell == "lstm" else nn.GRU)(input_size, hidden_size, batch_first=True)


def zero_rnn_state(cell: str, like: torch.Tensor, batch: int, n: int, hidden_size: int) -> dict:
    """``{"h": zeros, "c": zeros}`` (``"c"`` for LSTMs), leaves ``[batch, n, hidden]`` like ``like``."""
    h = like.new_zeros(batch, n, hidden_size)
    return {"h": h, "c": torch.zeros_like(h)} if cell == "lstm" else {"h": h}


def step_cell(cell: nn.RNNCellBase, inp: torch.Tensor, state: dict) -> dict:
    """One step of an ``nn.LSTMCell``/``nn.GRUCell`` for all particles: one cell call.

    Args:
        inp: ``[batch, K, input_size]``.
        state: ``{"h", "c"}`` (LSTM) or ``{"h"}`` (GRU), leaves ``[batch, K, hidden]``.
    """
    batch, k, _ = inp.shape
    flat = inp.reshape(batch * k, -1)  # [batch * K, input_size]
    h = state["h"].reshape(batch * k, -1)  # [batch * K, hidden]
    if "c" in state:
        h, c = cell(flat, (h, state["c"].reshape(batch * k, -1)))
        return {"h": h.reshape(batch, k, -1), "c": c.reshape(batch, k, -1)}
    return {"h": cell(flat, h).reshape(batch, k, -1)}


def step_rnn(rnn: nn.RNNBase, inp: torch.Tensor, state: dict) -> dict:
    """One time step of a whole-sequence ``nn.LSTM``/``nn.GRU`` for ``[batch, K, input]`` (generation)."""
    batch, k, _ = inp.shape
    flat = inp.reshape(batch * k, 1, -1)  # [batch * K, 1, input_size]
    h = state["h"].reshape(1, batch * k, -1)  # [1, batch * K, hidden]
    if "c" in state:
        _, (h, c) = rnn(flat, (h, state["c"].reshape(1, batch * k, -1)))
        return {"h": h.reshape(batch, k, -1), "c": c.reshape(batch, k, -1)}
    _, h = rnn(flat, h)
    return {"h": h.reshape(batch, k, -1)}


def final_rnn_state(rnn: nn.RNNBase, inp: torch.Tensor, lengths: torch.Tensor | None) -> dict:
    """The recurrent state after each sequence's last valid step: leaves ``[batch, hidden]``.

    Runs ``rnn`` over ``inp`` ``[batch, T, input]`` packed by ``lengths`` (one host copy of
    ``lengths``; used once per call by prefix-conditioned sampling, never in a training loop).
    """
    if lengths is None:
        _, hidden = rnn(inp)
    else:
        packed = nn.utils.rnn.pack_padded_sequence(inp, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = rnn(packed)
    if isinstance(hidden, tuple):
        return {"h": hidden[0].squeeze(0), "c": hidden[1].squeeze(0)}
    return {"h": hidden.squeeze(0)}


def causal_context(rnn: nn.RNNBase, xf: torch.Tensor, inputs: torch.Tensor | None) -> torch.Tensor:
    """``c_t = [h_{t-1}, u_t]`` for every step, with ``h_t = rnn(h_{t-1}, [xf_t, u_t])`` and ``h_{-1} = 0``.

    Args:
        xf: ``[batch, T, E]`` features of ``x_t``; inputs: ``[batch, T, d_in]`` or ``None``.

    Returns:
        ``[batch, T, hidden + d_in]``: what the model knows before seeing ``x_t`` (one RNN call).
    """
    rnn_in = xf if inputs is None else torch.cat([xf, inputs.to(xf.dtype)], dim=-1)
    out, _ = rnn(rnn_in)  # [batch, T, hidden]
    ctx = shift_right(out)
    return ctx if inputs is None else torch.cat([ctx, inputs.to(ctx.dtype)], dim=-1)


def context_after(rnn: nn.RNNBase, xf: torch.Tensor, inputs, lengths, n: int) -> dict:
    """The recurrent state of :func:`causal_context`'s RNN after each sequence's last step.

    Returns a dict of leaves ``[batch, n, hidden]`` (the same state for the ``n`` samples).
    """
    rnn_in = xf if inputs is None else torch.cat([xf, inputs.to(xf.dtype)], dim=-1)
    final = final_rnn_state(rnn, rnn_in, lengths)
    return {key: leaf.unsqueeze(1).expand(leaf.shape[0], n, leaf.shape[1]) for key, leaf in final.items()}


def shift_right(seq: torch.Tensor) -> torch.Tensor:
    """``[batch, T, ...]`` delayed by one step: zeros at ``t = 0``, ``seq[:, t - 1]`` at ``t``."""
    return torch.cat([torch.zeros_like(seq[:, :1]), seq[:, :-1]], dim=1)


def reverse_padded(seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence ``[batch, T, ...]`` within its own length; padding stays in place.

    Applying it twice is the identity. A causal RNN run over the result and reversed back is a
    backward RNN that starts at each sequence's own last step.
    """
    if lengths is None:
        return seq.flip(1)
    n_steps = seq.shape[1]
    steps = torch.arange(n_steps, device=seq.device)
    lengths = lengths.to(seq.device).unsqueeze(1)  # [batch, 1]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [batch, T]
    index = index.reshape(*index.shape, *([1] * (seq.dim() - 2))).expand_as(seq)
    return torch.gather(seq, 1, index)


def length_mask(lengths: torch.Tensor, n_steps: int, device: torch.device) -> torch.Tensor:
    """``[batch, T]`` bool, True where ``t < lengths[b]``."""
    return torch.arange(n_steps, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)


# ----------------------------------------------------------------------- observations
class Observation(nn.Module):
    """A family of observation distributions ``p(x_t | params)``.

    Subclasses set ``obs_shape`` (per-step shape of ``x_t``), ``param_size`` (the decoder's output
    size), ``feature_size`` (size of :meth:`features`) and ``dtype_kind`` (``"float"`` or ``"long"``),
    and implement :meth:`distribution`; :meth:`log_prob` and :meth:`sample` may be overridden by
    faster closed forms.
    """

    obs_shape: tuple[int, ...] = ()
    param_size: int = 0
    feature_size: int = 0
    dtype_kind: str = "float"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """A float feature vector of (centred) observations: ``[..., *obs_shape] -> [..., feature_size]``."""
        n = len(self.obs_shape)
        flat = x.flatten(start_dim=x.dim() - n) if n else x.unsqueeze(-1)
        return flat if flat.is_floating_point() else flat.float()

    def distribution(self, params: torch.Tensor) -> Distribution:
        """``p(x_t | params)``: batch shape ``params.shape[:-1]``, event shape ``obs_shape``."""
        raise NotImplementedError

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | params)`` summed over the event: ``[...]`` for params ``[..., param_size]``."""
        return self.distribution(params).log_prob(x)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        """Draw ``x`` ``[..., *obs_shape]`` (no gradient path)."""
        return self.distribution(params).sample()

    def init_bias(self, bias: torch.Tensor, mean: torch.Tensor) -> None:
        """Set the decoder's output ``bias`` ``[param_size]`` so the emission starts at ``mean``."""
        raise NotImplementedError(f"{type(self).__name__} does not support init_output_bias")

    def check_x(self, x: torch.Tensor, where: str) -> None:
        """Raise unless ``x`` is ``[batch, T, *obs_shape]`` of the family's dtype kind."""
        check_tensor("x", x, where)
        expected = ["batch", "T", *self.obs_shape]
        if x.dim() != len(expected) or tuple(x.shape[2:]) != tuple(self.obs_shape):
            raise ValueError(
                f"{where}: expected x of shape {shape_str(expected)}, got {shape_str(list(x.shape))}"
            )
        if self.dtype_kind == "long" and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
            raise TypeError(
                f"{where}: expected x to be an integer (long) tensor of symbols, got dtype {x.dtype}"
            )
        if self.dtype_kind == "float" and not x.is_floating_point():
            raise TypeError(f"{where}: expected x to be a floating-point tensor, got dtype {x.dtype}")


class BernoulliObservation(Observation):
    """Independent Bernoulli units (e.g. piano-roll frames): ``params`` are the ``obs_dim`` logits."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        check_positive_int("obs_dim", obs_dim, "BernoulliObservation")
        self.obs_dim = obs_dim
        self.obs_shape = (obs_dim,)
        self.param_size = obs_dim
        self.feature_size = obs_dim

    def distribution(self, params: torch.Tensor) -> Distribution:
        return Independent(Bernoulli(logits=params, validate_args=False), 1)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # log sigmoid(l) x + log sigmoid(-l) (1 - x) = x l - softplus(l)
        return (x * params - F.softplus(params)).sum(-1)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params))

    def init_bias(self, bias: torch.Tensor, mean: torch.Tensor) -> None:
        eps = 1e-5 if mean.dtype == torch.float64 else 1e-4
        bias.copy_(torch.logit(mean.clamp(eps, 1.0 - eps)))


class NormalObservation(Observation):
    """Independent Gaussians with a mean and a learned scale, both predicted by the decoder.

    ``params`` is ``[loc (obs_dim), raw scale (obs_dim)]``; the standard deviation is
    ``softplus(raw + 0.25) + min_scale``.
    """

    def __init__(self, obs_dim: int, min_scale: float = 1e-3) -> None:
        super().__init__()
        check_positive_int("obs_dim", obs_dim, "NormalObservation")
        if not min_scale > 0:
            raise ValueError(f"NormalObservation: expected min_scale > 0, got {min_scale}")
        self.obs_dim = obs_dim
        self.min_scale = min_scale
        self.obs_shape = (obs_dim,)
        self.param_size = 2 * obs_dim
        self.feature_size = obs_dim

    def _loc_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = params.split(self.obs_dim, dim=-1)
        return loc, F.softplus(raw + RAW_SCALE_BIAS) + self.min_scale

    def distribution(self, params: torch.Tensor) -> Distribution:
        loc, scale = self._loc_scale(params)
        return Independent(Normal(loc, scale, validate_args=False), 1)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loc, scale = self._loc_scale(params)
        return normal_log_prob(x, loc, scale)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        loc, scale = self._loc_scale(params)
        return draw_normal(loc, scale, reparametrize=False)

    def init_bias(self, bias: torch.Tensor, mean: torch.Tensor) -> None:
        bias[: self.obs_dim].copy_(mean)


class CategoricalObservation(Observation):
    """One symbol out of ``n_categories`` per step (characters): ``x`` is long ``[batch, T]``.

    ``params`` are the ``n_categories`` logits; features are a learned embedding of the symbol.

    Args:
        n_categories: vocabulary size V.
        embedding_size: size of the symbol embedding (default ``min(V, 64)``).
    """

    dtype_kind = "long"

    def __init__(self, n_categories: int, embedding_size: int | None = None) -> None:
        super().__init__()
        check_positive_int("n_categories", n_categories, "CategoricalObservation", minimum=2)
        self.n_categories = n_categories
        self.embedding_size = embedding_size
        size = min(n_categories, 64) if embedding_size is None else embedding_size
        check_positive_int("embedding_size", size, "CategoricalObservation")
        self.obs_shape = ()
        self.param_size = n_categories
        self.feature_size = size
        self.embedding = nn.Embedding(n_categories, size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)

    def distribution(self, params: torch.Tensor) -> Distribution:
        return Categorical(logits=params, validate_args=False)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(params, dim=-1)
        index = x.unsqueeze(-1).expand(*log_probs.shape[:-1], 1)
        return torch.gather(log_probs, -1, index).squeeze(-1)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        flat = params.reshape(-1, self.n_categories)
        return torch.multinomial(torch.softmax(flat, dim=-1), 1).reshape(params.shape[:-1])

    def init_bias(self, bias: torch.Tensor, mean: torch.Tensor) -> None:
        tiny = torch.finfo(mean.dtype).tiny
        bias.copy_(mean.clamp_min(tiny).log())


class CallableObservation(Observation):
    """A user's ``distribution_fn(params) -> torch Distribution`` as an observation family.

    The distribution must have batch shape ``params.shape[:-1]`` and event shape ``obs_shape``;
    features of ``x_t`` are its values flattened (as floats). Its ``param_size`` is whatever the
    user's decoder outputs, so a decoder must be given with it.
    """

    def __init__(
        self, distribution_fn: Callable[[torch.Tensor], Distribution], obs_shape: Sequence[int]
    ) -> None:
        super().__init__()
        if not callable(distribution_fn):
            raise TypeError(f"CallableObservation: expected a callable, got {type(distribution_fn).__name__}")
        self.distribution_fn = distribution_fn
        self.obs_shape = tuple(obs_shape)
        self.param_size = -1
        self.feature_size = math.prod(self.obs_shape)

    def distribution(self, params: torch.Tensor) -> Distribution:
        return self.distribution_fn(params)

    def check_x(self, x: torch.Tensor, where: str) -> None:
        check_tensor("x", x, where)
        expected = ["batch", "T", *self.obs_shape]
        if x.dim() != len(expected) or tuple(x.shape[2:]) != self.obs_shape:
            raise ValueError(
                f"{where}: expected x of shape {shape_str(expected)}, got {shape_str(list(x.shape))}"
            )


_FAMILIES = ("bernoulli", "normal", "categorical")


def make_observation(observation, obs_dim: int, embedding_size: int | None, where: str) -> Observation:
    """An :class:`Observation` from a name, an ``Observation``, or a callable ``params -> Distribution``."""
    if isinstance(observation, Observation):
        return observation
    if isinstance(observation, str):
        check_positive_int("obs_dim", obs_dim, where)
        if observation == "bernoulli":
            return BernoulliObservation(obs_dim)
        if observation == "normal":
            return NormalObservation(obs_dim)
        if observation == "categorical":
            return CategoricalObservation(obs_dim, embedding_size)
        raise ValueError(
            f"{where}: expected observation in {_FAMILIES}, an Observation or a callable params -> "
            f"Distribution, got {observation!r}"
        )
    if callable(observation):
        return CallableObservation(observation, (obs_dim,))
    raise TypeError(
        f"{where}: expected observation to be one of {_FAMILIES}, an Observation or a callable, "
        f"got {type(observation).__name__}"
    )


# ------------------------------------------------------------------------ the base model
class NeuralSequentialModel(SequentialModel):
    """Shared plumbing of the shipped neural sequence models.

    Holds the observation family (``self.observation``), the ``x_mean`` buffer, the encoder of
    ``x_t`` (``self.encoder``: float features ``[..., observation.feature_size]`` ->
    ``[..., encoded_size]``) and the decoder (``self.decoder``: ``[..., decoder_input_size]`` ->
    observation parameters ``[..., param_size]``), built by subclasses with :meth:`_build_io`.

    A subclass then only writes its recurrences and heads. To write a new model, subclass
    :class:`~bbvae.sequential.base.SequentialModel` (or this class) and implement ``encode``,
    ``init_state``, ``step`` (and ``generate_init`` / ``generate_step`` to sample); every loss in
    :mod:`bbvae.losses` and the SMC bounds then work through ``model.inf_net`` / ``model.gen_model``.
    """

    def _set_sizes(
        self,
        where: str,
        obs_dim: int,
        latent_size: int | None,
        hidden_size: int | None,
        fc_hidden_sizes: Sequence[int] | None,
        encoded_size: int | None,
        cell: str,
        input_size: int,
    ) -> int:
        """Check and store the sizes every neural model shares; return the feature size.

        Unset sizes default to ``latent_size`` (the FIVO convention), or to ``hidden_size`` for a
        model without latents (``latent_size=None``).
        """
        if latent_size is not None:
            check_positive_int("latent_size", latent_size, where)
        else:
            check_positive_int("hidden_size", hidden_size, where)
        check_positive_int("input_size", input_size, where, minimum=0)
        check_cell(cell, where)
        default = hidden_size if latent_size is None else latent_size
        self.obs_dim = obs_dim
        self.hidden_size = default if hidden_size is None else hidden_size
        check_positive_int("hidden_size", self.hidden_size, where)
        self.fc_hidden_sizes = (default,) if fc_hidden_sizes is None else tuple(fc_hidden_sizes)
        self.cell_type = cell
        self.input_size = input_size
        if latent_size is not None:
            self.latent_size = latent_size
            self.latent_shape = (latent_size,)
        return default if encoded_size is None else encoded_size

    def _build_io(
        self,
        obs_dim: int,
        observation,
        embedding_size: int | None,
        encoder: nn.Module | None,
        encoded_size: int,
        decoder: nn.Module | None,
        decoder_input_size: int,
        fc_hidden_sizes: Sequence[int],
        x_mean: torch.Tensor | None,
    ) -> None:
        where = type(self).__name__
        family = make_observation(observation, obs_dim, embedding_size, where)
        self.observation = family
        if family.param_size < 0 and decoder is None:
            raise ValueError(
                f"{where}: a custom observation callable needs a decoder that outputs its parameters "
                "(pass decoder=...)"
            )
        for name, module in (("encoder", encoder), ("decoder", decoder)):
            if module is not None and not callable(module):
                raise TypeError(
                    f"{where}: expected {name} to be an nn.Module or callable, got {type(module).__name__}"
                )
        check_positive_int("encoded_size", encoded_size, where)
        self.encoded_size = encoded_size
        self.decoder_input_size = decoder_input_size
        hidden = list(fc_hidden_sizes)
        self.encoder = (
            encoder if encoder is not None else mlp([family.feature_size, *hidden, encoded_size], nn.ReLU)
        )
        if decoder is None:
            decoder = mlp([decoder_input_size, *hidden, family.param_size], nn.ReLU)
        self.decoder = decoder
        if x_mean is not None:
            check_tensor("x_mean", x_mean, where)
            if family.dtype_kind != "float":
                raise ValueError(
                    f"{where}: x_mean centres real-valued observations; {type(family).__name__} has none"
                )
            if tuple(x_mean.shape) != tuple(family.obs_shape):
                raise ValueError(
                    f"{where}: expected x_mean of shape {shape_str(list(family.obs_shape))}, "
                    f"got {shape_str(list(x_mean.shape))}"
                )
            x_mean = x_mean.detach().clone()
        self.register_buffer("x_mean", x_mean)

    # ------------------------------------------------------------------------- helpers
    def x_features(self, x: torch.Tensor) -> torch.Tensor:
        """``encoder(features(x - x_mean))``: ``[..., *obs_shape] -> [..., encoded_size]`` (one call)."""
        if self.x_mean is not None:
            x = x - self.x_mean.to(x.dtype)
        feats = self.observation.features(x)
        param = next(iter(self.encoder.parameters()), None)
        if param is not None and feats.dtype != param.dtype:
            feats = feats.to(param.dtype)  # e.g. binary data stored as float32 scored by a float64 model
        return self.encoder(feats)

    def prepare(
        self, x: torch.Tensor, lengths: torch.Tensor | None, inputs: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check ``x``, ``lengths``, ``inputs`` and zero every entry past each sequence's length."""
        where = f"{type(self).__name__}.encode"
        self.observation.check_x(x, where)
        if self.observation.dtype_kind == "long" and x.dtype != torch.long:
            x = x.long()  # embedding and gather index with int64
        batch, n_steps = x.shape[:2]
        if self.input_size > 0:
            if inputs is None:
                raise ValueError(
                    f"{where}: the model was built with input_size={self.input_size}; pass inputs "
                    f"[batch, T, {self.input_size}]"
                )
            check_tensor("inputs", inputs, where)
            if tuple(inputs.shape) != (batch, n_steps, self.input_size):
                raise ValueError(
                    f"{where}: expected inputs of shape [{batch}, {n_steps}, {self.input_size}], "
                    f"got {shape_str(list(inputs.shape))}"
                )
        elif inputs is not None:
            raise ValueError(
                f"{where}: got side inputs {shape_str(list(inputs.shape))} but the model was built with "
                "input_size=0 (pass input_size=d_in to use them)"
            )
        if inputs is not None:
            inputs = inputs.to(self._dtype())
        if lengths is None:
            return x, inputs
        mask = length_mask(lengths, n_steps, x.device)  # [batch, T]
        x = torch.where(mask.reshape(batch, n_steps, *([1] * (x.dim() - 2))), x, torch.zeros_like(x))
        if inputs is not None:
            inputs = torch.where(mask.unsqueeze(-1), inputs, torch.zeros_like(inputs))
        return x, inputs

    def step_inputs(
        self, inputs_t: torch.Tensor | None, batch: int, n: int, where: str
    ) -> torch.Tensor | None:
        """Side inputs of one generation step as ``[batch, n, input_size]`` (or ``None``)."""
        if self.input_size == 0:
            if inputs_t is not None:
                raise ValueError(f"{where}: got side inputs but the model was built with input_size=0")
            return None
        if inputs_t is None:
            raise ValueError(f"{where}: the model was built with input_size={self.input_size}; pass inputs_t")
        if inputs_t.dim() == 2:
            inputs_t = inputs_t.unsqueeze(1)
        if inputs_t.dim() != 3 or inputs_t.shape[-1] != self.input_size or inputs_t.shape[0] != batch:
            raise ValueError(
                f"{where}: expected inputs_t of shape [{batch}, {n}, {self.input_size}] or "
                f"[{batch}, {self.input_size}], got {shape_str(list(inputs_t.shape))}"
            )
        return inputs_t.to(self._dtype()).expand(batch, n, self.input_size)

    def _dtype(self) -> torch.dtype:
        return next(iter(self.parameters())).dtype

    def generation_state(self, state, x: torch.Tensor, lengths=None, inputs=None):
        """The generation state that continues ``x`` from the filtering ``state`` after its last step.

        ``state`` is what :meth:`step` returned at each sequence's last valid step (leaves
        ``[batch, n, ...]``). Models whose filtering state is their generation state return it.
        """
        return state

    @torch.no_grad()
    def init_output_bias(self, mean: torch.Tensor) -> None:
        """Start the emission at ``mean``: for Bernoulli observations the output bias becomes
        ``logit(mean)`` (clamped away from 0 and 1), the FIVO reference initialisation.

        Args:
            mean: ``[*obs_shape]`` e.g. the training-set mean of piano-roll frames (Normal: the mean
                of x; Categorical: symbol frequencies ``[V]``).
        """
        where = f"{type(self).__name__}.init_output_bias"
        check_tensor("mean", mean, where)
        linear = None
        for module in self.decoder.modules():
            if isinstance(module, nn.Linear):
                linear = module
        if linear is None or linear.bias is None or linear.out_features != self.observation.param_size:
            raise TypeError(
                f"{where}: the decoder's last layer must be an nn.Linear with a bias and "
                f"{self.observation.param_size} outputs"
            )
        expected = (
            (self.observation.n_categories,) if isinstance(self.observation, CategoricalObservation) else None
        )
        expected = expected or tuple(self.observation.obs_shape)
        if tuple(mean.shape) != expected:
            raise ValueError(
                f"{where}: expected mean of shape {shape_str(list(expected))}, "
                f"got {shape_str(list(mean.shape))}"
            )
        self.observation.init_bias(linear.bias, mean.to(linear.bias))

    def _like(self, like: torch.Tensor) -> torch.Tensor:
        """A floating tensor on ``like``'s device to create states with (``like`` or a parameter)."""
        if like.is_floating_point():
            return like
        param = next(iter(self.parameters()))
        return param.new_empty((), device=like.device)
