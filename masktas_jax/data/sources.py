"""Where images come from, by `config.data.name`: the sources of one split.

A source maps an index to `{'image', 'label': int}` (label -1 when
unlabelled), the image an (H, W, 3) uint8 array or an `imaging.Encoded`
file that the crop decodes, and has `num_classes`; `in_memory` sources are
read without worker processes (`data.reading`). The bundled scikit-learn
digits and in-memory arrays (`ArraySource`), a folder of images
(`FolderSource`), IDX files (`idx_source`), tfds datasets (`tfds_source`),
and any of them pre-resized (`cache`).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from masktas_jax.data import imaging
from masktas_jax.errors import DataError

if TYPE_CHECKING:  # Imported at run time only when their source is used.
  from masktas_jax.data import idx_source, tfds_source

# The digits' fixed split: 1,797 images -> 1,257 train, 180 validation,
# 360 test, from one seeded permutation.
_DIGITS_SPLITS = {'train': (0, 1257), 'validation': (1257, 1437),
                  'test': (1437, 1797)}


@functools.lru_cache(maxsize=None)
def _digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  order = np.random.default_rng(0).permutation(len(digits.images))
  # 0..16 grey levels -> uint8 RGB.
  images = np.round(digits.images[order] * (255 / 16)).astype(np.uint8)
  return np.repeat(images[..., None], 3, axis=-1), digits.target[order]


class ArraySource:
  """Random-access source over in-memory (N, H, W, 3) uint8 images."""

  in_memory = True  # Read without worker processes (`reading`).

  def __init__(self, images: np.ndarray, labels: np.ndarray | None,
               num_classes: int):
    self.images, self.labels, self.num_classes = images, labels, num_classes

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict[str, Any]:
    label = -1 if self.labels is None else int(self.labels[i])
    return {'image': self.images[i], 'label': label}


IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')


class FolderSource:
  """Images under a folder, recursively (JPEG and PNG, any case).

  `source[i]['image']` is an `imaging.Encoded` file, decoded by the crop
  that uses it: grey, palette and RGBA images are converted to RGB (alpha
  dropped), and a corrupt or truncated file stops the run with a
  `DataError` naming it. When every image sits in a sub-folder of the root,
  the first-level sub-folder names, sorted, are the classes; otherwise the
  images are unlabelled (label -1).
  """

  def __init__(self, root: str):
    if not root or not os.path.isdir(root):
      raise DataError(f'config.data.data_dir: image folder {root!r} does not '
                      'exist')
    files, others = [], []
    for folder, _, names in os.walk(root):
      for n in names:
        (files if n.lower().endswith(IMAGE_SUFFIXES) else others).append(
            os.path.join(folder, n))
    if not files:
      found = (f' (found {len(others)} other files, such as '
               f'{os.path.relpath(min(others), root)!r})' if others else '')
      raise DataError(f'config.data.data_dir: {root} contains no JPEG or PNG '
                      f'images{found}')
    self.files = sorted(files)
    parts = [os.path.relpath(f, root).split(os.sep) for f in self.files]
    if all(len(p) > 1 for p in parts):
      self.classes = sorted({p[0] for p in parts})
      index = {c: i for i, c in enumerate(self.classes)}
      self.labels = [index[p[0]] for p in parts]
    else:
      self.classes, self.labels = [], None
    self.num_classes = len(self.classes)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {'image': imaging.Encoded(self.files[i]),
            'label': -1 if self.labels is None else self.labels[i]}


def get_source(data_config, split: str, image_size: int | None = None):
  """The source of one split: its pre-resized cache when `data.cache` is
  set (`cache.CacheSource`, checked against the source and the
  `image_size` it serves), else `original_source`."""
  if not data_config.get('cache'):
    return original_source(data_config, split)
  if image_size is None:
    raise ValueError('get_source: a cached split needs the image size it '
                     'serves')
  from masktas_jax.data import cache  # pylint: disable=g-import-not-at-top
  return cache.CacheSource(data_config, split, image_size)


def original_source(data_config, split: str) -> (
    ArraySource | FolderSource | idx_source.IdxSource | tfds_source.TfdsSource):
  """The source named by `config.data.name` for one split.

  For 'folder', `data_dir/split` is used when that sub-folder exists (e.g.
  train/ and validation/), else `data_dir` itself for every split. For tfds,
  `split` is any tfds split expression ('train', 'train[:90%]').
  """
  name = data_config.name
  if name == 'digits':
    if split not in _DIGITS_SPLITS:
      raise DataError(f'config.data: digits has splits {sorted(_DIGITS_SPLITS)}'
                      f', not {split!r}')
    images, labels = _digits()
    lo, hi = _DIGITS_SPLITS[split]
    return ArraySource(images[lo:hi], labels[lo:hi], 10)
  if name == 'folder':
    root = data_config.data_dir
    split_root = os.path.join(root, split) if root else ''
    return FolderSource(split_root if os.path.isdir(split_root) else root)
  # Errors name the config field that holds the split.
  field = next((f'config.data.{f}' for f in ('train_split', 'eval_split')
                if data_config.get(f) == split), 'split')
  # Imported here: each loads (and tfds with it) only when asked for.
  # pylint: disable=g-import-not-at-top
  if name == 'idx':
    from masktas_jax.data import idx_source
    return idx_source.IdxSource(data_config.data_dir, split, field)
  from masktas_jax.data import tfds_source
  return tfds_source.TfdsSource(name, split, data_config.data_dir, field)
