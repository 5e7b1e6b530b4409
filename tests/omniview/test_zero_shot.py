"""Zero-shot evaluation: prompt-ensemble class embeddings and top-k accuracy, against direct computations."""

import zlib

import numpy as np
import pytest

from robust_jax.omniview import zero_shot


def _toy_encoder(dim=6, vocab=50, seed=0):
    table = np.random.default_rng(seed).normal(size=(vocab, dim)).astype(np.float32)

    def tokenize(texts):
        return np.array([[zlib.crc32(w.encode()) % vocab for w in t.split()][:8] + [0] * (8 - len(t.split()[:8])) for t in texts])

    def encode_text(ids):
        return table[ids].sum(axis=1)

    return tokenize, encode_text


def test_class_embeddings_are_normalised_mean_of_normalised_prompts():
    tokenize, encode_text = _toy_encoder()
    templates = ("a photo of a {}", "a {} seen from the front", "a rendering of a {}")
    names = ["mug", "traffic cone", "chair"]
    got = zero_shot.class_text_embeddings(encode_text, tokenize, names, templates)
    assert got.shape == (3, 6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    for c, name in enumerate(names):
        prompts = [encode_text(tokenize([t.format(name)]))[0] for t in templates]
        mean = np.mean([p / np.linalg.norm(p) for p in prompts], axis=0)
        np.testing.assert_allclose(got[c], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)


def test_template_without_placeholder_is_refused():
    tokenize, encode_text = _toy_encoder()
    with pytest.raises(ValueError, match="exactly one"):
        zero_shot.class_text_embeddings(encode_text, tokenize, ["mug"], ["a photo"])


def test_top_k_matches_argsort():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(200, 8))
    classes = rng.normal(size=(24, 8))
    labels = rng.integers(0, 24, 200)
    got = zero_shot.top_k_correct(images, classes, labels, ks=(1, 5, 24))
    order = np.argsort(-(images @ classes.T), axis=1, kind="stable")
    for k in (1, 5):
        np.testing.assert_array_equal(got[k], (order[:, :k] == labels[:, None]).any(axis=1))
    assert got[24].all()


def test_report_per_group_and_image_embeddings_padding():
    classes = np.eye(4, 3, dtype=np.float32)[:3]  # classes = basis vectors e0, e1, e2
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    images = classes[labels].copy()
    images[3] = classes[1]  # one wrong in group "b"
    calls = []

    def encode_image(batch):
        calls.append(batch.shape)
        return batch * 3.0  # unnormalised on purpose

    emb = zero_shot.image_embeddings(encode_image, images, batch_size=4)
    assert calls == [(4, 3), (4, 3)]  # the last batch is padded to one shape
    np.testing.assert_allclose(emb, images, atol=1e-6)
    groups = {"a": np.arange(7) < 3, "b": np.arange(7) >= 3}
    report = zero_shot.zero_shot_report(emb, classes, labels, groups, ks=(1, 2))
    assert report["zero_shot_top1"] == {"a": 1.0, "b": 0.75}
    assert report["zero_shot_count"] == {"a": 3, "b": 4}
    assert report["zero_shot_top2"]["b"] == 1.0


def test_normalise_images_uses_clip_statistics():
    images = np.full((1, 2, 2, 3), 255, np.uint8)
    np.testing.assert_allclose(zero_shot.normalise_images(images)[0, 0, 0],
                               (1.0 - zero_shot.CLIP_MEAN) / zero_shot.CLIP_STD, rtol=1e-6)
