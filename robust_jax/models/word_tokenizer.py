"""A small word-level tokenizer for CLIP models trained from scratch on a closed caption language.

Ids: 0 padding, 1 unknown word, 2 start of text, 3.. the words in the order given, and end of text = the largest
id (vocab_size - 1), so that CLIP's text tower, which pools at argmax(token_ids), pools at the end-of-text token
exactly as with the BPE vocabulary. Text is lower-cased and split into runs of letters and digits; punctuation is
dropped. Sequences longer than the context are truncated, keeping the end-of-text token (as the BPE tokenizer does).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, UNK, SOT = 0, 1, 2
_FIRST_WORD = 3
_WORD = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer:
    def __init__(self, words: Iterable[str], context_length: int = 16):
        unique = list(dict.fromkeys(w for text in words for w in split_words(text)))
        if not unique:
            raise ValueError("WordTokenizer needs at least one word")
        if context_length < 3:
            raise ValueError(f"context_length={context_length} must be >= 3 (start, one word, end)")
        self.words = tuple(unique)
        self.context_length = int(context_length)
        self._ids = {w: i + _FIRST_WORD for i, w in enumerate(self.words)}
        self.eot = _FIRST_WORD + len(self.words)

    @classmethod
    def from_texts(cls, texts: Iterable[str], context_length: int = 16) -> "WordTokenizer":
        """The vocabulary of every word in `texts`, in order of first appearance."""
        return cls(texts, context_length)

    @property
    def vocab_size(self) -> int:
        return self.eot + 1

    def encode(self, text: str) -> list[int]:
        """Word ids without start/end tokens (unknown words map to UNK)."""
        return [self._ids.get(w, UNK) for w in split_words(text)]

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """(len(texts), context_length) int32: start, words (truncated to fit), end, padding."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.full((len(texts), self.context_length), PAD, np.int32)
        for row, text in enumerate(texts):
            ids = [SOT, *self.encode(text)[: self.context_length - 2], self.eot]
            out[row, : len(ids)] = ids
        return out

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump({"words": list(self.words), "context_length": self.context_length}, f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordTokenizer":
        with open(path) as f:
            stored = json.load(f)
        return cls(stored["words"], stored["context_length"])
