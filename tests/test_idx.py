"""The IDX source (Fashion-MNIST's format): files written here byte by byte,
and Debian's real Fashion-MNIST where it is installed (CI installs it)."""

import gzip
import json
import os
import struct

import numpy as np
import pytest
from ml_collections import ConfigDict

from masktas_jax import data
from masktas_jax.data import idx_source
from masktas_jax.errors import DataError

import helpers
from helpers import eval_batches


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
  """IDX as its specification lays it out, written independently of the
  reader: magic (0, 0, type, ndim), big-endian uint32 sizes, the bytes."""
  return (bytes([0, 0, type_code, array.ndim]) +
          struct.pack(f'>{array.ndim}I', *array.shape) +
          array.astype(np.uint8).tobytes())


def _write(folder, name, array, gz, **kwargs):
  raw = _idx_bytes(array, **kwargs)
  if gz:
    (folder / f'{name}.gz').write_bytes(gzip.compress(raw))
  else:
    (folder / name).write_bytes(raw)


def _dataset(folder, gz=True, train=12, test=4, size=(5, 7)):
  """A tiny IDX folder; returns its arrays, each image's pixels all equal to
  a value that identifies it."""
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for prefix, n, start in (('train', train, 0), ('t10k', test, 100)):
    images = np.broadcast_to(np.arange(start, start + n, dtype=np.uint8)
                             [:, None, None], (n, *size)).copy()
    images[:, 0, 1] = 7  # Not uniform: the reshape keeps rows and columns.
    labels = (np.arange(n) * 3 % 10).astype(np.uint8)
    _write(folder, f'{prefix}-images-idx3-ubyte', images, gz)
    _write(folder, f'{prefix}-labels-idx1-ubyte', labels, gz)
    arrays[prefix] = images, labels
  return arrays


def _config(folder, train_split='train', eval_split='test'):
  return ConfigDict({'name': 'idx', 'data_dir': str(folder),
                     'train_split': train_split, 'eval_split': eval_split})


@pytest.mark.parametrize('gz', [True, False])
def test_split_expressions_carve_validation_from_train(tmp_path, gz):
  arrays = _dataset(tmp_path, gz=gz)
  config = _config(tmp_path)
  expected = {
      'train[:8]': (arrays['train'][0][:8], arrays['train'][1][:8]),
      'train[8:]': (arrays['train'][0][8:], arrays['train'][1][8:]),
      'train[:50%]': (arrays['train'][0][:6], arrays['train'][1][:6]),
      'test': arrays['t10k'],
      'train[-2:]+test': tuple(np.concatenate([a[-2:], b]) for a, b in zip(
          arrays['train'], arrays['t10k']))}
  for split, (images, labels) in expected.items():
    source = data.get_source(config, split)
    assert len(source) == len(images), split
    assert source.num_classes == 10
    for i in range(len(source)):
      example = source[i]
      assert example['image'].shape == (5, 7, 3)
      assert example['image'].dtype == np.uint8
      for c in range(3):  # Grey becomes RGB.
        np.testing.assert_array_equal(example['image'][..., c], images[i])
      assert example['label'] == labels[i]


def test_the_pipelines_read_it_as_in_memory_images(tmp_path):
  _dataset(tmp_path, train=16, size=(8, 8))
  source = data.get_source(_config(tmp_path), 'train')
  assert data.reading(_config(tmp_path), source).workers == 0
  batch = next(data.train_pipeline(source, image_size=8, batch_size=8,
                                   seed=0))
  assert batch['image'].shape == (8, 8, 8, 3)
  assert batch['image'].dtype == np.uint8


def test_the_whole_image_is_the_evaluation_view_at_crop_fraction_one(
    tmp_path):
  """data.eval_crop_fraction=1: the search's and fine-tuning's evaluation
  images are the files' pixels unchanged at their own size (the default
  0.875 crops and enlarges them)."""
  arrays = _dataset(tmp_path, train=8, size=(8, 8))
  images = arrays['train'][0].copy()
  images[:, 3:, 2:5] = 200  # Something a crop would move.
  _write(tmp_path, 'train-images-idx3-ubyte', images, True)
  config = helpers.demo_config('', **{
      'data.name': 'idx', 'data.data_dir': str(tmp_path),
      'data.train_split': 'train', 'data.eval_split': 'train',
      'space.image_size': 8, 'space.patch_size': 4,
      'data.eval_crop_fraction': 1.0})
  seen = np.concatenate([b['image'][b['valid']]
                         for b in eval_batches(config, 'train', 8, 8)])
  np.testing.assert_array_equal(seen, np.repeat(images[..., None], 3, -1))
  config.data.eval_crop_fraction = 0.875
  seen = np.concatenate([b['image'][b['valid']]
                         for b in eval_batches(config, 'train', 8, 8)])
  assert not np.array_equal(seen, np.repeat(images[..., None], 3, -1))


