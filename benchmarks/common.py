"""What the benchmark scripts share: configs, timing, the peak and the
command line they record."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
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


# Where studies keep their results in the repository (`Record`).
RECORDS = REPO / 'benchmarks' / 'records'


class Record:
  """A study's results as small JSON files kept in the repository (under
  `RECORDS`), apart from its workdir (checkpoints, which a fresh machine
  retrains): machines do not outlive a study of many hours, commits do.

  `Record(path) / 'seed0' / 'x.json'` names a file; `get` reads one (None
  if absent), `put` writes one atomically.
  """

  def __init__(self, path):
    self.path = epath.Path(path)

  def __truediv__(self, name: str) -> 'Record':
    return Record(self.path / name)

  def get(self) -> object | None:
    return json.loads(self.path.read_text()) if self.path.exists() else None

  def put(self, value) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(self.path, value)


def fingerprint(tree) -> str:
  """sha256 of a pytree's arrays (leaves in path order, dtype, shape and
  bytes): equal exactly when two trainings made the same bits."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    leaf = np.asarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)}{leaf.dtype}{leaf.shape}'
                  .encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def versions() -> dict[str, str]:
  """The versions of what decides a training's bits: Python, the
  libraries, XLA's CPU flags, and the CPU."""
  cpu = platform.machine()
  info = pathlib.Path('/proc/cpuinfo')
  if info.exists():
    cpu = next((line.split(':', 1)[1].strip() for line in
                info.read_text().splitlines()
                if line.startswith('model name')), cpu)
  out = {'python': platform.python_version(), 'cpu': cpu,
         'XLA_FLAGS': os.environ.get('XLA_FLAGS', '')}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain',
               'numpy'):
    out[name] = importlib.metadata.version(name)
  return out


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
