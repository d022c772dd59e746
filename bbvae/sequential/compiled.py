"""The opt-in compiled step of a sequence model (:meth:`~bbvae.sequential.base.SequentialModel.compile_step`).

:func:`model_step` is what the drivers (``run_particles``, ``smc``) call at every time step:
``model.step``, or a :class:`CompiledStep` wrapping ``torch.compile(model.step)`` that falls back
to the eager step, with a ``RuntimeWarning``, when compilation fails.

* One graph per model: the step never sees ``T``, so sequences of any length reuse it; a new batch
  size or particle count compiles once more (then as a dynamic shape).
* The compiled step draws its random numbers from inductor's own stream, so for the same seed its
  draws differ from the eager step's; for given draws (e.g. teacher-forced ``z``) values and
  gradients agree up to float rounding.
* It pays off where the step is many small ops: few particles and short batches on the CPU
  (see ``benchmarks/README.md``). The first calls compile (tens of seconds on a CPU).
* It is not kept by pickling or ``copy.deepcopy`` (call ``compile_step()`` again on the copy).
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["CompiledStep", "model_step"]


class CompiledStep:
    """``torch.compile(model.step)``, falling back to the eager step (with a warning) if it fails."""

    def __init__(self, model, options: dict) -> None:
        self.step = model.step
        self.options = options
        self.compiled = None
        self.failed = False
        try:
            self.compiled = torch.compile(model.step, **options)
        except Exception as err:  # e.g. torch.compile unsupported on this Python / platform
            self._fail(err)

    def _fail(self, err: Exception) -> None:
        self.failed = True
        warnings.warn(
            f"compile_step: torch.compile of {type(self.step.__self__).__name__}.step failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); running the eager step",
            RuntimeWarning,
            stacklevel=4,
        )

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.step(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:
            # The eager step tells a compiler failure from an error of the step itself: if it
            # fails too, that error is the user's, raised as is, and compilation stays on.
            out = self.step(*args, **kwargs)
            self._fail(err)
            return out


def model_step(model):
    """What the drivers call each time step: ``model.step``, or its compiled version (see
    :meth:`~bbvae.sequential.base.SequentialModel.compile_step`)."""
    compiled = model.__dict__.get("_compiled_step")
    return compiled if compiled is not None else model.step
