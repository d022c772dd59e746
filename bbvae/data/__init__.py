"""Data loading for sequence models.

Every loader returns :class:`SequenceBatch` ``(x, lengths, inputs)``: ``x`` is
``[batch, time, *obs_shape]`` (batch-major), ``lengths`` is ``[batch]`` long and ``inputs`` is
``[batch, time, d_in]``; entries past a sequence's length are zeros. Tensors get their dtype and
device from the ``dtype`` / ``device`` arguments only.

- :mod:`bbvae.data.pianoroll`: Boulanger-Lewandowski piano rolls (JSB Chorales embedded),
  FIVO-style centred, shifted inputs.
- :mod:`bbvae.data.text`: character-level text (one-hot previous character as inputs).
- :mod:`bbvae.data.midi`: MIDI files to piano rolls and back (optional dependency ``mido``;
  imported lazily by its functions).
- :mod:`bbvae.data.audio`: raw audio (a folder of WAV files, FLAC/OGG with the optional
  ``soundfile`` (extra ``audio``, imported lazily), or the shared speech corpus) as normalised
  frames of ``frame_size`` samples (the VRNN paper's speech setting).
- :mod:`bbvae.data.synthetic`: sequences drawn from a GaussianHMM with known parameters.
- :mod:`bbvae.data.batching`: :class:`SequenceBatch`, :func:`collate_sequences` (the one collate
  function) and the batch order.
- :mod:`bbvae.data.datasets`: the ``torch.utils.data`` contract of sequence data
  (:class:`SequenceDataset`; each data set's ``dataset(split)`` gives one).
- :mod:`bbvae.data.samplers`: :class:`RandomBatchSampler`, :class:`BucketBatchSampler` (length
  bucketing) and :func:`padding_fraction`.
"""

from .audio import (
    AUDIO_BACKENDS,
    FRAME_SIZE,
    SOUNDFILE_SUFFIXES,
    AudioData,
    import_soundfile,
    load_audio,
    read_audio,
    read_wav,
    write_wav,
)
from .batching import SequenceBatch, batch_indices, collate_sequences, pad_sequences
from .datasets import SequenceDataset, TensorRows, collate_fn_of, sequence_lengths
from .midi import load_midi_folder, midi_to_pianoroll, pianoroll_to_midi
from .pianoroll import (
    HIGHEST_NOTE,
    JSB_CHORALES_SHA256,
    LOWEST_NOTE,
    NUM_KEYS,
    SPLITS,
    PianoRollData,
    PianoRollDataset,
    PianoRollFormatError,
    load_pianoroll,
    notes_to_roll,
    pianoroll_batch,
    pianoroll_batches,
    pianorolls_from_notes,
    roll_to_notes,
)
from .samplers import BucketBatchSampler, RandomBatchSampler, padding_fraction
from .synthetic import SyntheticData, gaussian_hmm_data
from .text import (
    TextData,
    TextDataset,
    Vocabulary,
    load_text,
    text_batch,
    text_batches,
    text_sequences,
)

__all__ = [
    "AUDIO_BACKENDS",
    "FRAME_SIZE",
    "SOUNDFILE_SUFFIXES",
    "AudioData",
    "import_soundfile",
    "load_audio",
    "read_audio",
    "read_wav",
    "write_wav",
    "HIGHEST_NOTE",
    "JSB_CHORALES_SHA256",
    "LOWEST_NOTE",
    "NUM_KEYS",
    "SPLITS",
    "BucketBatchSampler",
    "PianoRollData",
    "PianoRollDataset",
    "RandomBatchSampler",
    "PianoRollFormatError",
    "SequenceBatch",
    "SequenceDataset",
    "SyntheticData",
    "TensorRows",
    "TextData",
    "TextDataset",
    "Vocabulary",
    "batch_indices",
    "collate_fn_of",
    "collate_sequences",
    "gaussian_hmm_data",
    "load_midi_folder",
    "load_pianoroll",
    "load_text",
    "midi_to_pianoroll",
    "notes_to_roll",
    "pad_sequences",
    "padding_fraction",
    "pianoroll_batch",
    "pianoroll_batches",
    "pianoroll_to_midi",
    "pianorolls_from_notes",
    "roll_to_notes",
    "sequence_lengths",
    "text_batch",
    "text_batches",
    "text_sequences",
]
