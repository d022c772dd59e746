"""Train a VRNN with FIVO on JSB chorales and report test bounds next to the FIVO paper's.

The setup follows the FIVO reference code (tensorflow/models, research/fivo; see
``../shared/REFERENCES.md``):

* targets are the binary 88-key frames; the model's own inputs (``x_{t-1}``) are centred by the
  training-set mean (``VRNN(x_mean=train_mean)``), and the Bernoulli output bias starts at
  ``logit(train_mean)`` (``model.init_output_bias``);
* VRNN with latent, LSTM and fully-connected sizes 64, batch 4, 4 particles, Adam;
* the training loss is the batch mean of ``bound / length`` (``FIVO(normalize="length")``; the
  ELBO and IWAE get the same normalisation from :class:`bbvae.losses.PerStep`);
* evaluation: each bound summed over the test split divided by its number of time steps (nats per
  step), with 4 particles, by :func:`bbvae.sequential.evaluate`.

The paper's numbers come from models trained to convergence (days of training); the defaults here
run 300 steps (about a minute on 2 CPU cores), enough to see all three bounds move up from the
untrained model's values. A longer run: ``--minutes 60`` (or ``--steps 20000``).

Run::

    python examples/pianoroll_fivo.py                       # 300 steps, prints the table
    python examples/pianoroll_fivo.py --minutes 30
    python examples/pianoroll_fivo.py --bound iwae --steps 500
    python examples/pianoroll_fivo.py --dataset-path ../shared/data/pianoroll/nottingham.pkl
    python examples/pianoroll_fivo.py --sample-midi sample.mid  # also write a sampled piece
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bbvae.data import PianoRollData
from bbvae.losses import ELBO, FIVO, IWAE, Loss, PerStep
from bbvae.sequential import VRNN, evaluate
from bbvae.sequential.sampling import sample_sequences
from bbvae.training import Callback, Trainer

BOUNDS = ("elbo", "iwae", "fivo")
#: FIVO paper (Maddison et al. 2017), Table 1: VRNN on JSB chorales, 4 particles, test nats/step.
PAPER = {"elbo": -8.60, "iwae": -7.86, "fivo": -6.90}
#: The FIVO reference README: the untrained model on the JSB test split, nats per step.
REFERENCE_UNTRAINED = {"elbo": -12.20, "iwae": -11.98, "fivo": -11.58}
#: Split sizes (sequences) and training steps that identify JSB chorales.
JSB_SIGNATURE = ((229, 76, 77), 13_807)


class TimeBudget(Callback):
    """Stop training once ``seconds`` of wall-clock time have passed since the first step."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = None

    def on_fit_start(self, trainer) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, trainer, step: int) -> None:
        if self.seconds is not None and time.perf_counter() - self.start >= self.seconds:
            trainer.stop_training = True


def make_loss(bound: str, model: VRNN, n_particles: int) -> Loss:
    """The training loss for ``bound``, normalised per time step as the FIVO reference does."""
    q, p = model.inf_net, model.gen_model
    if bound == "fivo":
        return FIVO(q, p, n_particles=n_particles, normalize="length")
    if bound == "iwae":
        return PerStep(IWAE(q, p, n_samples=n_particles))
    return PerStep(ELBO(q, p, n_samples=n_particles))


def is_jsb(data: PianoRollData) -> bool:
    sizes = tuple(len(data.split(s)) for s in ("train", "valid", "test"))
    return (sizes, data.num_steps("train")) == JSB_SIGNATURE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset-path", default=None, help="piano-roll pickle (default: the embedded JSB chorales)"
    )
    p.add_argument("--bound", choices=BOUNDS, default="fivo", help="training objective (default fivo)")
    p.add_argument("--latent-size", type=int, default=64, help="z_t, LSTM and MLP size (FIVO: 64)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per step (FIVO: 4)")
    p.add_argument("--num-particles", type=int, default=4, help="particles / samples K (FIVO: 4)")
    p.add_argument("--learning-rate", type=float, default=3e-4, help="Adam (reference default 2e-4)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall-clock budget")
    p.add_argument("--eval-particles", type=int, default=4, help="K of the test bounds (paper: 4)")
    p.add_argument("--eval-split", choices=("train", "valid", "test"), default="test")
    p.add_argument("--eval-sequences", type=int, default=None, help="score only the first N sequences")
    p.add_argument("--eval-every", type=int, default=None, help="validation FIVO bound every N steps")
    p.add_argument("--sample-midi", default=None, help="write one sampled piece as MIDI (needs mido)")
    p.add_argument("--sample-length", type=int, default=64, help="steps of the sampled piece")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: the tensors are small)"
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p


