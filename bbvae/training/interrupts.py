"""Ctrl-C (SIGINT) and SIGTERM during :meth:`Trainer.fit`: finish the step, save it, then stop.

While :meth:`~bbvae.training.Trainer.fit` trains, a first SIGINT or SIGTERM does not stop the
process in the middle of a step. :class:`SignalGuard` notes it (and says so in one line on
stderr); the training loop sees it before its next step, writes ``last.pt`` for the step reached
(atomically, as every checkpoint) and raises :class:`TrainingInterrupted`, whose message says
where the checkpoint is, so that ``fit(..., resume=True)`` (``bbvae train --resume``) continues
it exactly. A DataLoader's worker processes stopped by the same Ctrl-C make the next batch fail;
that failure is taken as the signal's and handled the same way.

A second signal stops at once, by raising :class:`TrainingInterrupted` wherever the program is;
if that is inside the checkpoint write, :func:`bbvae.checkpoint.save_checkpoint` removes its
temporary file and the previous ``last.pt`` stays as it was (the rename is the only step that
touches it, and it is atomic).

The guard is installed only where Python can handle signals (the main thread) and only over
the default handlers: a program that set its own SIGINT/SIGTERM handler, or ignores the signal
(a job started in the background by a shell), keeps that behaviour. Under torchrun
(``WORLD_SIZE > 1``) it is not installed, since the ranks would have to agree on the step at
which to stop.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["SignalGuard", "TrainingInterrupted"]

#: exit statuses of a process stopped by the signal, as a shell reports them (128 + number)
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by SIGINT (Ctrl-C) or SIGTERM.

    A ``KeyboardInterrupt``, so code that already handles Ctrl-C keeps working.

    Attributes:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        exit_status: the status a command line should exit with (130 or 143).
        step: the optimizer step the model and optimizer hold (None when stopped at once by a
            second signal).
        checkpoint_path: the ``last.pt`` written for ``step`` (None without a logdir, or when a
            second signal stopped the write: then an earlier ``last.pt``, if any, is intact).
    """

    def __init__(
        self, message: str, signum: int, step: int | None = None, checkpoint_path: Path | None = None
    ) -> None:
        super().__init__(message)
        self.signal_name = signal.Signals(signum).name
        self.exit_status = EXIT_STATUS.get(signum, 128 + int(signum))
        self.step = step
        self.checkpoint_path = checkpoint_path


class SignalGuard:
    """Context manager: defer the first SIGINT/SIGTERM to the training loop (see the module doc).

    Attributes:
        received: the number of the first signal received (None: none yet).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalGuard:
        self.received = None
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return self
        defaults = {signal.SIGINT: (signal.default_int_handler,), signal.SIGTERM: (signal.SIG_DFL,)}
        for signum in self.SIGNALS:
            current = signal.getsignal(signum)
            if current in defaults[signum]:
                self._previous[signum] = current
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            notice = f"\nbbvae: {name} received; finishing the step under way and saving it "
            notice += "(again: stop at once)\n"
            try:  # os.write, not print: the signal may have come in the middle of a print to stderr
                os.write(sys.stderr.fileno(), notice.encode())
            except (OSError, ValueError, AttributeError):  # stderr without a file descriptor
                pass
            return
        raise TrainingInterrupted(f"{name} received again: training stopped at once", signum)
