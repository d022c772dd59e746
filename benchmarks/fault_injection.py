"""Fault injection at scale: many SIGKILLs at random moments of one training run, then resume.

The test suite (tests/test_faults.py) kills a run four times; this script does it ``--kills``
times, with a checkpoint at every step so that a good share of the kills land inside a write,
and reports where they landed and whether the resumed run ends bit-exact. It reuses the test
suite's tiny training (a VRNN with FIVO, validation and ``best.pt`` every 5 steps), forked from this
process.

    python benchmarks/fault_injection.py --kills 40 --seed 0
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_faults as faults  # noqa: E402  (the tests' training and child process)

from bbvae.checkpoint import load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--max-delay", type=float, default=0.4, help="seconds after the child's first step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    logdir = Path(tempfile.mkdtemp(prefix="bbvae-faults-"))
    in_write = torn = 0
    steps = []
    t0 = time.perf_counter()
    for _ in range(args.kills):
        process, conn = faults.start(logdir, faults.UNLIMITED, checkpoint_every=1)
        faults.expect(conn, "step")
        time.sleep(rng.uniform(0.0, args.max_delay))
        assert faults.kill(process) == -signal.SIGKILL
        left = faults.temporaries(logdir)
        in_write += bool(left)  # a temporary survives only a kill between mkstemp and rename
        try:
            steps.append(load_checkpoint(logdir / "last.pt")["step"])
        except Exception:  # a torn last.pt (never seen: the rename is atomic)
            torn += 1
    final = steps[-1] + 5
    resumed = faults.finish(logdir, final)
    full = faults.trainer(None, final).fit(faults.TRAIN, faults.VALID)
    exact = all(torch.equal(resumed.loss.state_dict()[k], v) for k, v in full.loss.state_dict().items())
    exact = exact and resumed.loss_history_ == full.loss_history_
    result = {
        "kills": args.kills,
        "kills_inside_a_write": in_write,
        "torn_last_pt": torn,
        "steps_reached": steps[-1],
        "temporaries_left_after_resume": len(faults.temporaries(logdir)),
        "bit_exact": exact,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(result)
    return result


if __name__ == "__main__":
    main()
