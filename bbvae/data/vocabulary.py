"""The character vocabulary of a text corpus: characters to indices and back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["Vocabulary"]


def _code_points(text: str) -> np.ndarray:
    """``[len(text)]`` uint32 Unicode code points of ``text``."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class Vocabulary:
    """A bijection between characters and the indices ``0..V-1``.

    Args:
        chars: the distinct characters, in index order (a str or a sequence of 1-char strs).
            :meth:`from_corpus` builds the usual one: the sorted distinct characters of a text.

    Attributes:
        chars: str, character ``i`` is ``chars[i]``.
    """

    def __init__(self, chars: str | Sequence[str]) -> None:
        if isinstance(chars, str):
            items = list(chars)
        elif isinstance(chars, Sequence) and all(isinstance(c, str) for c in chars):
            items = list(chars)
        else:
            raise TypeError(f"chars: expected a str or a sequence of str, got {chars!r:.80}")
        for i, c in enumerate(items):
            if len(c) != 1:
                raise ValueError(f"chars[{i}]: expected a single character, got {c!r}")
        if not items:
            raise ValueError("chars: expected at least one character, got none")
        if len(set(items)) != len(items):
            dupes = sorted({c for c in items if items.count(c) > 1})
            raise ValueError(f"chars: expected distinct characters, got duplicates {dupes}")
        self.chars = "".join(items)
        codes = _code_points(self.chars)
        self._order = np.argsort(codes, kind="stable")  # [V] index of the k-th smallest code
        self._sorted_codes = codes[self._order]  # [V]

    @classmethod
    def from_corpus(cls, text: str) -> Vocabulary:
        """The sorted distinct characters of ``text`` (sorted by code point)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text: cannot build a vocabulary from an empty text")
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def size(self) -> int:
        """V, the number of characters."""
        return len(self.chars)

    def __contains__(self, char: object) -> bool:
        return isinstance(char, str) and len(char) == 1 and char in self.chars

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"Vocabulary({self.chars!r})"

    def encode(self, text: str, *, device: torch.device | str | None = None) -> torch.Tensor:
        """Character indices of ``text``.

        Args:
            text: a str whose characters are all in the vocabulary.
            device: device of the result (None: torch's default device).

        Returns:
            ``[len(text)]`` long tensor.

        Raises:
            ValueError: a character is not in the vocabulary (named with its position).
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        codes = _code_points(text)  # [N]
        pos = np.searchsorted(self._sorted_codes, codes)  # [N]
        pos = np.minimum(pos, len(self._sorted_codes) - 1)
        unknown = self._sorted_codes[pos] != codes  # [N]
        if unknown.any():
            k = int(np.argmax(unknown))
            raise ValueError(
                f"text: character {text[k]!r} (U+{ord(text[k]):04X}) at position {k} is not in "
                f"the vocabulary of {self.size} characters"
            )
        return torch.as_tensor(self._order[pos], dtype=torch.long, device=device)

    def decode(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> str:
        """The text of 1-D character indices; ``decode(encode(s)) == s`` exactly.

        Args:
            indices: ``[N]`` integer indices in ``0..V-1`` (tensor on any device, ndarray or
                list).

        Returns:
            a str of length N.
        """
        if isinstance(indices, torch.Tensor):
            if indices.is_floating_point() or indices.is_complex():
                raise TypeError(f"indices: expected an integer tensor, got {indices.dtype}")
            indices = indices.tolist()
        array = np.asarray(indices)
        if array.ndim != 1:
            raise ValueError(f"indices: expected a 1-D sequence, got shape {list(array.shape)}")
        if array.size == 0:
            return ""
        if array.dtype.kind not in "iu":
            raise TypeError(f"indices: expected integers, got dtype {array.dtype}")
        bad = (array < 0) | (array >= self.size)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(f"indices[{k}]: expected an index in 0..{self.size - 1}, got {int(array[k])}")
        table = np.array(list(self.chars))  # [V] of 1-char strings
        return "".join(table[array].tolist())