def score(model, batch, args, device) -> dict[str, float]:
    """ELBO, IWAE and FIVO of ``batch`` in nats per time step (seeded, so runs are comparable)."""
    torch.manual_seed(args.seed + 1)
    report = evaluate(
        model,
        batch.x.to(device),
        batch.lengths.to(device),
        bounds=BOUNDS,
        n_samples=args.eval_particles,
    )
    return {b: report[b]["per_step"] for b in BOUNDS}


def print_table(before, after, steps, jsb, n_seqs, n_steps, args) -> None:
    print(
        f"\n{args.eval_split} log-likelihood bounds, nats per time step ({n_seqs} sequences, "
        f"{n_steps:,} steps, K = {args.eval_particles}); trained with {args.bound.upper()}"
    )
    head = f"{'bound':<6} {'untrained':>10} {'after ' + str(steps) + ' steps':>18}"
    if jsb:
        head += f" {'ref. untrained':>15} {'FIVO paper':>11}"
    print(head)
    for b in BOUNDS:
        row = f"{b.upper():<6} {before[b]:>10.3f} {after[b]:>18.3f}"
        if jsb:
            row += f" {REFERENCE_UNTRAINED[b]:>15.2f} {PAPER[b]:>11.2f}"
        print(row)
    if jsb:
        print(
            "ref. untrained: the FIVO reference README's untrained model (JSB test); FIVO paper: "
            "Maddison et al. 2017, Table 1,\nVRNN trained to convergence with each bound and "
            "evaluated with it (4 particles)."
        )


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    data = PianoRollData.load(args.dataset_path)
    print(data)
    mean = torch.as_tensor(data.train_mean, dtype=torch.float32)
    model = VRNN(88, latent_size=args.latent_size, x_mean=mean)  # inputs centred by the train mean
    model.init_output_bias(mean)  # Bernoulli bias = logit(train mean)
    model.to(device)
    loss = make_loss(args.bound, model, args.num_particles)

    evaluation = data.full_batch(args.eval_split)
    if args.eval_sequences is not None:
        n = args.eval_sequences
        t_max = int(evaluation.lengths[:n].max())
        evaluation = type(evaluation)(evaluation.x[:n, :t_max], evaluation.lengths[:n], None)
    n_seqs, n_steps = evaluation.x.shape[0], int(evaluation.lengths.sum())
    jsb = is_jsb(data) and args.eval_split == "test" and n_seqs == len(data.test)
    before = score(model, evaluation, args, device)

    budget = TimeBudget(None if args.minutes is None else 60.0 * args.minutes)
    trainer = Trainer(
        loss,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_steps=args.steps if args.minutes is None else 10**9,
        log_every=max(1, min(50, args.steps)),
        eval_every=args.eval_every,
        seed=args.seed,
        progress=args.progress,
        callbacks=[budget],
    )
    valid = data.dataset("valid", inputs=False) if args.eval_every is not None else None
    t0 = time.perf_counter()
    trainer.fit(data.dataset("train", inputs=False), valid)
    seconds = time.perf_counter() - t0
    steps = trainer.n_iter_
    history = trainer.loss_history_
    last = -float(np.mean(history[-min(len(history), 20) :]))
    print(
        f"trained {steps} steps ({trainer.n_epochs_} full epochs) in {seconds:.1f} s "
        f"({steps / seconds:.2f} steps/s); training {args.bound.upper()} bound, mean of the last "
        f"{min(len(history), 20)} steps: {last:.3f} nats/step"
    )
    if trainer.valid_history_:
        print("validation bounds (nats/step):", [round(v, 3) for v in trainer.valid_history_])

    after = score(model, evaluation, args, device)
    print_table(before, after, steps, jsb, n_seqs, n_steps, args)

    result = {"steps": steps, "seconds": seconds, "before": before, "after": after, "train_bound": last}
    if args.sample_midi is not None:
        result["sample"] = write_sample(model, data, args)
    return result


def write_sample(model: VRNN, data: PianoRollData, args) -> dict:
    """Draw one piece from the trained model, write it as MIDI and compare its note density."""
    from bbvae.data import pianoroll_to_midi

    model.eval()
    with torch.no_grad():
        x, _ = sample_sequences(model, 1, length=args.sample_length)  # [1, T, 88]
    roll = x[0].cpu()
    path = pianoroll_to_midi(roll, args.sample_midi, step_seconds=0.5)  # a quarter note at 120 bpm
    notes = float(roll.sum(dim=1).mean())
    data_notes = float(np.mean([a.sum(axis=1).mean() for a in data.train]))
    print(
        f"wrote {path}: {args.sample_length} steps, {notes:.2f} notes per step "
        f"(training data: {data_notes:.2f})"
    )
    return {"path": str(path), "notes_per_step": notes, "data_notes_per_step": data_notes}


if __name__ == "__main__":
    main()
