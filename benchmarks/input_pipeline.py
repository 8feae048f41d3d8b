"""Host input pipeline: images/s per reading option, and what a host needs.

1. Training batches at 224 px (random resized crop, flip, uint8) from a
   generated folder of ImageNet-sized JPEGs and from an array_record tfds
   copy of the same files, for worker processes 0/1/2 and threads, against
   a naive one-thread loop (decode, crop, bicubic resize, float32
   normalisation on the host: what the pipeline replaced). Peak memory of
   the process and its workers (PSS, so shared pages count once) and the
   batches a paused pipeline may hold (`data.Reading.max_batches`).
2. The images/s one accelerator host consumes in each training stage: the
   stage step's analytic FLOPs per image (`flops`) against the host's chips'
   peak bf16 FLOP/s, at 100% (a bound) and 40% model FLOPs utilisation.

    python benchmarks/input_pipeline.py [--images 384] [--rounds 2]

Variants are timed in alternating rounds (machine noise hits them alike);
each figure is the best round.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import threading
import time

import numpy as np
import psutil  # tfds's dependency: reads workers' memory.
from PIL import Image

import common
from masktas_jax import config_lib, data
from masktas_jax.compilation import chips, flops

sys.path.insert(0, str(common.REPO / 'tests'))
import tfds_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position

# Peak dense bf16 FLOP/s per chip and chips per host (the chip table).
CHIPS = {c.name: (c.bf16_flops, c.per_host) for c in (
    chips.CHIPS[k] for k in ('v5e', 'v5p', 'v6e', 'h100'))}
MFU = 0.4


def make_jpegs(root: pathlib.Path, count: int) -> pathlib.Path:
  """`count` JPEGs of ImageNet's typical sizes (sides 300-500 px, ~110 KB
  at quality 90: smooth colour fields, edges and grain, as photos), in two
  class folders; kept between runs."""
  if root.is_dir() and len(list(root.glob('*/*.jpg'))) == count:
    return root
  rng = np.random.default_rng(0)
  for i in range(count):
    w, h = int(rng.integers(380, 500)), int(rng.integers(300, 460))
    y, x = np.mgrid[0:h, 0:w] / 100
    f = rng.uniform(0.3, 3, 6)
    fields = np.stack([np.sin(f[0] * x + f[1] * y), np.cos(f[2] * x * y / 4),
                       np.sin(f[3] * x) * np.cos(f[4] * y)], -1)
    edges = (np.sin(f[5] * 7 * x) > 0.6)[..., None] * 60
    pixels = fields * 80 + 120 + edges + rng.normal(0, 20, (h, w, 3))
    folder = root / str(i % 2)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
        folder / f'{i:05d}.jpg', quality=90)
  return root


def make_tfds(files: list[str], root: pathlib.Path) -> str:
  """The same JPEG files, bytes unchanged, as an array_record tfds copy."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not (root / 'masktas_bench_jpegs').is_dir():
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3),
                                     encoding_format='jpeg'),
        'label': tfds.features.ClassLabel(num_classes=2)})
    tfds_fixture.prepare(root, 'masktas_bench_jpegs', '1.0.0', features, {
        'train': [{'image': f, 'label': int(pathlib.Path(f).parent.name)}
                  for f in files]})
  return str(root)


def naive(files: list[str], size: int, batch: int, rng) -> np.ndarray:
  """One batch the straightforward way, one image after another."""
  out = []
  for path in rng.choice(files, batch):
    with Image.open(path) as image:
      rgb = np.asarray(image.convert('RGB'))
    h, w = rgb.shape[:2]
    area = h * w * rng.uniform(0.2, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, np.sqrt(area * aspect)), min(h, np.sqrt(area / aspect))
    x, y = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    crop = np.asarray(Image.fromarray(rgb).resize(
        (size, size), Image.BICUBIC, box=(x, y, x + cw, y + ch)))
    if rng.random() < 0.5:
      crop = crop[:, ::-1]
    out.append(data.normalize(crop))
  return np.stack(out)


class PeakMemory:
  """Peak PSS (bytes) of this process and its children, sampled at 10 Hz."""

  def __init__(self):
    self.peak, self._stop = 0, threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    me = psutil.Process()
    while not self._stop.wait(0.1):
      total = 0
      for p in [me, *me.children(recursive=True)]:
        try:
          total += p.memory_full_info().pss
        except (psutil.Error, AttributeError):
          pass
      self.peak = max(self.peak, total)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def time_variant(make_batches, batches: int) -> tuple[float, float, float]:
  """(images/s, seconds to the first batch, peak memory bytes)."""
  with PeakMemory() as memory:
    start = time.perf_counter()
    it = make_batches()
    first = next(it)
    warm = time.perf_counter()
    for _ in range(batches):
      next(it)
    rate = batches * len(first['image']) / (time.perf_counter() - warm)
    if hasattr(it, 'close'):
      it.close()
  return rate, warm - start, memory.peak


