"""tfds.data_source + grain image loaders, on tfds's mock data (no files, no TensorFlow)."""
import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from robust_jax.data import image_ops
from robust_jax.data import tfds_images

NUM_EXAMPLES = 10  # records per split under the mock


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def _raw_source(name, split):
  """The records straight from tfds, as an independent reference for what the loader returns."""
  return tfds.data_source(name, split=split, download=False)


def _take(iterator, count):
  return list(itertools.islice(iterator, count))


def _assert_same_batches(batches, expected):
  assert len(batches) == len(expected)
  for batch, reference in zip(batches, expected):
    assert batch.keys() == reference.keys()
    for field in batch:
      np.testing.assert_array_equal(batch[field], reference[field], err_msg=field)


@pytest.mark.parametrize('name,split,train', [
    ('cifar10', 'train', True), ('cifar10', 'test', False),
    ('cifar100', 'train', True), ('imagenet2012', 'train', True), ('imagenet2012', 'validation', False)])
def test_batches_have_model_shapes_dtypes_and_ranges(mock_tfds, name, split, train):
  image_size = 32  # small ImageNet views keep the test fast; CIFAR is 32 anyway
  loader = tfds_images.make_image_loader(name, split, batch_size=4, train=train, num_epochs=2 if train else None,
                                         image_size=image_size, process_index=0, process_count=1)
  batches = list(loader)
  num_classes = tfds_images.SUPPORTED_DATASETS[name].num_classes
  assert loader.num_classes == num_classes
  # train: 2 epochs of 10 -> 5 full batches; eval: 10 -> 3 batches, the last one padded.
  assert len(batches) == loader.num_batches == (5 if train else 3)
  for batch in batches:
    assert set(batch) == ({'image', 'label'} if train else {'image', 'label', 'mask'})
    assert batch['image'].shape == (4, image_size, image_size, 3)
    assert batch['image'].dtype == np.float32
    assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
    assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
    assert np.all((0 <= batch['label']) & (batch['label'] < num_classes))
  if not train:
    mask = np.concatenate([batch['mask'] for batch in batches])
    assert mask.dtype == np.bool_ and mask.tolist() == [True] * NUM_EXAMPLES + [False] * 2
    assert np.all(batches[-1]['image'][2:] == 0.0)


def test_eval_batches_are_the_records_in_order_scaled_to_unit_range(mock_tfds):
  raw = _raw_source('cifar100', 'test')
  loader = tfds_images.make_image_loader('cifar100', 'test', batch_size=4, train=False, with_ids=True,
                                         process_index=0, process_count=1)
  batches = list(loader)
  index = np.concatenate([batch['index'] for batch in batches])
  assert index.tolist() == list(range(NUM_EXAMPLES)) + [-1, -1]
  images = np.concatenate([batch['image'] for batch in batches])
  labels = np.concatenate([batch['label'] for batch in batches])
  ids = np.concatenate([batch['id'] for batch in batches])
  for position in range(NUM_EXAMPLES):
    np.testing.assert_array_equal(images[position], raw[position]['image'].astype(np.float32) / 255.0)
    assert labels[position] == raw[position]['label']
    assert ids[position] == raw[position]['id']


