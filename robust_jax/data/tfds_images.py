"""CIFAR-10, CIFAR-100 and ImageNet2012 input pipelines: `tfds.data_source` + grain, no TensorFlow.

Pipeline chosen: `tfds.data_source(name, split=..., data_dir=..., download=False)` gives random access to the
prepared ArrayRecord files (examples come back as numpy dicts, decoded without TensorFlow); a grain `DataLoader`
samples indices, augments with numpy/Pillow (`robust_jax/data/image_ops.py`) and batches. Why:
  * no TensorFlow dependency: `tf.data` would pull in TensorFlow just to read files; these loaders need only
    tensorflow-datasets, grain, array-record and Pillow.
  * random access means the order is a pure function of the index: grain's `IndexSampler` shuffles with a seeded
    permutation per epoch and hands every record a Philox generator keyed by `seed + index` for its augmentation,
    so a given seed gives the same batches on any machine, and a run resumes exactly from a checkpoint.
  * per-host sharding: host `process_index` of `process_count` reads only its own contiguous block of records
    (grain `ShardOptions`), never the other hosts' records.

Usage::

    loader = make_image_loader('cifar10', 'train', batch_size=128, train=True, seed=0)
    iterator = loader.iterator()          # a grain DataLoaderIterator
    batch = next(iterator)                # {'image': float32 (128, 32, 32, 3) in [0, 1], 'label': int32 (128,)}
    state = iterator.get_state()          # bytes; save it with the model (orbax: ocp.args.PyGrainCheckpointSave)
    iterator = loader.iterator(state)     # continues with exactly the batches the old iterator would have given

Checkpointable state: grain's own `get_state()`/`set_state()` (JSON bytes holding the last index read). Because the
sampler is deterministic and index based, that index (hence the (epoch, step) position) fully determines every
later batch, including its augmentation.

Training (`train=True`): shuffled (a fresh permutation per epoch), augmented (CIFAR: 4-pixel zero-padding random
crop + horizontal flip; ImageNet: random-resized crop + flip), repeated for `num_epochs` (None: forever), and the
last partial batch dropped. Each host gets floor(N / process_count) records so every host runs the same number of
steps. Batches can straddle an epoch boundary.

Evaluation (`train=False`): one pass in record order, no augmentation, and nothing dropped: the final batch is
PADDED, and every batch carries a boolean 'mask' (True for a real example, False for padding: zero image, label 0).
Every host yields the same number of batches (`loader.num_batches`), so a multi-host evaluation step never waits
for a host that ran out; summing `metric * mask` over all hosts counts each example of the split exactly once.

Images are float32 in [0, 1] (normalisation is the model's business); labels int32. With `with_ids=True` batches also
carry 'index' (int64 position of the record in the split; -1 for padding) and 'id' (the tfds id / file name).

Nothing is downloaded at run time: prepare the dataset once in array_record format, e.g.
`tfds build cifar10 --file_format=array_record --data_dir=DIR` (ImageNet2012 needs its tar files placed in the
manual directory first), then point `data_dir` at DIR.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import grain
import jax
import numpy as np

from robust_jax.core import checks
from robust_jax.data import image_ops


@dataclasses.dataclass(frozen=True)
class ImageDatasetSpec:
  """What the loaders need to know about a supported tfds dataset."""
  tfds_name: str
  splits: tuple[str, ...]
  num_classes: int
  id_field: str
  default_image_size: int  # output height = width


SUPPORTED_DATASETS: dict[str, ImageDatasetSpec] = {
    'cifar10': ImageDatasetSpec('cifar10', ('train', 'test'), 10, 'id', 32),
    'cifar100': ImageDatasetSpec('cifar100', ('train', 'test'), 100, 'id', 32),
    'imagenet2012': ImageDatasetSpec('imagenet2012', ('train', 'validation'), 1000, 'file_name', 224),
}

CIFAR_CROP_PADDING = 4
# The usual ImageNet evaluation view: shorter side 256, centre crop 224, i.e. resize = crop * 256 / 224.
IMAGENET_RESIZE_RATIO = 256 / 224


@dataclasses.dataclass(frozen=True)
class ImageLoader:
  """A configured grain DataLoader plus the sizes a training or evaluation loop needs.

  Attributes:
    data_loader: the grain DataLoader; `iter(data_loader)` is a checkpointable DataLoaderIterator.
    name, split: the tfds dataset and split.
    train: whether this is the shuffled, augmented, drop-remainder training stream.
    batch_size: examples per batch on this host.
    num_classes: number of label classes.
    image_shape: (H, W, C) of one image.
    num_examples: records in the split (all hosts together).
    host_examples: real records this host reads per epoch.
    num_batches: batches this host yields in total; None for an endless training stream. For evaluation it is the
      same on every host.
    process_index, process_count: this host's shard.
  """
  data_loader: grain.DataLoader
  name: str
  split: str
  train: bool
  batch_size: int
  num_classes: int
  image_shape: tuple[int, int, int]
  num_examples: int
  host_examples: int
  num_batches: int | None
  process_index: int
  process_count: int

  def iterator(self, state: bytes | None = None) -> grain.DataLoaderIterator:
    """A fresh iterator, or one resumed from `state` (bytes from a previous iterator's `get_state()`)."""
    iterator = iter(self.data_loader)
    if state is not None:
      iterator.set_state(state)
    return iterator

  def __iter__(self):
    return self.iterator()

  @property
  def steps_per_epoch(self) -> int:
    """Training: full batches per pass over this host's records. Evaluation: all batches, the padded one included."""
    return self.host_examples // self.batch_size if self.train else self.num_batches


class _HostRecords:
  """Random-access view of records [start, stop) of a tfds split, optionally padded to `length` records.

  Records past stop - start are padding: a zero image of `pad_image_shape`, label 0, index -1, mask False. Keeps only
  the fields the pipeline uses (e.g. drops CIFAR-100's coarse_label).
  """

  def __init__(self, source, *, description: str, start: int, stop: int, length: int, id_field: str,
               with_mask: bool, with_ids: bool, pad_image_shape: tuple[int, int, int]):
    self._source = source
    self._description = description
    self._start, self._stop, self._length = start, stop, length
    self._id_field = id_field
    self._with_mask = with_mask
    self._with_ids = with_ids
    self._pad_image_shape = pad_image_shape

  def __len__(self) -> int:
    return self._length

  def __repr__(self) -> str:
    # grain compares this repr with the one saved in an iterator state, so it must not contain memory addresses.
    return (f'_HostRecords({self._description}, records=[{self._start}, {self._stop}), length={self._length}, '
            f'mask={self._with_mask}, ids={self._with_ids})')

  def __getitem__(self, position: int) -> dict[str, Any]:
    position = int(position)
    if position < 0 or position >= self._length:
      raise IndexError(f'record {position} out of range [0, {self._length})')
    index = self._start + position
    if index < self._stop:
      example = self._source[index]
      record = {'image': np.asarray(example['image'], np.uint8), 'label': np.int32(example['label'])}
      if self._with_ids:
        example_id = example[self._id_field]
        record['id'] = example_id.decode() if isinstance(example_id, bytes) else str(example_id)
      is_real = True
    else:
      record = {'image': np.zeros(self._pad_image_shape, np.uint8), 'label': np.int32(0)}
      if self._with_ids:
        record['id'] = ''
      index, is_real = -1, False
    if self._with_ids:
      record['index'] = np.int64(index)
    if self._with_mask:
      record['mask'] = np.bool_(is_real)
    return record


class _CifarTrainAugment(grain.transforms.RandomMap):
  """4-pixel zero-padding random crop + random horizontal flip."""

  def random_map(self, element, rng: np.random.Generator):
    image = image_ops.pad_and_random_crop(element['image'], CIFAR_CROP_PADDING, rng)
    element['image'] = np.ascontiguousarray(image_ops.random_flip_left_right(image, rng))
    return element


@dataclasses.dataclass(frozen=True)
class _ImagenetTrainAugment(grain.transforms.RandomMap):
  """Inception-style random-resized crop to image_size + random horizontal flip."""
  image_size: int

  def random_map(self, element, rng: np.random.Generator):
    image = image_ops.random_resized_crop(element['image'], self.image_size, rng)
    element['image'] = np.ascontiguousarray(image_ops.random_flip_left_right(image, rng))
    return element


@dataclasses.dataclass(frozen=True)
class _ImagenetEvalView(grain.transforms.Map):
  """Shorter side to resize_size, centre crop image_size."""
  image_size: int
  resize_size: int

  def map(self, element):
    element['image'] = np.ascontiguousarray(
        image_ops.resize_shorter_side_and_centre_crop(element['image'], self.resize_size, self.image_size))
    return element


class _ToModelDtypes(grain.transforms.Map):
  """Batched uint8 images -> float32 in [0, 1]; labels int32. Done per batch: one vectorised division."""

  def map(self, batch):
    batch['image'] = batch['image'].astype(np.float32) / np.float32(255.0)
    batch['label'] = batch['label'].astype(np.int32)
    return batch


def _sampler_seed(seed: int) -> int:
  """A well-mixed 32-bit seed for grain, which keys each record's generator by seed + index: without mixing, seeds
  s and s + 1 would give the same augmentations shifted by one record."""
  return int(np.random.SeedSequence(int(seed)).generate_state(1, np.uint32)[0])


def _split_names(split: str) -> list[str]:
  """The base split names of a tfds split string: 'train[:90%]+test' -> ['train', 'test']."""
  return [re.split(r'[\[(]', part.strip(), maxsplit=1)[0].strip() for part in split.split('+')]


def _validate(name, split, batch_size, seed, num_epochs, process_index, process_count, data_dir, train,
              image_size, resize_size) -> ImageDatasetSpec:
  """Every argument check, before any file is opened."""
  if name not in SUPPORTED_DATASETS:
    raise ValueError(f'Unknown dataset name {name!r}; supported: {sorted(SUPPORTED_DATASETS)}.')
  spec = SUPPORTED_DATASETS[name]
  if not isinstance(split, str) or not split.strip():
    raise ValueError(f'split must be a non-empty tfds split string, got {split!r}; {name} has {list(spec.splits)}.')
  for base in _split_names(split):
    if base not in spec.splits:
      raise ValueError(f'Unknown split {split!r} for {name}: base split {base!r} is not one of {list(spec.splits)} '
                       "(tfds slicing such as 'train[:90%]' is allowed).")
  checks.check_int('batch_size', batch_size, minimum=1)
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**32:
    raise ValueError(f'seed must be an integer in [0, 2**32), got {seed!r}.')
  if num_epochs is not None:
    checks.check_int('num_epochs', num_epochs, minimum=1)
    if not train and num_epochs != 1:
      raise ValueError(f'num_epochs={num_epochs!r}: evaluation makes exactly one pass; leave num_epochs as None.')
  checks.check_int('process_count', process_count, minimum=1)
  checks.check_int('process_index', process_index, minimum=0)
  if process_index >= process_count:
    raise ValueError(f'process_index must be in [0, process_count={process_count}), got {process_index}.')
  if image_size is not None:
    checks.check_int('image_size', image_size, minimum=1)
    if name != 'imagenet2012' and image_size != spec.default_image_size:
      raise ValueError(f'image_size={image_size}: {name} images are {spec.default_image_size}x'
                       f'{spec.default_image_size}; only imagenet2012 is resized.')
  if resize_size is not None:
    checks.check_int('resize_size', resize_size, minimum=1)
    if name != 'imagenet2012':
      raise ValueError(f'resize_size={resize_size}: only imagenet2012 is resized; leave it None for {name}.')
  if data_dir is not None and not os.path.isdir(os.fspath(data_dir)):
    raise ValueError(f'data_dir={os.fspath(data_dir)!r} does not exist. Prepare {name} there in array_record format '
                     f'(e.g. `tfds build {name} --file_format=array_record --data_dir=DIR`); '
                     'nothing is downloaded at run time.')
  return spec


def open_tfds_source(name: str, split: str, data_dir: str | os.PathLike | None = None):
  """`tfds.data_source` with download=False, turning 'not prepared' failures into a ValueError that says what to do."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (only the image studies need it)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as error:  # tfds raises assorted types (DatasetNotFoundError, NotImplementedError, ...).
    where = data_dir if data_dir is not None else 'the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)'
    raise ValueError(
        f'Could not open {name!r} split {split!r} in {where} with tfds.data_source: {error}\n'
        f'tfds.data_source needs the dataset already prepared in array_record format, e.g. '
        f'`tfds build {name} --file_format=array_record --data_dir=DIR` (or tfds.builder(...).download_and_prepare('
        f"file_format='array_record')); nothing is downloaded at run time.") from error


def make_image_loader(
    name: str,
    split: str,
    *,
    batch_size: int,
    train: bool,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    num_epochs: int | None = None,
    shuffle: bool | None = None,
    augment: bool | None = None,
    image_size: int | None = None,
    resize_size: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    with_ids: bool = False,
    worker_count: int = 0,
    read_options: grain.ReadOptions | None = None,
) -> ImageLoader:
  """Builds this host's batched loader for a tfds image dataset (see the module docstring for the semantics).

  Args:
    name: one of SUPPORTED_DATASETS ('cifar10', 'cifar100', 'imagenet2012').
    split: tfds split string, e.g. 'train', 'test', 'validation', 'train[:90%]'.
    batch_size: examples per batch on this host (the global batch is batch_size * process_count).
    train: True for the shuffled, augmented, endless, drop-remainder stream; False for one ordered, padded pass.
    data_dir: where the dataset was prepared in array_record format (None: the TFDS default).
    seed: 32-bit seed for the shuffle order and the per-example augmentation.
    num_epochs: training epochs (None: repeat forever). Evaluation is always one pass.
    shuffle: defaults to `train`. Ignored in evaluation, whose order is always the record order.
    augment: defaults to `train`. Ignored in evaluation.
    image_size: output side for imagenet2012 (default 224); CIFAR stays 32.
    resize_size: imagenet2012 shorter side before the centre crop (default round(image_size * 256 / 224)).
    process_index, process_count: this host's shard; default jax.process_index() / jax.process_count().
    with_ids: also return 'index' (position in the split, -1 for padding) and 'id' (tfds id / file name strings).
    worker_count: grain worker processes (0: decode and augment in this process). Workers need absl flags parsed
      (an absl app, or `absl.flags.FLAGS.mark_as_parsed()` in a notebook); the state must be restored into a loader
      with the same worker_count.
    read_options: grain ReadOptions (reader threads, prefetch).

  Returns:
    An ImageLoader; `loader.iterator()` yields numpy dicts {'image': (B, H, W, C) float32, 'label': (B,) int32}
    plus 'mask' (B,) bool in evaluation.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  spec = _validate(name, split, batch_size, seed, num_epochs, process_index, process_count, data_dir, train,
                   image_size, resize_size)
  image_size = image_size or spec.default_image_size
  resize_size = resize_size or int(round(image_size * IMAGENET_RESIZE_RATIO))
  if resize_size < image_size:
    raise ValueError(f'resize_size={resize_size} must be >= image_size={image_size} (the crop is taken from it).')
  shuffle = train if shuffle is None else shuffle
  augment = train if augment is None else augment
  image_shape = (image_size, image_size, 3)

  source = open_tfds_source(name, split, data_dir)
  num_examples = len(source)
  if num_examples < 1:
    raise ValueError(f'{name} split {split!r} is empty.')
  description = f'{name}:{split}'

  if train:
    records = _HostRecords(source, description=description, start=0, stop=num_examples, length=num_examples,
                           id_field=spec.id_field, with_mask=False, with_ids=with_ids, pad_image_shape=image_shape)
    # drop_remainder: every host gets floor(N / process_count) records, hence the same number of steps.
    shard_options = grain.sharding.ShardOptions(shard_index=process_index, shard_count=process_count,
                                                drop_remainder=True)
    host_examples = num_examples // process_count
    if host_examples < 1:
      raise ValueError(f'{name}:{split} has {num_examples} records, fewer than process_count={process_count}.')
    if num_epochs is not None and host_examples * num_epochs < batch_size:
      raise ValueError(f'batch_size={batch_size} is larger than the {host_examples * num_epochs} records this host '
                       f'reads in {num_epochs} epoch(s) of {name}:{split}; no full batch can be formed.')
    num_batches = None if num_epochs is None else host_examples * num_epochs // batch_size
    sampler = grain.samplers.IndexSampler(num_records=num_examples, shard_options=shard_options, shuffle=shuffle,
                                          num_epochs=num_epochs, seed=_sampler_seed(seed))
    if name == 'imagenet2012':
      # Without augmentation training sees the evaluation view, so images of any size still stack into a batch.
      per_example = [_ImagenetTrainAugment(image_size) if augment else _ImagenetEvalView(image_size, resize_size)]
    else:
      per_example = [_CifarTrainAugment()] if augment else []
    drop_remainder = True
  else:
    # Host p reads records [N p / P, N (p + 1) / P) (sizes differ by at most one), padded so that every host has
    # the same number of full batches.
    start = num_examples * process_index // process_count
    stop = num_examples * (process_index + 1) // process_count
    host_examples = stop - start
    num_batches = math.ceil(math.ceil(num_examples / process_count) / batch_size)
    records = _HostRecords(source, description=description, start=start, stop=stop,
                           length=num_batches * batch_size, id_field=spec.id_field, with_mask=True,
                           with_ids=with_ids, pad_image_shape=image_shape)
    shard_options = grain.sharding.NoSharding()  # `records` is already this host's shard.
    sampler = grain.samplers.IndexSampler(num_records=len(records), shard_options=shard_options, shuffle=False,
                                          num_epochs=1, seed=_sampler_seed(seed))
    per_example = [_ImagenetEvalView(image_size, resize_size)] if name == 'imagenet2012' else []
    drop_remainder = False  # nothing to drop: the padded length is a multiple of batch_size

  operations = [*per_example, grain.transforms.Batch(batch_size=batch_size, drop_remainder=drop_remainder),
                _ToModelDtypes()]
  data_loader = grain.DataLoader(data_source=records, sampler=sampler, operations=operations,
                                 shard_options=shard_options, worker_count=worker_count, read_options=read_options)
  return ImageLoader(data_loader=data_loader, name=name, split=split, train=train, batch_size=batch_size,
                     num_classes=spec.num_classes, image_shape=image_shape, num_examples=num_examples,
                     host_examples=host_examples, num_batches=num_batches, process_index=process_index,
                     process_count=process_count)


def cifar10_loader(split: str, **kwargs) -> ImageLoader:
  """make_image_loader('cifar10', split, ...)."""
  return make_image_loader('cifar10', split, **kwargs)


def cifar100_loader(split: str, **kwargs) -> ImageLoader:
  """make_image_loader('cifar100', split, ...); labels are the 100 fine classes."""
  return make_image_loader('cifar100', split, **kwargs)


def imagenet2012_loader(split: str, **kwargs) -> ImageLoader:
  """make_image_loader('imagenet2012', split, ...): 224x224 views (random-resized crop for training)."""
  return make_image_loader('imagenet2012', split, **kwargs)


class TrainBatches:
  """A grain training stream in the form the core train loop takes: `next()` gives {"image", "label"} numpy
  arrays (this host's slice of the global batch), `get_state()` / `set_state()` its position as JSON."""

  def __init__(self, loader: ImageLoader):
    self._loader = loader
    self._iterator = loader.iterator()

  def __next__(self) -> dict:
    batch = next(self._iterator)
    return {'image': batch['image'], 'label': batch['label']}

  def get_state(self) -> dict:
    return {'grain': self._iterator.get_state().decode()}

  def set_state(self, state: dict) -> None:
    self._iterator = self._loader.iterator(state['grain'].encode())


class SelectedImages:
  """Images of a split by example index, with only the selected examples held in memory (len = the whole split)."""

  def __init__(self, images_by_index: dict[int, np.ndarray], total: int):
    self._images = images_by_index
    self._total = total

  def __len__(self) -> int:
    return self._total

  def __getitem__(self, index: int) -> np.ndarray:
    return self._images[int(index)]


def every_kth_example(name: str, split: str, every: int, *, batch_size: int, data_dir=None
                      ) -> tuple[dict, np.ndarray, SelectedImages]:
  """Reads examples 0, every, 2*every, ... of a split (for certifying every k-th test image).

  Returns (the selected examples as arrays {"image", "label", "index"}, labels of the whole split with 0 where not
  selected, the images by index as a lazy `SelectedImages`)."""
  loader = make_image_loader(name, split, batch_size=batch_size, train=False, data_dir=data_dir, with_ids=True,
                             process_index=0, process_count=1)
  images, labels, indices = [], [], []
  for batch in loader.iterator():
    keep = batch['mask'] & (batch['index'] % every == 0)
    images.append(batch['image'][keep])
    labels.append(batch['label'][keep])
    indices.append(batch['index'][keep])
  subset = {'image': np.concatenate(images), 'label': np.concatenate(labels).astype(np.int32),
            'index': np.concatenate(indices).astype(np.int32)}
  all_labels = np.zeros(loader.num_examples, np.int32)
  all_labels[subset['index']] = subset['label']
  lazy = SelectedImages(dict(zip(subset['index'].tolist(), subset['image'])), loader.num_examples)
  return subset, all_labels, lazy
