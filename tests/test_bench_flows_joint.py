"""benchmarks/bench_flows_joint.py (``bench_flows --protocol joint``): a tiny run end to end.

Two seeds, a diagonal and a one-layer Real NVP q, a few steps: every model gets a log p(x) from the
better of its two proposals, gaps and shares against the same seed's diagonal model, and the table
of means over seeds; p's initial weights do not depend on q's family.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

pytest.importorskip("zuko")
pytest.importorskip("sklearn")

from benchmarks import bench_flows, bench_flows_joint  # noqa: E402


def test_p_init_is_the_same_for_every_q_family():
    x = torch.rand(8, 64)
    args = argparse.Namespace(
        latent_size=2, hidden=8, steps=0, batch_size=4, lr=1e-3
    )
    _, p_diag, _ = bench_flows_joint.train_vae({"kind": "diag"}, x, 3, args)
    _, p_flow, _ = bench_flows_joint.train_vae({"kind": "realnvp", "t": 1}, x, 3, args)
    for a, b in zip(p_diag.state_dict().values(), p_flow.state_dict().values()):
        assert torch.equal(a, b)


def test_joint_protocol_runs_and_reports(tmp_path):
    out = tmp_path / "joint.json"
    argv = ["--protocol", "joint", "--configs", "diag", "realnvp:t=1:h=8:c=2", "--sweep", "diag:lr=1e-3",
            "--seeds", "0", "1", "--steps", "3", "--hidden", "16", "--latent-size", "2",
            "--elbo-samples", "4", "--iwae-k", "2", "--is-samples", "8", "--valid-is-samples", "4",
            "--moment-samples", "4", "--local-steps", "2", "--train-subset", "5",
            "--out", str(out)]  # fmt: skip
    assert bench_flows.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["protocol"] == "joint"
    assert set(result["selected"]) == {"flow", "diag"}
    runs = result["test"]["runs"]
    assert set(runs) == {"0", "1"}
    for seed_runs in runs.values():
        assert seed_runs["diag"]["share"] == 0.0
        for r in seed_runs.values():
            assert r["log_px"] == max(r["is_q"], r["is_local"])
            assert math.isclose(r["gap"], r["log_px"] - r["elbo"])
    row = result["test"]["summary"]["realnvp:t=1:h=8:c=2"]
    assert row["n_seeds"] == 2
    shares = [runs[s]["realnvp:t=1:h=8:c=2"]["share"] for s in ("0", "1")]
    assert math.isclose(row["share"], sum(shares) / 2)
    seen = result["train_subset"]
    assert seen["n"] == 5 and set(seen["runs"]) == {"0", "1"}
    assert seen["summary"].keys() == result["test"]["summary"].keys()
