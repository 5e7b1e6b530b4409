"""The word-level tokenizer: ids, start/end tokens, truncation, unknown words, save/load."""

import numpy as np
import pytest

from robust_jax.models.word_tokenizer import PAD, SOT, UNK, WordTokenizer


def test_ids_layout_and_end_token_is_largest():
    tok = WordTokenizer.from_texts(["a photo of a red mug", "a rendering of a Bottle."], context_length=8)
    assert tok.words == ("a", "photo", "of", "red", "mug", "rendering", "bottle")
    ids = tok(["A photo of a RED mug!", "a photo of a purple mug"])
    assert ids.dtype == np.int32 and ids.shape == (2, 8)
    np.testing.assert_array_equal(ids[0], [SOT, 3, 4, 5, 3, 6, 7, tok.eot])
    np.testing.assert_array_equal(ids[1], [SOT, 3, 4, 5, 3, UNK, 7, tok.eot])
    assert tok.eot == tok.vocab_size - 1 == 10
    # CLIP pools at argmax(ids): that must be the end-of-text position.
    assert int(np.argmax(ids[0])) == 7


def test_truncation_keeps_end_token_and_pads():
    tok = WordTokenizer.from_texts(["one two three four five six"], context_length=4)
    ids = tok("one two three four five six")
    np.testing.assert_array_equal(ids[0], [SOT, 3, 4, tok.eot])
    short = tok("one")
    np.testing.assert_array_equal(short[0], [SOT, 3, tok.eot, PAD])


def test_save_load_round_trip(tmp_path):
    tok = WordTokenizer.from_texts(["a close-up photo of a traffic cone"], context_length=12)
    tok.save(tmp_path / "vocab.json")
    loaded = WordTokenizer.load(tmp_path / "vocab.json")
    assert loaded.words == tok.words and loaded.context_length == 12
    np.testing.assert_array_equal(loaded(["a traffic cone"]), tok(["a traffic cone"]))


def test_bad_settings():
    with pytest.raises(ValueError, match="context_length"):
        WordTokenizer(["a"], context_length=2)
    with pytest.raises(ValueError, match="at least one word"):
        WordTokenizer(["!!"])