@pytest.mark.parametrize('train', [True, False])
def test_two_hosts_read_disjoint_shards_that_cover_the_split(mock_tfds, train):
  raw_ids = [example['id'] for example in _raw_source('cifar10', 'train')]
  seen_index, seen_ids, batch_counts = [], [], []
  for process_index in range(2):
    # train: 5 records per host, one shuffled epoch in a single batch of 5; eval: 5 records in batches of 3.
    loader = tfds_images.make_image_loader('cifar10', 'train', batch_size=5 if train else 3, train=train,
                                           num_epochs=1 if train else None, with_ids=True,
                                           process_index=process_index, process_count=2)
    assert loader.host_examples == NUM_EXAMPLES // 2
    batches = list(loader)
    batch_counts.append(len(batches))
    keep = np.concatenate([batch.get('mask', np.ones(len(batch['label']), bool)) for batch in batches])
    seen_index.append(set(np.concatenate([batch['index'] for batch in batches])[keep].tolist()))
    seen_ids.append(np.concatenate([batch['id'] for batch in batches])[keep].tolist())
  assert batch_counts[0] == batch_counts[1]
  assert not seen_index[0] & seen_index[1]
  assert seen_index[0] | seen_index[1] == set(range(NUM_EXAMPLES))
  assert sorted(seen_ids[0] + seen_ids[1]) == sorted(raw_ids)
  # contiguous blocks: host 0 reads the first half, host 1 the second
  assert seen_index[0] == set(range(NUM_EXAMPLES // 2))


def test_three_hosts_uneven_eval_split_still_counts_every_record_once(mock_tfds):
  indices, batch_counts = [], []
  for process_index in range(3):
    loader = tfds_images.make_image_loader('cifar10', 'test', batch_size=2, train=False, with_ids=True,
                                           process_index=process_index, process_count=3)
    batches = list(loader)
    batch_counts.append(len(batches))
    for batch in batches:
      indices.extend(batch['index'][batch['mask']].tolist())
      assert np.all(batch['index'][~batch['mask']] == -1)
  assert batch_counts == [2, 2, 2]  # ceil(ceil(10 / 3) / 2)
  assert sorted(indices) == list(range(NUM_EXAMPLES))


def test_training_order_is_seeded_and_each_epoch_is_a_permutation(mock_tfds):
  def indices(seed):
    loader = tfds_images.make_image_loader('cifar10', 'train', batch_size=5, train=True, num_epochs=3, seed=seed,
                                           with_ids=True, process_index=0, process_count=1)
    return [batch['index'].tolist() for batch in loader]

  first, again, other = indices(seed=7), indices(seed=7), indices(seed=8)
  assert first == again
  assert first != other
  epochs = [first[0] + first[1], first[2] + first[3], first[4] + first[5]]
  for epoch in epochs:
    assert sorted(epoch) == list(range(NUM_EXAMPLES))
  assert epochs[0] != list(range(NUM_EXAMPLES))  # actually shuffled
  assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled between epochs


def test_same_seed_gives_identical_augmented_batches(mock_tfds):
  def batches(seed):
    loader = tfds_images.make_image_loader('imagenet2012', 'train', batch_size=4, train=True, image_size=24,
                                           seed=seed, process_index=0, process_count=1)
    return _take(iter(loader), 3)

  _assert_same_batches(batches(seed=3), batches(seed=3))


def test_cifar_augmentation_is_a_padded_crop_or_its_mirror(mock_tfds):
  raw = _raw_source('cifar10', 'train')
  loader = tfds_images.make_image_loader('cifar10', 'train', batch_size=NUM_EXAMPLES, train=True, num_epochs=1,
                                         with_ids=True, process_index=0, process_count=1)
  (batch,) = list(loader)
  changed = 0
  for image, index in zip(batch['image'], batch['index']):
    original = raw[int(index)]['image']
    padded = np.pad(original, ((4, 4), (4, 4), (0, 0)))
    candidates = [view for top in range(9) for left in range(9)
                  for view in (padded[top:top + 32, left:left + 32], padded[top:top + 32, left:left + 32][:, ::-1])]
    augmented = np.round(image * 255.0).astype(np.uint8)
    assert any(np.array_equal(augmented, view) for view in candidates)
    changed += not np.array_equal(augmented, original)
  assert changed > 0


@pytest.mark.parametrize('name,split,train', [
    ('cifar10', 'train', True), ('imagenet2012', 'train', True), ('cifar10', 'test', False)])
def test_restored_iterator_continues_with_the_uninterrupted_batches(mock_tfds, name, split, train):
  def make():
    return tfds_images.make_image_loader(name, split, batch_size=3, train=train, seed=11, with_ids=True,
                                         image_size=24 if name == 'imagenet2012' else None,
                                         process_index=1, process_count=2)

  # eval of 5 records in batches of 3 has only 2 batches: interrupt after 1.
  before, after = (4, 3) if train else (1, 1)
  uninterrupted = _take(make().iterator(), before + after)
  iterator = make().iterator()
  _take(iterator, before)
  state = iterator.get_state()
  assert isinstance(state, bytes)
  del iterator
  resumed = _take(make().iterator(state), after)
  _assert_same_batches(resumed, uninterrupted[before:])


@pytest.mark.parametrize('kwargs,message', [
    (dict(name='mnist'), r"Unknown dataset name 'mnist'; supported: \['cifar10', 'cifar100', 'imagenet2012'\]"),
    (dict(split='validation'), r"Unknown split 'validation' for cifar10.*\['train', 'test'\]"),
    (dict(split='train[:50%]+valid'), r"base split 'valid'"),
    (dict(batch_size=0), r'batch_size=0 is not allowed: must be >= 1'),
    (dict(batch_size=2.5), r'batch_size=2.5 is not allowed: expected an integer'),
    (dict(process_index=2, process_count=2), r'process_index must be in \[0, process_count=2\), got 2'),
    (dict(seed=-1), r'seed must be an integer in \[0, 2\*\*32\)'),
    (dict(train=False, num_epochs=2), r'evaluation makes exactly one pass'),
    (dict(image_size=64), r'only imagenet2012 is resized'),
    (dict(data_dir='/nonexistent/tfds'), r"data_dir='/nonexistent/tfds' does not exist.*array_record"),
])
def test_bad_arguments_raise_value_error_before_reading(mock_tfds, kwargs, message):
  arguments = dict(name='cifar10', split='train', batch_size=2, train=True, process_index=0, process_count=1)
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=message):
    tfds_images.make_image_loader(arguments.pop('name'), arguments.pop('split'), **arguments)


def test_unprepared_dataset_says_to_prepare_array_record(tmp_path):
  # No mock: an empty data_dir holds no prepared cifar10, and nothing may be downloaded.
  with pytest.raises(ValueError, match=r'(?s)tfds.data_source needs the dataset already prepared in array_record.*'
                                       r'tfds build cifar10.*nothing is downloaded at run time'):
    tfds_images.make_image_loader('cifar10', 'train', batch_size=2, train=True, data_dir=tmp_path,
                                  process_index=0, process_count=1)
  assert not any(tmp_path.iterdir())


def test_eval_view_resizes_the_shorter_side_then_centre_crops():
  image = np.arange(40 * 50 * 3, dtype=np.uint32).reshape(40, 50, 3).astype(np.uint8)
  # shorter side already at resize_size: the view is a pure centre crop
  np.testing.assert_array_equal(image_ops.resize_shorter_side_and_centre_crop(image, 40, 32), image[4:36, 9:41])
  constant = np.full((30, 60, 3), 77, np.uint8)
  view = image_ops.resize_shorter_side_and_centre_crop(constant, 36, 32)
  assert view.shape == (32, 32, 3) and np.all(view == 77)
  assert image_ops.resize_shorter_side_and_centre_crop(np.zeros((7, 5), np.uint8), 8, 6).shape == (6, 6, 3)


def test_random_resized_crop_box_stays_inside_with_area_and_ratio_in_range():
  rng = np.random.default_rng(0)
  for height, width in [(100, 120), (20, 300), (64, 64)]:
    for _ in range(200):
      top, left, crop_height, crop_width = image_ops.random_resized_crop_box(height, width, rng)
      assert 0 <= top and top + crop_height <= height and 0 <= left and left + crop_width <= width
      assert crop_height >= 1 and crop_width >= 1
      # rounding of the sides to whole pixels stretches the ratio bounds slightly on small images
      assert 3 / 4 * 0.9 <= crop_width / crop_height <= 4 / 3 * 1.1
  assert image_ops.random_resized_crop(np.zeros((20, 300, 3), np.uint8), 16, rng).shape == (16, 16, 3)
