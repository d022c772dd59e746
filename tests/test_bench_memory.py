"""benchmarks/bench_memory.py: a config's worker measures a step, and its table row reads it.

In-process and in quick mode (two short random sequences): the checkpointed config computes the
loss of the full one, keeps less for the backward, and its names are parsed or refused.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(config):
    return argparse.Namespace(
        config=config, quick=True, threads=torch.get_num_threads(), device="cpu", particles=2, steps=1,
        data=None, split="train", batch_size=2,
    )  # fmt: skip


def test_quick_rows_of_full_and_checkpointed_steps(bench):
    with torch.random.fork_rng(devices=[]):
        full = bench.run_config(_args("full"))
        remat = bench.run_config(_args("remat=16"))
    assert (full["remat_chunk"], remat["remat_chunk"], full["T"]) == (None, 16, 96)
    assert remat["first_loss"] == pytest.approx(full["first_loss"], rel=1e-6)
    assert remat["saved_bytes"] < 0.5 * full["saved_bytes"]
    assert full["saved_bytes_per_unit"] == full["saved_bytes"] / (2 * 2 * 96)
    assert full["step_cpu_s"] > 0
    # (in a process that ran other tests first the resident set may not grow: no ratio then)
    row = bench.format_row(remat, full).split(" | ")
    assert row[0] == "| remat=16" and len(row) == 10
    full["peak_growth_bytes"], remat["peak_growth_bytes"] = 4 * 2**20, 2**20
    cells = bench.format_row(remat, full).split(" | ")
    assert (cells[1], cells[3]) == ("1", "0.250")  # MiB, and the ratio to full


def test_config_names(bench):
    assert bench.parse_config("tbptt=64+remat=8") == {"remat_chunk": 8, "tbptt_chunk": 64}
    with pytest.raises(ValueError, match="expected configs like full, remat=64"):
        bench.parse_config("remat=0")
