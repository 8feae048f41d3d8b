"""Host input pipeline: images/s per reading option, and what a host needs.

1. Training batches at 224 px (random resized crop, flip, uint8) from a
   generated folder of ImageNet-sized JPEGs and from an array_record tfds
   copy of the same files, for worker processes 0/1/2 and threads, against
   a naive one-thread loop (decode, crop, bicubic resize, float32
   normalisation on the host: what the pipeline replaced). Peak memory of
   the process and its workers (PSS, so shared pages count once) and the
   batches a paused pipeline may hold (`data.Reading.max_batches`).
   Options that decode less: several masked views per decoded image
   (`supernet.views_per_image` K: the pipeline reads batch / K images and
   the step repeats each K times on the device, so views/s = K x images/s),
   and the pre-resized cache (`data.cache`, raw uint8 and JPEG; its build
   time and size per 1,000 images).
2. The images/s one accelerator host consumes in each training stage: the
   stage step's analytic FLOPs per image (`flops`) against the host's chips'
   peak bf16 FLOP/s, at 100% (a bound) and 40% model FLOPs utilisation; and
   the cores the supernet stage needs per reading option at 40% MFU against
   the host's vCPUs.

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
from masktas_jax.data import cache

sys.path.insert(0, str(common.REPO / 'tests'))
import tfds_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position

# Peak dense bf16 FLOP/s per chip and chips per host (the chip table).
HOSTS = ('v5e', 'v5p', 'v6e', 'h100')
CHIPS = {chips.CHIPS[k].name: (chips.CHIPS[k].bf16_flops,
                               chips.CHIPS[k].per_host) for k in HOSTS}
# vCPUs of one such host, as issue #28 gives them (Google Cloud machine
# types ct5lp-hightpu-4t, ct5p-hightpu-4t, ct6e-standard-4t, a3-highgpu-8g);
# not measured here.
HOST_VCPUS = {'v5e': 112, 'v5p': 208, 'v6e': 180, 'h100': 208}
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


def build_caches(folder, images: pathlib.Path, root: pathlib.Path,
                 size: int) -> dict:
  """Raw and JPEG caches of `folder` at `size` px (shorter side size * 8/7);
  {encoding: (source, cache.json)}. Built once, kept between runs."""
  out = {}
  for encoding in ('raw', 'jpeg'):
    config = config_lib.base_config().data
    config.update({'name': 'folder', 'data_dir': str(images),
                   'train_split': 'train', 'cache': str(root / encoding),
                   'cache_encoding': encoding})
    meta = cache.build(folder, config, 'train', size)
    out[encoding] = (data.get_source(config, 'train', size), meta)
  return out


def pipeline_table(args) -> dict[str, float]:
  """Prints the table; returns {option: views/s per core} of the default
  reading per option."""
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
  caches = build_caches(folder, tmp / 'jpegs', tmp / f'cache{args.size}',
                        args.size)
  auto = data.reading(config.data, folder)
  default = f'default (w{auto.workers} t{auto.threads})'
  readings = {'w0 t1': data.Reading(1, 0), 'w0 t2': data.Reading(2, 0),
              'w1 t1': data.Reading(1, 1), 'w2 t1': data.Reading(1, 2),
              default: auto}

  def rng_batches():
    rng = np.random.default_rng(0)
    while True:
      yield {'image': naive(folder.files, args.size, args.batch, rng)}

  # key -> (make batches, reading, views per decoded image)
  variants = {('naive loop', '-'): (rng_batches, data.Reading(1, 0), 1)}
  sources = {'folder': folder, 'tfds': tfds_src,
             'cache raw': caches['raw'][0], 'cache jpeg': caches['jpeg'][0]}
  views = [int(v) for v in args.views.split(',')]
  for source_name, source in sources.items():
    for name, read in (readings.items() if source_name in ('folder', 'tfds')
                       else [(default, auto)]):
      for k in (views if name == default else [1]):
        variants[(source_name, name + (f', {k} views' if k > 1 else ''))] = (
            lambda s=source, r=read, k=k: data.train_pipeline(
                s, image_size=args.size, batch_size=args.batch // k, seed=0,
                read=r), read, k)
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
  print('| source | reading | images/s | views/s | x naive | views/s per core '
        '| first batch (s) | peak memory (GiB) | paused: at most (MiB) |')
  print('|---|---|---|---|---|---|---|---|---|')
  per_core = {}
  for (source, name), (rate, start, peak) in best.items():
    _, read, k = variants[(source, name)]
    used = min(cores, max(read.workers, 1) * read.threads)
    held = ('-' if source == 'naive loop'
            else f'{read.max_batches() * batch_mb / k:.0f}')
    print(f'| {source} | {name} | {rate:.0f} | {k * rate:.0f} | '
          f'{k * rate / base:.2f} | {k * rate / used:.0f} | {start:.1f} | '
          f'{peak / 2**30:.2f} | {held} |')
    if name.startswith('default'):
      option = source + (name[len(default):] or '')
      per_core[option] = k * rate / used
  print('\n| cache | short side | MB per 1,000 images | build s per 1,000 '
        'images (all cores) | JPEG source MB per 1,000 |')
  print('|---|---|---|---|---|')
  for encoding, (_, meta) in caches.items():
    # bytes per image / 1,000 = MB per 1,000 images.
    print(f'| {encoding} | {meta["short_side"]} | '
          f'{meta["bytes"] / meta["count"] / 1e3:.1f} | '
          f'{meta["s_per_1000_images"]:.1f} | {np.mean(sizes) / 1e3:.1f} |')
  return per_core


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
    supernet = common.supernet_flops(config)
    per_image = {
        'teacher (MAE)': flops.mae_step(config_lib.mae_config(config),
                                        config.teacher.mask_ratio, 1),
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


def cores_table(config_names, per_core: dict[str, float]) -> None:
  """Cores the supernet stage's input needs per host at 40% MFU, per
  reading option, against the host's vCPUs (bold: at most half)."""
  print('\n| config | input option | views/s per core | '
        + ' | '.join(f'{k} host ({HOST_VCPUS[k]} vCPUs)' for k in HOSTS)
        + ' |')
  print('|---|---|---|' + '---|' * len(HOSTS))
  for name in config_names:
    config = common.load_config(name, check=False)
    space = config_lib.space_from_config(config)
    rng = np.random.default_rng(0)
    step = common.supernet_flops(config)
    per_image = np.mean([step(space.sample(rng), 1) for _ in range(200)])
    for option, rate in per_core.items():
      cells = []
      for k in HOSTS:
        chip = chips.CHIPS[k]
        need = MFU * chip.bf16_flops * chip.per_host / per_image / rate
        cell = f'{need:,.0f}'
        cells.append(f'**{cell}**' if need <= HOST_VCPUS[k] / 2 else cell)
      print(f'| {name} | {option} | {rate:.0f} | ' + ' | '.join(cells) + ' |')


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
  parser.add_argument('--views', default='1,2,4',
                      help='masked views per decoded image to time')
  args = parser.parse_args()
  per_core = pipeline_table(args)
  demand_table(args.configs.split(','))
  cores_table(args.configs.split(','), per_core)


if __name__ == '__main__':
  main()
