"""Data-parallel training scenarios, run by tests/test_distributed.py under torchrun.

    python -m torch.distributed.run --nproc_per_node=2 --standalone tests/_ddp_worker.py OUT_DIR

Each rank writes ``OUT_DIR/<scenario>_rank<r>.pt`` with its final parameters and histories; the
test runs the same scenarios in one process and compares. The scenario builders are imported by
the test too, so both sides train exactly the same setup.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from bbvae import distributed
from bbvae.losses import IWAE, Loss
from bbvae.models import GaussianInfNet, LinearGaussianGenModel
from bbvae.training import Trainer

X_DIM, Z_DIM, N_ROWS, BATCH = 4, 2, 64, 16


class ExactLogLik(Loss):
    """Exact log p(x) of the linear-Gaussian model: maximum likelihood, no Monte Carlo noise."""

    def estimate(self, x, **context):
        log_p = self.gen_model.exact_log_prob(x)  # [batch]
        return log_p.detach(), log_p


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Training rows ``[64, 4]`` and validation rows ``[12, 4]`` (float64), the same on every rank."""
    torch.manual_seed(0)
    true = LinearGaussianGenModel(Z_DIM, X_DIM).double()
    x, _ = true.sample(N_ROWS + 12)
    return x[:N_ROWS], x[N_ROWS:]


def nets(init_seed: int):
    torch.manual_seed(init_seed)
    return GaussianInfNet(X_DIM, Z_DIM).double(), LinearGaussianGenModel(Z_DIM, X_DIM).double()


def exact_loss(init_seed: int = 1) -> Loss:
    return ExactLogLik(*nets(init_seed))


def iwae_loss(init_seed: int = 1) -> Loss:
    return IWAE(*nets(init_seed), n_samples=3)


def trainer(loss: Loss, max_steps: int, logdir=None) -> Trainer:
    # 64 rows / 16 = 4 global batches per epoch; 8 rows per rank with 2 processes.
    return Trainer(
        loss,
        learning_rate=0.05,
        batch_size=BATCH,
        max_steps=max_steps,
        log_every=4,
        eval_every=5,
        checkpoint_every=3,
        seed=3,
        logdir=logdir,
        progress=False,
    )


def result(loss: Loss, fitted: Trainer) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in loss.state_dict().items()},
        "loss_history": fitted.loss_history_,
        "valid_history": fitted.valid_history_,
        "n_iter": fitted.n_iter_,
    }


def main(out: Path) -> None:
    x, valid = data()
    rank = int(os.environ["RANK"])
    # Each rank starts from different values: DDP must broadcast rank 0's (init seed 1).
    loss = exact_loss(init_seed=1 + rank)
    fitted = trainer(loss, max_steps=10, logdir=out / "exact").fit(x, valid)
    torch.save(result(loss, fitted), out / f"exact_rank{rank}.pt")
    # A stochastic loss: ranks draw different noise but must stay in sync, and resume exactly.
    loss = iwae_loss()
    fitted = trainer(loss, max_steps=10).fit(x, valid)
    torch.save(result(loss, fitted), out / f"iwae_rank{rank}.pt")
    trainer(iwae_loss(), max_steps=4, logdir=out / "iwae_resume").fit(x, valid)
    loss = iwae_loss(init_seed=99)  # the checkpoint supplies the parameters
    fitted = trainer(loss, max_steps=10, logdir=out / "iwae_resume").fit(x, valid, resume=True)
    torch.save(result(loss, fitted), out / f"iwae_resumed_rank{rank}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
