"""CLIPTokenizer against open_clip 3.3.0's SimpleTokenizer (reference ids in tests/testdata)."""

import json
from pathlib import Path

import numpy as np
import pytest
from tests.requirements import require

require("ftfy", reason="CLIPTokenizer needs ftfy")
require("regex", reason="CLIPTokenizer needs regex")

from robust_jax.models.clip_tokenizer import CLIPTokenizer  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "testdata"


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer(DATA / "bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(scope="module")
def cases():
    with open(DATA / "clip_tokenizer_cases.json") as f:
        return json.load(f)["cases"]


def test_matches_open_clip_on_every_reference_string(tokenizer, cases):
    assert len(cases) == 1607
    ids = tokenizer([case["text"] for case in cases])
    expected = np.asarray([case["ids"] for case in cases])
    assert ids.shape == expected.shape == (1607, 77)
    assert ids.dtype == np.int32
    mismatched = [cases[i]["text"][:80] for i in np.flatnonzero((ids != expected).any(axis=1))]
    assert not mismatched, f"{len(mismatched)} strings differ, e.g. {mismatched[:3]}"


def test_special_ids_and_vocabulary(tokenizer):
    assert tokenizer.vocab_size == 49408
    assert (tokenizer.start_token_id, tokenizer.end_token_id) == (49406, 49407)
    ids = tokenizer("a photo of a cat.")[0]
    assert ids[0] == 49406
    end = int(np.flatnonzero(ids == 49407)[0])
    assert end == int(np.argmax(ids))  # end-of-text is the largest id: CLIP pools at argmax
    assert (ids[end + 1:] == 0).all()


def test_truncation_keeps_end_token_last(tokenizer):
    long_text = " ".join(["word"] * 200)
    ids = tokenizer(long_text)[0]
    assert ids[0] == tokenizer.start_token_id and ids[-1] == tokenizer.end_token_id
    assert len(tokenizer.encode(long_text)) == 200
    assert (ids[1:-1] == tokenizer.encode(long_text)[:75]).all()
    short = tokenizer(long_text, context_length=8)
    assert short.shape == (1, 8) and short[0, -1] == tokenizer.end_token_id


def test_cleaning_lowercase_whitespace_and_html(tokenizer):
    reference = tokenizer("a dog & a cat")
    assert (tokenizer("  A   DOG &amp;amp;\n a Cat ") == reference).all()


def test_decode_round_trip(tokenizer):
    decoded = tokenizer.decode(tokenizer("hello, world! 2024")[0])
    assert decoded == "<start_of_text>hello , world ! 2 0 2 4 <end_of_text>"


def test_bad_arguments(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="context_length"):
        tokenizer("x", context_length=1)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tokenizer(["ok", 3])
    with pytest.raises(FileNotFoundError, match="merges"):
        CLIPTokenizer(tmp_path / "missing.txt.gz")
