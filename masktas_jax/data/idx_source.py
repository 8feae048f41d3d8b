"""IDX files (Fashion-MNIST, MNIST, KMNIST) as a source: `data.name='idx'`.

A folder holds the four files of the IDX distribution, each gzipped or not:

  train-images-idx3-ubyte  (N, H, W) uint8     t10k-images-idx3-ubyte
  train-labels-idx1-ubyte  (N,) uint8          t10k-labels-idx1-ubyte

Splits are 'train' and 'test' (the t10k files) with tfds's split
expressions on top, so a validation split is carved from train
('train[:55000]', 'train[55000:]', 'train[:90%]', 'train[:100]+test').
`data.data_dir` '' is Debian's Fashion-MNIST (`apt-get install
dataset-fashion-mnist`). Grey images become RGB on access. Every problem
with the files is a one-line `DataError` naming the file.
"""

from __future__ import annotations

import functools
import gzip
import os
import types
import zlib
from typing import Any

import numpy as np

from masktas_jax.errors import DataError

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
# Split name -> file prefix.
SPLITS = {'train': 'train', 'test': 't10k'}
_KINDS = {'images': 3, 'labels': 1}  # -> number of dimensions
_UBYTE = 0x08  # IDX's type code for unsigned bytes.


def _file(root: str, prefix: str, kind: str) -> str | None:
  """The path of one of the four files, gzipped or not; None if absent."""
  name = f'{prefix}-{kind}-idx{_KINDS[kind]}-ubyte'
  for candidate in (name, name + '.gz'):
    path = os.path.join(root, candidate)
    if os.path.isfile(path):
      return path
  return None


@functools.lru_cache(maxsize=8)
def read_idx(path: str, ndim: int) -> np.ndarray:
  """An IDX file of unsigned bytes with `ndim` dimensions -> uint8 array.

  The format: two zero bytes, the type code (0x08, unsigned byte), the
  number of dimensions, each dimension as a big-endian uint32, then the
  values in C order. Raises `DataError` naming `path` for anything else.
  """
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    if raw[:2] == b'\x1f\x8b':
      raw = gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'{path}: cannot read it: {e}') from None
  if len(raw) < 4 or raw[:2] != b'\0\0':
    raise DataError(f'{path}: not an IDX file (magic number '
                    f'0x{raw[:4].hex() or "(empty)"}, want 0x0000080'
                    f'{ndim})')
  if raw[2] != _UBYTE or raw[3] != ndim:
    raise DataError(f'{path}: magic number 0x{raw[:4].hex()} says type code '
                    f'0x{raw[2]:02x} with {raw[3]} dimensions; want unsigned '
                    f'bytes (0x08) with {ndim} (0x0000080{ndim})')
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f'{path}: truncated header ({len(raw)} bytes)')
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], '>u4'))
  if len(raw) - header != int(np.prod(shape)):
    raise DataError(f'{path}: the header says shape {shape}, '
                    f'{int(np.prod(shape))} values, but the file holds '
                    f'{len(raw) - header}')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _load(root: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, H, W) uint8, labels (N,) uint8) of one file pair."""
  paths = {kind: _file(root, prefix, kind) for kind in _KINDS}
  for kind, path in paths.items():
    if path is None:
      name = f'{prefix}-{kind}-idx{_KINDS[kind]}-ubyte'
      raise DataError(f'{os.path.join(root, name)}[.gz]: missing (the IDX '
                      f'folder config.data.data_dir needs it)')
  images = read_idx(paths['images'], 3)
  labels = read_idx(paths['labels'], 1)
  if len(images) != len(labels):
    raise DataError(f'{paths["labels"]}: {len(labels)} labels for the '
                    f'{len(images)} images of {paths["images"]}')
  if not len(images) or min(images.shape[1:]) < 1:
    raise DataError(f'{paths["images"]}: holds no images (shape '
                    f'{images.shape})')
  return images, labels


def _check_folder(root: str) -> None:
  if not os.path.isdir(root):
    hint = (' (apt-get install dataset-fashion-mnist puts Fashion-MNIST '
            'there)' if root == DEFAULT_DIR else '')
    raise DataError(f'config.data.data_dir: IDX folder {root} does not '
                    f'exist{hint}')
  if not any(_file(root, p, k) for p in SPLITS.values() for k in _KINDS):
    raise DataError(
        f'config.data.data_dir: {root} holds none of the IDX files '
        '{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]')


class IdxSource:
  """One split expression over an IDX folder; `source[i]['image']` is
  (H, W, 3) uint8 (grey repeated), `num_classes` the largest label of the
  files read + 1. In memory, as `data.ArraySource`: `images` (N, H, W),
  `labels` (N,).

  `field` is the config field that named the split, for errors.
  """

  in_memory = True  # Read without worker processes (data.reading).

  def __init__(self, root: str, split: str, field: str = 'split'):
    # Imported here, as in data.get_source: tfds only when it is needed.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    root = root or DEFAULT_DIR
    _check_folder(root)
    try:
      instruction = tfds.core.ReadInstruction.from_spec(split)
    except (ValueError, TypeError) as e:
      raise DataError(f'{field}: {split!r} is not a split expression such as '
                      "'train', 'test' or 'train[:55000]'") from e
    # Only the files the expression names are read.
    names = {part.split('[')[0].strip() for part in split.split('+')}
    unknown = sorted(names - set(SPLITS))
    if unknown:
      raise DataError(f'{field}: IDX data has splits train and test, not '
                      f'{unknown[0]!r}')
    arrays = {name: _load(root, SPLITS[name]) for name in names}
    infos = {name: types.SimpleNamespace(num_examples=len(images))
             for name, (images, _) in arrays.items()}
    try:
      parts = instruction.to_absolute(infos)
    except (ValueError, AttributeError) as e:
      sizes = ', '.join(f'{k} has {v.num_examples}' for k, v in infos.items())
      raise DataError(f'{field}: {split!r} is out of range ({sizes} '
                      'examples)') from e
    images = [arrays[p.splitname][0][p.from_:p.to] for p in parts]
    labels = [arrays[p.splitname][1][p.from_:p.to] for p in parts]
    shapes = {x.shape[1:] for x in images}
    if len(shapes) > 1:
      raise DataError(f'{field}: {split!r} joins images of different sizes '
                      f'{sorted(shapes)}')
    self.root, self.split = root, split
    self.images, self.labels = np.concatenate(images), np.concatenate(labels)
    if not len(self.images):
      raise DataError(f'{field}: {split!r} is empty')
    self.num_classes = max(int(a[1].max()) for a in arrays.values()) + 1

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {'image': np.repeat(self.images[i][..., None], 3, axis=-1),
            'label': int(self.labels[i])}

  def __repr__(self) -> str:
    return (f'IdxSource({self.root!r}, split={self.split!r}, {len(self)} '
            f'examples, {self.num_classes} classes)')
