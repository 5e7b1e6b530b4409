"""core.streams: shares of a batch on single-threaded programs give one program's outputs (CLIP's embeddings within
1e-5, the OpenCLIP reference weights of tests/testdata), every row once and in order, whatever the split."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.core import streams
from robust_jax.models import clip, clip_import

DATA = Path(__file__).resolve().parent.parent / "testdata"


@pytest.fixture(scope="module")
def tiny_clip():
    return clip_import.from_openclip(DATA / "openclip_tiny_quickgelu.safetensors", "tiny")


@pytest.mark.parametrize("shares", [2, 3])
def test_clip_embeddings_equal_one_programs(tiny_clip, shares):
    model, variables = tiny_clip
    images = np.asarray(jax.random.normal(jax.random.key(0), (7, 32, 32, 3), jnp.float32))  # 7: the last share padded
    token_ids = np.zeros((5, 77), np.int32)
    for row, length in enumerate((3, 9, 20, 5, 77)):  # the tiny vocabulary's end-of-text is its last id, 511
        token_ids[row, :length] = np.r_[np.arange(1, length) * 7 % 500 + row, 511]
    one_image, one_text = clip.jit_encoders(model, streams=1)
    many_image, many_text = clip.jit_encoders(model, streams=shares)
    want, got = one_image(variables, images), many_image(variables, images)
    assert got.shape == want.shape == (7, model.config.embed_dim)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # each row is its own image's embedding (a split that dropped, repeated or reordered rows would fail here)
    np.testing.assert_allclose(many_image(variables, images[::-1]), want[::-1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(many_text(variables, token_ids), one_text(variables, token_ids), atol=1e-5, rtol=0)


def test_rows_keep_their_order_and_fewer_rows_than_shares():
    apply = streams.StreamedApply(lambda scale, x: scale * x + jnp.arange(x.shape[1]), 4)
    for batch in (1, 3, 4, 9):
        x = np.arange(batch * 2, dtype=np.float32).reshape(batch, 2)
        np.testing.assert_array_equal(apply(np.float32(2.0), x), 2 * x + np.arange(2))


def test_cpu_streams_override_and_devices(monkeypatch):
    monkeypatch.setenv("TEST_STREAMS", "3")
    assert streams.cpu_streams(jax.devices()[:1], env="TEST_STREAMS") == 3
    monkeypatch.setenv("TEST_STREAMS", "0")
    with pytest.raises(ValueError, match="TEST_STREAMS"):
        streams.cpu_streams(jax.devices()[:1], env="TEST_STREAMS")
    if len(jax.devices()) > 1:
        assert streams.cpu_streams(jax.devices()[:2]) == 1  # several devices: the batch is split over them instead
