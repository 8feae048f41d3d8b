"""The pre-resized cache (`data.cache`, mode=cache): what it stores, that the
pipelines read it as they read the source, and what it refuses."""

import io
import json
import os
import subprocess

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from helpers import photo, run
from masktas_jax import data
from masktas_jax.data import cache
from masktas_jax.errors import DataError

# (W, H) of the images: wider, taller, square, and one already small.
SIZES = ((57, 40), (30, 53), (48, 48), (20, 14))


def _folder(root):
  """Labelled JPEGs and a PNG of SIZES in two class folders."""
  for i, (w, h) in enumerate(SIZES * 2):
    folder = root / 'ab'[i % 2]
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(photo(w, h, seed=i))
    image.save(folder / f'{i:02d}.png' if i == 3 else
               folder / f'{i:02d}.jpg', quality=90)
  return root


def _config(source_dir, cache_dir, **extra):
  return ConfigDict({'name': 'folder', 'data_dir': str(source_dir),
                     'train_split': 'train', 'eval_split': 'train',
                     'cache': str(cache_dir), 'cache_short_side': 0,
                     'cache_encoding': 'raw', 'cache_quality': 95,
                     'threads': 2, **extra})


def _reference(path, side):
  """The file decoded with PIL and its shorter side brought to `side`,
  float64 arithmetic for the new size (no code of the cache's)."""
  pil = Image.open(path).convert('RGB')
  w, h = pil.size
  if min(w, h) > side:
    scale = np.float64(side) / min(w, h)
    pil = pil.resize((side if w <= h else int(np.floor(w * scale + 0.5)),
                      side if h <= w else int(np.floor(h * scale + 0.5))),
                     Image.BICUBIC)
  return np.asarray(pil)


@pytest.fixture()
def images(tmp_path):
  return _folder(tmp_path / 'images')


def test_raw_cache_holds_each_image_resized_with_its_label(images, tmp_path):
  config = _config(images, tmp_path / 'cache')
  source = data.original_source(config, 'train')
  meta = cache.build(source, config, 'train', image_size=28)
  side = 32  # 28 / 0.875
  assert meta['short_side'] == side and meta['count'] == len(source) == 8
  cached = data.get_source(config, 'train', image_size=28)
  assert len(cached) == len(source) and cached.num_classes == 2
  for i, path in enumerate(source.files):
    got = cached[i]
    want = _reference(path, side)
    np.testing.assert_array_equal(got['image'], want, err_msg=path)
    assert got['label'] == source[i]['label']
    # The small image is stored as it is; the others at the short side.
    assert min(want.shape[:2]) == min(side, *Image.open(path).size[::-1])
  assert meta['bytes'] == sum(8 + np.asarray(_reference(p, side)).size
                              for p in source.files)


def test_jpeg_cache_decodes_close_to_the_raw_one(images, tmp_path):
  raw = _config(images, tmp_path / 'raw')
  jpeg = _config(images, tmp_path / 'jpeg', cache_encoding='jpeg',
                 cache_quality=90)
  for config in (raw, jpeg):
    cache.build(data.original_source(config, 'train'), config, 'train', 28)
  a = data.get_source(raw, 'train', 28)
  b = data.get_source(jpeg, 'train', 28)
  files = data.original_source(raw, 'train').files
  for i in range(len(a)):
    decoded = np.asarray(b[i]['image'])
    # The JPEG (quality 90) of the resized image, decoded by PIL.
    out = io.BytesIO()
    Image.fromarray(_reference(files[i], 32)).save(out, 'JPEG', quality=90)
    np.testing.assert_array_equal(decoded, np.asarray(Image.open(out)))
    # Lossy, not wrong: within a few grey levels of the raw cache on these
    # small, noisy images with a sharp square.
    error = np.abs(decoded.astype(int) - a[i]['image']).mean()
    assert 0 < error < 10, (i, error)


