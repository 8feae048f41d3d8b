"""Data sources and pipelines."""

import json
import os
import pickle
import shutil
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
import tfds_fixture
from ml_collections import ConfigDict
from PIL import Image

from masktas_jax import data
from masktas_jax.data import imaging
from helpers import photo


def _config(name, data_dir='', train_split='train', eval_split='validation'):
  return ConfigDict({'name': name, 'data_dir': str(data_dir),
                     'train_split': train_split, 'eval_split': eval_split})


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
  grey = np.asarray(src[0]['image'])
  assert grey.shape == (9, 7, 3) and np.all(grey[..., 0] == grey[..., 2])
  assert np.asarray(src[1]['image']).shape == (5, 8, 3)
  assert src[2]['image'].shape == np.asarray(src[2]['image']).shape == (
      6, 6, 3)
  # A loose image at the root: unlabelled.
  Image.fromarray(rng.integers(0, 255, (4, 4, 3), np.uint8)).save(
      tmp_path / 'd.jpg')
  src = data.get_source(_config('folder', str(tmp_path)), 'train')
  assert src.labels is None and src[0]['label'] == -1
  (tmp_path / 'cats/broken.jpg').write_bytes(b'\xff\xd8 truncated')
  src = data.get_source(_config('folder', str(tmp_path)), 'train')
  broken = src.files.index(str(tmp_path / 'cats/broken.jpg'))
  with pytest.raises(data.DataError, match='broken.jpg: unreadable image'):
    np.asarray(src[broken]['image'])
  with pytest.raises(data.DataError, match='does not exist'):
    data.get_source(_config('folder', str(tmp_path / 'nope')), 'train')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(data.DataError, match='contains no JPEG or PNG images$'):
    data.get_source(_config('folder', str(tmp_path / 'empty')), 'train')
  (tmp_path / 'empty/x.webp').write_bytes(b'RIFF')
  (tmp_path / 'empty/notes.txt').write_text('')
  with pytest.raises(data.DataError, match=(
      "contains no JPEG or PNG images .found 2 other files, such as "
      "'notes.txt'.$")):
    data.get_source(_config('folder', str(tmp_path / 'empty')), 'train')
  with pytest.raises(data.DataError, match="no tfds dataset 'imagenet'"):
    data.get_source(_config('imagenet'), 'train')


def test_train_pipeline_resumes_exactly_in_uint8():
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
  # Batches leave the host as uint8; normalisation is on device.
  assert want[0]['image'].dtype == np.uint8


def test_prepare_normalises_uint8_on_device_and_passes_floats():
  pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), np.uint8)
  got = jax.jit(data.prepare)({'image': pixels, 'label': np.arange(2)})
  # float64 reference of ImageNet normalisation.
  want = (pixels / 255.0 - data.MEAN.astype(np.float64)) / data.STD.astype(
      np.float64)
  assert got['image'].dtype == np.float32
  np.testing.assert_allclose(got['image'], want, atol=1e-5)
  np.testing.assert_array_equal(got['label'], np.arange(2))
  floats = np.asarray(want, np.float32)
  np.testing.assert_array_equal(data.prepare({'image': floats})['image'],
                                floats)


class _CountingSource:
  """Digits, counting in a file how many examples the pipeline has read
  (worker processes included)."""

  def __init__(self, log):
    self.inner = data.get_source(_config('digits'), 'train')
    self.log = str(log)

  def __len__(self):
    return len(self.inner)

  def __getitem__(self, i):
    with open(self.log, 'ab') as f:
      f.write(b'.')
    return self.inner[i]


@pytest.mark.parametrize('workers', [0, 2])
def test_an_unconsumed_pipeline_stops_at_a_few_batches(tmp_path, workers):
  """Host memory stays bounded whatever the pause: a consumer that stops
  leaves at most the batches `data.Reading` states read ahead."""
  log = tmp_path / 'reads'
  read = data.Reading(threads=2, workers=workers, prefetch=2)
  it = iter(data.train_pipeline(_CountingSource(log), image_size=8,
                                batch_size=4, seed=0, read=read))
  next(it)
  # A pause (evaluation, a checkpoint save, a slow step), until reads stop
  # growing for 2 s: worker processes take a while to start.
  reads, before = 0, -1
  for _ in range(15):
    if reads == before:
      break
    before = reads
    time.sleep(2)
    reads = log.stat().st_size
  it.close()
  assert reads == before  # Stopped growing...
  # ...at a few batches: the consumed one and what `Reading` states.
  assert reads <= (1 + read.max_batches()) * 4, reads


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
  np.testing.assert_array_equal(batches[0]['image'][0], src[0]['image'])


