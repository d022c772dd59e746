"""Fault injection: training killed or stopped at any moment, then resumed, ends bit-exact.

A tiny VRNN trained with FIVO (resampling draws random numbers every step), with validation
(``best.pt`` writes) and epochs of three batches, runs in a child process that is

* killed with SIGKILL at random moments (checkpoints every step, so many kills land in writes),
* killed with SIGKILL while a ``last.pt`` write is half done,
* sent SIGINT or SIGTERM (the step reached must be saved and named),
* sent a second SIGINT while that save is half done (the previous ``last.pt`` must survive),

and then resumed; the final parameters, training losses and validation bounds must equal those
of an uninterrupted run exactly. The children (the Python API, and the ``bbvae train`` command
line) are forked from the test process, where torch is already imported, so each starts in
milliseconds rather than the seconds a fresh interpreter takes.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from bbvae.checkpoint import load_checkpoint
from bbvae.cli import main
from bbvae.data import SequenceDataset
from bbvae.data.batching import collate_sequences
from bbvae.losses import FIVO
from bbvae.sequential import VRNN
from bbvae.training import Callback, Trainer
from bbvae.training.interrupts import TrainingInterrupted

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and fork")
FORK = multiprocessing.get_context("fork") if sys.platform != "win32" else None
TIMEOUT = 60.0  # seconds any one wait may take on a loaded machine before the test fails
UNLIMITED = 10**6


def sequences(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(int(torch.randint(3, 7, (1,), generator=g)), 3, generator=g) for _ in range(n)]


TRAIN, VALID = sequences(10, 0), sequences(4, 1)  # batch 4: epochs of 3 batches
# The first optimizer a process builds imports torch._dynamo (seconds): do it once, before forking.
torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def trainer(logdir, max_steps: int, checkpoint_every: int = UNLIMITED, callbacks=()) -> Trainer:
    torch.manual_seed(0)
    model = VRNN(3, latent_size=2, hidden_size=4, observation="normal")
    loss = FIVO(model.inf_net, model.gen_model, n_particles=3)
    return Trainer(
        loss,
        learning_rate=0.05,
        batch_size=4,
        max_steps=max_steps,
        eval_every=5,
        log_every=1,
        checkpoint_every=checkpoint_every,
        logdir=logdir,
        seed=3,
        progress=False,
        callbacks=callbacks,
    )


def loader(num_workers: int) -> DataLoader:
    """TRAIN through a DataLoader (the trainer replays its batch order on resume)."""
    data = SequenceDataset(TRAIN)
    return DataLoader(data, batch_size=4, shuffle=True, num_workers=num_workers, collate_fn=collate_sequences)


def finish(logdir: Path, max_steps: int, train=TRAIN) -> Trainer:
    """Resume ``logdir`` in this process up to ``max_steps``."""
    return trainer(logdir, max_steps).fit(train, VALID, resume="auto")


@functools.cache
def uninterrupted(max_steps: int, through_loader: bool) -> tuple[dict, list, list]:
    """The reference run (computed once per length: several tests share it)."""
    full = trainer(None, max_steps).fit(loader(0) if through_loader else TRAIN, VALID)
    return full.loss.state_dict(), full.loss_history_, full.valid_history_


def assert_same_run(resumed: Trainer, max_steps: int, through_loader: bool = False) -> None:
    state, losses, valid = uninterrupted(max_steps, through_loader)
    assert resumed.n_iter_ == max_steps
    for name, value in state.items():
        assert torch.equal(resumed.loss.state_dict()[name], value), name
    assert resumed.loss_history_ == losses
    assert resumed.valid_history_ == valid


def temporaries(logdir: Path) -> list[str]:
    return sorted(p.name for p in logdir.glob(".*.tmp"))


# ----------------------------------------------------------------------------- the child
def child(conn, logdir, max_steps, checkpoint_every, pause_at=None, stall_at=None, data=None) -> None:
    """Train in a forked process, reporting to ``conn``; optionally pause or stall a write.

    ``data="workers"``: the training data come through a DataLoader with a worker process, and
    the process leads its own group (a terminal's Ctrl-C reaches the workers too);
    ``data="failing"``: the data fail once the pause is over, as a DataLoader does whose workers
    the same Ctrl-C stopped.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    workers_dead = []
    train = TRAIN
    if data == "workers":
        os.setpgrp()
        train = loader(num_workers=1)
    elif data == "failing":

        class Failing(SequenceDataset):
            def __getitem__(self, i):
                if workers_dead:
                    raise RuntimeError("DataLoader worker (pid 1234) exited unexpectedly")
                return super().__getitem__(i)

        train = Failing(TRAIN)
    if stall_at is not None:  # the checkpoint of step stall_at is written half, then hangs
        real_save = torch.save

        def stalling_save(obj, handle, *args, **kwargs):
            if not (isinstance(obj, dict) and obj.get("step") == stall_at):
                return real_save(obj, handle, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            handle.write(buffer.getvalue()[: buffer.tell() // 2])
            handle.flush()
            conn.send(("saving", stall_at))
            time.sleep(TIMEOUT)
            raise AssertionError("the stalled write was not interrupted")

        torch.save = stalling_save

    class Report(Callback):
        def on_step_end(self, trainer, step):
            conn.send(("step", step))
            if step == pause_at:
                conn.send(("paused", step))
                conn.recv()  # the parent signals us, then says go
                workers_dead.append(True)

    try:
        resume = "auto" if logdir is not None else False
        done = trainer(logdir, max_steps, checkpoint_every, [Report()]).fit(train, VALID, resume=resume)
    except TrainingInterrupted as exc:
        path = None if exc.checkpoint_path is None else str(exc.checkpoint_path)
        conn.send(("interrupted", exc.step, path, str(exc)))
        sys.exit(exc.exit_status)
    conn.send(("done", done.n_iter_))


def start(logdir: Path, max_steps: int, checkpoint_every: int, **kwargs):
    parent, there = FORK.Pipe()
    process = FORK.Process(target=child, args=(there, logdir, max_steps, checkpoint_every), kwargs=kwargs)
    process.start()
    there.close()
    return process, parent


def expect(conn, kind: str) -> tuple:
    """The next message of ``kind`` from the child (earlier ones are skipped)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if conn.poll(0.05):
            message = conn.recv()
            if message[0] == kind:
                return message
    raise AssertionError(f"no {kind!r} message from the child within {TIMEOUT} s")


def kill(process) -> int:
    os.kill(process.pid, signal.SIGKILL)
    return wait(process)


def wait(process) -> int:
    process.join(TIMEOUT)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        raise AssertionError(f"the child did not exit within {TIMEOUT} s")
    return process.exitcode


# ----------------------------------------------------------------------------- SIGKILL
def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path):
    rng = random.Random(15)
    kills = []
    for _ in range(4):
        process, conn = start(tmp_path, UNLIMITED, checkpoint_every=1)
        expect(conn, "step")
        time.sleep(rng.uniform(0.0, 0.3))
        assert kill(process) == -signal.SIGKILL
        saved = load_checkpoint(tmp_path / "last.pt")  # never a torn last.pt
        kills.append((saved["step"], temporaries(tmp_path)))
    steps = [step for step, _ in kills]
    assert steps == sorted(steps) and steps[-1] >= 1, kills
    resumed = finish(tmp_path, steps[-1] + 4)
    assert temporaries(tmp_path) == []  # the stale ones are removed at the start of fit
    assert_same_run(resumed, steps[-1] + 4)


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    process, conn = start(tmp_path, 12, checkpoint_every=4, stall_at=8)
    expect(conn, "saving")
    assert kill(process) == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    assert len(temporaries(tmp_path)) == 1  # the half-written file
    resumed = finish(tmp_path, 12)
    assert temporaries(tmp_path) == []
    assert_same_run(resumed, 12)


# ----------------------------------------------------------------------------- SIGINT, SIGTERM
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_step_reached_and_says_where(signum, tmp_path):
    process, conn = start(tmp_path, 12, checkpoint_every=UNLIMITED, pause_at=7)
    expect(conn, "paused")
    os.kill(process.pid, signum)
    conn.send("go")
    _, step, path, message = expect(conn, "interrupted")
    assert wait(process) == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    assert step == 7 and path == str(tmp_path / "last.pt")
    assert f"{signal.Signals(signum).name} received at step 7; saved step 7 in {path!r}" in message
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 7
    assert_same_run(finish(tmp_path, 12), 12)


def test_a_second_sigint_during_that_save_keeps_the_previous_checkpoint(tmp_path):
    process, conn = start(tmp_path, 12, checkpoint_every=4, pause_at=6, stall_at=6)
    expect(conn, "paused")
    os.kill(process.pid, signal.SIGINT)
    conn.send("go")
    expect(conn, "saving")  # the save of step 6 is half written
    os.kill(process.pid, signal.SIGINT)
    _, step, path, message = expect(conn, "interrupted")
    assert wait(process) == 130
    assert step is None and path is None
    assert "SIGINT received twice" in message and "the last checkpoint, of step 4, is intact" in message
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    assert temporaries(tmp_path) == []  # the interrupted write removed its own file
    assert_same_run(finish(tmp_path, 12), 12)


def test_ctrl_c_with_dataloader_workers_saves_the_step_reached(tmp_path):
    # The signal goes to the whole process group, as a terminal's Ctrl-C does.
    process, conn = start(tmp_path, 6, checkpoint_every=UNLIMITED, pause_at=4, data="workers")
    expect(conn, "paused")
    os.killpg(process.pid, signal.SIGINT)
    conn.send("go")
    _, step, path, _ = expect(conn, "interrupted")
    assert wait(process) == 130
    assert step == 4 and load_checkpoint(tmp_path / "last.pt")["step"] == 4
    assert_same_run(finish(tmp_path, 6, loader(num_workers=0)), 6, through_loader=True)


def test_data_that_fail_after_the_signal_still_get_the_step_saved(tmp_path):
    # Workers started in another way die of the Ctrl-C, and the next batch fails for want of them.
    process, conn = start(tmp_path, 12, checkpoint_every=UNLIMITED, pause_at=7, data="failing")
    expect(conn, "paused")
    os.kill(process.pid, signal.SIGINT)
    conn.send("go")
    _, step, path, message = expect(conn, "interrupted")
    assert wait(process) == 130
    assert step == 7 and path == str(tmp_path / "last.pt") and "SIGINT received at step 7" in message
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 7


def test_a_run_without_logdir_stops_cleanly_and_says_nothing_was_written(tmp_path):
    process, conn = start(None, 12, checkpoint_every=UNLIMITED, pause_at=3)
    expect(conn, "paused")
    os.kill(process.pid, signal.SIGINT)
    conn.send("go")
    _, step, path, message = expect(conn, "interrupted")
    assert wait(process) == 130
    assert step == 3 and path is None and "nothing was written (logdir=None)" in message


# ----------------------------------------------------------------------------- the command line
CLI = ["--dataset-type", "synthetic", "--model", "vrnn", "--latent-size", "2", "--hidden-size", "4"]
CLI += ["--max-length", "6", "--num-samples", "3", "--learning-rate", "0.01", "--seed", "0", "--threads", "1"]


def cli_child(argv: list[str], out: Path, err: Path) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(out, "w", buffering=1) as sys.stdout, open(err, "w", buffering=1) as sys.stderr:
        status = main(argv)
    sys.exit(status)


def test_ctrl_c_on_the_command_line_saves_and_resume_continues_exactly(tmp_path, capsys):
    logdir, out, err = tmp_path / "run", tmp_path / "out.txt", tmp_path / "err.txt"
    argv = ["train", "--logdir", str(logdir), *CLI, "--log-every", "1"]
    process = FORK.Process(target=cli_child, args=(argv, out, err))
    process.start()
    deadline = time.monotonic() + TIMEOUT
    while "step       3" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline and process.is_alive(), err.read_text()
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGINT)
    assert wait(process) == 130
    step = load_checkpoint(logdir / "last.pt")["step"]
    assert step >= 3
    assert err.read_text() == (
        "\nbbvae: SIGINT received; finishing the step under way and saving it (again: stop at once)\n"
        f"bbvae: error: interrupted by SIGINT at step {step}; saved it in {logdir / 'last.pt'} "
        f"(continue with: bbvae train --logdir {logdir} --resume)\n"
    )
    assert main(["train", "--logdir", str(logdir), "--resume", "--max-steps", str(step + 2)]) == 0
    reference = tmp_path / "reference"
    assert main(["train", "--logdir", str(reference), *CLI, "--max-steps", str(step + 2)]) == 0
    capsys.readouterr()
    resumed = load_checkpoint(logdir / "last.pt")["model_state"]
    for name, value in load_checkpoint(reference / "last.pt")["model_state"].items():
        assert torch.equal(resumed[name], value), name
