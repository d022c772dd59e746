"""Peak memory and time of one VRNN-FIVO training step on full-length MuseData sequences.

One step = zero the gradients, FIVO (K particles, multinomial resampling at ESS < K/2, the bound
per time step as the CLI trains it), backward, an Adam update, on one batch of the longest
sequences of a split (MuseData's training set reaches 3,457 steps, its test set 4,273), for:

* ``full``: backpropagation through the whole sequence (the default);
* ``remat=N``: activation checkpointing over chunks of N steps (``FIVO(remat_chunk=N)``: the same
  bound and gradients, one more forward pass);
* ``tbptt=M``: truncated backpropagation, the particle system detached every M steps
  (``tbptt_chunk=M``: another, biased gradient), alone and with ``remat=M``.

Every configuration runs in a fresh Python process, so that one's memory cannot hide in another's
allocator. It loads the data, builds the model, optimizer and loss, and warms up (a checkpointed
forward and backward on the batch's first 32 steps and an Adam step with zero gradients, which
leaves the parameters as they are), so that what is initialised lazily is not counted. It then resets
the peak resident set (``/proc/self/clear_refs``), runs one step and reports the **peak RSS growth**
over the resident set before the step (CPU; ``--device cuda``: ``torch.cuda.max_memory_allocated``
over the allocated memory before the step); then the median time of ``--steps`` more steps (the
process's CPU time and wall clock), and the bytes autograd holds for the backward at the end of one
forward pass (the distinct storages of its saved tensors, from
``torch.autograd.graph.saved_tensors_hooks``). Memory is also given per (sequence x particle x
step) of the padded batch, ``B * K * T``.

    python -m benchmarks.bench_memory --threads 1                    # the table in benchmarks/README.md
    python -m benchmarks.bench_memory --split test --batch-size 1    # the 4,273-step test sequence
    python -m benchmarks.bench_memory --quick                        # seconds: a smoke test
    python -m benchmarks.bench_memory --device cuda                  # on a GPU

(Run it from the repository root so that the subprocesses import the same ``bbvae``.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/pianoroll/musedata.pkl")
SIZES = {"latent": 32, "hidden": 64, "fc": 64, "encoded": 64}  # the sizes of bench_peers.py
DEFAULT_CONFIGS = "full,remat=16,remat=64,remat=256,tbptt=64,tbptt=64+remat=64"


# ------------------------------------------------------------------------------- measuring
def _status_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB from /proc/self/status (None off Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Set VmHWM back to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """The peak memory growth of a block: RSS on the CPU, allocated memory on CUDA (bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.reset = _reset_peak_rss()
            self.before = 1024 * (_status_kib("VmRSS") or 0)
            self.hwm_before = 1024 * (_status_kib("VmHWM") or 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = 1024 * (_status_kib("VmHWM") or 0)
        # Without a reset the high-water mark may predate the block: then only a peak above it shows.
        self.growth = self.peak - (
            self.before if self.device.type == "cuda" or self.reset else self.hwm_before
        )


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages of the tensors autograd saved while ``fn()`` ran and still
    holds for the backward when it has returned."""
    saved = []

    def pack(t):
        packed = t.detach()  # (packing t itself would tie it to its graph in a reference cycle)
        saved.append(weakref.ref(packed))
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    alive = {}
    for ref in saved:
        t = ref()
        if t is not None:
            alive[(t.untyped_storage().data_ptr(), t.device)] = t.untyped_storage().nbytes()
    del result
    return sum(alive.values())


# ----------------------------------------------------------------------------- one config
def parse_config(text: str) -> dict:
    """``"full"``, ``"remat=64"``, ``"tbptt=64"``, ``"tbptt=64+remat=64"`` -> chunk sizes."""
    out = {"remat_chunk": None, "tbptt_chunk": None}
    if text == "full":
        return out
    for part in text.split("+"):
        key, _, value = part.partition("=")
        name = {"remat": "remat_chunk", "tbptt": "tbptt_chunk"}.get(key)
        if name is None or not value.isdigit() or int(value) < 1:
            raise ValueError(
                f"bench_memory: expected configs like full, remat=64, tbptt=64+remat=64, got {text!r}"
            )
        out[name] = int(value)
    return out


def load_batch(args, device):
    """The ``batch_size`` longest sequences of the split: ``(x [B, T, 88], lengths [B])``."""
    from bbvae.data import PianoRollData
    from bbvae.data.batching import collate_sequences

    if args.quick:
        gen = torch.Generator().manual_seed(0)
        seqs = [(torch.rand(n, 88, generator=gen) < 0.1) for n in (96, 80)]
    else:
        data = PianoRollData.load(args.data)
        seqs = sorted(getattr(data, args.split), key=lambda s: -s.shape[0])[: args.batch_size]
    batch = collate_sequences([torch.as_tensor(s).float() for s in seqs])
    return batch.x.to(device), batch.lengths.to(device)


def run_config(args) -> dict:
    """Measure one config in this process (the worker side)."""
    from bbvae.losses import FIVO
    from bbvae.sequential import VRNN

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    chunks = parse_config(args.config)
    x, lengths = load_batch(args, device)
    torch.manual_seed(0)
    model = VRNN(
        88,
        latent_size=SIZES["latent"],
        hidden_size=SIZES["hidden"],
        fc_hidden_sizes=(SIZES["fc"],),
        encoded_size=SIZES["encoded"],
    ).to(device)
    loss = FIVO(model.inf_net, model.gen_model, args.particles, normalize="length", **chunks)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        value = loss(x, lengths=lengths)
        value.backward()
        opt.step()
        return value.detach()

    # Warm-up: what is initialised lazily (kernels, Adam's state) is not the sequence's memory.
    warm = min(32, x.shape[1])
    FIVO(model.inf_net, model.gen_model, args.particles, remat_chunk=8)(
        x[:, :warm], lengths=lengths.clamp(max=warm)
    ).backward()
    for param in model.parameters():
        param.grad.zero_()  # Adam's step with zero gradients leaves the parameters unchanged
    opt.step()
    with PeakMemory(device) as peak:
        first = step()
    walls, cpus = [], []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    kept = saved_bytes(lambda: loss(x, lengths=lengths))
    batch, n_steps = x.shape[:2]
    units = batch * args.particles * n_steps
    return {
        "config": args.config,
        **chunks,
        "device": str(device),
        "threads": args.threads,
        "batch": batch,
        "particles": args.particles,
        "T": n_steps,
        "lengths": lengths.tolist(),
        "first_loss": float(first),
        "peak_growth_bytes": peak.growth,
        "peak_growth_bytes_per_unit": peak.growth / units,
        "saved_bytes": kept,
        "saved_bytes_per_unit": kept / units,
        "step_wall_s": statistics.median(walls) if walls else None,
        "step_cpu_s": statistics.median(cpus) if cpus else None,
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------------- table
def format_row(row: dict, full: dict | None) -> str:
    """One markdown row; ``full``: the ``full`` config's row, for the ratios (None: "-")."""
    mib, kib = 2.0**20, 1024.0
    rel = (
        f"{row['peak_growth_bytes'] / full['peak_growth_bytes']:.3f}"
        if full and full["peak_growth_bytes"]
        else "-"
    )
    time_rel = f"{row['step_cpu_s'] / full['step_cpu_s']:.2f}" if full and row["step_cpu_s"] else "-"
    step = f"{row['step_cpu_s']:.1f}" if row["step_cpu_s"] is not None else "-"
    wall = f"{row['step_wall_s']:.1f}" if row["step_wall_s"] is not None else "-"
    cells = [
        row["config"],
        f"{row['peak_growth_bytes'] / mib:.0f}",
        f"{row['peak_growth_bytes_per_unit'] / kib:.2f}",
        rel,
        f"{row['saved_bytes'] / mib:.1f}",
        f"{row['saved_bytes_per_unit'] / kib:.2f}",
        step,
        wall,
        time_rel,
        f"{row['first_loss']:.4f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| config | peak growth (MiB) | KiB / (seq x particle x step) | vs full | kept for backward (MiB) "
    "| KiB / unit | step CPU (s) | step wall (s) | time vs full | loss |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="a piano-roll pickle (default MuseData)")
    parser.add_argument("--split", default="train", choices=("train", "valid", "test"))
    parser.add_argument("--batch-size", type=int, default=4, help="the longest N sequences (default 4)")
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help=f"comma-separated (default {DEFAULT_CONFIGS})"
    )
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the measured one")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="two short random sequences: a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file for the rows")
    parser.add_argument("--config", help=argparse.SUPPRESS)  # the worker's one config
    args = parser.parse_args(argv)
    if args.config is not None:
        print(json.dumps(run_config(args)))
        return 0
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for config in configs:
        parse_config(config)  # bad names fail before anything runs
    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    forwarded = [
        "--split",
        args.split,
        "--batch-size",
        str(args.batch_size),
        "--particles",
        str(args.particles),
    ]
    forwarded += ["--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
    forwarded += ["--data", str(args.data)] + (["--quick"] if args.quick else [])
    print(
        f"# VRNN-FIVO training step, {args.split} split, batch of the {args.batch_size} longest, "
        f"K = {args.particles}, {args.threads} thread(s), {args.device}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    print(HEADER, flush=True)
    full = None
    for config in configs:
        cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--config", config, *forwarded]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"| {config} | failed: {done.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        full = row if config == "full" else full
        rows.append(row)
        print(format_row(row, full if config != "full" else None), flush=True)
    if rows:
        print(
            f"# T = {rows[0]['T']}, lengths {rows[0]['lengths']}; unit = B * K * T = "
            f"{rows[0]['batch'] * rows[0]['particles'] * rows[0]['T']:,}"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
