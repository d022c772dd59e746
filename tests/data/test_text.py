"""Tests of bbvae.data.text."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from bbvae.data import (
    SequenceBatch,
    TextData,
    Vocabulary,
    load_text,
    text_batch,
    text_batches,
    text_sequences,
)


@pytest.fixture(scope="module")
def shakespeare(shared_data) -> TextData:
    return load_text(shared_data / "text" / "tinyshakespeare.txt")


# --- the shared file --------------------------------------------------------------------------


def test_tiny_shakespeare_vocabulary_and_round_trip(shared_data, shakespeare):
    text = (shared_data / "text" / "tinyshakespeare.txt").read_text()
    vocab = shakespeare.vocabulary
    assert len(text) == 1_115_394 and text.count("\n") == 40_000
    assert vocab.size == len(vocab) == 65
    assert vocab.chars == "".join(sorted(set(text)))
    assert vocab.chars[:3] == "\n !" and vocab.chars[-1] == "z"
    encoded = vocab.encode(text)
    assert encoded.shape == (1_115_394,) and encoded.dtype == torch.long
    assert int(encoded.min()) == 0 and int(encoded.max()) == 64
    assert vocab.decode(encoded) == text


def test_contiguous_split_by_fraction(shared_data, shakespeare):
    text = (shared_data / "text" / "tinyshakespeare.txt").read_text()
    assert shakespeare.train + shakespeare.valid + shakespeare.test == text
    assert len(shakespeare.train) == int(1_115_394 * 0.9)
    assert len(shakespeare.train + shakespeare.valid) == int(1_115_394 * 0.95)
    charrnn = load_text(shared_data / "text" / "tinyshakespeare.txt", (0.95, 0.05, 0.0))
    assert charrnn.test == "" and len(charrnn.train) == int(1_115_394 * 0.95)
    assert charrnn.vocabulary == shakespeare.vocabulary


def test_batching_shapes_on_shakespeare(shakespeare):
    n_valid = len(shakespeare.valid)  # 55,769 characters: 557 pieces of 100 and one of 69
    pieces = shakespeare.sequences("valid", 100)
    assert len(pieces) == 558 and len(pieces[-1]) == n_valid % 100
    batches = list(shakespeare.batches("valid", 100, 64))
    assert len(batches) == 9
    x, lengths, inputs = batches[0]
    assert x.shape == (64, 100) and x.dtype == torch.long
    assert lengths.tolist() == [100] * 64
    assert inputs.shape == (64, 100, 65) and inputs.dtype == torch.float32
    last = batches[-1]
    assert last.x.shape == (558 - 8 * 64, 100)
    assert last.lengths[-1] == n_valid % 100
    full = shakespeare.full_batch("valid", 100, dtype=torch.float64)
    assert full.x.shape == (558, 100) and full.inputs.dtype == torch.float64
    assert shakespeare.vocabulary.decode(full.x[full.mask]) == shakespeare.valid


# --- vocabulary -------------------------------------------------------------------------------


def test_vocabulary_unicode_round_trip():
    text = "Héllo, wörld ✓ — 日本\n\tzz"
    vocab = Vocabulary.from_corpus(text)
    assert list(vocab.chars) == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.tolist() == [vocab.chars.index(c) for c in text]
    assert vocab.decode(ids) == text
    assert vocab.decode(ids.numpy()) == text and vocab.decode(ids.tolist()) == text
    assert vocab.decode([]) == "" and vocab.encode("").shape == (0,)


def test_vocabulary_in_given_order():
    vocab = Vocabulary("cab")
    assert vocab.encode("abcab").tolist() == [1, 2, 0, 1, 2]
    assert vocab.decode(torch.tensor([2, 1, 0])) == "bac"
    assert "a" in vocab and "d" not in vocab and "ab" not in vocab


def test_vocabulary_errors():
    vocab = Vocabulary.from_corpus("hello world")
    with pytest.raises(
        ValueError,
        match=r"character 'X' \(U\+0058\) at position 6 is not in the "
        r"vocabulary of 8 characters",
    ):
        vocab.encode("hello Xorld")
    with pytest.raises(ValueError, match=r"indices\[1\]: expected an index in 0\.\.7, got 8"):
        vocab.decode([0, 8])
    with pytest.raises(ValueError, match=r"indices\[0\]: expected an index in 0\.\.7, got -1"):
        vocab.decode(torch.tensor([-1]))
    with pytest.raises(TypeError, match="expected an integer tensor, got torch.float32"):
        vocab.decode(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"expected a 1-D sequence, got shape \[2, 1\]"):
        vocab.decode([[1], [2]])
    with pytest.raises(ValueError, match=r"expected distinct characters, got duplicates \['a'\]"):
        Vocabulary("aba")
    with pytest.raises(ValueError, match=r"chars\[1\]: expected a single character, got 'bc'"):
        Vocabulary(["a", "bc"])
    with pytest.raises(ValueError, match="cannot build a vocabulary from an empty text"):
        Vocabulary.from_corpus("")


# --- batches ----------------------------------------------------------------------------------


def test_inputs_are_one_hot_of_previous_character():
    vocab = Vocabulary("abc")
    pieces = text_sequences("abcab" + "ca", vocab, 5)  # "abcab", "ca"
    assert [p.tolist() for p in pieces] == [[0, 1, 2, 0, 1], [2, 0]]
    x, lengths, inputs = text_batch(pieces, vocab.size)
    assert x.tolist() == [[0, 1, 2, 0, 1], [2, 0, 0, 0, 0]]
    assert lengths.tolist() == [5, 2]
    eye = torch.eye(3)
    expected0 = torch.stack([torch.zeros(3), eye[0], eye[1], eye[2], eye[0]])
    expected1 = torch.stack([torch.zeros(3), eye[2], *[torch.zeros(3)] * 3])
    torch.testing.assert_close(inputs[0], expected0)
    torch.testing.assert_close(inputs[1], expected1)
    assert [p.tolist() for p in text_sequences("abcabca", vocab, 5, drop_last=True)] == [[0, 1, 2, 0, 1]]


def test_text_batches_shuffle_and_collate():
    vocab = Vocabulary.from_corpus("the quick brown fox jumps over the lazy dog")
    pieces = text_sequences("the quick brown fox jumps over the lazy dog", vocab, 4)
    gen = torch.Generator().manual_seed(0)
    batches = list(text_batches(pieces, 3, vocab.size, shuffle=True, generator=gen))
    seen = sorted(vocab.decode(b.x[i, : b.lengths[i]]) for b in batches for i in range(len(b.x)))
    assert seen == sorted(vocab.decode(p) for p in pieces)
    for b in batches:
        assert isinstance(b, SequenceBatch)
        assert torch.equal(b.inputs[:, 1:].argmax(-1)[b.mask[:, 1:]], b.x[:, :-1][b.mask[:, 1:]])
        assert b.inputs.sum(-1).tolist() == (b.mask & (torch.arange(b.x.shape[1]) > 0)).tolist()
    loader = torch.utils.data.DataLoader(
        pieces, batch_size=5, collate_fn=functools.partial(text_batch, vocab_size=vocab.size)
    )
    assert [b.x.shape for b in loader][0] == (5, 4)


def test_text_batch_errors():
    with pytest.raises(ValueError, match=r"expected indices in 0\.\.2, got values in 0\.\.3"):
        text_batch([torch.tensor([0, 3])], 3)
    with pytest.raises(ValueError, match=r"sequences\[1\]: expected shape \[T >= 1\], got \[0\]"):
        text_batch([torch.tensor([0]), torch.tensor([], dtype=torch.long)], 3)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        text_batch([torch.tensor([0])], 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="seq_len: expected an int >= 1, got 0"):
        text_sequences("ab", Vocabulary("ab"), 0)


# --- loading errors ---------------------------------------------------------------------------


def test_load_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt: the file is empty"):
        load_text(empty)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(np.arange(128, 256, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="binary.txt: not valid utf-8 text"):
        load_text(binary)
    good = tmp_path / "good.txt"
    good.write_text("abcdefghij")
    with pytest.raises(ValueError, match="expected fractions summing to 1"):
        load_text(good, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="expected three non-negative"):
        load_text(good, (1.2, -0.2, 0.0))
    data = load_text(good, (0.6, 0.2, 0.2))
    assert (data.train, data.valid, data.test) == ("abcdef", "gh", "ij")
    with pytest.raises(ValueError, match=r"split: expected one of \['train', 'valid', 'test'\]"):
        data.split("dev")
