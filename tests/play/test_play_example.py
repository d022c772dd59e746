"""examples/play_cartpole.py runs end to end on a tiny budget."""

import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

if not os.environ.get("CI"):  # under CI the dev extra installs gymnasium: missing is a failure
    pytest.importorskip("gymnasium", reason="bbvae[play] (gymnasium) not installed")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "play_cartpole.py"


def test_play_cartpole_example(capsys):
    spec = importlib.util.spec_from_file_location("example_play_cartpole", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        argv = ["--iterations", "2", "--steps-per-iteration", "100", "--model-steps", "2"]
        result = module.main([*argv, "--policy-updates", "2", "--eval-episodes", "5", "--loss", "iwae"])
    torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert result["real_steps"] == 200
    assert [row["real_steps"] for row in result["history"]] == [100, 200]
    assert all(math.isfinite(v) for v in result["loglik"].values())
    assert result["loglik"]["iwae"] >= result["loglik"]["elbo"] - 1e-9  # same draws: log-mean-exp >= mean
    assert "mean return over 5 real episodes" in out and "open-loop error" in out
