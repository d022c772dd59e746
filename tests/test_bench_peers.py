"""benchmarks/bench_peers.py: its quick mode runs, and its three peers compute the same bound.

The comparison is honest only if the three implementations do the same work: from the same
weights and seed, the hand-written loop's IWAE and FIVO bounds equal bbvae's (float64, ragged
lengths; FIVO's resampling draws the same uniforms, so the same ancestors), with the same gradients,
and Pyro's RenyiELBO(alpha=0) loss equals bbvae's at K = 1 (where Pyro's batch-coupled bound is the
sum of the per-sequence ELBOs).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_peers", BENCH / "bench_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCH))


@pytest.fixture(autouse=True)
def restore_torch_state():
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)


def _pair(bench, loss: str, k: int, lengths: list[int]):
    torch.manual_seed(0)
    vrnn = bench.make_vrnn().double()
    hand = bench.make_hand(vrnn)
    x, _ = bench.make_data(len(lengths), max(lengths), "cpu", torch.float64, seed=3)
    lens = torch.tensor(lengths)
    return vrnn, hand, x, lens


@pytest.mark.parametrize("loss", ["iwae", "fivo"])
def test_hand_written_loop_computes_bbvaes_bound_and_gradient(bench, loss):
    vrnn, hand, x, lens = _pair(bench, loss, 3, [7, 4, 1, 6])
    torch.manual_seed(11)
    ours = bench.bbvae_loss_fn(vrnn, loss, 3)(x, lens)
    ours.backward()
    torch.manual_seed(11)
    theirs = bench.hand_loss_fn(hand, loss, 3)(x, lens)
    theirs.backward()
    assert math.isfinite(float(ours.detach()))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    # Same gradient: the decoder's output layer and the LSTM are laid out alike in both.
    tol = {"rtol": 1e-8, "atol": 1e-10}
    torch.testing.assert_close(vrnn.decoder[2].weight.grad, hand.decoder[2].weight.grad, **tol)
    torch.testing.assert_close(vrnn.cell.weight_hh.grad, hand.cell.weight_hh.grad, **tol)
    # ... and the split first layer of bbvae's proposal is the hand-written one's, cut in two.
    grad_h, grad_x = hand.proposal[0].weight.grad.split([64, 64], dim=1)
    torch.testing.assert_close(vrnn.proposal.inputs[0].weight.grad, grad_h, **tol)
    torch.testing.assert_close(vrnn.proposal.inputs[1].weight.grad, grad_x, **tol)


def test_fivo_bound_differs_from_iwae_so_the_resampling_is_exercised(bench):
    vrnn, hand, x, lens = _pair(bench, "fivo", 4, [8, 8])
    with torch.no_grad():
        torch.manual_seed(5)
        fivo = bench.hand_loss_fn(hand, "fivo", 4)(x, lens)
        torch.manual_seed(5)
        iwae = bench.hand_loss_fn(hand, "iwae", 4)(x, lens)
    assert abs(float(fivo) - float(iwae)) > 1e-3


def test_pyro_peer_computes_the_same_elbo_at_one_particle(bench):
    pytest.importorskip("pyro", reason="pyro-ppl not installed (pip install bbvae[bench])")
    from peers_pyro import PyroVRNN

    vrnn, hand, x, lens = _pair(bench, "iwae", 1, [6, 6, 6])
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    torch.manual_seed(2)
    ours = float(bench.bbvae_loss_fn(vrnn, "iwae", 1)(x, lens).detach())
    torch.manual_seed(2)
    pyro_loss = PyroVRNN(hand, 1).loss(x, mask)
    assert pyro_loss / x.shape[0] == pytest.approx(ours, rel=1e-9)


def test_quick_mode_writes_a_row_per_config(bench, tmp_path):
    out = tmp_path / "rows.jsonl"
    rows = bench.main(["--quick", "--no-pyro", "--out", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["loss"] for r in lines] == ["iwae", "fivo"] == [r["loss"] for r in rows]
    for row in lines:
        assert row["ms"]["bbvae"] > 0 and row["ms"]["hand"] > 0
        assert row["bbvae_over_hand"] == pytest.approx(row["ms"]["bbvae"] / row["ms"]["hand"])
        assert row["skipped"]["pyro"]
        # float32, the same weights and seed: equal up to rounding
        assert row["loss_bbvae"] == pytest.approx(row["loss_hand"], rel=1e-5)


def test_compiled_rows_are_printed_under_the_eager_ones(bench):
    ms = {"bbvae": 100.0, "hand": 80.0, "pyro": 250.0, "bbvae-compiled": 60.0, "hand-compiled": 50.0}
    row = {"loss": "iwae", "batch": 4, "k": 4, "length": 64, "ms": ms, "bbvae_over_hand": 1.25}
    row.update(pyro_over_bbvae=2.5, compiled_bbvae_over_hand=1.2, pyro_over_compiled_bbvae=250 / 60)
    eager, compiled = bench.format_row(row).splitlines()
    assert eager == "| IWAE | 4 | 4 | 64 | 100.0 | 80.0 | 250.0 | 1.25 | 2.50 |"
    assert compiled == "| IWAE compiled | 4 | 4 | 64 | 60.0 | 50.0 | 250.0 | 1.20 | 4.17 |"


def test_missing_pyro_is_skipped_with_the_extra_named(bench, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyro", None)  # import pyro now raises ImportError
    cfg = {"loss": "iwae", "batch": 2, "k": 2, "length": 3, "device": "cpu"}
    steps, info = bench.build_steps(cfg)
    assert set(steps) == {"bbvae", "hand"}
    assert "pip install bbvae[bench]" in info["skipped"]["pyro"]