def test_the_pipelines_crop_the_cache_as_they_crop_its_images(images,
                                                             tmp_path):
  """Same crops, same flips, same order: the pipeline over the cache equals
  the pipeline over the resized images held in memory."""
  config = _config(images, tmp_path / 'cache')
  source = data.original_source(config, 'train')
  cache.build(source, config, 'train', 28)
  cached = data.get_source(config, 'train', 28)
  reference = [_reference(p, 32) for p in source.files]

  class Resized:
    num_classes = 2

    def __len__(self):
      return len(reference)

    def __getitem__(self, i):
      return {'image': reference[i], 'label': source[i]['label']}

  def first(src, n=3):
    it = data.train_pipeline(src, image_size=28, batch_size=4, seed=5)
    out = [next(it) for _ in range(n)]
    it.close()
    return out

  for a, b in zip(first(cached), first(Resized())):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  ev = lambda src: list(data.eval_pipeline(src, image_size=28, batch_size=4))
  for a, b in zip(ev(cached), ev(Resized())):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_a_built_cache_is_kept_and_a_foreign_one_refused(images, tmp_path):
  config = _config(images, tmp_path / 'cache')
  source = data.original_source(config, 'train')
  meta = cache.build(source, config, 'train', 28)
  records = os.fspath(cache.split_dir(config, 'train') / cache.RECORDS)
  stamp = os.stat(records).st_mtime_ns
  assert cache.build(source, config, 'train', 28) == meta
  assert os.stat(records).st_mtime_ns == stamp
  # Another image size, another source folder, another encoding: refused,
  # naming what the cache holds and what the config reads.
  for other, size in ((config, 224),
                      (_config(tmp_path, tmp_path / 'cache'), 28),
                      (_config(images, tmp_path / 'cache',
                               cache_encoding='jpeg'), 28)):
    with pytest.raises(DataError) as e:
      data.get_source(other, 'train', size)
    message = str(e.value)
    assert message.startswith('config.data.cache: ')
    assert '\n' not in message and message.count(' at short side ') == 2
  assert os.stat(records).st_mtime_ns == stamp


def test_a_cache_being_written_or_missing_is_one_line(images, tmp_path):
  config = _config(images, tmp_path / 'cache')
  with pytest.raises(DataError, match='no cache of .train. at .* build it '
                     'with --config.mode=cache'):
    data.get_source(config, 'train', 28)
  folder = cache.split_dir(config, 'train')
  folder.mkdir(parents=True)
  (folder / cache.LOCK).write_text('pid 123 on elsewhere')
  for action in (lambda: data.get_source(config, 'train', 28),
                 lambda: cache.build(data.original_source(config, 'train'),
                                     config, 'train', 28)):
    with pytest.raises(DataError, match='is being written by another '
                       r'process \(pid 123 on elsewhere\)'):
      action()
  assert os.listdir(folder) == [cache.LOCK]


def test_mode_cache_builds_the_splits_and_stages_read_them(images, tmp_path):
  """The command line: mode=cache writes both splits once; a stage whose
  config reads another size of cache stops in one line, writing nothing."""
  common = ('--config=configs/demo.py', '--config.data.name=folder',
            f'--config.data.data_dir={images}',
            "--config.data.eval_split=validation",
            f'--config.data.cache={tmp_path / "cache"}')
  result = run(*common, '--config.mode=cache', f'--workdir={tmp_path / "w"}')
  assert result.returncode == 0, result.stderr
  # The demo's fine-tuning reports on 'test': its cache is built too.
  for split in ('train', 'validation', 'test'):
    meta = json.loads((tmp_path / 'cache' / split / cache.META).read_text())
    assert meta['count'] == 8 and meta['short_side'] == 37  # demo: 32 px
  result = run(*common, '--config.mode=teacher', '--config.space.image_size=16',
               '--config.space.patch_size=4', f'--workdir={tmp_path / "t"}')
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'config.data.cache: ' in lines[0], lines
  assert 'short side 37' in lines[0] and 'short side 18' in lines[0]
  assert not (tmp_path / 't').exists()
  # Without a folder to write to: one line, nothing written.
  result = run('--config=configs/demo.py', '--config.mode=cache',
               f'--workdir={tmp_path / "n"}')
  assert result.returncode == 2 and 'config.data.cache' in result.stderr
  assert not (tmp_path / 'n').exists()


def test_a_stopped_build_leaves_no_cache_and_no_lock(images, tmp_path):
  """A build that fails part-way (a bad image) releases its lock and leaves
  no cache.json; a lock left by a killed build on this host is taken
  over."""
  config = _config(images, tmp_path / 'cache')
  source = data.original_source(config, 'train')

  class Failing:
    num_classes = 2

    def __len__(self):
      return len(source)

    def __getitem__(self, i):
      if i == 5:
        raise DataError('image 5: unreadable')
      return source[i]

  with pytest.raises(DataError, match='image 5'):
    cache.build(Failing(), config, 'train', 28)
  folder = cache.split_dir(config, 'train')
  assert not (folder / cache.LOCK).exists()
  assert not (folder / cache.META).exists()
  # The lock of a process of this host that is gone.
  gone = subprocess.Popen(['true'])
  gone.wait()
  (folder / cache.LOCK).write_text(f'pid {gone.pid} on {os.uname().nodename}')
  meta = cache.build(source, config, 'train', 28)
  assert meta['count'] == 8 and not (folder / cache.LOCK).exists()
  np.testing.assert_array_equal(data.get_source(config, 'train', 28)[0][
      'image'], _reference(source.files[0], 32))
