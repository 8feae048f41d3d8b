"""Tiny tfds datasets prepared on disk, offline and without TensorFlow.

`make_tfds_dataset(data_dir)` writes a fake 'cifar10' with the real one's
on-disk layout (`data_dir/cifar10/3.0.2/`, array_record files, the real
features), so `tfds.data_source('cifar10', data_dir=data_dir)` reads it
exactly as it would read the real dataset. Any other registered tfds name
works alike (its real features are filled in); an unregistered name gets
`{'image', 'label'}` features, read back from the files alone.

Examples are deterministic (`example(...)`) and written in order
(shuffling disabled), so test i of a split is `example(split, i, ...)`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


def example(split: str, i: int, image_size: int | tuple[int, int] = 32,
            num_classes: int = 10, channels: int = 3) -> dict[str, Any]:
  """The i-th generated example of `split`.

  Returns {'image': (H, W, channels) uint8 (H, W) = image_size, or (H, W)
  for channels 1, 'label': int in [0, num_classes)}.
  """
  h, w = (image_size, image_size) if isinstance(image_size, int) else (
      image_size)
  # A seed per (split, index): splits differ, and any example can be
  # regenerated alone.
  rng = np.random.default_rng([sum(map(ord, split)), i])
  shape = (h, w) if channels == 1 else (h, w, channels)
  return {'image': rng.integers(0, 256, shape, np.uint8),
          'label': int(rng.integers(num_classes))}


def prepare(data_dir: str | os.PathLike, name: str, version: str,
            features: tfds.features.FeaturesDict,
            splits: dict[str, list[dict[str, Any]]]) -> str:
  """Writes `splits` (split -> list of feature dicts) as the array_record
  dataset `name` at `version` under `data_dir`, in list order; returns
  `data_dir`.

  Images may be given as numpy arrays ((H, W) grey or (H, W, C)): they are
  PNG-encoded here with PIL, since tfds would need TensorFlow for that.
  """
  dataset_name, dataset_version = name, version

  # Not registered: the real builder of a tfds name stays the one tfds finds.
  class _Fake(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = dataset_name
    VERSION = tfds.core.Version(dataset_version)

    def _info(self) -> tfds.core.DatasetInfo:
      return tfds.core.DatasetInfo(builder=self, features=features,
                                   disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download.
      return {split: self._generate_examples(examples)
              for split, examples in splits.items()}

    def _generate_examples(self, examples):
      for i, ex in enumerate(examples):
        yield i, {k: Image.fromarray(v) if isinstance(v, np.ndarray) and
                  v.dtype == np.uint8 and v.ndim >= 2 else v
                  for k, v in ex.items()}

  tfds.disable_progress_bar()
  _Fake(data_dir=os.fspath(data_dir),
        file_format='array_record').download_and_prepare()
  return os.fspath(data_dir)


def _fill(features: tfds.features.FeaturesDict, split: str, i: int,
          image_size, num_classes: int) -> dict[str, Any]:
  """One example for a real dataset's features: Text, Image, ClassLabel,
  BBox."""
  base = example(split, i, image_size, num_classes)
  out = {}
  for key, feature in features.items():
    if isinstance(feature, tfds.features.Image):
      channels = feature.shape[-1] or 3
      out[key] = (base['image'] if key == 'image' else
                  example(split + key, i, image_size, 2, channels)['image'])
    elif isinstance(feature, tfds.features.ClassLabel):
      out[key] = (base['label'] if key == 'label' else
                  i % feature.num_classes)
    elif isinstance(feature, tfds.features.Text):
      out[key] = f'{split}_{i}.png'
    elif isinstance(feature, tfds.features.BBoxFeature):
      out[key] = tfds.features.BBox(0.1, 0.2, 0.8, 0.9)
    else:
      raise NotImplementedError(f'fixture: feature {key!r} ({feature}) of '
                                'this dataset cannot be faked')
  return out


def make_tfds_dataset(data_dir: str | os.PathLike, name: str = 'cifar10',
                      num_train: int = 12, num_test: int = 5,
                      image_size: int = 32, num_classes: int = 10,
                      test_split: str = 'test',
                      num_validation: int = 0) -> str:
  """A fake tfds dataset `name` with splits 'train' and `test_split`, and
  'validation' when `num_validation` > 0.

  For a tfds catalogue name ('cifar10', 'cifar100', 'imagenet2012', ...) the
  files follow the real dataset's layout, version and features, so the real
  builder reads them; `num_classes` must then be the real one (cifar10: 10).
  Other names get features {'image': Image (H, W, 3), 'label':
  ClassLabel(num_classes)}, version 1.0.0. Example i of a split is
  `example(split, i, image_size, num_classes)`. Returns `data_dir`.
  """
  try:
    real = tfds.builder_cls(name)
  except tfds.core.registered.DatasetNotFoundError:
    real = None
  if real is None:
    version = '1.0.0'
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.ClassLabel(num_classes=num_classes)})
  else:
    info = real(data_dir=os.fspath(data_dir)).info
    version, features = str(info.version), info.features
    if features['label'].num_classes != num_classes:
      raise ValueError(f'fixture: {name} has {features["label"].num_classes} '
                       f'classes, not {num_classes}')
    if features['image'].shape[0] not in (None, image_size):
      raise ValueError(f'fixture: {name} images are '
                       f'{features["image"].shape}, not {image_size} px')
  splits = {s: [_fill(features, s, i, image_size, num_classes)
                for i in range(n)]
            for s, n in (('train', num_train), (test_split, num_test),
                         ('validation', num_validation)) if n}
  return prepare(data_dir, name, version, features, splits)
