"""Image sources and grain pipelines.

Sources map an index to `{'image': (H, W, 3) uint8, 'label': int}`; the
pipelines shard them per process, shuffle, augment and batch, with iterator
state that checkpoints save for exact resume. Batches leave the host as
uint8 (a quarter of float32's bytes to copy); `prepare` normalises them on
the device, inside the jitted step or evaluation.

Sources, by `config.data.name`: the bundled scikit-learn digits ('digits'),
a folder of images ('folder', under `config.data.data_dir`), and any other
name is a tfds dataset ('imagenet2012', 'cifar10', ...) read with random
access from its array_record copy under `config.data.data_dir`
(`tfds_source`; no TensorFlow, no download).
"""

from __future__ import annotations

import functools
import math
import os
from typing import TYPE_CHECKING, Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from masktas_jax import parallel
from masktas_jax.errors import DataError

if TYPE_CHECKING:  # Imported at run time only when a tfds name is used.
  from masktas_jax import tfds_source

# ImageNet statistics, as the MAE teacher checkpoints expect.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

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

  Grey, palette and RGBA images are converted to RGB (alpha dropped). When
  every image sits in a sub-folder of the root, the first-level sub-folder
  names, sorted, are the classes; otherwise the images are unlabelled
  (label -1).
  """

  def __init__(self, root: str):
    if not root or not os.path.isdir(root):
      raise DataError(f'config.data.data_dir: image folder {root!r} does not '
                      'exist')
    files = []
    for folder, _, names in os.walk(root):
      files += [os.path.join(folder, n) for n in names
                if n.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
      raise DataError(f'config.data.data_dir: {root} contains no JPEG or PNG '
                      'images')
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
    path = self.files[i]
    try:
      with Image.open(path) as image:
        rgb = np.asarray(image.convert('RGB'))
    except (OSError, ValueError) as e:
      raise DataError(f'{path}: unreadable image ({e})') from e
    return {'image': rgb,
            'label': -1 if self.labels is None else self.labels[i]}


def get_source(data_config, split: str
               ) -> ArraySource | FolderSource | tfds_source.TfdsSource:
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
  # Imported here: tfds loads only when a tfds dataset is asked for.
  from masktas_jax import tfds_source  # pylint: disable=g-import-not-at-top
  # Errors name the config field that holds the split.
  field = next((f'config.data.{f}' for f in ('train_split', 'eval_split')
                if data_config.get(f) == split), 'split')
  return tfds_source.TfdsSource(name, split, data_config.data_dir, field)


def _resize(image: np.ndarray, size: int, box=None) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize(
      (size, size), Image.BICUBIC, box=box))


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """Crop of random area fraction and aspect ratio, resized to (size, size)."""
  h, w = image.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw, ch = np.sqrt(area * aspect), np.sqrt(area / aspect)
    if cw <= w and ch <= h:
      x, y = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
      return _resize(image, size, box=(x, y, x + cw, y + ch))
  return _resize(image, size)


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32, ImageNet mean/std."""
  return (images.astype(np.float32) / 255 - MEAN) / STD


def prepare(batch: dict[str, Any]) -> dict[str, Any]:
  """A batch as models take it, inside jitted code: uint8 images (the
  pipelines' output) normalised to float32; float images (already
  normalised, e.g. tests' and benchmarks' own) pass unchanged."""
  image = batch.get('image')
  if image is None or image.dtype != np.uint8:
    return batch
  return {**batch, 'image': (image.astype(jnp.float32) / 255 - MEAN) / STD}


def read_options(threads: int = 0, prefetch: int = 2) -> grain.ReadOptions:
  """grain's read options with the buffer counted in batches: its default
  (500 elements, each a whole batch here) grows host memory by gigabytes
  whenever the consumer pauses. threads 0: one per CPU core."""
  return grain.ReadOptions(num_threads=threads or os.cpu_count() or 1,
                           prefetch_buffer_size=prefetch)


