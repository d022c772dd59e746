"""Time and peak memory of one VRNN training step: ELBO, IWAE, FIVO and a plain-PyTorch baseline.

Each configuration runs in a fresh subprocess, so its peak memory is its own: on CPU the peak
resident set size above what the process held before the first step; on CUDA
``torch.cuda.max_memory_allocated``. Data: random 88-dimensional binary sequences (piano-roll
shaped). One step = forward, backward and an Adam update; the time is the median of ``--repeats``
steps after one warm-up step.

    python benchmarks/bench_sequential.py                 # full table (~10 min on 2 CPU cores)
    python benchmarks/bench_sequential.py --quick         # a subset
    python benchmarks/bench_sequential.py --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_one(cfg: dict) -> dict:
    import resource

    import torch

    sys.path.insert(0, str(HERE))
    from plain_vrnn import PlainVRNN

    from bbvae.losses import ELBO, FIVO, IWAE
    from bbvae.sequential import VRNN

    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    batch, length, k = cfg["batch"], cfg["length"], cfg["k"]
    x = (torch.rand(batch, length, 88, device=device) < 0.1).float()
    lengths = torch.full((batch,), length, dtype=torch.long, device=device)
    if cfg["loss"] == "plain":
        module = PlainVRNN().to(device)

        def compute():
            return module(x, lengths, k)

        params = module.parameters()
    else:
        model = VRNN(88, latent_size=64).to(device)
        if cfg["loss"] == "fivo":
            loss = FIVO(model.inf_net, model.gen_model, n_particles=k)
        else:
            loss = {"elbo": ELBO, "iwae": IWAE}[cfg["loss"]](model.inf_net, model.gen_model, n_samples=k)

        def compute():
            return loss(x, lengths=lengths)

        params = loss.parameters()
    opt = torch.optim.Adam(params, lr=1e-4)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=True)
        compute().backward()
        opt.step()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    sync()
    times = []
    for _ in range(cfg["repeats"]):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {**cfg, "seconds": statistics.median(times), "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    losses = ["elbo", "iwae", "fivo", "plain"]
    ks, batches, lengths = [4, 16], [4, 16], [64, 256]
    if args.quick:
        ks, batches, lengths = [4], [4], [64, 256]
    configs = [
        {"loss": loss, "k": k, "batch": b, "length": t}
        for loss, k, b, t in itertools.product(losses, ks, batches, lengths)
    ]
    configs += [{"loss": "iwae", "k": 1, "batch": b, "length": t} for b in batches for t in lengths]
    print(f"| loss | K | batch | T | ms / step | peak MB | device: {args.device} |")
    print("|---|---|---|---|---|---|---|")
    for cfg in configs:
        cfg.update(device=args.device, repeats=args.repeats, threads=args.threads)
        out = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(cfg)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        name = "plain PyTorch (loop over samples), IWAE" if r["loss"] == "plain" else r["loss"].upper()
        print(
            f"| {name} | {r['k']} | {r['batch']} | {r['length']} | {1000 * r['seconds']:.0f} "
            f"| {r['peak_mb']:.0f} | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
