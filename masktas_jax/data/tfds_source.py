"""tfds datasets by name ('imagenet2012', 'cifar10', 'oxford_iiit_pet', ...).

Read with random access through `tfds.data_source` from an `array_record`
copy, which needs no TensorFlow; preparing that copy once does
(`tfds build NAME --file_format=array_record`). Nothing is ever downloaded
here. Every failure is a one-line `DataError` naming the config field.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from masktas_jax.data import imaging
from masktas_jax.errors import DataError


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return lines[0].strip().strip('"\'') if lines else type(e).__name__


def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The builder of a prepared random-access copy of `name`, or DataError."""
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name, known + ['digits', 'folder', 'idx'], 3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ''
    where = (f'neither in the tfds catalogue nor prepared under {data_dir}'
             if data_dir else 'not in the tfds catalogue')
    raise DataError(f'config.data.name: no tfds dataset {name!r} ({where}), '
                    f"and it is not 'digits', 'folder' or 'idx'{hint}") from None
  except Exception as e:  # pylint: disable=broad-except
    # A bad config or version suffix ('cifar10:9.9.9'), or a builder whose
    # code fails to load: the tfds message says which.
    raise DataError(f'config.data.name: cannot open tfds dataset {name!r}: '
                    f'{_first_line(e)}') from e
  path = epath.Path(builder.data_dir)
  # Checked first: `is_prepared` logs a warning for a missing directory.
  if not (path / 'dataset_info.json').exists() or not builder.is_prepared():
    # Versions prepared beside the one the code asks for (e.g. by an older
    # tfds): the user can select one by name.
    versions = sorted((p.parent.name for p in path.parent.glob(
        '*/dataset_info.json') if re.fullmatch(r'\d+\.\d+\.\d+',
                                               p.parent.name)),
                      key=tfds.core.Version) if path.parent.exists() else []
    found = (f'; found version(s) {", ".join(versions)} there: pick one with '
             f"config.data.name='{builder.name}:{versions[-1]}'"
             if versions else '')
    raise DataError(
        f'config.data.data_dir: tfds dataset {name!r} is not prepared in '
        f'{path} and downloads are off: prepare it once with `tfds build '
        f'{builder.name} --file_format=array_record` (needs TensorFlow; '
        'add --data_dir), or point config.data.data_dir at the directory that '
        f'holds it{found}')
  return builder


def _pick(features, kind, preferred: str) -> str | None:
  """`preferred` if it is a top-level feature of `kind`, else the first such
  feature (keys sorted), else None."""
  keys = [k for k, f in sorted(features.items()) if isinstance(f, kind)]
  if kind is tfds.features.Image:
    # Only 8-bit images convert faithfully to RGB (not depth maps, float).
    keys = [k for k in keys if np.dtype(features[k].np_dtype) == np.uint8]
  return preferred if preferred in keys else (keys[0] if keys else None)


class TfdsSource:
  """One split of a prepared tfds dataset, by index.

  `source[i]` is `{'image': imaging.Encoded, 'label': int}`: the dataset's
  'image' feature (else its first 8-bit Image feature), still encoded,
  decoding to (H, W, 3) uint8 with grey, palette, CMYK and alpha images
  converted to RGB; its 'label' ClassLabel (else its first
  ClassLabel), -1 when it has none. `num_classes` and `classes` come from
  that ClassLabel (0 and [] without one).

  `split` is any tfds split expression ('train', 'train[:90%]',
  'train[10:20]+test'); `field` is the config field that named it, for
  errors. Picklable: a copy reopens the files.
  """

  def __init__(self, name: str, split: str, data_dir: str = '',
               field: str = 'split'):
    self.name, self.split, self.data_dir, self.field = (name, split,
                                                        data_dir, field)
    self._open()

  def _open(self) -> None:
    builder = _builder(self.name, self.data_dir)
    features = builder.info.features
    self.image_key = _pick(features, tfds.features.Image, 'image')
    if self.image_key is None:
      raise DataError(f'config.data.name: tfds dataset {self.name!r} has no '
                      f'8-bit image feature (features: {sorted(features)})')
    self.label_key = _pick(features, tfds.features.ClassLabel, 'label')
    self.classes = (list(features[self.label_key].names)
                    if self.label_key else [])
    self.num_classes = len(self.classes)
    splits = ', '.join(sorted(builder.info.splits))
    try:  # Resolves slicing and '+' without opening any file.
      size = builder.info.splits[self.split].num_examples
    except (ValueError, KeyError) as e:
      unknown = re.search(r"Unknown split '([^']*)'", str(e))
      if unknown:
        raise DataError(f'{self.field}: tfds dataset {self.name!r} has no '
                        f'split {unknown[1]!r} (splits: {splits})') from e
      reason = str(e).strip().splitlines()[-1].split('. See format')[0]
      raise DataError(f'{self.field}: cannot read split {self.split!r} of '
                      f'tfds dataset {self.name!r}: {reason}') from e
    if not size:
      raise DataError(f'{self.field}: split {self.split!r} of tfds dataset '
                      f'{self.name!r} is empty (splits: {splits})')
    # Images stay encoded (PIL decodes the one used, straight to RGB); other
    # image features such as segmentation masks are never decoded.
    decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
                if isinstance(f, tfds.features.Image)}
    try:
      self._data = tfds.data_source(
          self.name, split=self.split, data_dir=self.data_dir or None,
          download=False, decoders=decoders)
    except NotImplementedError as e:
      stored = getattr(builder.info.file_format, 'value',
                       builder.info.file_format)
      raise DataError(
          f'config.data.data_dir: tfds dataset {self.name!r} in '
          f'{builder.data_dir} is stored as {stored}, '
          'without random access: prepare it again with --file_format='
          'array_record') from e

  def __getstate__(self) -> dict[str, Any]:
    # The open array_record readers stay behind; the copy reopens its own.
    return {k: getattr(self, k) for k in ('name', 'split', 'data_dir',
                                          'field')}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._open()

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, i: int) -> dict[str, Any]:
    record = self._data[i]
    image = imaging.Encoded(record[self.image_key], f'tfds dataset '
                           f'{self.name!r} split {self.split!r} example {i}')
    label = int(record[self.label_key]) if self.label_key else -1
    return {'image': image, 'label': label}

  def __repr__(self) -> str:
    return (f'TfdsSource({self.name!r}, split={self.split!r}, '
            f'{len(self)} examples, {self.num_classes} classes)')