def train_pipeline(source, *, image_size: int, batch_size: int, seed: int,
                   min_scale: float = 0.2, flip: bool = True,
                   threads: int = 0, prefetch: int = 2):
  """Endless shuffled, augmented batches: this process's share of each
  global batch, `threads` and `prefetch` as in `read_options`.

  Yields `{'image': (b, S, S, 3) uint8, 'label': (b,) int32}` with b the
  per-process batch; a new order each epoch. Iterate with `iter(...)`; the iterator's
  `get_state()` / `set_state()` make resume exact.
  """
  def augment(example, rng):
    image = random_resized_crop(example['image'], image_size, rng,
                                scale=(min_scale, 1.0))
    if flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {'image': np.ascontiguousarray(image),
            'label': np.int32(example['label'])}

  # One global order: every process shuffles and augments alike (grain
  # derives an element's randomness from its index) and takes every P-th
  # batch, so global batch t holds the same images, in the same order, on any
  # number of processes. Elements are lazy: a process decodes only its own.
  batches = (grain.MapDataset.source(source).seed(seed).shuffle().repeat()
             .random_map(augment).batch(batch_size, drop_remainder=True))
  return batches[jax.process_index()::jax.process_count()].to_iter_dataset(
      read_options(threads, prefetch))


def center_crop(image: np.ndarray, size: int,
                crop_fraction: float = 0.875) -> np.ndarray:
  """Evaluation view: shorter side to size / crop_fraction, then the central
  (size, size) crop."""
  h, w = image.shape[:2]
  scale = size / crop_fraction / min(h, w)
  side = size / scale  # The crop's side in source pixels.
  top, left = (h - side) / 2, (w - side) / 2
  return _resize(image, size, box=(left, top, left + side, top + side))


def eval_pipeline(source, *, image_size: int, batch_size: int,
                  crop_fraction: float = 0.875, threads: int = 0,
                  prefetch: int = 2):
  """One pass over this process's share of `source`, centre-cropped, read
  with `threads` and `prefetch` as in `read_options`.

  Yields `{'image': (b, S, S, 3) uint8, 'label', 'valid'}` batches of
  exactly `batch_size`; the last one is padded with copies and `valid` (b,)
  marks the real examples.
  """
  shard = grain.MapDataset.source(source)[jax.process_index()::
                                          jax.process_count()]
  n = len(shard)
  padded = -(-n // batch_size) * batch_size

  def view(i):
    example = shard[min(i, n - 1)]
    return {'image': center_crop(example['image'], image_size,
                                 crop_fraction),
            'label': np.int32(example['label']), 'valid': np.bool_(i < n)}

  return grain.MapDataset.range(padded).map(view).batch(
      batch_size).to_iter_dataset(read_options(threads, prefetch))


def training_input(config, stage: str, seed: int, source=None):
  """(batch iterator, steps, warm-up steps) of a training stage.

  Reads `config.<stage>`: batch_size (global), steps, or epochs over the
  training split, warmup_epochs, and crop_min_scale and flip where the
  stage has them (else MAE's 0.2 and flips). `source`: the training split's
  source, when the caller has it open already.
  """
  section = config[stage]
  if source is None:
    source = get_source(config.data, config.data.train_split)
  local_batch = parallel.check_batch_size(section.batch_size,
                                          f'{stage}.batch_size')
  steps_per_epoch = len(source) / section.batch_size
  steps = section.steps or math.ceil(section.epochs * steps_per_epoch)
  warmup = min(round(section.warmup_epochs * steps_per_epoch), steps - 1)
  batches = train_pipeline(source, image_size=config.space.image_size,
                           batch_size=local_batch, seed=seed,
                           min_scale=section.get('crop_min_scale', 0.2),
                           flip=section.get('flip', True),
                           threads=config.data.threads,
                           prefetch=config.data.prefetch)
  return iter(batches), steps, warmup
