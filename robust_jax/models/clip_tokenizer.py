"""CLIP's byte-level BPE tokenizer, giving the same ids as open_clip's `SimpleTokenizer` (clean='lower').

    tokenizer = CLIPTokenizer("bpe_simple_vocab_16e6.txt.gz")
    token_ids = tokenizer(["a photo of a cat", "a dog"])     # int32 (2, 77)

Pipeline: ftfy.fix_text, HTML unescape (twice), strip; collapse whitespace; lower-case; split with CLIP's regex
(the special tokens, English contractions, runs of letters, single digits, runs of other non-space characters); map
each piece's UTF-8 bytes to printable characters; apply the BPE merges in rank order; add <start_of_text> and
<end_of_text>; pad with 0 to the context length, or truncate keeping <end_of_text> in the last position.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
from typing import Sequence

import numpy as np

# The merges file holds a version line, then merges; CLIP uses the first 49152 - 256 - 2 of them, so that
# 256 byte symbols, their 256 end-of-word forms, the merges and 2 special tokens make a vocabulary of 49408.
_NUM_MERGES = 49152 - 256 - 2
START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
_END_OF_WORD = "</w>"


def _import_text_dependencies():
    try:
        import ftfy
        import regex
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("CLIPTokenizer needs the packages 'ftfy' and 'regex' (pip install ftfy regex)") from error
    return ftfy, regex


@functools.lru_cache(maxsize=None)
def byte_to_unicode() -> dict[int, str]:
    """A reversible map of the 256 byte values to printable characters.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the other 68 bytes, in increasing
    order, map to chr(256), chr(257), ... so that no byte becomes whitespace or a control character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    next_code = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(next_code)
            next_code += 1
    return mapping


def _clean(text: str, ftfy) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """Byte-level BPE over CLIP's merges file (`bpe_simple_vocab_16e6.txt.gz`, from OpenAI CLIP / open_clip)."""

    def __init__(self, merges_path: str | os.PathLike, context_length: int = 77):
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length={context_length!r} must be an integer >= 2 (start and end tokens)")
        self._ftfy, regex = _import_text_dependencies()
        merges_path = os.fspath(merges_path)
        if not os.path.isfile(merges_path):
            raise FileNotFoundError(f"BPE merges file {merges_path!r} does not exist "
                                    "(CLIP's bpe_simple_vocab_16e6.txt.gz)")
        opener = gzip.open if merges_path.endswith(".gz") else open
        with opener(merges_path, "rb") as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        if len(merges) != _NUM_MERGES or any(len(pair) != 2 for pair in merges):
            raise ValueError(f"{merges_path!r} is not CLIP's merges file: expected {_NUM_MERGES} merge lines "
                             "of two symbols after the header")
        symbols = list(byte_to_unicode().values())
        vocabulary = symbols + [s + _END_OF_WORD for s in symbols] + ["".join(pair) for pair in merges]
        vocabulary += [START_OF_TEXT, END_OF_TEXT]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocabulary)}
        self.decoder: dict[int, str] = {i: token for token, i in self.encoder.items()}
        self._merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self._byte_encoder = byte_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._cache: dict[str, list[str]] = {}
        self.context_length = context_length
        self.vocab_size = len(self.encoder)
        self.start_token_id = self.encoder[START_OF_TEXT]
        self.end_token_id = self.encoder[END_OF_TEXT]
        specials = f"{regex.escape(START_OF_TEXT)}|{regex.escape(END_OF_TEXT)}"
        self._pattern = regex.compile(
            specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

    def _bpe(self, piece: str) -> list[str]:
        """BPE of one pre-tokenised piece (already mapped to byte symbols); the last symbol carries '</w>'."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        if piece in (START_OF_TEXT, END_OF_TEXT):
            return [piece]
        word = list(piece[:-1]) + [piece[-1] + _END_OF_WORD]
        while len(word) > 1:
            ranks = [self._merge_rank.get(pair, _NUM_MERGES) for pair in zip(word, word[1:])]
            best = min(ranks)
            if best == _NUM_MERGES:
                break
            first, second = word[ranks.index(best)], word[ranks.index(best) + 1]
            merged, i = [], 0
            while i < len(word):  # every non-overlapping occurrence, left to right
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without start/end tokens and without truncation."""
        ids = []
        for piece in self._pattern.findall(_clean(text, self._ftfy)):
            symbols = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(symbols))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (special tokens kept, padding zeros after <end_of_text> dropped), words split at '</w>'."""
        tokens = []
        for i in ids:
            i = int(i)
            tokens.append(self.decoder[i])
            if i == self.end_token_id:
                break
        text = "".join(tokens).replace(_END_OF_WORD, " ")
        raw = bytearray(ord(" ") if c == " " else self._byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """int32 ids of shape (len(texts), context_length): <start>, tokens, <end>, zeros.

        Texts too long keep their first context_length - 1 tokens (start included) and end with <end_of_text>.
        """
        if isinstance(texts, str):
            texts = [texts]
        context_length = self.context_length if context_length is None else context_length
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length={context_length!r} must be an integer >= 2 (start and end tokens)")
        result = np.zeros((len(texts), context_length), np.int32)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{row}] is a {type(text).__name__}, expected str")
            ids = [self.start_token_id, *self.encode(text), self.end_token_id]
            if len(ids) > context_length:
                ids = ids[: context_length - 1] + [self.end_token_id]
            result[row, : len(ids)] = ids
        return result