def pipeline_table(args) -> None:
  cores = os.cpu_count()
  tmp = pathlib.Path(args.dir)
  folder = data.FolderSource(str(make_jpegs(tmp / 'jpegs', args.images)))
  sizes = [os.path.getsize(f) for f in folder.files]
  print(f'{len(folder)} JPEGs, mean {np.mean(sizes) / 1e3:.0f} KB, '
        f'{cores} cores, batch {args.batch}, {args.size} px')
  config = config_lib.base_config()
  config.data.update({'name': 'masktas_bench_jpegs',
                      'data_dir': make_tfds(folder.files, tmp / 'tfds')})
  tfds_src = data.get_source(config.data, 'train')
  auto = data.reading(config.data, folder)
  readings = {'w0 t1': data.Reading(1, 0), 'w0 t2': data.Reading(2, 0),
              'w1 t1': data.Reading(1, 1), 'w2 t1': data.Reading(1, 2),
              f'default (w{auto.workers} t{auto.threads})': auto}

  def rng_batches():
    rng = np.random.default_rng(0)
    while True:
      yield {'image': naive(folder.files, args.size, args.batch, rng)}

  variants = {('naive loop', '-'): (rng_batches, data.Reading(1, 0))}
  for source_name, source in (('folder', folder), ('tfds', tfds_src)):
    for name, read in readings.items():
      variants[(source_name, name)] = (
          lambda s=source, r=read: data.train_pipeline(
              s, image_size=args.size, batch_size=args.batch, seed=0,
              read=r), read)
  best = {}
  for r in range(args.rounds):
    order = list(variants) if r % 2 == 0 else list(reversed(variants))
    for key in order:
      rate, start, peak = time_variant(variants[key][0], args.batches)
      old = best.get(key, (0, 0, 0))
      best[key] = (max(rate, old[0]), start, max(peak, old[2]))
      print(f'  round {r}: {key[0]} {key[1]}: {rate:.0f} images/s',
            flush=True)
  base = best[('naive loop', '-')][0]
  batch_mb = args.batch * args.size**2 * 3 / 2**20
  print(f'\n{common.command()}\n')
  print('| source | reading | images/s | x naive | per core | first batch (s) '
        '| peak memory (GiB) | paused: at most (MiB) |')
  print('|---|---|---|---|---|---|---|---|')
  for (source, name), (rate, start, peak) in best.items():
    read = variants[(source, name)][1]
    used = min(cores, max(read.workers, 1) * read.threads)
    held = ('-' if source == 'naive loop'
            else f'{read.max_batches() * batch_mb:.0f}')
    print(f'| {source} | {name} | {rate:.0f} | {rate / base:.2f} | '
          f'{rate / used:.0f} | {start:.1f} | {peak / 2**30:.2f} | {held} |')


def demand_table(config_names) -> None:
  """Images/s one host's chips consume per stage step."""
  print('\n| config | stage | GFLOPs per image | '
        + ' | '.join(f'{c} x{n} host: peak / {MFU:.0%} MFU'
                     for c, (_, n) in CHIPS.items()) + ' |')
  print('|---|---|---|' + '---|' * len(CHIPS))
  for name in config_names:
    config = common.load_config(name, check=False)
    space = config_lib.space_from_config(config)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(200)]
    supernet = flops.SupernetStep(config)
    per_image = {
        'teacher (MAE)': flops.mae_step(config, 1),
        'supernet (mean Arch)': np.mean([supernet(a, 1) for a in archs]),
        'supernet (min Arch)': supernet(space.min_arch(), 1),
        'fine-tune (mean Arch)': np.mean([
            flops.finetune_step(space, a, 1) for a in archs]),
    }
    for stage, f in per_image.items():
      cells = [f'{peak * n / f:,.0f} / {MFU * peak * n / f:,.0f}'
               for peak, n in CHIPS.values()]
      print(f'| {name} | {stage} | {f / 1e9:.1f} | ' + ' | '.join(cells)
            + ' |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=384)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--batches', type=int, default=40,
                      help='timed batches per variant, after the first')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--dir', default=os.path.join(
      tempfile.gettempdir(), 'masktas_bench_input'))
  parser.add_argument('--configs', default='tiny,small,base')
  args = parser.parse_args()
  pipeline_table(args)
  demand_table(args.configs.split(','))


if __name__ == '__main__':
  main()