def _corrupt(folder, case):
  """Damages the tiny dataset in `folder` as `case` says; returns the split
  to read, the message expected and the file it must name."""
  images = folder / 't10k-images-idx3-ubyte.gz'
  labels = folder / 't10k-labels-idx1-ubyte.gz'
  if case == 'missing file':
    labels.unlink()
    return 'test', 'missing', folder / 't10k-labels-idx1-ubyte'
  if case == 'wrong magic':
    images.write_bytes(gzip.compress(b'\x1f\x00\x08\x03' + bytes(40)))
    return 'test', 'not an IDX file', images
  if case == 'wrong type or rank':  # Labels where images should be.
    _write(folder, 't10k-images-idx3-ubyte', np.zeros(4, np.uint8), True)
    return 'test', r'with 1 dimensions; want unsigned bytes \(0x08\) with 3', images
  if case == 'wrong type code':
    _write(folder, 't10k-images-idx3-ubyte', np.zeros((4, 5, 7)), True,
           type_code=0x0D)
    return 'test', "type code 0x0d", images
  if case == 'truncated':
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:-5]))
    return 'test', r'shape \(4, 5, 7\), 140 values, but the file holds 135', images
  if case == 'counts differ':
    _write(folder, 't10k-labels-idx1-ubyte', np.zeros(3, np.uint8), True)
    return 'test', '3 labels for the 4 images', labels
  if case == 'bad gzip':
    images.write_bytes(b'\x1f\x8b' + bytes(30))
    return 'test', 'cannot read it', images
  raise ValueError(case)


@pytest.mark.parametrize('case', ['missing file', 'wrong magic',
                                  'wrong type or rank', 'wrong type code',
                                  'truncated', 'counts differ', 'bad gzip'])
def test_a_bad_file_is_one_line_naming_it(tmp_path, case):
  _dataset(tmp_path)
  split, message, path = _corrupt(tmp_path, case)
  idx_source.read_idx.cache_clear()
  with pytest.raises(DataError, match=message) as error:
    data.get_source(_config(tmp_path), split)
  text = str(error.value)
  assert '\n' not in text and text.startswith(str(path)), text
  # The train files are whole: that split still reads.
  assert len(data.get_source(_config(tmp_path), 'train')) == 12


@pytest.mark.parametrize('split, field, message', [
    ('train[:13]', 'config.data.train_split',
     r"'train\[:13\]' is out of range \(train has 12 examples\)"),
    ('validation', 'config.data.eval_split',
     "IDX data has splits train and test, not 'validation'"),
    ('train[5:2]', 'config.data.train_split', "'train\\[5:2\\]' is empty"),
    ('train[', 'config.data.train_split', r"'train\[' is not a split expression"),
])
def test_a_bad_split_names_its_field(tmp_path, split, field, message):
  _dataset(tmp_path)
  config = _config(tmp_path, **{field.split('.')[-1]: split})
  with pytest.raises(DataError, match=f'^{field}: {message}'):
    data.get_source(config, split)


def test_a_folder_without_the_files_is_named(tmp_path):
  (tmp_path / 'other.txt').write_text('x')
  with pytest.raises(DataError, match=f'config.data.data_dir: {tmp_path} '
                     'holds none of the IDX files'):
    data.get_source(_config(tmp_path), 'train')
  with pytest.raises(DataError, match='IDX folder .*/absent does not exist'):
    data.get_source(_config(tmp_path / 'absent'), 'train')


FASHION = idx_source.DEFAULT_DIR
# CI installs the package: there these tests run, never skip.
needs_fashion = pytest.mark.skipif(
    not os.path.isdir(FASHION) and not os.environ.get('CI'),
    reason='Debian\'s Fashion-MNIST is not installed (apt-get install '
    'dataset-fashion-mnist; .ci/run installs it, and there this test runs)')


@needs_fashion
def test_debian_fashion_mnist_reads_with_the_default_folder():
  """The real files: 60,000 + 10,000 labelled 28 px images, 10 classes
  balanced (6,000 and 1,000 each), the config's validation carve-out
  disjoint from its training split."""
  config = _config('', train_split='train[:55000]',
                   eval_split='train[55000:]')
  train, validation, test = (data.get_source(config, s) for s in (
      'train[:55000]', 'train[55000:]', 'test'))
  assert (len(train), len(validation), len(test)) == (55000, 5000, 10000)
  assert train.num_classes == test.num_classes == 10
  everything = data.get_source(config, 'train')
  np.testing.assert_array_equal(np.bincount(everything.labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
  np.testing.assert_array_equal(everything.images[55000:], validation.images)
  assert test[0]['image'].shape == (28, 28, 3)
  # Real pictures, not blank or constant: the mean grey level of
  # Fashion-MNIST's training images is about 72.9 (0.286 of 255).
  assert 70 < everything.images.mean() < 76


@needs_fashion
def test_configs_fashion_runs_end_to_end_on_the_real_files(tmp_path):
  """configs/fashion.py's whole pipeline, shrunk to a few steps a stage:
  every stage reads the real IDX files through its own split, and the
  fine-tuned subnet is scored on all 10,000 test images."""
  result = helpers.run(f'--config={helpers.ROOT}/configs/fashion.py',
                       f'--workdir={tmp_path}', *helpers.SHRUNK,
                       '--config.search.min_params_m=0',
                       '--config.search.max_params_m=0')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert 0 <= summary['finetune']['top1'] <= 1
  metrics = json.loads((tmp_path / 'finetune/metrics.json').read_text())
  assert metrics['images'] == 10_000 and metrics['split'] == 'test', metrics
