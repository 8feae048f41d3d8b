"""What the benchmark scripts share: configs, timing, the peak and the
command line they record."""

from __future__ import annotations

import json
import pathlib
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from etils import epath

from masktas_jax import config_lib, data, hostmem
from masktas_jax.compilation import flops
from masktas_jax.evaluation.window import sample_archs, Window
from masktas_jax.space import Arch
from masktas_jax.storage import artifacts, model_dirs
from masktas_jax.training import finetuning

REPO = pathlib.Path(__file__).resolve().parent.parent

# As `python -m masktas_jax.main` does, so that CPU step times match the
# pipeline's (benchmarks/host_malloc.py measures the difference).
hostmem.reuse_freed_memory()


# The fine-tuning fields that suit random weights, over the config's recipe
# for inherited ones: no layer decay (there is no trained body to protect).
SCRATCH_RECIPE = {'pool': 'mean', 'layer_decay': 1.0}


def seed_dir(root, seed: int) -> epath.Path:
  """A multi-seed study's folder for seed `seed` under `root` (its
  supernet's workdir)."""
  return epath.Path(root) / f'seed{seed}'


def worker(args) -> tuple[int, int]:
  """--worker 'i/n' as (i, n): this process runs every n-th run of a study,
  from the i-th (the study scripts' one single-thread process per core);
  (0, 1) for callers without the flag."""
  text = getattr(args, 'worker', '0/1')
  i, _, n = text.partition('/')
  if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
    raise ValueError(f'--worker: expected i/n with 0 <= i < n, got {text!r}')
  return int(i), int(n)


def mean_sd(values, *, signed: bool = False, digits: int = 2) -> str:
  """'mean +- sd' of `values` (the sample sd), the value alone if there is
  one, '-' if none; `signed` shows the mean's sign (for differences)."""
  values = list(values)
  fmt = f'{"+" if signed else ""}.{digits}f'
  if len(values) < 2:
    return format(values[0], fmt) if values else '-'
  return (f'{format(statistics.mean(values), fmt)} +- '
          f'{statistics.stdev(values):.{digits}f}')


def command() -> str:
  """This run's command line, relative to the repository, for the record."""
  script = pathlib.Path(sys.argv[0]).resolve()
  shown = script.relative_to(REPO) if script.is_relative_to(REPO) else (
      sys.argv[0])
  return 'python ' + shlex.join([str(shown), *sys.argv[1:]])


def load_config(spec: str, check: bool = True, **overrides):
  """A config by file ('configs/tiny.py', 'configs/paper.py:small', relative
  to the repository) or by name ('demo' -> configs/demo.py), `overrides`
  applied as in `config_lib.load_config`."""
  file, colon, arg = spec.partition(':')
  if not file.endswith('.py'):
    file = f'configs/{file}.py'
  if not pathlib.Path(file).exists():  # Else relative to the repository.
    file = str(REPO / file)
  return config_lib.load_config(file + colon + arg, check=check, **overrides)


def timed(fn, *args):
  """(seconds, outputs) of one call, waited for."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, out


def measure_peak(size: int, dtype, reps: int = 10) -> float:
  """FLOP/s of a jitted (size x size) @ (size x size) matmul, median of
  `reps` after a warm-up."""
  a, b = (jax.random.normal(jax.random.key(i), (size, size), dtype)
          for i in (0, 1))
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  return 2 * size**3 / statistics.median(
      timed(matmul, a, b)[0] for _ in range(reps))


def xla_flops(compiled) -> float:
  """XLA's FLOP count of a compiled function (one iteration of any loop in
  it: not a model FLOP count); NaN where the backend gives none."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per computation.
    cost = cost[0]
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def supernet_flops(config) -> flops.SupernetStep:
  """The analytic FLOPs of `config`'s supernet step, with `config.teacher`
  as the teacher."""
  return flops.SupernetStep(
      config_lib.student_config(config, config.teacher.embed_dim),
      config_lib.mae_config(config), config.supernet.mask_ratio)


def random_batches(config, images: int, batch: int, seed: int):
  """`images` normalised uniform-noise images in batches of `batch`, the
  format of `data.eval_batches` ('image', 'label', 'valid')."""
  rng = np.random.default_rng(seed)
  size = config.space.image_size
  out = []
  for lo in range(0, images, batch):
    pixels = rng.integers(0, 256, (batch, size, size, 3), np.uint8)
    out.append({'image': data.normalize(pixels),
                'label': np.zeros(batch, np.int32),
                'valid': np.arange(lo, lo + batch) < images})
  return out


def spread_archs(config, count: int, seed: int) -> list[Arch]:
  """`count` subnets of the config's window at evenly spaced quantiles of
  parameter count, from 1,000 random ones (seeded)."""
  space = config_lib.space_from_config(config)
  pool = sorted(sample_archs(space, Window.from_config(config.search), 1000,
                             seed), key=space.count_params)
  picks = np.linspace(0, len(pool) - 1, count).round().astype(int)
  return [pool[i] for i in picks]


def test_top1(config, model_dir: epath.Path) -> float:
  """Top-1 on the test split of a fine-tuned classifier directory, cached
  beside it (`test_top1.json`)."""
  cache = model_dir.parent / 'test_top1.json'
  if cache.exists():
    return json.loads(cache.read_text())['top1']
  source = data.get_source(config.data, 'test', config.space.image_size)
  result = finetuning.evaluate(
      model_dirs.load_classifier(model_dir), data.eval_pipeline(
          source, image_size=config.space.image_size,
          crop_fraction=config.data.eval_crop_fraction, batch_size=120,
          read=data.reading(config.data, source)))
  artifacts.write_json(cache, result)
  return result['top1']
