"""The smoothing study's data: training batches of any batch size, the test examples to evaluate, and the images
to certify, for sklearn digits (in memory) or tfds CIFAR-10 / ImageNet (prepared in array_record format)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import ml_collections

from robust_jax.data.array_batches import ArrayBatches

DATASETS = ("digits", "cifar10", "imagenet2012")
TFDS_TEST_SPLITS = {"cifar10": "test", "imagenet2012": "validation"}


@dataclasses.dataclass(frozen=True)
class StudyData:
    make_batches: Callable  # batch_size -> a fresh training batch iterator (core.train's form), global batch size
    test_split: dict  # test examples to evaluate: {"image", "label"[, "index"]}
    certify_images: object  # indexable by example index, values in [0, 1]
    certify_labels: object  # labels by example index
    num_classes: int
    image_shape: tuple


def dataset_shape(config: ml_collections.ConfigDict) -> tuple[int, tuple]:
    """(number of classes, image shape) of the config's dataset, without reading it."""
    if config.dataset == "digits":
        from robust_jax.data.digits import IMAGE_SHAPE, NUM_CLASSES

        return NUM_CLASSES, IMAGE_SHAPE
    from robust_jax.data import tfds_images

    spec = tfds_images.SUPPORTED_DATASETS[config.dataset]
    return spec.num_classes, (spec.default_image_size, spec.default_image_size, 3)


def load_data(config: ml_collections.ConfigDict) -> StudyData:
    """digits: the whole split in memory. cifar10 / imagenet2012: tfds prepared in array_record format under
    `config.data_dir` (nothing is downloaded); training streams through grain with the loaders' augmentation, and
    only every `certify_every`-th test example is loaded (the ones certified and scored)."""
    if config.dataset == "digits":
        from robust_jax.data.digits import IMAGE_SHAPE, NUM_CLASSES, load_digits_splits

        splits = load_digits_splits(config.test_fraction, seed=config.seed)
        train_split, test_split = splits["train"], splits["test"]

        def make_batches(batch_size: int):
            return ArrayBatches(train_split, batch_size=batch_size, seed=config.seed,
                                process_index=jax.process_index(), process_count=jax.process_count())

        return StudyData(make_batches, test_split, test_split["image"], test_split["label"], NUM_CLASSES,
                         IMAGE_SHAPE)
    if config.dataset in TFDS_TEST_SPLITS:
        from robust_jax.data import tfds_images

        def make_batches(batch_size: int):
            return tfds_images.TrainBatches(tfds_images.make_image_loader(
                config.dataset, "train", batch_size=batch_size // jax.process_count(), train=True,
                data_dir=config.data_dir or None, seed=config.seed))

        num_classes, image_shape = dataset_shape(config)
        subset, all_labels, lazy_images = tfds_images.every_kth_example(
            config.dataset, TFDS_TEST_SPLITS[config.dataset], config.certify_every,
            batch_size=config.eval_batch_size, data_dir=config.data_dir or None)
        return StudyData(make_batches, subset, lazy_images, all_labels, num_classes, image_shape)
    raise ValueError(f"dataset={config.dataset!r} is not supported; one of {DATASETS}")
