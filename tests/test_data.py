"""Data sources and pipelines."""

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from masktas_jax import data


def _config(name, data_dir=''):
  return ConfigDict({'name': name, 'data_dir': data_dir})


def test_digits_splits_are_fixed_disjoint_and_labelled():
  sizes = {s: len(data.get_source(_config('digits'), s))
           for s in ('train', 'validation', 'test')}
  assert sizes == {'train': 1257, 'validation': 180, 'test': 360}
  seen = set()
  for split in sizes:
    src = data.get_source(_config('digits'), split)
    keys = {src[i]['image'].tobytes() + bytes([src[i]['label']])
            for i in range(len(src))}
    assert not keys & seen
    seen |= keys
  example = data.get_source(_config('digits'), 'test')[0]
  assert example['image'].shape == (8, 8, 3) and example['image'].dtype == np.uint8
  assert 0 <= example['label'] < 10


def test_folder_source_labels_modes_and_errors(tmp_path):
  rng = np.random.default_rng(0)
  (tmp_path / 'cats').mkdir()
  (tmp_path / 'dogs/nested').mkdir(parents=True)
  Image.fromarray(rng.integers(0, 255, (9, 7), np.uint8), 'L').save(
      tmp_path / 'cats/a.PNG')
  Image.fromarray(rng.integers(0, 255, (6, 6, 4), np.uint8), 'RGBA').save(
      tmp_path / 'dogs/nested/b.png')
  Image.fromarray(rng.integers(0, 255, (5, 8, 3), np.uint8)).save(
      tmp_path / 'dogs/c.jpg')
  (tmp_path / 'dogs/notes.txt').write_text('not an image')
  src = data.get_source(_config('folder', str(tmp_path)), 'train')
  assert len(src) == 3 and src.classes == ['cats', 'dogs']
  assert [src[i]['label'] for i in range(3)] == [0, 1, 1]
  grey = src[0]['image']
  assert grey.shape == (9, 7, 3) and np.all(grey[..., 0] == grey[..., 2])
  assert src[1]['image'].shape == (5, 8, 3)
  assert src[2]['image'].shape == (6, 6, 3)
  # A loose image at the root: unlabelled.
  Image.fromarray(rng.integers(0, 255, (4, 4, 3), np.uint8)).save(
      tmp_path / 'd.jpg')
  src = data.get_source(_config('folder', str(tmp_path)), 'train')
  assert src.labels is None and src[0]['label'] == -1
  (tmp_path / 'cats/broken.jpg').write_bytes(b'\xff\xd8 truncated')
  src = data.get_source(_config('folder', str(tmp_path)), 'train')
  broken = src.files.index(str(tmp_path / 'cats/broken.jpg'))
  with pytest.raises(data.DataError, match='broken.jpg: unreadable image'):
    src[broken]
  with pytest.raises(data.DataError, match='does not exist'):
    data.get_source(_config('folder', str(tmp_path / 'nope')), 'train')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(data.DataError, match='contains no JPEG or PNG'):
    data.get_source(_config('folder', str(tmp_path / 'empty')), 'train')
  with pytest.raises(data.DataError, match="'imagenet' is not available"):
    data.get_source(_config('imagenet'), 'train')


def test_train_pipeline_resumes_exactly_and_normalises():
  src = data.get_source(_config('digits'), 'train')
  make = lambda: iter(data.train_pipeline(src, image_size=16, batch_size=8,
                                          seed=3))
  it = make()
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  again = make()
  again.set_state(state)
  for w in want:
    got = next(again)
    np.testing.assert_array_equal(got['image'], w['image'])
    np.testing.assert_array_equal(got['label'], w['label'])
  assert want[0]['image'].shape == (8, 16, 16, 3)
  assert want[0]['image'].dtype == np.float32
  # ImageNet normalisation of uint8 pixels: 0 maps to -mean/std.
  assert want[0]['image'].min() >= (0 - data.MEAN.max()) / data.STD.min() - 1e-5


def test_eval_pipeline_covers_each_example_once_with_padding():
  src = data.get_source(_config('digits'), 'validation')
  batches = list(data.eval_pipeline(src, image_size=8, batch_size=64,
                                    crop_fraction=1.0))
  assert len(batches) == 3  # 180 examples -> 64 + 64 + 52 (+ 12 padding)
  valid = np.concatenate([b['valid'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])[valid]
  assert valid.sum() == 180
  np.testing.assert_array_equal(labels, [src[i]['label'] for i in range(180)])
  # At crop fraction 1 and the source size, the view is the image itself.
  np.testing.assert_allclose(batches[0]['image'][0],
                             data.normalize(src[0]['image']), atol=1e-6)


def test_center_crop_takes_the_middle():
  image = np.zeros((40, 60, 3), np.uint8)
  image[:, 10:50] = 255  # A centred 40x40 white square.
  crop = data.center_crop(image, 20, crop_fraction=1.0)
  assert crop.shape == (20, 20, 3)
  # Inside: exactly the white square; at its edges the bicubic kernel
  # reaches past the crop (238), far from the black a shifted crop would see.
  assert crop[:, 1:-1].min() == 255 and crop.min() > 200
