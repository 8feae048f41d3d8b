"""A pre-resized copy of a split, read instead of its source (`data.cache`).

Decoding a full-size JPEG costs most of what a host spends on an image
(~260 images/s per core at 224 px, BENCHMARKS.md); FFCV's answer, taken
here, is to resize every image once so its shorter side is a fixed size
(`data.cache_short_side`, default `space.image_size /
data.eval_crop_fraction`: 256 for 224 at 0.875, what the evaluation view's
central crop needs) and to read those. The
training and evaluation pipelines then crop the cached image exactly as
they crop the source's.

A cache folder holds one split: `images.array_record` (one record per
image, random access through grain), `labels.npy` and `cache.json` (the
source, split and sizes it was built from; written last, so a folder
without it is incomplete). Records are raw pixels ('raw': an 8-byte
header of height and width, then H x W x 3 uint8) or a JPEG ('jpeg', at
`data.cache_quality`). Images whose shorter side is already at most the
cache's are stored as they are.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
from typing import Any

import grain
import numpy as np
from array_record.python import array_record_module
from etils import epath
from PIL import Image

from masktas_jax import parallel
from masktas_jax.data import imaging
from masktas_jax.errors import DataError

META = 'cache.json'
RECORDS = 'images.array_record'
LABELS = 'labels.npy'
# Held while a process writes the folder: the cache of another writer is
# refused, not mixed with this one.
LOCK = '.writing'
_HEADER = struct.Struct('<II')  # height, width


def short_side(data_config, image_size: int) -> int:
  """The cache's shorter side: `data.cache_short_side`, or 0 for what the
  evaluation view needs, `image_size / data.eval_crop_fraction` rounded
  (256 for 224 at 0.875)."""
  return int(data_config.get('cache_short_side', 0) or round(
      image_size / data_config.get('eval_crop_fraction', 0.875)))


def split_dir(data_config, split: str) -> epath.Path:
  """The cache folder of `split` under `data.cache` (a split's expression,
  e.g. 'train[:1000]', made a folder name)."""
  name = ''.join(c if c.isalnum() or c in '-_' else '_' for c in split)
  return epath.Path(data_config.cache) / name


def identity(data_config, split: str, image_size: int) -> dict[str, Any]:
  """What a cache must have been built from to stand for `split`."""
  return {'name': data_config.name, 'data_dir': str(data_config.data_dir),
          'split': split, 'short_side': short_side(data_config, image_size),
          'encoding': data_config.get('cache_encoding', 'raw')}


def _describe(who: dict[str, Any]) -> str:
  return (f"{who['name']} {who['split']!r} (data_dir {who['data_dir']!r}) at "
          f"short side {who['short_side']}, {who['encoding']}")


def _owner() -> str:
  return f'pid {os.getpid()} on {os.uname().nodename}'


def _stale(owner: str) -> bool:
  """A lock left by a process of this host that is gone (killed before it
  could remove it)."""
  parts = owner.split()
  if len(parts) != 4 or parts[0] != 'pid' or parts[3] != os.uname().nodename:
    return False
  try:
    os.kill(int(parts[1]), 0)
  except ProcessLookupError:
    return True
  except (PermissionError, ValueError):
    return False
  return False


def _check_not_written(folder: epath.Path) -> None:
  """DataError while another live process writes `folder`; a lock its
  writer left behind on this host is removed."""
  lock = folder / LOCK
  try:
    owner = lock.read_text().strip()
  except FileNotFoundError:
    return
  if _stale(owner):
    parallel.log(f'cache: {owner} stopped writing {folder}; starting over')
    lock.unlink(missing_ok=True)
    return
  raise _busy(folder, owner)


def _busy(folder: epath.Path, owner: str) -> DataError:
  return DataError(
      f'config.data.cache: {folder} is being written by another process '
      f'({owner}); wait for it, or remove {folder / LOCK} if that process '
      'is gone')


def check(data_config, split: str, image_size: int) -> dict[str, Any] | None:
  """cache.json of `split`'s cache, or None when it does not exist yet;
  DataError for one being written or built from something else."""
  folder = split_dir(data_config, split)
  _check_not_written(folder)
  return _meta(data_config, split, image_size)


def _meta(data_config, split: str, image_size: int) -> dict[str, Any] | None:
  """`check` without looking at the lock (its holder's own view)."""
  folder = split_dir(data_config, split)
  meta_path = folder / META
  if not meta_path.exists():
    return None
  try:
    meta = json.loads(meta_path.read_text())
  except ValueError as e:
    raise DataError(f'config.data.cache: {meta_path} is not a cache '
                    f'description ({e}); remove {folder}') from e
  want = identity(data_config, split, image_size)
  built = {k: meta.get(k) for k in want}
  if built != want:
    raise DataError(
        f'config.data.cache: {folder} holds {_describe(built)}, and this '
        f'config reads {_describe(want)}; give another data.cache or '
        'rebuild it (--config.mode=cache after removing it)')
  return meta


def _resized(image: np.ndarray | imaging.Encoded, side: int) -> Image.Image:
  """The image with its shorter side at most `side` (bicubic; smaller
  images unchanged), RGB."""
  # A file decodes whole (`Encoded` names it in any error).
  pil = Image.fromarray(np.asarray(image, np.uint8))
  w, h = pil.size
  if min(w, h) <= side:
    return pil
  scale = side / min(w, h)
  size = (side, round(h * scale)) if w <= h else (round(w * scale), side)
  return pil.resize(size, Image.BICUBIC)


def encode(image: Image.Image, encoding: str, quality: int) -> bytes:
  """One record: raw pixels behind their (H, W) header, or a JPEG."""
  if encoding == 'raw':
    w, h = image.size
    return _HEADER.pack(h, w) + np.asarray(image, np.uint8).tobytes()
  out = io.BytesIO()
  image.save(out, 'JPEG', quality=quality)
  return out.getvalue()


def build(source, data_config, split: str, image_size: int,
          threads: int = 0) -> dict[str, Any]:
  """Writes `split`'s cache from `source` (its images in order) and returns
  its cache.json; returns the existing one when it is built already.

  grain's threads resize and encode (`threads`, 0: one per core this
  process may use); records are written in the source's order. Progress
  (images/s, ETA) every ~10 s.
  """
  done = check(data_config, split, image_size)
  if done is not None:
    return done
  want = identity(data_config, split, image_size)
  quality = int(data_config.get('cache_quality', 95))
  folder = split_dir(data_config, split)
  folder.mkdir(parents=True, exist_ok=True)
  lock = folder / LOCK
  try:  # Exclusive: a second writer fails here, not half-way.
    fd = os.open(str(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
  except FileExistsError:
    raise _busy(folder, _read(lock)) from None
  with os.fdopen(fd, 'w') as f:
    f.write(_owner())
  try:
    # Another writer may have finished between the check and the lock.
    done = _meta(data_config, split, image_size)
    return done if done is not None else _write(source, folder, want,
                                                quality, threads)
  finally:
    lock.unlink(missing_ok=True)


def _read(path: epath.Path) -> str:
  try:
    return path.read_text().strip()
  except FileNotFoundError:
    return 'gone since'


def _write(source, folder: epath.Path, want: dict[str, Any], quality: int,
           threads: int) -> dict[str, Any]:
  n, side = len(source), want['short_side']
  labels = np.empty(n, np.int64)
  start = last = time.perf_counter()
  size = 0

  def one(example: dict[str, Any]) -> tuple[bytes, int]:
    return (encode(_resized(example['image'], side), want['encoding'],
                   quality), example['label'])

  # The cores this process may run on (its affinity), not the machine's.
  workers = threads or len(os.sched_getaffinity(0))
  records = grain.MapDataset.source(source).map(one).to_iter_dataset(
      grain.ReadOptions(num_threads=workers,
                        prefetch_buffer_size=4 * workers))
  writer = array_record_module.ArrayRecordWriter(str(folder / RECORDS),
                                                 'group_size:1')
  try:
    for i, (record, label) in enumerate(records):
      labels[i] = label
      writer.write(record)
      size += len(record)
      now = time.perf_counter()
      if now - last > 10 or i + 1 == n:
        last, rate = now, (i + 1) / (now - start)
        parallel.log(f'cache: {i + 1}/{n} images of {want["split"]!r}, '
                     f'{rate:.0f} images/s, ETA {(n - i - 1) / rate:.0f} s')
  finally:
    writer.close()
  np.save(folder / LABELS, labels)
  seconds = time.perf_counter() - start
  meta = {**want, 'count': n, 'num_classes': int(source.num_classes),
          'quality': quality if want['encoding'] == 'jpeg' else None,
          'bytes': size, 'build_s': round(seconds, 2),
          's_per_1000_images': round(1000 * seconds / max(n, 1), 3)}
  # Last and whole (a rename): a folder with cache.json is complete.
  partial = folder / (META + '.partial')
  partial.write_text(json.dumps(meta, indent=2))
  partial.rename(folder / META)
  parallel.log(f'cache: wrote {n} images ({size / 2**20:.1f} MiB) to '
               f'{folder} in {seconds:.1f} s')
  return meta


class CacheSource:
  """A split read from its cache: `source[i]` is `{'image', 'label'}`, the
  image (h, w, 3) uint8 ('raw') or an `imaging.Encoded` JPEG."""

  def __init__(self, data_config, split: str, image_size: int):
    meta = check(data_config, split, image_size)
    folder = split_dir(data_config, split)
    if meta is None:
      raise DataError(
          f'config.data.cache: no cache of {split!r} at {folder}; build it '
          'with --config.mode=cache (same data fields)')
    self.meta, self.num_classes = meta, meta['num_classes']
    self._records = grain.sources.ArrayRecordDataSource(
        [str(folder / RECORDS)])
    self._labels = np.load(folder / LABELS)
    self._folder = folder

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, i: int) -> dict[str, Any]:
    record = self._records[i]
    label = int(self._labels[i])
    if self.meta['encoding'] == 'jpeg':
      return {'image': imaging.Encoded(record, f'{self._folder}[{i}]'),
              'label': label}
    h, w = _HEADER.unpack_from(record)
    image = np.frombuffer(record, np.uint8, offset=_HEADER.size)
    return {'image': image.reshape(h, w, 3), 'label': label}
