"""Fixtures for the bbvae.data tests: the shared real data sets, found next to the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# /work/main/tests/data/conftest.py -> /work/shared/data
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

SHARED_FILES = (
    "pianoroll/jsb_chorales.pkl",
    "pianoroll/jsb_chorales.orig.pkl",
    "pianoroll/nottingham.pkl",
    "pianoroll/musedata.pkl",
    "pianoroll/piano_midi.pkl",
    "text/tinyshakespeare.txt",
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; skip the test when it is missing, or fail when ``CI`` is set.

    In CI (the environment variable ``CI`` set to a non-empty value) a missing file is a
    failure, so data tests cannot silently stop running there.
    """
    missing = [name for name in SHARED_FILES if not (SHARED_DATA / name).is_file()]
    if missing:
        message = f"shared data not found under {SHARED_DATA}: missing {missing}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA
