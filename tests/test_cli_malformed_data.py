"""Property: no data file, however malformed, makes ``bbvae train`` print a traceback.

Hypothesis writes piano-roll pickles (random bytes, and real pickles of random structures:
wrong keys, empty splits, notes out of range, floats, strings, deep nesting), synthetic-data
``.npz`` and ``.pt`` files (random arrays of any dtype and shape, lengths of any value, NaN and
inf) and text files (random bytes, invalid UTF-8, empty). ``bbvae train`` on each must either
train (status 0: the data were valid after all) or print exactly one line ``bbvae: error: ...``
and exit with status 2; any exception escaping ``main`` fails the test. The example counts are
small and fixed (derandomized), so the suite stays fast and repeatable.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bbvae.cli import main

# Every example runs at most one training step of a tiny model.
TINY = ["--latent-size", "2", "--hidden-size", "2", "--max-steps", "1", "--batch-size", "2"]
TINY += ["--num-samples", "2", "--seed", "0", "--threads", "1", "--max-length", "4", "--no-progress"]
EXAMPLES = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def train_on(content: bytes, suffix: str, dataset_type: str) -> tuple[int, str]:
    """Run ``bbvae train`` on a file holding ``content``: (status, stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(content)
        argv = ["train", "--logdir", str(Path(tmp) / "run"), "--dataset-type", dataset_type]
        argv += ["--dataset-path", str(path), *TINY]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(argv)  # an exception here is the traceback a user would see
    return status, err.getvalue()


def assert_clean_outcome(status: int, err: str) -> None:
    if status == 0:
        assert "error" not in err, err
        return
    assert status == 2, (status, err)
    assert err.startswith("bbvae: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- piano-roll pickles
notes = st.one_of(
    st.integers(min_value=-5, max_value=130),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=2),
    st.none(),
)
steps = st.one_of(st.lists(notes, max_size=3).map(tuple), st.lists(notes, max_size=3), notes)
sequences = st.one_of(
    st.lists(steps, max_size=4), steps, st.dictionaries(st.text(max_size=2), steps, max_size=2)
)
split_keys = st.sampled_from(["train", "valid", "test", "Train", ""])
structures = st.one_of(
    st.fixed_dictionaries({k: st.lists(sequences, max_size=3) for k in ("train", "valid", "test")}),
    st.dictionaries(split_keys, st.lists(sequences, max_size=3), max_size=4),
    st.lists(sequences, max_size=3),
    st.integers(),
    st.text(max_size=5),
)


@EXAMPLES
@given(structure=structures, protocol=st.integers(min_value=0, max_value=pickle.HIGHEST_PROTOCOL))
def test_malformed_pianoroll_pickles(structure, protocol):
    assert_clean_outcome(*train_on(pickle.dumps(structure, protocol=protocol), ".pkl", "pianoroll"))


@EXAMPLES
@given(content=st.binary(max_size=200))
def test_random_bytes_as_a_pianoroll_pickle(content):
    assert_clean_outcome(*train_on(content, ".pkl", "pianoroll"))


def test_a_pickle_that_would_run_code_is_refused_in_one_line():
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    status, err = train_on(pickle.dumps({"train": [Evil()]}), ".pkl", "pianoroll")
    assert status == 2 and "refusing to load the global builtins.print" in err


# ----------------------------------------------------------------------------- synthetic .npz / .pt
dtypes = st.one_of(
    hnp.floating_dtypes(sizes=(32, 64)),
    hnp.integer_dtypes(sizes=(8, 64)),
    hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(sizes=64),
    hnp.unicode_string_dtypes(max_len=2),
)
arrays = dtypes.flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3))
)
lengths = hnp.arrays(np.int64, hnp.array_shapes(max_dims=1, max_side=4), elements=st.integers(-3, 6))
npz_content = st.dictionaries(
    st.sampled_from(["train", "valid", "test", "train_lengths", "valid_lengths", "test_lengths", "other"]),
    st.one_of(arrays, lengths),
    max_size=7,
)


def well_formed_but_for(data: dict) -> dict:
    """Start from valid splits, so that each example probes one or two odd entries."""
    g = np.random.default_rng(0)
    valid = {split: g.normal(size=(2, 3, 2)).astype(np.float32) for split in ("train", "valid", "test")}
    return {**valid, **data}


@EXAMPLES
@given(data=npz_content, start_valid=st.booleans())
def test_malformed_synthetic_npz(data, start_valid):
    data = well_formed_but_for(data) if start_valid else data
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    assert_clean_outcome(*train_on(buffer.getvalue(), ".npz", "synthetic"))


@EXAMPLES
@given(data=npz_content, as_lists=st.booleans())
def test_malformed_synthetic_pt(data, as_lists):
    data = well_formed_but_for(data)
    content = {}
    for key, value in data.items():
        if value.dtype.kind in "biuf" and value.dtype != np.uint16:
            tensor = torch.from_numpy(np.ascontiguousarray(value.astype(value.dtype.newbyteorder("="))))
            content[key] = list(tensor.unbind(0)) if as_lists and tensor.dim() > 0 else tensor
        else:
            content[key] = value.tolist()
    buffer = io.BytesIO()
    torch.save(content, buffer)
    assert_clean_outcome(*train_on(buffer.getvalue(), ".pt", "synthetic"))


@EXAMPLES
@given(content=st.binary(max_size=200), suffix=st.sampled_from([".npz", ".pt"]))
def test_random_bytes_as_synthetic_data(content, suffix):
    assert_clean_outcome(*train_on(content, suffix, "synthetic"))


# ----------------------------------------------------------------------------- text
@EXAMPLES
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8"))))
def test_malformed_text(content):
    assert_clean_outcome(*train_on(content, ".txt", "text"))
