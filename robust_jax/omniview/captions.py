"""Training captions and the word vocabulary of the from-scratch CLIP.

Every training image has the caption its object was rendered with ("a photo of a red mug"). To make the text tower
see the caption language the zero-shot prompts use, each step draws one of `TRAIN_TEMPLATES` per image and, with a
configured probability, drops the colour word ("a photo of a mug"), as real alt-texts vary in detail.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robust_jax.models.word_tokenizer import WordTokenizer
from robust_jax.omniview.zero_shot import DEFAULT_TEMPLATES

TRAIN_TEMPLATES = (
    "a photo of a {}",
    "a picture of a {}",
    "a photo of the {}",
    "a rendering of a {}",
    "a close-up photo of a {}",
    "a {}",
)


def caption_variants(category_names: Sequence[str], colour_names: Sequence[str],
                     templates: Sequence[str] = TRAIN_TEMPLATES) -> list[list[str]]:
    """variants[category * num_colours + colour] = [template.format(colour + " " + category) for each template]
    followed by the same without the colour word: 2 * len(templates) captions per (category, colour)."""
    variants = []
    for category in category_names:
        for colour in colour_names:
            variants.append([t.format(f"{colour} {category}") for t in templates] +
                            [t.format(category) for t in templates])
    return variants


def build_tokenizer(category_names: Sequence[str], colour_names: Sequence[str], context_length: int,
                    eval_templates: Sequence[str] = DEFAULT_TEMPLATES) -> WordTokenizer:
    """Every word of the training captions and of the zero-shot prompts (words only the prompts use stay at their
    random initial embedding: the text tower never trains on them)."""
    texts = [c for row in caption_variants(category_names, colour_names) for c in row]
    texts += [t.format(name) for name in category_names for t in eval_templates]
    return WordTokenizer.from_texts(texts, context_length)


def caption_token_table(tokenizer: WordTokenizer, category_names: Sequence[str],
                        colour_names: Sequence[str]) -> np.ndarray:
    """(categories * colours, 2 * len(TRAIN_TEMPLATES), context_length) int32 token ids of `caption_variants`."""
    variants = caption_variants(category_names, colour_names)
    flat = tokenizer([c for row in variants for c in row])
    return flat.reshape(len(variants), len(variants[0]), tokenizer.context_length)
