"""Data-parallel training: two gloo processes under torchrun match single-process training."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bbvae import distributed
from bbvae.data import SequenceBatch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _worker_module():
    spec = importlib.util.spec_from_file_location("_ddp_worker", TESTS / "_ddp_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shard_batch_takes_every_world_size_th_row():
    x = torch.arange(10).reshape(5, 2)
    assert torch.equal(distributed.shard_batch(x, 0, 2), x[[0, 2, 4]])
    assert torch.equal(distributed.shard_batch(x, 1, 2), x[[1, 3]])
    assert distributed.shard_batch(x, 0, 1) is x
    batch = SequenceBatch(torch.zeros(4, 3, 2), torch.tensor([3, 1, 2, 2]), torch.ones(4, 3, 5))
    shard = distributed.shard_batch(batch, 1, 2)
    assert isinstance(shard, SequenceBatch) and shard.lengths.tolist() == [1, 2]
    assert shard.x.shape == (2, 3, 2) and shard.inputs.shape == (2, 3, 5)
    assert distributed.shard_batch(SequenceBatch(batch.x, batch.lengths), 0, 2).inputs is None
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        distributed.shard_batch(x, 2, 2)
    with pytest.raises(TypeError, match="Tensor or a SequenceBatch"):
        distributed.shard_batch([1, 2], 0, 2)


def test_single_process_defaults(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() == distributed.DistInfo(0, 1, 0)
    assert not distributed.is_distributed() and distributed.is_main_process()
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(module) is module
    t = torch.ones(3)
    assert distributed.all_reduce_mean(t) is t and torch.equal(t, torch.ones(3))
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE to be an int, got 'two'"):
        distributed.init_from_env()


def test_two_gloo_processes_match_single_process_training(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(TESTS / "_ddp_worker.py"),
        str(tmp_path),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert elapsed < 60, f"torchrun took {elapsed:.1f} s"  # about 10 s on 2 idle cores

    worker = _worker_module()
    runs = {
        name: [torch.load(tmp_path / f"{name}_rank{r}.pt", weights_only=True) for r in range(2)]
        for name in ("exact", "iwae", "iwae_resumed")
    }

    # Exact maximum likelihood has no Monte Carlo noise: sharding a global batch of 16 into two
    # halves of 8 and averaging their gradients equals the global batch's gradient, up to float64
    # rounding. Rank 1 started from other values; DDP broadcast rank 0's.
    x, valid = worker.data()
    loss = worker.exact_loss(init_seed=1)
    single = worker.trainer(loss, max_steps=10).fit(x, valid)
    for rank_result in runs["exact"]:
        assert rank_result["n_iter"] == 10
        for name, value in loss.state_dict().items():
            torch.testing.assert_close(rank_result["state"][name], value, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(
            torch.tensor(rank_result["loss_history"]), torch.tensor(single.loss_history_), rtol=1e-9, atol=0
        )
        torch.testing.assert_close(
            torch.tensor(rank_result["valid_history"]), torch.tensor(single.valid_history_), rtol=1e-9, atol=0
        )

    # A stochastic loss: the ranks draw different noise yet hold identical parameters, and a
    # run interrupted after 4 steps and resumed to 10 repeats the uninterrupted one exactly.
    for name in ("iwae", "iwae_resumed"):
        rank0, rank1 = runs[name]
        for key, value in rank0["state"].items():
            assert torch.equal(rank1["state"][key], value), (name, key)
        assert rank0["loss_history"] == rank1["loss_history"]
    for rank in range(2):
        uninterrupted, resumed = runs["iwae"][rank], runs["iwae_resumed"][rank]
        for key, value in uninterrupted["state"].items():
            assert torch.equal(resumed["state"][key], value), key
        assert resumed["loss_history"] == uninterrupted["loss_history"]
    assert runs["iwae"][0]["loss_history"] != single.loss_history_

    # Only rank 0 writes: one row per logging point or evaluation, no duplicates.
    rows = [json.loads(line) for line in open(tmp_path / "exact" / "log.jsonl")]
    assert [r["step"] for r in rows] == [4, 5, 8, 10]
    assert sorted(p.name for p in (tmp_path / "exact").iterdir()) == ["best.pt", "last.pt", "log.jsonl"]