def test_eval_batches_are_the_same_global_batches_on_any_process_count(
    monkeypatch):
  """Global batch t is examples t*B.. in order on 1 process or split over 3
  (process p the p-th slice): what is scored at a batch position does not
  depend on the process count."""
  src = data.get_source(_config('digits'), 'validation')
  one = list(data.eval_pipeline(src, image_size=8, batch_size=24))
  shares = []
  for p in range(3):
    monkeypatch.setattr(jax, 'process_count', lambda: 3)
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    shares.append(list(data.eval_pipeline(src, image_size=8, batch_size=8)))
  assert len(one) == 8 and [len(s) for s in shares] == [8, 8, 8]
  for t, batch in enumerate(one):
    for key in ('image', 'label', 'valid'):
      np.testing.assert_array_equal(
          np.concatenate([s[t][key] for s in shares]), batch[key])


def test_center_crop_takes_the_middle():
  image = np.zeros((40, 60, 3), np.uint8)
  image[:, 10:50] = 255  # A centred 40x40 white square.
  crop = imaging.center_crop(image, 20, crop_fraction=1.0)
  assert crop.shape == (20, 20, 3)
  # Inside: exactly the white square; at its edges the bicubic kernel
  # reaches past the crop (238), far from the black a shifted crop would see.
  assert crop[:, 1:-1].min() == 255 and crop.min() > 200


@pytest.fixture(scope='module')
def cifar10_dir(tmp_path_factory):
  """A fake 'cifar10' (12 train, 5 test images) in the real on-disk layout."""
  return tfds_fixture.make_tfds_dataset(tmp_path_factory.mktemp('tfds'),
                                        num_train=12, num_test=5)


def test_tfds_source_reads_what_was_written_under_the_real_name(cifar10_dir):
  info = f'{cifar10_dir}/cifar10/3.0.2/dataset_info.json'
  with open(info, encoding='utf-8') as f:
    assert json.load(f)['fileFormat'] == 'array_record'
  src = data.get_source(_config('cifar10', cifar10_dir), 'train')
  assert len(src) == 12 and src.num_classes == 10
  for i in range(12):
    want = tfds_fixture.example('train', i)
    got = src[i]
    pixels = np.asarray(got['image'])
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    np.testing.assert_array_equal(pixels, want['image'])
    assert got['label'] == want['label'] and isinstance(got['label'], int)
  test = data.get_source(_config('cifar10', cifar10_dir), 'test')
  np.testing.assert_array_equal(test[4]['image'],
                                tfds_fixture.example('test', 4)['image'])
  # A pickled copy (as grain workers get) reopens the files.
  copy = pickle.loads(pickle.dumps(src))
  assert len(copy) == 12
  np.testing.assert_array_equal(copy[7]['image'], src[7]['image'])


def test_tfds_split_expressions_pass_through(cifar10_dir):
  def images(split):
    src = data.get_source(_config('cifar10', cifar10_dir, train_split=split),
                          split)
    return [np.asarray(src[i]['image']) for i in range(len(src))]

  train = [tfds_fixture.example('train', i)['image'] for i in range(12)]
  test = [tfds_fixture.example('test', i)['image'] for i in range(5)]
  for split, want in (('train[:50%]', train[:6]), ('train[-3:]', train[-3:]),
                      ('train[2:4]+test', train[2:4] + test)):
    got = images(split)
    assert len(got) == len(want), split
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w)


