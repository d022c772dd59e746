"""Tests of bbvae.data.pianoroll (and the batch order of bbvae.data.batching)."""

from __future__ import annotations

import functools
import hashlib
import pickle
from importlib import resources

import numpy as np
import pytest
import torch

from bbvae.data import (
    JSB_CHORALES_SHA256,
    NUM_KEYS,
    PianoRollData,
    PianoRollFormatError,
    SequenceBatch,
    batch_indices,
    load_pianoroll,
    notes_to_roll,
    pianoroll_batch,
    pianoroll_batches,
    roll_to_notes,
)

# The table of /work/shared/data/README.md: per split, (sequences, steps, min length,
# max length, notes, rests, lowest MIDI note, highest MIDI note, max notes per step).
SHARED_STATS = {
    "jsb_chorales": {
        "train": (229, 13_807, 25, 129, 53_824, 18, 43, 96, 4),
        "valid": (76, 4_602, 32, 144, 17_811, 29, 48, 96, 4),
        "test": (77, 4_725, 32, 160, 18_367, 17, 45, 96, 4),
    },
    "nottingham": {
        "train": (694, 176_561, 40, 1788, 699_403, 487, 31, 93, 9),
        "valid": (173, 45_513, 96, 1473, 180_192, 51, 34, 91, 8),
        "test": (170, 44_463, 63, 1793, 177_421, 19, 36, 89, 9),
    },
    "musedata": {
        "train": (524, 245_202, 9, 3457, 856_543, 12_962, 21, 96, 14),
        "valid": (135, 82_755, 63, 3723, 287_893, 4_412, 21, 100, 15),
        "test": (124, 64_339, 45, 4273, 211_857, 5_042, 21, 105, 14),
    },
    "piano_midi": {
        "train": (87, 75_911, 111, 3857, 231_089, 4_917, 21, 108, 12),
        "valid": (12, 8_540, 209, 1637, 27_623, 251, 24, 104, 11),
        "test": (25, 19_036, 65, 2645, 56_067, 652, 21, 108, 10),
    },
}


@pytest.fixture(scope="module")
def jsb() -> PianoRollData:
    """The embedded default data set (no shared folder needed)."""
    return PianoRollData.load()


