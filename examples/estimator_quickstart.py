"""Quickstart: the estimator API in 14 lines: fit a VRNN with FIVO, score it, sample from it.

    python examples/estimator_quickstart.py           # 150 training steps, under a minute on 2 CPU cores
    python examples/estimator_quickstart.py 5000      # the number of steps

``SequenceModel`` builds the model for the data (here 88-key piano rolls: Bernoulli frames, inputs
centred by the training mean, output bias logit(mean), as in the FIVO reference), trains it and
reports bounds in nats per time step. See examples/README.md for the longer examples.
"""

import argparse

import torch

from bbvae.data import PianoRollData
from bbvae.sequential.estimator import SequenceModel


def main(argv=None):
    steps = parse_args(argv).steps
    torch.set_num_threads(1)  # small tensors: one thread is fastest, and robust on a busy machine
    data = PianoRollData.load()  # the embedded JSB chorales: 229 / 76 / 77 pieces
    model = SequenceModel("vrnn", bound="fivo", max_steps=steps, random_state=0).fit(data)  # FIVO defaults
    print(f"test FIVO bound: {model.score(data, split='test'):.3f} nats per time step")
    x, z = model.sample(n=2, length=32)  # x [2, 32, 88] binary frames, z [2, 32, 64] latents
    print(f"sampled piano rolls {list(x.shape)} with {x.sum(-1).mean():.2f} notes per step")


def parse_args(argv):  # the command line, not part of the 14 lines: [STEPS], --help
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("steps", nargs="?", type=int, default=150, help="optimizer steps (default 150)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"steps: expected a positive integer, got {args.steps}")
    return args


if __name__ == "__main__":
    main()
