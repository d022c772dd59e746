"""Length bucketing on the piano-roll data sets: padding wasted and training throughput.

For each data set's training split and batch size 4 (the FIVO reference's), this measures

* the padding fraction of an epoch (padded time steps over all time steps of the padded batches),
  averaged over ``--epochs`` epochs, for random batches (``RandomBatchSampler``, the trainer's
  default) and for length bucketing (``BucketBatchSampler``) with pools of 10 and 50 batches and
  with one pool (the whole split sorted once);
* the training throughput of a VRNN + FIVO step on the first ``--timed-batches`` batches of an
  epoch, random and bucketed (pool 50): optimizer steps per CPU second and valid (non-padded) time
  steps per CPU second, timed with ``time.process_time`` on one thread so that other processes on
  the machine change it little.

    python benchmarks/bench_bucketing.py --out benchmarks/results/bucketing.json

Results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bbvae.data import (
    BucketBatchSampler,
    PianoRollData,
    RandomBatchSampler,
    collate_sequences,
    padding_fraction,
)
from bbvae.losses import FIVO
from bbvae.sequential import VRNN

DATA_SETS = ("nottingham", "musedata", "piano_midi", "jsb_chorales")
DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pianoroll"


def samplers(lengths, batch_size, seed):
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731 (one fresh generator per sampler)
    return {
        "random": RandomBatchSampler(len(lengths), batch_size, generator=gen()),
        "bucket pool 10": BucketBatchSampler(lengths, batch_size, pool=10, generator=gen()),
        "bucket pool 50": BucketBatchSampler(lengths, batch_size, pool=50, generator=gen()),
        "bucket, one pool": BucketBatchSampler(lengths, batch_size, pool=None, generator=gen()),
    }


def padding(lengths, batch_size, epochs):
    out = {}
    for epoch in range(epochs):
        for name, sampler in samplers(lengths, batch_size, seed=epoch).items():
            out.setdefault(name, []).append(padding_fraction(lengths, list(sampler)))
    return {name: sum(values) / len(values) for name, values in out.items()}


def throughput(dataset, sampler, n_batches, latent, particles):
    torch.manual_seed(0)
    model = VRNN(88, latent_size=latent)
    loss = FIVO(model.inf_net, model.gen_model, n_particles=particles, normalize="length")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = [collate_sequences([dataset[i] for i in idx]) for idx in list(sampler)[: n_batches + 1]]

    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss(batch.x, lengths=batch.lengths).backward()
        opt.step()

    step(batches[0])  # warm-up
    cpu = time.process_time()
    for batch in batches[1:]:
        step(batch)
    seconds = time.process_time() - cpu
    valid = sum(int(b.lengths.sum()) for b in batches[1:])
    padded = sum(b.x.shape[0] * b.x.shape[1] for b in batches[1:])
    return {
        "cpu_seconds": round(seconds, 2),
        "steps_per_cpu_s": round(n_batches / seconds, 3),
        "valid_time_steps_per_cpu_s": round(valid / seconds, 1),
        "padded_time_steps_per_cpu_s": round(padded / seconds, 1),
        "padding_fraction": round(1 - valid / padded, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--data-sets", nargs="+", default=list(DATA_SETS))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5, help="epochs averaged for the padding fraction")
    parser.add_argument("--timed-batches", type=int, default=8)
    parser.add_argument("--latent-size", type=int, default=32)
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"batch_size": args.batch_size, "torch": torch.__version__, "data_sets": {}}
    for name in args.data_sets:
        data = PianoRollData.load(args.data_dir / f"{name}.pkl")
        train = data.dataset("train", inputs=False)
        lengths = train.lengths
        entry = {
            "sequences": len(lengths),
            "mean_length": round(sum(lengths) / len(lengths), 1),
            "padding_fraction": {
                k: round(v, 4) for k, v in padding(lengths, args.batch_size, args.epochs).items()
            },
        }
        timed = {}
        for label, sampler in samplers(lengths, args.batch_size, seed=0).items():
            if label in ("random", "bucket pool 50"):
                timed[label] = throughput(
                    train, sampler, args.timed_batches, args.latent_size, args.particles
                )
        speedup = (
            timed["bucket pool 50"]["valid_time_steps_per_cpu_s"]
            / timed["random"]["valid_time_steps_per_cpu_s"]
        )
        entry["throughput"] = timed
        entry["valid_steps_speedup"] = round(speedup, 2)
        results["data_sets"][name] = entry
        print(json.dumps({name: entry}, indent=1), flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    assert all(math.isfinite(e["valid_steps_speedup"]) for e in results["data_sets"].values())


if __name__ == "__main__":
    main()