def _dump(tmp_path, obj, name="data.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj))
    return path


def _tiny(**overrides):
    data = {
        "train": [[(60, 64), (), (67,)], [(21, 108)]],
        "valid": [[(60,)]],
        "test": [[(62,), (62, 65)]],
    }
    data.update(overrides)
    return data


# --- the shared files -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHARED_STATS))
def test_shared_files_match_readme_table(shared_data, name):
    rolls = load_pianoroll(shared_data / "pianoroll" / f"{name}.pkl")
    assert list(rolls) == ["train", "valid", "test"]
    for split, expected in SHARED_STATS[name].items():
        seqs = rolls[split]
        assert all(r.dtype == np.bool_ and r.shape[1] == NUM_KEYS for r in seqs)
        lengths = [r.shape[0] for r in seqs]
        frames = np.concatenate(seqs)  # [steps, 88]
        per_step = frames.sum(axis=1)
        keys = np.flatnonzero(frames.any(axis=0))
        got = (
            len(seqs),
            len(frames),
            min(lengths),
            max(lengths),
            int(per_step.sum()),
            int((per_step == 0).sum()),
            int(keys.min()) + 21,
            int(keys.max()) + 21,
            int(per_step.max()),
        )
        assert got == expected, split


def test_orig_pickle_loads_identically(shared_data):
    orig = load_pianoroll(shared_data / "pianoroll" / "jsb_chorales.orig.pkl")
    norm = load_pianoroll(shared_data / "pianoroll" / "jsb_chorales.pkl")
    for split in ("train", "valid", "test"):
        assert len(orig[split]) == len(norm[split])
        for a, b in zip(orig[split], norm[split], strict=True):
            np.testing.assert_array_equal(a, b)


def test_embedded_default_equals_shared_file(shared_data, jsb):
    embedded = resources.files("bbvae.data").joinpath("jsb_chorales.pkl").read_bytes()
    assert embedded == (shared_data / "pianoroll" / "jsb_chorales.pkl").read_bytes()
    shared = PianoRollData.load(shared_data / "pianoroll" / "jsb_chorales.pkl")
    for split in ("train", "valid", "test"):
        for a, b in zip(jsb.split(split), shared.split(split), strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jsb.train_mean, shared.train_mean)


# --- the embedded default ---------------------------------------------------------------------


def test_embedded_default_checksum_and_counts(jsb):
    embedded = resources.files("bbvae.data").joinpath("jsb_chorales.pkl").read_bytes()
    assert hashlib.sha256(embedded).hexdigest() == JSB_CHORALES_SHA256
    assert [len(jsb.split(s)) for s in ("train", "valid", "test")] == [229, 76, 77]
    assert [jsb.num_steps(s) for s in ("train", "valid", "test")] == [13_807, 4_602, 4_725]
    assert roll_to_notes(jsb.train[0])[:2] == [(60, 72, 79, 88), (72, 79, 88)]


def test_train_mean_is_over_all_training_steps(jsb):
    mean = jsb.train_mean
    assert mean.shape == (NUM_KEYS,) and mean.dtype == np.float64
    np.testing.assert_allclose(mean, np.concatenate(jsb.train).mean(axis=0), rtol=0, atol=1e-15)
    assert mean.sum() * 13_807 == pytest.approx(53_824)
    # Not the mean of per-sequence means: long sequences weigh more.
    per_sequence = np.mean([r.mean(axis=0) for r in jsb.train], axis=0)
    assert not np.allclose(mean, per_sequence)


# --- conversion -------------------------------------------------------------------------------


def test_notes_to_roll_columns_rests_and_step_types():
    roll = notes_to_roll([(21, 108), (), [60, 60], np.array([64], dtype=np.uint8)])
    assert roll.shape == (4, 88) and roll.dtype == np.bool_
    assert roll[0, 0] and roll[0, 87] and roll[0].sum() == 2
    assert not roll[1].any()
    assert roll[2, 39] and roll[2].sum() == 1  # a repeated note counts once
    assert roll[3, 43] and roll[3].sum() == 1
    assert roll_to_notes(roll) == [(21, 108), (), (60,), (64,)]


def test_roll_to_notes_round_trips_jsb(jsb):
    for roll in jsb.valid[:20]:
        np.testing.assert_array_equal(notes_to_roll(roll_to_notes(roll)), roll)


# --- batches ----------------------------------------------------------------------------------


def test_inputs_follow_fivo_convention_small_example():
    # Three keys, mean [0, 0, 1]: inputs are zero at t = 0, then the previous frame minus the
    # mean, then zero past each length.
    rolls = [
        np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]]),
        np.array([[1, 1, 0], [0, 1, 0]]),
    ]
    batch = pianoroll_batch(rolls, mean=np.array([0.0, 0.0, 1.0]))
    assert isinstance(batch, SequenceBatch)
    assert batch.lengths.tolist() == [3, 2] and batch.lengths.dtype == torch.long
    assert batch.x.dtype == torch.float32
    assert batch.x[1].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert batch.inputs[0].tolist() == [[0, 0, 0], [1, 0, -1], [0, 0, -1]]
    assert batch.inputs[1].tolist() == [[0, 0, 0], [1, 1, -1], [0, 0, 0]]
    assert batch.mask.tolist() == [[True, True, True], [True, True, False]]
    uncentred = pianoroll_batch(rolls, mean=None)
    assert uncentred.inputs[0].tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inputs_convention_on_jsb_ragged_batches(jsb, dtype):
    mean = torch.as_tensor(jsb.train_mean, dtype=dtype)
    seen = []
    order = batch_indices([len(r) for r in jsb.valid], 8)
    batches = list(jsb.batches("valid", 8, dtype=dtype))
    assert len(batches) == 10 and [len(b.lengths) for b in batches] == [8] * 9 + [4]
    for idx, batch in zip(order, batches, strict=True):
        x, lengths, inputs = batch
        B, T, D = x.shape
        assert x.dtype == inputs.dtype == dtype and D == 88
        assert T == int(lengths.max()) and len(set(lengths.tolist())) > 1  # ragged
        for b, i in enumerate(idx):
            n = len(jsb.valid[i])
            assert lengths[b] == n
            np.testing.assert_array_equal(x[b, :n].numpy(), jsb.valid[i])
            assert not x[b, n:].any()
            assert not inputs[b, 0].any() and not inputs[b, n:].any()
            torch.testing.assert_close(inputs[b, 1:n], x[b, : n - 1] - mean, rtol=0, atol=0)
        seen.extend(idx)
    assert seen == list(range(76))


def test_batches_shuffle_is_reproducible_and_complete(jsb):
    def lengths_of(seed):
        gen = torch.Generator().manual_seed(seed)
        return [b.lengths.tolist() for b in jsb.batches("train", 50, shuffle=True, generator=gen)]

    first, again, other = lengths_of(0), lengths_of(0), lengths_of(1)
    assert first == again and first != other
    assert sorted(sum(first, [])) == sorted(len(r) for r in jsb.train)
    dropped = list(jsb.batches("train", 50, drop_last=True))
    assert [len(b.lengths) for b in dropped] == [50] * 4


def test_sort_by_length_buckets(jsb):
    batches = list(jsb.batches("test", 10, sort_by_length=True))
    lengths = [b.lengths.tolist() for b in batches]
    flat = sum(lengths, [])
    assert flat == sorted(flat, reverse=True)
    gen = torch.Generator().manual_seed(3)
    shuffled = [
        b.lengths.tolist() for b in jsb.batches("test", 10, sort_by_length=True, shuffle=True, generator=gen)
    ]
    assert sorted(shuffled) == sorted(lengths) and shuffled != lengths


