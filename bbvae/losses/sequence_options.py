"""The options of the losses over sequence models: ``compile``, ``remat_chunk``, ``tbptt_chunk``.

``FIVO``, ``ELBO`` and ``IWAE`` take them as keywords; they act on the sequence model behind the
loss's views (``model.inf_net`` / ``model.gen_model``):

* ``compile``: ``True`` (or a dict of ``torch.compile`` keywords) calls the model's
  :meth:`~bbvae.sequential.SequentialModel.compile_step` at the loss's first call, unless its step
  is compiled already (then it is left as it is). It stays compiled for every loss and driver; a
  compiler that fails warns and runs the eager step (:mod:`bbvae.sequential.compiled`).
* ``remat_chunk`` / ``tbptt_chunk``: activation checkpointing and truncated backpropagation over
  chunks of time steps (:mod:`bbvae.sequential.chunks`) during the loss's own calls; ``None``
  leaves the model's setting (``model.remat_chunk`` / ``model.tbptt_chunk``).

Losses without these keywords (VIMCO, NVIL, RWS, ...) use the model's attributes, which
:class:`~bbvae.training.Trainer` and :class:`~bbvae.sequential.SequenceModel` can set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bbvae.sequential.chunks import CHUNK_OPTIONS, check_chunk
from bbvae.sequential.views import SequentialInfNet

__all__ = [
    "check_compile",
    "check_sequence_options",
    "compile_options",
    "ensure_compiled",
    "sequence_options",
]


def check_compile(compile, where: str) -> None:
    """``compile`` must be a bool or a dict of ``torch.compile`` keywords."""
    if isinstance(compile, bool):
        return
    if not isinstance(compile, dict) or not all(isinstance(key, str) for key in compile):
        raise TypeError(
            f"{where}: expected compile to be a bool or a dict of torch.compile keywords, "
            f"got {type(compile).__name__} {compile!r}"
        )


def compile_options(compile) -> dict | None:
    """The keywords of ``compile_step`` (``None``: do not compile)."""
    if compile is False:
        return None
    return {} if compile is True else dict(compile)


def ensure_compiled(model, compile) -> None:
    """``model.compile_step(**options)`` unless ``compile`` is False or the step is compiled already."""
    options = compile_options(compile)
    if options is not None and "_compiled_step" not in model.__dict__:
        model.compile_step(**options)


def check_sequence_options(where: str, inf_net, compile, remat_chunk, tbptt_chunk) -> None:
    """Check the three options; they need ``inf_net`` to be a sequence model's view when set."""
    check_compile(compile, where)
    for name, value in zip(CHUNK_OPTIONS, (remat_chunk, tbptt_chunk)):
        check_chunk(name, value, where)
    given = [
        f"{name}={value!r}"
        for name, value in (("compile", compile), ("remat_chunk", remat_chunk), ("tbptt_chunk", tbptt_chunk))
        if value not in (None, False)
    ]
    if given and not isinstance(inf_net, SequentialInfNet):
        raise ValueError(
            f"{where}: {', '.join(given)} applies to sequence models; expected inf_net to be the "
            f"view model.inf_net of a SequentialModel, got {type(inf_net).__name__}"
        )


@contextlib.contextmanager
def sequence_options(loss) -> Iterator[None]:
    """Within the block the model behind ``loss.inf_net`` runs with the loss's options.

    (The chunk sizes are the model's attributes for the block; a checkpointed chunk recomputed in
    the backward, after the block, keeps the sizes it was run with.)
    """
    inf_net = loss.inf_net
    if not isinstance(inf_net, SequentialInfNet):
        yield
        return
    model = inf_net.model
    ensure_compiled(model, loss.compile)
    override = {name: getattr(loss, name) for name in CHUNK_OPTIONS if getattr(loss, name) is not None}
    missing = object()
    previous = {name: model.__dict__.get(name, missing) for name in override}
    model.__dict__.update(override)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is missing:
                model.__dict__.pop(name, None)
            else:
                model.__dict__[name] = value
