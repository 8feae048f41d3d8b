"""Image sources (`sources`) and grain pipelines.

Sources map an index to `{'image', 'label': int}`, the image an (H, W, 3)
uint8 array or an `imaging.Encoded` file that the crop decodes; the
pipelines shard them per process, shuffle, augment and batch, read ahead
by threads and worker processes (`Reading`), with iterator state that
checkpoints save for exact resume. Batches leave the host as uint8 (a
quarter of float32's bytes to copy); `prepare` normalises them on the
device, inside the jitted step or evaluation.

Sources, by `config.data.name`: the bundled scikit-learn digits ('digits'),
a folder of images ('folder', under `config.data.data_dir`), IDX files such
as Fashion-MNIST's ('idx', `idx_source`), and any other
name is a tfds dataset ('imagenet2012', 'cifar10', ...) read with random
access from its array_record copy under `config.data.data_dir`
(`tfds_source`; no TensorFlow, no download). With `config.data.cache` set,
any of them is read from its pre-resized copy (`cache`, built by
`--config.mode=cache`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from masktas_jax import parallel
from masktas_jax.data import imaging
from masktas_jax.data.randaugment import RandAugment
from masktas_jax import errors
from masktas_jax.data import sources

# The sources and their error, as the package has always offered them
# (data.ArraySource, data.DataError).
DataError = errors.DataError
ArraySource, FolderSource = sources.ArraySource, sources.FolderSource
IMAGE_SUFFIXES = sources.IMAGE_SUFFIXES
get_source, original_source = sources.get_source, sources.original_source

# ImageNet statistics, as the MAE teacher checkpoints expect.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

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


@dataclasses.dataclass(frozen=True)
class Reading:
  """How a process reads a pipeline ahead of its consumer.

  `workers` processes (grain's multiprocessing prefetch; 0: none, this
  process reads) each run `threads` threads that read whole batches, and
  keep up to max(threads, prefetch) batches ready. Which batches a run
  sees does not depend on any of the three. A paused pipeline holds at most
  `max_batches()` batches: grain's default buffer (500 elements, each a
  whole batch here) grew host memory by gigabytes whenever the consumer
  paused.
  """
  threads: int = 1
  workers: int = 0
  prefetch: int = 2

  def max_batches(self) -> int:
    """Batches a paused pipeline holds at most: per reader its buffer
    (at least one per thread) and, with workers, one in its queue, one
    being put there and two in this process's interleaving (counted for
    workers 0 too: a bound, not a tight one)."""
    return max(self.workers, 1) * (max(self.threads, self.prefetch) + 4)

  def iterate(self, batches: grain.MapDataset) -> grain.IterDataset:
    """`batches`, read ahead as this says."""
    # Below one buffered batch per thread, grain leaves threads idle.
    out = batches.to_iter_dataset(grain.ReadOptions(
        num_threads=self.threads,
        prefetch_buffer_size=max(self.threads, self.prefetch)))
    if self.workers:
      # Starting workers, grain reads absl flags, which a library caller
      # (a test, a notebook) has not parsed: they are marked parsed, with
      # their defaults, for the whole process.
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      out = out.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.workers, per_worker_buffer_size=1))
    return out


# A worker process: Python, numpy, PIL and jax imported, plus its batches.
_WORKER_BYTES = 1 << 30


def _cores() -> int:
  """The CPU cores this process may run on (its affinity, e.g. a SLURM or
  taskset allocation), not the machine's."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def _available_bytes() -> int | None:
  """Memory available to new processes (Linux's MemAvailable: free memory
  plus reclaimable page cache), or None where unknown."""
  try:
    with open('/proc/meminfo', encoding='ascii') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def reading(data_config, source) -> Reading:
  """`config.data`'s threads, workers and prefetch for reading `source`.

  workers None: none for an in-memory source (its images need no
  decoding, a worker's start-up would cost more), else one per CPU core
  this process may use, while each can have 1 GiB of the available memory
  (container memory limits are not read). threads 0: the cores
  shared among the workers; one for an in-memory source, whose crops of
  tiny images hold the GIL (digits' fine-tuning batches: 22 ms with one
  thread, 42 ms with two, on 2 cores).
  """
  cores = _cores()
  in_memory = getattr(source, 'in_memory', False)
  workers = data_config.get('workers')
  if workers is None:
    free = _available_bytes() or cores * _WORKER_BYTES
    workers = 0 if in_memory else max(1, min(cores, free // _WORKER_BYTES))
  threads = data_config.get('threads', 0) or (
      1 if in_memory else max(1, cores // max(workers, 1)))
  return Reading(threads, workers, data_config.get('prefetch', 2))


class BatchIterator:
  """This process's batches of a pipeline, in order, read as `read` says.

  Its state is the number of batches consumed (`{'next_index': n}`, the
  key grain's own iterators use, so older checkpoints resume): resume is
  exact whatever the workers, threads or prefetch before and after.
  """

  def __init__(self, batches: grain.MapDataset, read: Reading):
    self._batches, self.read, self._next = batches, read, 0
    self._it = None

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._it = iter(self.read.iterate(self._batches[self._next:]))
    batch = next(self._it)
    self._next += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {'next_index': self._next}

  def set_state(self, state: dict[str, int]) -> None:
    self.close()
    self._next = int(state['next_index'])

  def close(self) -> None:
    """Stops the worker processes and threads reading ahead."""
    if self._it is not None:
      self._it.close()
      self._it = None


def _closing(dataset: grain.IterDataset):
  """Iterates `dataset`, stopping its worker processes when done."""
  it = iter(dataset)
  try:
    yield from it
  finally:
    it.close()


def train_pipeline(source, *, image_size: int, batch_size: int, seed: int,
                   min_scale: float = 0.2, flip: bool = True,
                   randaugment: RandAugment | None = None,
                   read: Reading = Reading()) -> BatchIterator:
  """Endless shuffled, augmented batches: this process's share of each
  global batch, read as `read` says. Augmented as DeiT does: a random
  resized crop, a flip, then `randaugment` if given.

  Yields `{'image': (b, S, S, 3) uint8, 'label': (b,) int32}` with b the
  per-process batch; a new order each epoch. Its `get_state()` /
  `set_state()` make resume exact, and `close()` stops its workers.
  """
  def augment(example, rng):
    image = imaging.random_resized_crop(example['image'], image_size, rng,
                                        scale=(min_scale, 1.0))
    if flip and rng.random() < 0.5:
      image = image[:, ::-1]
    if randaugment is not None:
      image = randaugment(np.ascontiguousarray(image), rng)
    return {'image': np.ascontiguousarray(image),
            'label': np.int32(example['label'])}

  # One global order: every process shuffles and augments alike (grain
  # derives an element's randomness from its index) and takes every P-th
  # batch, so global batch t holds the same images, in the same order, on any
  # number of processes. Elements are lazy: a process decodes only its own.
  batches = (grain.MapDataset.source(source).seed(seed).shuffle().repeat()
             .random_map(augment).batch(batch_size, drop_remainder=True))
  return BatchIterator(batches[jax.process_index()::jax.process_count()],
                       read)


def eval_pipeline(source, *, image_size: int, batch_size: int,
                  crop_fraction: float = 0.875, read: Reading = Reading()):
  """One pass over `source`, centre-cropped, this process's share of each
  global batch, read as `read` says.

  Yields `{'image': (b, S, S, 3) uint8, 'label', 'valid'}` batches of
  exactly b = `batch_size` (per process); the last global batch is padded
  with copies and `valid` (b,) marks the real examples. Global batch t holds
  examples t*B .. (t+1)*B - 1 in order (B = b x processes), process p the
  p-th slice of it, as training batches are split: so the global batches,
  and whatever depends on an example's place in them (e.g. the masks drawn
  per batch position when scoring), are the same on any number of
  processes.
  """
  n = len(source)
  processes = jax.process_count()
  global_batch = batch_size * processes
  padded = -(-n // global_batch) * global_batch

  def view(i):
    example = source[min(i, n - 1)]
    return {'image': imaging.center_crop(example['image'], image_size,
                                         crop_fraction),
            'label': np.int32(example['label']), 'valid': np.bool_(i < n)}

  # A worker costs ~1.5 s to start: none for a pass of a batch or two.
  batches = padded // global_batch
  read = dataclasses.replace(read, workers=min(read.workers, batches - 1))
  local = grain.MapDataset.range(padded).map(view).batch(batch_size)
  return _closing(read.iterate(local[jax.process_index()::processes]))


class _Subset:
  """`source` restricted to `indices` (a random-access source too)."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, indices

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self.source[int(self.indices[i])]


def eval_batches(data_config, split: str, image_size: int, num_images: int,
                 batch_size: int, seed: int, batch_field: str
                 ) -> list[dict[str, np.ndarray]]:
  """This process's share of `num_images` images of `split` (a seeded random
  subset), evaluation views at `image_size`, in global batches of
  `batch_size` (the config field `batch_field`, named if it does not
  divide over the processes).

  Each dict has 'image' (b, S, S, 3) uint8, 'label' (b,) and 'valid' (b,),
  b the per-process batch; the last batch is padded ('valid' False).
  """
  source = get_source(data_config, split, image_size)
  n = min(num_images, len(source))
  indices = np.sort(np.random.default_rng(seed).permutation(len(source))[:n])
  local = parallel.check_batch_size(batch_size, batch_field)
  return list(eval_pipeline(_Subset(source, indices), image_size=image_size,
                            batch_size=local,
                            crop_fraction=data_config.eval_crop_fraction,
                            read=reading(data_config, source)))


def _randaugment(section) -> RandAugment | None:
  """The stage's RandAugment (`randaugment`: its magnitude, 0 off), filling
  with the mean colour the images are normalised by."""
  magnitude = section.get('randaugment', 0)
  if not magnitude:
    return None
  return RandAugment(magnitude, section.get('randaugment_std', 0.5),
                     fill=tuple(int(round(255 * float(m))) for m in MEAN))


def images_per_step(section) -> int:
  """Images a training stage decodes a step (global): its batch_size, over
  views_per_image where it masks each image several times (supernet)."""
  return section.batch_size // section.get('views_per_image', 1)


def training_input(data_config, section, stage: str, image_size: int,
                   seed: int, source=None, steps: int | None = None):
  """(batch iterator, steps, warm-up steps) of a training stage.

  Reads `data_config.train_split` (config.data) at `image_size`, and the
  stage's `section` (config.<stage>, named `stage` in messages):
  batch_size (global), steps, or epochs over the training split,
  warmup_epochs, and crop_min_scale, flip and RandAugment's magnitude and
  its spread where the stage has them (else MAE's 0.2, flips, no
  RandAugment). `source`: the training split's source, when the caller has
  it open already; `steps`: instead of the section's steps or epochs.
  """
  if source is None:
    source = get_source(data_config, data_config.train_split, image_size)
  # Images decoded a step: the batch, or its views' images (supernet).
  views = section.get('views_per_image', 1)
  images = images_per_step(section)
  local_batch = parallel.check_batch_size(
      images, f'{stage}.batch_size' if views == 1 else
      f'{stage}.batch_size / {stage}.views_per_image')
  # Epochs count what the step trains on (views, for the supernet), so
  # views_per_image changes the decoding and not the schedule.
  steps_per_epoch = len(source) / section.batch_size
  steps = steps or section.steps or math.ceil(section.epochs *
                                             steps_per_epoch)
  warmup = min(round(section.warmup_epochs * steps_per_epoch), steps - 1)
  batches = train_pipeline(source, image_size=image_size,
                           batch_size=local_batch, seed=seed,
                           min_scale=section.get('crop_min_scale', 0.2),
                           flip=section.get('flip', True),
                           randaugment=_randaugment(section),
                           read=reading(data_config, source))
  read = batches.read
  each = f', {views} masked views each' if views > 1 else ''
  parallel.log(f'{stage}: reading batches of {local_batch} images per '
               f'process{each}, data.workers {read.workers}, data.threads '
               f'{read.threads}, '
               f'data.prefetch {read.prefetch}')
  return batches, steps, warmup