def test_tfds_feature_keys_grey_images_and_unlabelled(tmp_path):
  sizes = [(5, 7), (9, 4), (6, 6)]
  grey = [tfds_fixture.example('train', i, sizes[i], 3, channels=1)
          for i in range(3)]
  f = tfds.features
  # 'image' and 'label' win over the features sorted before them.
  tfds_fixture.prepare(tmp_path, 'masktas_grey', '1.0.0', f.FeaturesDict({
      'a_mask': f.Image(shape=(None, None, 1)),
      'coarse': f.ClassLabel(num_classes=2),
      'image': f.Image(shape=(None, None, 1)),
      'label': f.ClassLabel(names=['x', 'y', 'z'])}),
      {'train': [{'a_mask': np.zeros(g['image'].shape, np.uint8),
                  'coarse': 1, **g} for g in grey]})
  src = data.get_source(_config('masktas_grey', tmp_path), 'train')
  assert (src.image_key, src.label_key) == ('image', 'label')
  assert src.num_classes == 3 and src.classes == ['x', 'y', 'z']
  for i, g in enumerate(grey):
    rgb = np.asarray(src[i]['image'])
    assert rgb.shape == sizes[i] + (3,) and rgb.dtype == np.uint8
    for c in range(3):
      np.testing.assert_array_equal(rgb[..., c], g['image'])
    assert src[i]['label'] == g['label']
  # Otherwise the first 8-bit Image and the first ClassLabel; none: -1.
  photo = tfds_fixture.example('train', 0, 8, 4)['image']
  tfds_fixture.prepare(tmp_path, 'masktas_other', '1.0.0', f.FeaturesDict({
      'depth': f.Image(shape=(None, None, 1), dtype=np.uint16),
      'kind': f.ClassLabel(num_classes=4),
      'photo': f.Image(shape=(None, None, 3))}),
      {'train': [{'depth': Image.fromarray(np.zeros((8, 8), np.uint16)),
                  'kind': 2, 'photo': photo}]})
  src = data.get_source(_config('masktas_other', tmp_path), 'train')
  assert (src.image_key, src.label_key, src.num_classes) == ('photo', 'kind', 4)
  np.testing.assert_array_equal(src[0]['image'], photo)
  assert src[0]['label'] == 2
  tfds_fixture.prepare(tmp_path, 'masktas_unlabelled', '1.0.0',
                       f.FeaturesDict({'image': f.Image(shape=(8, 8, 3))}),
                       {'train': [{'image': photo}]})
  src = data.get_source(_config('masktas_unlabelled', tmp_path), 'train')
  assert src[0]['label'] == -1 and src.num_classes == 0


def test_tfds_source_feeds_the_pipelines(cifar10_dir):
  src = data.get_source(_config('cifar10', cifar10_dir), 'train')
  batch = next(iter(data.train_pipeline(src, image_size=16, batch_size=4,
                                        seed=0)))
  assert batch['image'].shape == (4, 16, 16, 3)
  assert set(batch['label'].tolist()) <= {tfds_fixture.example('train', i)[
      'label'] for i in range(12)}
  test = data.get_source(_config('cifar10', cifar10_dir), 'test')
  batches = list(data.eval_pipeline(test, image_size=32, batch_size=4,
                                    crop_fraction=1.0))
  valid = np.concatenate([b['valid'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])[valid]
  assert valid.sum() == 5
  np.testing.assert_array_equal(
      labels, [tfds_fixture.example('test', i)['label'] for i in range(5)])
  # Crop fraction 1 at the stored size: the view is the stored image.
  np.testing.assert_array_equal(batches[1]['image'][0],
                                tfds_fixture.example('test', 4)['image'])


@pytest.mark.parametrize('name, split, field, expected', [
    ('cifar10x', 'train', 'config.data.name',
     "no tfds dataset 'cifar10x' (neither in the tfds catalogue nor prepared "
     "under {dir}), and it is not 'digits', 'folder' or 'idx'; did you mean "
     "'cifar10'"),
    ('cifar100', 'train', 'config.data.data_dir',
     "tfds dataset 'cifar100' is not prepared in {dir}/cifar100/3.0.2 and "
     'downloads are off: prepare it once with `tfds build cifar100'),
    ('cifar10', 'validation', 'config.data.eval_split',
     "tfds dataset 'cifar10' has no split 'validation' (splits: test, train)"),
    ('cifar10', 'train+valid', 'split',
     "tfds dataset 'cifar10' has no split 'valid' (splits: test, train)"),
    ('cifar10', 'train[:200%]', 'split',
     "cannot read split 'train[:200%]' of tfds dataset 'cifar10': "),
    ('cifar10', 'train[:0]', 'split', "split 'train[:0]' of tfds dataset "
     "'cifar10' is empty"),
    ('cifar10:9.9.9', 'train', 'config.data.name',
     "cannot open tfds dataset 'cifar10:9.9.9': "),
])
def test_tfds_errors_are_one_line_and_name_the_field(cifar10_dir, name, split,
                                                     field, expected):
  with pytest.raises(data.DataError) as e:
    data.get_source(_config(name, cifar10_dir), split)
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith(f'{field}: ' + expected.format(dir=cifar10_dir))


def test_tfds_errors_for_a_missing_or_sequential_copy(cifar10_dir, tmp_path):
  with pytest.raises(data.DataError, match=(
      f"^config.data.data_dir: tfds dataset 'cifar10' is not prepared in "
      f'{tmp_path}/cifar10/3.0.2 and downloads are off')):
    data.get_source(_config('cifar10', tmp_path), 'train')
  # Another version there: named in the message, and loadable by name.
  old = tmp_path / 'cifar10/3.0.1'
  shutil.copytree(f'{cifar10_dir}/cifar10/3.0.2', old)
  (old / 'dataset_info.json').write_text((
      old / 'dataset_info.json').read_text().replace('3.0.2', '3.0.1'))
  with pytest.raises(data.DataError, match=(
      "found version.s. 3.0.1 there: pick one with "
      "config.data.name='cifar10:3.0.1'$")):
    data.get_source(_config('cifar10', tmp_path), 'train')
  src = data.get_source(_config('cifar10:3.0.1', tmp_path), 'train')
  np.testing.assert_array_equal(src[1]['image'],
                                tfds_fixture.example('train', 1)['image'])
  # A copy without random access (what `tfds build` writes by default).
  shutil.copytree(f'{cifar10_dir}/cifar10/3.0.2', tmp_path / 'cifar10/3.0.2')
  info = tmp_path / 'cifar10/3.0.2/dataset_info.json'
  info.write_text(info.read_text().replace('"array_record"', '"tfrecord"'))
  with pytest.raises(data.DataError, match=(
      "^config.data.data_dir: tfds dataset 'cifar10' in .* is stored as "
      'tfrecord, without random access')):
    data.get_source(_config('cifar10', tmp_path), 'train')


def _jpeg_folder(root, count, size=(40, 30)):
  """`count` JPEGs of `size` (W, H) in two class folders; returns `root`."""
  for i in range(count):
    folder = root / ('ab'[i % 2])
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(*size, seed=i)).save(folder / f'{i:03d}.jpg',
                                               quality=90)
  return root


