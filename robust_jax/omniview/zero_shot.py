"""Zero-shot classification with a CLIP model: prompt ensembles, image embeddings, top-k accuracy per split.

Class embedding (Radford et al. 2021, section 3.1.4): embed every prompt `template.format(class_name)`, L2-normalise
each, average over the templates, L2-normalise the mean. An image is assigned the classes with the highest cosine
similarity. Works with any tokenizer (the BPE one or a word-level one) through a `tokenize(list[str]) -> ids` callable
and with jitted encoders from `robust_jax.models.clip.jit_encoders`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

# OpenAI CLIP's normalisation constants (RGB), used for every CLIP image tower here, pre-trained or not.
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)

# A small ensemble in the spirit of OpenAI's 80 ImageNet templates, for rendered single objects.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a picture of a {}.",
    "a rendering of a {}.",
    "a {} seen from the front.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a {}.",
)


def normalise_images(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 NHWC in [0, 255] -> float32 normalised with the CLIP mean and std."""
    return (np.asarray(images_uint8, np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_text_embeddings(encode_text: Callable, tokenize: Callable, class_names: Sequence[str],
                          templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
    """(num_classes, embed_dim) float32, unit rows: the normalised mean of the normalised prompt embeddings.

    `encode_text(token_ids) -> (n, embed_dim)`, e.g. `functools.partial(jitted_encode_text, params)`.
    """
    if not templates or not class_names:
        raise ValueError(f"need at least one template and one class; got {len(templates)} and {len(class_names)}")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must contain exactly one '{{}}' for the class name")
    prompts = [template.format(name) for name in class_names for template in templates]
    embeddings = _l2_normalise(np.asarray(encode_text(tokenize(prompts)), np.float32))
    per_class = embeddings.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return _l2_normalise(per_class)


def image_embeddings(encode_image: Callable, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, embed_dim) float32, unit rows. `images` are model inputs (already normalised); the last batch is padded
    to `batch_size` so `encode_image` compiles for one shape only."""
    n = len(images)
    out = []
    for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(encode_image(chunk), np.float32)[: batch_size - pad])
    if not out:
        raise ValueError("no images to embed")
    return _l2_normalise(np.concatenate(out))


def top_k_correct(image_emb_NxE: np.ndarray, class_emb_CxE: np.ndarray, labels_N: np.ndarray,
                  ks: Sequence[int] = (1, 5)) -> dict[int, np.ndarray]:
    """{k: (N,) bool}: whether the true class is among the k most similar classes (ties broken by class index)."""
    similarity_NxC = image_emb_NxE @ class_emb_CxE.T
    # Rank of the true class = number of classes scoring strictly higher (plus lower-index ties).
    true_score = np.take_along_axis(similarity_NxC, labels_N[:, None], axis=1)
    classes = np.arange(similarity_NxC.shape[1])[None, :]
    higher = (similarity_NxC > true_score) | ((similarity_NxC == true_score) & (classes < labels_N[:, None]))
    rank_N = higher.sum(axis=1)
    return {k: rank_N < k for k in ks}


def zero_shot_report(image_emb_NxE: np.ndarray, class_emb_CxE: np.ndarray, labels_N: np.ndarray,
                     groups: Mapping[str, np.ndarray], ks: Sequence[int] = (1, 5)) -> dict:
    """{"zero_shot_top{k}": {group: accuracy}, "zero_shot_count": {group: images}} for boolean masks `groups`."""
    correct = top_k_correct(image_emb_NxE, class_emb_CxE, np.asarray(labels_N), ks)
    report = {f"zero_shot_top{k}": {} for k in ks}
    report["zero_shot_count"] = {}
    for name, mask in groups.items():
        mask = np.asarray(mask, bool)
        report["zero_shot_count"][name] = int(mask.sum())
        for k in ks:
            report[f"zero_shot_top{k}"][name] = float(correct[k][mask].mean()) if mask.any() else float("nan")
    return report


# The 80 prompt templates OpenAI used for zero-shot ImageNet (Radford et al. 2021), which Omniview-Tuning evaluates
# with; "itap" is "I took a picture".
OPENAI_IMAGENET_TEMPLATES = tuple(f"{text}." for text in (
    "a bad photo of a {}", "a photo of many {}", "a sculpture of a {}", "a photo of the hard to see {}",
    "a low resolution photo of the {}", "a rendering of a {}", "graffiti of a {}", "a bad photo of the {}",
    "a cropped photo of the {}", "a tattoo of a {}", "the embroidered {}", "a photo of a hard to see {}",
    "a bright photo of a {}", "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}",
    "a drawing of a {}", "a photo of my {}", "the plastic {}", "a photo of the cool {}",
    "a close-up photo of a {}", "a black and white photo of the {}", "a painting of the {}", "a painting of a {}",
    "a pixelated photo of the {}", "a sculpture of the {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a plastic {}", "a photo of the dirty {}", "a jpeg corrupted photo of a {}", "a blurry photo of the {}",
    "a photo of the {}", "a good photo of the {}", "a rendering of the {}", "a {} in a video game",
    "a photo of one {}", "a doodle of a {}", "a close-up photo of the {}", "a photo of a {}",
    "the origami {}", "the {} in a video game", "a sketch of a {}", "a doodle of the {}",
    "a origami {}", "a low resolution photo of a {}", "the toy {}", "a rendition of the {}",
    "a photo of the clean {}", "a photo of a large {}", "a rendition of a {}", "a photo of a nice {}",
    "a photo of a weird {}", "a blurry photo of a {}", "a cartoon {}", "art of a {}",
    "a sketch of the {}", "a embroidered {}", "a pixelated photo of a {}", "itap of the {}",
    "a jpeg corrupted photo of the {}", "a good photo of a {}", "a plushie {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "the cartoon {}", "art of the {}",
    "a drawing of the {}", "a photo of the large {}", "a black and white photo of a {}", "the plushie {}",
    "a dark photo of a {}", "itap of a {}", "graffiti of the {}", "a toy {}",
    "itap of my {}", "a photo of a cool {}", "a photo of a small {}", "a tattoo of the {}",
))

TEMPLATE_SETS = {"rendered_objects_8": DEFAULT_TEMPLATES, "openai_imagenet_80": OPENAI_IMAGENET_TEMPLATES}
