"""Every example runs end to end on a tiny budget and prints what examples/README.md promises.

Each example's ``main(argv)`` is called in-process with a few training steps and small models;
the tests check the structure of what it returns and prints, plus a few facts that hold whatever
the training did: IWAE >= ELBO when both are computed from the same draws (log-mean-exp >= mean),
all bounds of the latent-free RNN equal its exact log-likelihood, runs that share a seed share
their initialisation. The examples set torch's thread count and seed the global generator; the
fixture restores both.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BOUNDS = ("elbo", "iwae", "fivo")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def restore_torch_state():
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)


def check_bounds(bounds: dict) -> None:
    assert set(bounds) >= set(BOUNDS)
    assert all(math.isfinite(bounds[b]) and bounds[b] < 0 for b in BOUNDS), bounds
    # evaluate() computes the ELBO and IWAE from the same K draws, so IWAE >= ELBO exactly.
    assert bounds["iwae"] >= bounds["elbo"] - 1e-9, bounds


def test_pianoroll_fivo(tmp_path, capsys):
    example = load_example("pianoroll_fivo")
    midi = tmp_path / "sample.mid"
    argv = ["--steps", "2", "--latent-size", "8", "--eval-sequences", "3", "--sample-midi", str(midi)]
    result = example.main([*argv, "--sample-length", "8", "--bound", "fivo"])
    out = capsys.readouterr().out
    assert result["steps"] == 2
    check_bounds(result["before"])
    check_bounds(result["after"])
    assert midi.is_file() and midi.stat().st_size > 0
    assert result["sample"]["data_notes_per_step"] == pytest.approx(3.9, abs=0.1)  # JSB: ~3.9 notes
    assert "trained 2 steps" in out
    for b in BOUNDS:
        assert f"\n{b.upper()} " in out
    assert "FIVO paper" not in out  # a subset of the test split is not the paper's evaluation


def test_pianoroll_table_shows_the_paper_on_jsb(capsys):
    example = load_example("pianoroll_fivo")
    from bbvae.data import PianoRollData

    assert example.is_jsb(PianoRollData.load())
    args = example.build_parser().parse_args([])
    bounds = {"elbo": -12.1, "iwae": -11.9, "fivo": -11.5}
    example.print_table(bounds, bounds, 100, True, 77, 4725, args)
    out = capsys.readouterr().out
    assert "FIVO paper" in out and "4,725 steps" in out
    assert "-8.60" in out and "-7.86" in out and "-6.90" in out


@pytest.mark.parametrize("bound", ["elbo", "iwae"])
def test_pianoroll_other_bounds_train(bound, capsys):
    example = load_example("pianoroll_fivo")
    result = example.main(["--steps", "1", "--latent-size", "4", "--eval-sequences", "2", "--bound", bound])
    assert result["steps"] == 1
    check_bounds(result["after"])
    assert f"trained with {bound.upper()}" in capsys.readouterr().out


CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
) * 20


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return path


TINY_TEXT = ["--seq-len", "16", "--batch-size", "4", "--hidden-size", "16", "--latent-size", "4"]


def test_shakespeare_vrnn(corpus, capsys):
    example = load_example("shakespeare")
    argv = ["--data", str(corpus), *TINY_TEXT, "--steps", "2", "--generate", "20", "--prime", "All:\n"]
    result = example.main(
        [*argv, "--eval-pieces", "2", "--score-particles", "2", "--score-text", "Speak, all."]
    )
    out = capsys.readouterr().out
    assert result["steps"] == 2
    assert result["generated"].startswith("All:\n") and len(result["generated"]) == len("All:\n") + 20
    assert set(result["generated"]) <= set(CORPUS)
    for key in ("test", "score", "score_shuffled"):
        check_bounds(result[key])
    assert "nats per character" in out and "bits/char" in out and "shuffled" in out


def test_shakespeare_rnn_bounds_are_exact(corpus):
    example = load_example("shakespeare")
    argv = ["--data", str(corpus), *TINY_TEXT, "--model", "rnn", "--steps", "2", "--generate", "0"]
    result = example.main([*argv, "--eval-pieces", "0", "--score-particles", "3", "--score-text", "hear me"])
    # The RNN has no latent variables: every bound is its exact log-likelihood.
    scored = result["score"]
    assert scored["elbo"] == pytest.approx(scored["iwae"], abs=1e-5)
    assert scored["elbo"] == pytest.approx(scored["fivo"], abs=1e-5)
    assert "generated" not in result and "test" not in result


def test_shakespeare_errors(corpus, tmp_path, monkeypatch, capsys):
    example = load_example("shakespeare")
    monkeypatch.setattr(example, "DEFAULT_DATA", tmp_path / "missing.txt")
    with pytest.raises(SystemExit):
        example.main([])
    assert "--data" in capsys.readouterr().err
    argv = ["--data", str(corpus), *TINY_TEXT, "--steps", "1", "--generate", "0", "--eval-pieces", "0"]
    with pytest.raises(SystemExit):
        example.main([*argv, "--score-text", "zebra ZQX"])
    assert "never uses" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--prime", "--score-text"])
def test_shakespeare_checks_prime_and_score_text_before_training(option, corpus, monkeypatch, capsys):
    # The default --prime "ROMEO:\n" has letters this corpus never uses ("O", "M", "E").
    example = load_example("shakespeare")

    class NeverTrained:
        def __init__(self, **kwargs):
            raise AssertionError("trained before checking the text")

    monkeypatch.setattr(example, "SequenceModel", NeverTrained)
    argv = ["--data", str(corpus), *TINY_TEXT, "--steps", "1", "--eval-pieces", "0"]
    argv += ["--prime", "All:", "--score-text", "Speak, MOE"] if option == "--score-text" else []
    with pytest.raises(SystemExit) as info:
        example.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{option} has characters the corpus never uses: ['E', 'M', 'O']" in err


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        load_example(name).main(["--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_gaussian_hmm(tmp_path, capsys):
    example = load_example("gaussian_hmm")
    plot = tmp_path / "gap.png"
    argv = ["--steps", "4", "--eval-every", "2", "--sequences", "20", "--length", "6", "--batch-size", "4"]
    result = example.main([*argv, "--plot", str(plot)])
    out = capsys.readouterr().out
    runs = result["runs"]
    assert list(runs) == list(BOUNDS)
    assert math.isfinite(result["true_log_p"])
    for run in runs.values():
        assert [r["step"] for r in run["records"]] == [0, 2, 4]
        for record in run["records"]:
            check_bounds(record)
            assert math.isfinite(record["exact"])
    # The same seed gives the same initialisation: before training, every run has one exact log p.
    first = [run["records"][0]["exact"] for run in runs.values()]
    assert first[0] == first[1] == first[2]
    assert "trained with FIVO" in out and "final models scored with every bound" in out
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.is_file()
    else:
        assert "matplotlib is not installed" in out


def test_gaussian_hmm_rejects_unknown_bound(capsys):
    example = load_example("gaussian_hmm")
    with pytest.raises(SystemExit):
        example.main(["--bounds", "elbo,vimco"])
    assert "--bounds" in capsys.readouterr().err


def test_estimator_quickstart(capsys):
    example = load_example("estimator_quickstart")
    example.main(["2"])
    out = capsys.readouterr().out
    assert "test FIVO bound: -" in out and "nats per time step" in out
    assert "sampled piano rolls [2, 32, 88]" in out


def test_quickstart_is_short():
    # The quickstart promises the estimator API in 14 lines of code (no blank lines, comments, docstring).
    # The command-line parsing (parse_args, the __main__ block) is not part of the promise.
    source = (EXAMPLES / "estimator_quickstart.py").read_text()
    body = source.split('"""', 2)[2].split("\ndef parse_args")[0]
    lines = [line for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(lines) < 15, lines


def test_spike_inference_runs_every_estimator(capsys):
    results = load_example("spike_inference").main(
        ["--steps", "3", "--batch-size", "4", "--T", "20", "--n-train", "16", "--n-test", "8", "--n-is", "20"]
    )
    assert set(results) == {"VIMCO", "NVIL", "RWS", "Concrete"}
    for r in results.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["f1"] <= 1.0
        assert math.isfinite(r["elbo"]) and math.isfinite(r["log_lik"])
    assert "truth" in capsys.readouterr().out
