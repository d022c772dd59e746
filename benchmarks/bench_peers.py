"""One VRNN training step in bbvae, in a hand-written plain-PyTorch loop and in Pyro, side by side.

The same VRNN (D = 88 Bernoulli units, Z = 32 latents, H = 64 recurrent units, MLPs of 64 hidden
units, 64 features; LSTM cell; proposal mean residual on the prior's) in three implementations that
start from the same weights:

* ``bbvae``: ``bbvae.sequential.VRNN`` with ``IWAE`` / ``FIVO`` through the public API;
* ``hand``: :class:`peers_plain.HandVRNN`, the smallest loop a good engineer writes by hand
  (``phi_x`` once per sequence, ``unbind`` over time, one ``[B * K]`` recurrence, closed-form
  log-densities, no checks);
* ``pyro``: :mod:`peers_pyro`, a Pyro model and guide with ``RenyiELBO(alpha=0)`` and vectorised
  particles (IWAE rows only: Pyro has no FIVO objective; skipped with a message when ``pyro-ppl``
  is not installed: ``pip install bbvae[bench]``).

One step = zero the gradients, the loss, backward, an Adam update. The implementations run
round-robin in one process (step 1 of each, then step 2 of each, ...), so that load from other
processes hits all of them alike; the table gives the median ms per step and the ratios
bbvae / hand and pyro / bbvae. The table reports the process's CPU time per step by default
(``--clock wall`` for wall-clock time; both are recorded): on a shared CPU, time spent waiting for
a core counts in wall-clock time only. Even so, on a shared machine only the ratios mean
something. Each config also records the loss of bbvae and of the hand-written loop at the shared
initial weights and seed (they compute the same bound, so these agree up to float32 rounding).

    python benchmarks/bench_peers.py --threads 1                    # the full grid
    python benchmarks/bench_peers.py --sizes 4x4,16x16 --lengths 64  # a part of it
    python benchmarks/bench_peers.py --quick                         # seconds: a smoke test
    python benchmarks/bench_peers.py --compile     # + compiled copies of bbvae's and hand's steps
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from peers_plain import HandVRNN  # noqa: E402

SIZES = {"obs_dim": 88, "latent": 32, "hidden": 64, "fc": 64, "encoded": 64}
PEERS = ("bbvae", "hand", "pyro")


def make_vrnn(sizes: dict = SIZES):
    from bbvae.sequential import VRNN

    return VRNN(
        sizes["obs_dim"],
        latent_size=sizes["latent"],
        hidden_size=sizes["hidden"],
        fc_hidden_sizes=(sizes["fc"],),
        encoded_size=sizes["encoded"],
    )


def make_hand(vrnn, sizes: dict = SIZES) -> HandVRNN:
    hand = HandVRNN(sizes["obs_dim"], sizes["latent"], sizes["hidden"], sizes["fc"], sizes["encoded"])
    return hand.to(next(vrnn.parameters())).load_from(vrnn)


def make_data(batch: int, length: int, device, dtype=torch.float32, seed: int = 0, sizes: dict = SIZES):
    """Random piano-roll-like binary ``x`` ``[batch, T, D]`` and full ``lengths`` ``[batch]``."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, length, sizes["obs_dim"], generator=gen) < 0.1).to(device=device, dtype=dtype)
    return x, torch.full((batch,), length, dtype=torch.long, device=device)


def bbvae_loss_fn(vrnn, loss: str, k: int):
    """``f(x, lengths) -> loss`` through bbvae's public API."""
    from bbvae.losses import FIVO, IWAE

    if loss == "iwae":
        objective = IWAE(vrnn.inf_net, vrnn.gen_model, n_samples=k)
    else:
        objective = FIVO(vrnn.inf_net, vrnn.gen_model, n_particles=k)
    return lambda x, lengths: objective(x, lengths=lengths)


def hand_loss_fn(hand: HandVRNN, loss: str, k: int):
    if loss == "iwae":
        return lambda x, lengths: hand.iwae_loss(x, lengths, k)
    return lambda x, lengths: hand.fivo_loss(x, lengths, k)