def test_full_batch(jsb):
    batch = jsb.full_batch("test")
    assert batch.x.shape == (77, 160, 88) and batch.inputs.shape == (77, 160, 88)
    assert batch.lengths.tolist() == [len(r) for r in jsb.test]
    assert int(batch.x.sum()) == 18_367
    ordered = jsb.full_batch("test", sort_by_length=True, dtype=torch.float64)
    assert ordered.x.dtype == torch.float64
    assert ordered.lengths.tolist() == sorted(batch.lengths.tolist(), reverse=True)


def test_works_as_dataloader_collate(jsb):
    loader = torch.utils.data.DataLoader(
        jsb.valid, batch_size=16, collate_fn=functools.partial(pianoroll_batch, mean=jsb.train_mean)
    )
    batches = list(loader)
    assert len(batches) == 5 and batches[0].x.shape[0] == 16
    direct = next(iter(jsb.batches("valid", 16)))
    torch.testing.assert_close(batches[0].inputs, direct.inputs)


def test_batch_indices():
    assert batch_indices([3, 1, 2], 2) == [[0, 1], [2]]
    assert batch_indices([3, 1, 2], 2, drop_last=True) == [[0, 1]]
    assert batch_indices([1, 3, 3, 2], 3, sort_by_length=True) == [[1, 2, 3], [0]]
    assert batch_indices([], 4) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        batch_indices([1], 0)
    with pytest.raises(TypeError, match="batch_size must be an int, got float"):
        batch_indices([1], 2.0)


# --- errors -----------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "jsb.pkl"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pianoroll(path)


def test_not_a_pickle(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("train: 60 64 67\n")
    with pytest.raises(PianoRollFormatError, match="notes.txt: not a readable piano-roll pickle"):
        load_pianoroll(path)
    assert issubclass(PianoRollFormatError, ValueError)


def test_pickle_with_foreign_class_is_refused(tmp_path):
    path = _dump(tmp_path, {"train": [], "fn": functools.partial(print, "hello")})
    with pytest.raises(PianoRollFormatError, match="refusing to load the global functools.partial"):
        load_pianoroll(path)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([[(60,)]], r"expected a dict with keys 'train', 'valid', 'test', got list"),
        ({"train": [[(60,)]], "test": [[(60,)]]}, r"missing split key\(s\) \['valid'\]"),
        (_tiny(valid=[]), r"split 'valid' is empty"),
        (_tiny(test="abc"), r"split 'test' must be a list of sequences, got str"),
        (_tiny(train=[[(60,)], []]), r"split 'train', sequence 1: expected at least one"),
        (_tiny(train=[[(60,)], [(61,), 62]]), r"sequence 1, time step 1: expected a tuple"),
    ],
)
def test_wrong_structure(tmp_path, obj, match):
    with pytest.raises(PianoRollFormatError, match=match):
        load_pianoroll(_dump(tmp_path, obj))


@pytest.mark.parametrize("note", [20, 109, 0, -60])
def test_note_out_of_range_names_split_sequence_step_and_note(tmp_path, note):
    data = _tiny(valid=[[(60,)], [(60,)], [(60,), (), (64, note)]])
    with pytest.raises(
        PianoRollFormatError,
        match=rf"data.pkl: split 'valid', sequence 2, time step 2: note {note} is outside "
        r"the piano range 21\.\.108",
    ):
        load_pianoroll(_dump(tmp_path, data))


@pytest.mark.parametrize("note", [60.0, "60", None, True, (60,)])
def test_non_integer_note(tmp_path, note):
    data = _tiny(test=[[(62,), (64, note)]])
    with pytest.raises(
        PianoRollFormatError,
        match=r"split 'test', sequence 0, time step 1: expected integer MIDI note numbers",
    ):
        load_pianoroll(_dump(tmp_path, data))


def test_extra_keys_are_ignored(tmp_path):
    data = _tiny(train_mean=np.zeros(88))
    rolls = load_pianoroll(_dump(tmp_path, data))
    assert list(rolls) == ["train", "valid", "test"]
    assert roll_to_notes(rolls["train"][0]) == [(60, 64), (), (67,)]


def test_argument_errors(jsb):
    with pytest.raises(ValueError, match=r"split: expected one of \['train', 'valid', 'test'\]"):
        jsb.split("validation")
    with pytest.raises(ValueError, match=r"mean: expected shape \[88\], got \[87\]"):
        pianoroll_batch(jsb.valid[:2], mean=np.zeros(87))
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        pianoroll_batch(jsb.valid[:2], mean=None, dtype=torch.long)
    with pytest.raises(ValueError, match=r"rolls\[1\]: expected shape \[T >= 1, 88\], got \[3\]"):
        pianoroll_batch([jsb.valid[0], np.zeros(3)], mean=None)
    with pytest.raises(ValueError, match="rolls: expected at least one sequence"):
        pianoroll_batches([], 4, mean=None)
    with pytest.raises(ValueError, match=r"train\[0\]: expected shape \[T, 88\], got \[5, 12\]"):
        PianoRollData(train=[np.zeros((5, 12))], valid=jsb.valid, test=jsb.test)
    with pytest.raises(ValueError, match=r"valid\[0\]: expected 0/1 frames"):
        PianoRollData(train=jsb.train, valid=[np.full((2, 88), 0.5)], test=jsb.test)