def test_batches_do_not_depend_on_reading_and_resume_across_it(tmp_path):
  """Workers, threads and prefetch change how fast batches come, never which:
  a run resumes exactly from a state saved with other reading options."""
  src = data.FolderSource(str(_jpeg_folder(tmp_path, 20)))
  make = lambda read: data.train_pipeline(src, image_size=16, batch_size=4,
                                          seed=5, read=read)
  serial = make(data.Reading(threads=1, workers=0, prefetch=1))
  want = [next(serial) for _ in range(8)]  # Two epochs: 5 batches each.
  serial.close()
  parallel = make(data.Reading(threads=2, workers=2, prefetch=1))
  got = [next(parallel) for _ in range(4)]
  state = parallel.get_state()
  parallel.close()
  resumed = make(data.Reading(threads=1, workers=0, prefetch=2))
  resumed.set_state(state)
  got += [next(resumed) for _ in range(2)]
  back = make(data.Reading(threads=1, workers=2, prefetch=1))
  back.set_state(resumed.get_state())
  resumed.close()
  got += [next(back) for _ in range(2)]
  back.close()
  for g, w in zip(got, want, strict=True):
    np.testing.assert_array_equal(g['image'], w['image'])
    np.testing.assert_array_equal(g['label'], w['label'])
  assert want[0]['image'].dtype == np.uint8
  assert len({w['image'].tobytes() for w in want}) == 8


@pytest.mark.parametrize('workers', [0, 2])
@pytest.mark.parametrize('damage', ['truncated', 'not an image'])
def test_an_unreadable_image_stops_the_run_naming_the_file(tmp_path, workers,
                                                           damage):
  """The decision: a corrupt or truncated file stops the pipeline with one
  line naming it (a training stage keeps its last checkpoint), rather than
  training on silently fewer images."""
  root = _jpeg_folder(tmp_path, 8)
  bad = root / 'b' / '003.jpg'
  whole = bad.read_bytes()
  bad.write_bytes(whole[:len(whole) // 2] if damage == 'truncated'
                  else b'<html>not found</html>')
  src = data.FolderSource(str(root))
  it = data.train_pipeline(src, image_size=8, batch_size=8, seed=0,
                           read=data.Reading(threads=1, workers=workers))
  with pytest.raises(data.DataError) as e:
    next(it)
  it.close()
  message = str(e.value)
  assert message.startswith(f'{bad}: unreadable image (') and (
      '\n' not in message), message
  with pytest.raises(data.DataError, match=f'^{bad}: unreadable image'):
    list(data.eval_pipeline(src, image_size=8, batch_size=2,
                            read=data.Reading(threads=1, workers=workers)))


def test_default_reading_uses_workers_for_files_not_for_arrays(tmp_path):
  cores = len(os.sched_getaffinity(0))
  digits = data.get_source(_config('digits'), 'train')
  folder = data.FolderSource(str(_jpeg_folder(tmp_path, 2)))
  config = ConfigDict({'threads': 0, 'workers': None, 'prefetch': 3})
  assert data.reading(config, digits) == data.Reading(1, 0, 3)
  files = data.reading(config, folder)
  assert 1 <= files.workers <= cores and files.prefetch == 3
  assert files.threads == max(1, cores // files.workers)
  config.update({'threads': 3, 'workers': 5})
  assert data.reading(config, folder) == data.Reading(3, 5, 3)