def build_steps(cfg: dict) -> tuple[dict, dict]:
    """The step functions of the peers for ``cfg`` and the peers that were skipped (with why)."""
    device = torch.device(cfg["device"])
    torch.manual_seed(cfg.get("seed", 0))
    vrnn = make_vrnn().to(device)
    x, lengths = make_data(cfg["batch"], cfg["length"], device)
    k, loss = cfg["k"], cfg["loss"]
    steps, skipped = {}, {}

    def adam_step(params, compute):
        opt = torch.optim.Adam(params, lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            compute()
            opt.step()

        return step

    hand = make_hand(vrnn)
    bb = bbvae_loss_fn(vrnn, loss, k)
    hand_fn = hand_loss_fn(hand, loss, k)
    steps["bbvae"] = adam_step(vrnn.parameters(), lambda: bb(x, lengths).backward())
    steps["hand"] = adam_step(hand.parameters(), lambda: hand_fn(x, lengths).backward())
    if cfg.get("compile"):
        # Compiled copies (same weights) run alongside the eager ones. Each config compiles afresh
        # (static shapes, no cache entries of the previous config's models); the on-disk kernel
        # cache keeps a repeated graph cheap.
        torch._dynamo.reset()
        vrnn_c = make_vrnn().to(device)
        vrnn_c.load_state_dict(vrnn.state_dict())
        vrnn_c.compile_step()
        hand_c = make_hand(vrnn)
        hand_c._step = torch.compile(hand_c._step, dynamic=False)
        bb_c, hand_c_fn = bbvae_loss_fn(vrnn_c, loss, k), hand_loss_fn(hand_c, loss, k)
        steps["bbvae-compiled"] = adam_step(vrnn_c.parameters(), lambda: bb_c(x, lengths).backward())
        steps["hand-compiled"] = adam_step(hand_c.parameters(), lambda: hand_c_fn(x, lengths).backward())
    if loss != "iwae":
        skipped["pyro"] = "Pyro has no FIVO objective"
    elif cfg.get("no_pyro"):
        skipped["pyro"] = "--no-pyro"
    else:
        try:
            from peers_pyro import PyroVRNN

            nets = make_hand(vrnn)
            pyro_vrnn = PyroVRNN(nets, k)
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
            steps["pyro"] = adam_step(nets.parameters(), lambda: pyro_vrnn.loss_and_grads(x, mask))
        except ImportError as err:
            skipped["pyro"] = str(err)
    fresh_hand = hand_loss_fn(make_hand(vrnn), loss, k)  # (building it draws initial weights)
    with torch.no_grad():  # the same bound from the same weights and seed
        torch.manual_seed(1)
        value_bbvae = float(bb(x, lengths))
        torch.manual_seed(1)
        value_hand = float(fresh_hand(x, lengths))
    return steps, {"skipped": skipped, "loss_bbvae": value_bbvae, "loss_hand": value_hand}


def time_config(cfg: dict) -> dict:
    """Round-robin timing of one config: a JSON-able row."""
    steps, info = build_steps(cfg)
    sync = torch.cuda.synchronize if cfg["device"].startswith("cuda") else (lambda: None)
    first = {}
    for name, step in steps.items():  # warm-up (and compilation, timed apart)
        start = time.perf_counter()
        step()
        sync()
        first[name] = time.perf_counter() - start
        for _ in range(cfg["warmup"] - 1):
            step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(cfg["repeats"]):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    wall_ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    cpu_ms = {name: 1000 * statistics.median(t) for name, t in cpu.items()}
    ms = cpu_ms if cfg.get("clock", "cpu") == "cpu" else wall_ms
    row = {**cfg, "ms": ms, "wall_ms": wall_ms, "cpu_ms": cpu_ms, **info}
    row["first_step_ms"] = {n: 1000 * s for n, s in first.items()}
    row["bbvae_over_hand"] = ms["bbvae"] / ms["hand"]
    row["pyro_over_bbvae"] = ms["pyro"] / ms["bbvae"] if "pyro" in ms else None
    if "bbvae-compiled" in ms:
        row["compiled_bbvae_over_hand"] = ms["bbvae-compiled"] / ms["hand-compiled"]
        row["pyro_over_compiled_bbvae"] = ms["pyro"] / ms["bbvae-compiled"] if "pyro" in ms else None
        row["compile_speedup_bbvae"] = ms["bbvae"] / ms["bbvae-compiled"]
        row["compile_speedup_hand"] = ms["hand"] / ms["hand-compiled"]
    return row


def format_row(row: dict) -> str:
    ms = row["ms"]
    pyro = f"{ms['pyro']:.1f}" if "pyro" in ms else "n/a"
    ratio = f"{row['pyro_over_bbvae']:.2f}" if row["pyro_over_bbvae"] is not None else "n/a"
    name = f"| {row['loss'].upper()} | {row['batch']} | {row['k']} | {row['length']} |"
    name_c = name.replace(" |", " compiled |", 1)
    out = f"{name} {ms['bbvae']:.1f} | {ms['hand']:.1f} | {pyro} | {row['bbvae_over_hand']:.2f} | {ratio} |"
    if "bbvae-compiled" in ms:
        ratio = row["pyro_over_compiled_bbvae"]
        ratio = f"{ratio:.2f}" if ratio is not None else "n/a"
        out += (
            f"\n{name_c} {ms['bbvae-compiled']:.1f} | {ms['hand-compiled']:.1f} | {pyro} "
            f"| {row['compiled_bbvae_over_hand']:.2f} | {ratio} |"
        )
    return out


HEADER = (
    "| loss | B | K | T | bbvae ms | hand ms | Pyro ms | bbvae / hand | Pyro / bbvae |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compile", action="store_true", help="also time compiled copies of bbvae and hand (round-robin)"
    )
    parser.add_argument("--repeats", type=int, default=9, help="timed steps per peer (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--losses", default="iwae,fivo")
    parser.add_argument("--sizes", default="4x4,16x16,64x4", help="BxK pairs")
    parser.add_argument("--lengths", default="64,512")
    parser.add_argument("--no-pyro", action="store_true")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="what the table reports: the process's CPU time per step (default; robust to other "
        "processes on a shared machine, on CPU devices) or wall-clock time (both are recorded)",
    )
    parser.add_argument("--quick", action="store_true", help="B=K=2, T=8, 2 repeats: a smoke test")
    parser.add_argument("--out", default=None, help="JSON-lines file (default under results/peers/)")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    # bbvae warns once when the ESS collapses (expected from random weights): not news here
    warnings.filterwarnings("ignore", message=".*effective sample size collapsed", category=RuntimeWarning)
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    lengths = [int(v) for v in args.lengths.split(",")]
    repeats, warmup = args.repeats, args.warmup
    if args.quick:
        sizes, lengths, repeats, warmup = [(2, 2)], [8], 2, 1
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    out = (
        Path(args.out)
        if args.out
        else HERE
        / "results"
        / "peers"
        / (f"peers_{args.device}_{args.threads}t{'_compile' if args.compile else ''}_{stamp}.jsonl")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"# {stamp}, device {args.device}, {args.threads} thread(s), compile={args.compile}, torch "
        f"{torch.__version__}; median {args.clock} time of {repeats} steps, round-robin"
    )
    print(HEADER)
    rows = []
    for length, (batch, k), loss in itertools.product(lengths, sizes, args.losses.split(",")):
        cfg = {
            "loss": loss,
            "batch": batch,
            "k": k,
            "length": length,
            "device": args.device,
            "threads": args.threads,
            "compile": args.compile,
            "repeats": repeats,
            "warmup": warmup,
            "no_pyro": args.no_pyro,
            "clock": args.clock,
            "date": stamp,
            "torch": torch.__version__,
        }
        row = time_config(cfg)
        rows.append(row)
        print(format_row(row), flush=True)
        for name, why in row["skipped"].items():
            print(f"#   {name} skipped: {why}")
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"# rows written to {out}")
    return rows


if __name__ == "__main__":
    main()
