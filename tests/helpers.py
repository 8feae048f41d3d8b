"""What several test modules share: paths, the CLI runner and small configs.

Fixtures built from these live in conftest.py; test modules import this
module, never each other.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

from masktas_jax import config_lib, data

ROOT = pathlib.Path(__file__).resolve().parent.parent

# A space and teacher small enough to compile in seconds, for search tests.
SMALL = {'space.embed_dims': (32, 48), 'space.depths': (2, 3),
         'space.num_heads': (1, 2), 'space.mlp_ratios': (2.0, 4.0),
         'teacher.embed_dim': 64, 'teacher.depth': 2, 'teacher.num_heads': 1,
         'supernet.decoder_embed_dim': 32, 'search.eval_images': 48,
         'search.batch_size': 16, 'search.population': 8,
         'search.generations': 3, 'search.parents': 3, 'search.mutations': 4,
         'search.crossovers': 4}


# A pipeline config shrunk: a tiny teacher and space, a few steps each
# (CLI overrides).
SHRUNK = (
    '--config.teacher.steps=4', '--config.teacher.batch_size=16',
    '--config.teacher.embed_dim=64', '--config.teacher.num_heads=1',
    '--config.teacher.depth=2', '--config.teacher.decoder_embed_dim=32',
    '--config.supernet.steps=4', '--config.supernet.batch_size=16',
    '--config.supernet.decoder_embed_dim=32', '--config.space.depths=(2,3)',
    '--config.space.embed_dims=(32,48)', '--config.search.population=4',
    '--config.search.generations=6', '--config.search.parents=2',
    '--config.search.mutations=2', '--config.search.crossovers=2',
    '--config.search.eval_images=32', '--config.search.batch_size=16',
    '--config.search.min_params_m=0.05', '--config.search.max_params_m=0.1',
    '--config.finetune.steps=4', '--config.finetune.batch_size=16',
    '--config.checkpoint_every=2', '--config.log_every=2')


def tree_scale(*trees) -> float:
  """The largest |x| over every leaf of `trees` (arrays or pytrees of
  them)."""
  import jax  # pylint: disable=g-import-not-at-top
  return max(float(np.abs(np.asarray(x)).max(initial=0.0))
             for x in jax.tree.leaves(trees))


def matmul_dtypes(jaxpr) -> set[tuple[str, str]]:
  """Operand dtypes of every dot_general, sub-jaxprs (remat, switch)
  included."""
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      found.add(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, 'jaxpr', None)
        if inner is not None:
          found |= matmul_dtypes(getattr(inner, 'jaxpr', inner))
  return found


def assert_close(actual, desired, scale: float, rtol: float = 1e-5,
                 err_msg: str = '') -> None:
  """|actual - desired| <= rtol * scale elementwise.

  `scale` is the size of what was summed to make the values, not the size
  of the values: two float32 computations equal in exact arithmetic that
  sum in different orders (another XLA fusion, thread count or machine)
  differ by about eps * sum |terms|. A gradient entry that cancels (the
  key bias's is zero by softmax's shift invariance) is pure rounding of
  terms as large as the rest of its tree, so a tolerance relative to the
  entry itself fails at random. For a gradient tree, `tree_scale(tree)`;
  an error of substance (a dropped mask, an off-by-one slice) is a
  difference of the terms' own size, which this still catches.
  """
  actual, desired = np.asarray(actual), np.asarray(desired)
  assert actual.shape == desired.shape, (actual.shape, desired.shape, err_msg)
  diff = np.abs(actual.astype(np.float64) - desired.astype(np.float64))
  bound = rtol * scale
  bad = ~(diff <= bound)  # NaN counts as bad.
  if bad.any():
    i = np.unravel_index(np.argmax(np.where(bad, diff, -1)), diff.shape)
    raise AssertionError(
        f'{err_msg}: {int(bad.sum())} of {diff.size} elements differ by more '
        f'than {rtol:g} x scale {scale:.3g} = {bound:.3g}; worst at {i}: '
        f'{actual[i]!r} vs {desired[i]!r}')


def run(*args, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
  """`python -m masktas_jax.main ARGS` on the CPU, output captured."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})}
  return subprocess.run([sys.executable, '-m', 'masktas_jax.main', *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300, check=False)


def demo_config(teacher_checkpoint: str, **overrides):
  """The demo config on a smaller space, few steps, `overrides` applied
  (dotted keys), validated."""
  config = config_lib.load_config(str(ROOT / 'configs/demo.py'), check=False)
  settings = {
      # A smaller space than the demo's keeps the compile short.
      'space.embed_dims': (64, 96), 'space.depths': (2, 3),
      'space.num_heads': (1, 2), 'space.mlp_ratios': (2.0, 4.0),
      'teacher.checkpoint': teacher_checkpoint, 'supernet.batch_size': 16,
      'supernet.decoder_depth': 1, 'supernet.warmup_epochs': 0,
      'checkpoint_every': 4, 'log_every': 4,
      # The demo's parameter window does not fit this space.
      'search.min_params_m': 0.0, 'search.max_params_m': 0.0, **overrides}
  for key, value in settings.items():
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
  return config_lib.validate(config)


def eval_batches(config, split: str, num_images: int, batch_size: int,
                 seed: int = 0) -> list:
  """`data.eval_batches` of `config`'s data at its image size."""
  return data.eval_batches(config.data, split, config.space.image_size,
                           num_images, batch_size, seed, 'search.batch_size')


def search_config(**overrides):
  """`demo_config` on the SMALL space, with the workdir's own teacher."""
  return demo_config('', **{**SMALL, **overrides})


class Interrupted(Exception):
  """What `interrupt_after` raises: a stand-in for a killed job."""


class _Interrupting:
  """A training data iterator that calls `action` (default: raise
  `Interrupted`) on its (n+1)-th batch, forwarding the iterator state that
  checkpoints save."""

  def __init__(self, inner, n: int, action=None):
    self.inner, self.left, self.action = inner, n, action

  def __iter__(self):
    return self

  def __next__(self):
    if self.left == 0:
      if self.action is None:
        raise Interrupted
      self.action()
    self.left -= 1
    return next(self.inner)

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def interrupt_after(monkeypatch, n: int, action=None) -> None:
  """Makes the next training stage stop as if killed after `n` steps (the
  data iterator raises `Interrupted` when step n + 1 asks for its batch),
  or do `action` there instead (e.g. send this process SIGTERM)."""
  # pylint: disable=g-import-not-at-top
  from masktas_jax import data
  original = data.training_input

  def training_input(*args, **kwargs):
    batches, steps, warmup = original(*args, **kwargs)
    monkeypatch.setattr(data, 'training_input', original)
    return _Interrupting(batches, n, action), steps, warmup

  monkeypatch.setattr(data, 'training_input', training_input)


def read_scalars(directory) -> dict[str, dict[int, float]]:
  """tag -> {step: value} of every TensorBoard event file directly in
  `directory`, parsed from the TFRecord framing (length, CRC, Event proto)."""
  # pylint: disable=g-import-not-at-top
  import struct
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(pathlib.Path(directory).glob('events.out.tfevents.*')):
    raw = path.read_bytes()
    at = 0
    while at < len(raw):
      (length,) = struct.unpack('<Q', raw[at:at + 8])
      event = event_pb2.Event.FromString(raw[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


def photo(w: int, h: int, seed: int = 0) -> np.ndarray:
  """(h, w, 3) uint8 that compresses as photos do: smooth colour gradients,
  a sharp white square at (h/4, w/4) of side h/4, and mild noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w] / max(w, h)
  f = rng.uniform(4, 8, 3)
  pixels = np.stack([np.sin(f[0] * x), np.cos(f[1] * y),
                     np.sin(f[2] * (x + y))], -1)
  pixels = pixels * 90 + 120 + rng.normal(0, 4, (h, w, 3))
  pixels[h // 4:h // 2, w // 4:w // 4 + h // 4] = 255
  return pixels.clip(0, 255).astype(np.uint8)
