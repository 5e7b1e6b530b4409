"""Training captions and the word vocabulary of the from-scratch CLIP.

Every training image has the caption its object was rendered with ("a photo of a red mug"). To make the text tower
see the caption language the zero-shot prompts use, each step draws one of `TRAIN_TEMPLATES` per image and, with a
configured probability, drops the colour word ("a photo of a mug"), as real alt-texts vary in detail.

Category-free captions ("a photo of a red object", `GENERIC_NAME` in the category's place) are what web captions of
odd views often are: they name no class. With them in the table (generic=True), the row of colour c's category-free
caption is num_categories * num_colours + c (`generic_caption_index`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robust_jax.models.word_tokenizer import WordTokenizer
from robust_jax.omniview.zero_shot import DEFAULT_TEMPLATES

GENERIC_NAME = "object"  # the category-free captions' noun
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


def _caption_rows(category_names: Sequence[str], colour_names: Sequence[str], generic: bool) -> list[list[str]]:
    return caption_variants([*category_names, *([GENERIC_NAME] if generic else [])], colour_names)


def generic_caption_index(colour_C: np.ndarray, num_categories: int, num_colours: int) -> np.ndarray:
    """The caption-table rows of the category-free captions of these colours (a table made with generic=True)."""
    return (num_categories * num_colours + np.asarray(colour_C)).astype(np.int32)


def build_tokenizer(category_names: Sequence[str], colour_names: Sequence[str], context_length: int,
                    eval_templates: Sequence[str] = DEFAULT_TEMPLATES, generic: bool = False) -> WordTokenizer:
    """Every word of the training captions (with generic, the category-free ones' too) and of the zero-shot prompts
    (words only the prompts use stay at their random initial embedding: the text tower never trains on them)."""
    texts = [c for row in _caption_rows(category_names, colour_names, generic) for c in row]
    texts += [t.format(name) for name in category_names for t in eval_templates]
    return WordTokenizer.from_texts(texts, context_length)


def caption_token_table(tokenizer: WordTokenizer, category_names: Sequence[str],
                        colour_names: Sequence[str], generic: bool = False) -> np.ndarray:
    """(categories * colours [+ colours], 2 * len(TRAIN_TEMPLATES), context_length) int32 token ids of
    `caption_variants`; with generic, the category-free captions' rows after them."""
    variants = _caption_rows(category_names, colour_names, generic)
    flat = tokenizer([c for row in variants for c in row])
    return flat.reshape(len(variants), len(variants[0]), tokenizer.context_length)
