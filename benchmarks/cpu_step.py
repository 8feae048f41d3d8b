"""The demo's train steps on this host's CPU: the model code as written now
against its previous formulation, all in one run.

The previous formulation, restored by patching for this script only:
GELU through `jax.nn.gelu` (erfc, which XLA:CPU expands into exponentials
and selects) and attention biases added per (head, channel) after the
projection's reshape (whose gradient XLA:CPU reduces with a windowed
reduction). The current code uses erf and adds biases to the 2-D products
(`vit.gelu`, `vit.rows_linear`). Both compute the same function; the script
checks that the two steps' losses agree.

For each stage of the pipeline (MAE teacher pre-training, the supernet's
masked distillation, fine-tuning the demo's found subnet) it compiles the
jitted step `trainer.program(task)` builds, the one training runs, under
both formulations, then times them in turn on the same batch (uint8 images,
as the input pipeline delivers them), `--iters` rounds, and prints each
stage's median step time and the ratio now / before.

  python benchmarks/cpu_step.py             # configs/demo.py, ~3 min
  python benchmarks/cpu_step.py --iters 40
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import jax
import numpy as np
from flax import nnx

from masktas_jax import config_lib
from masktas_jax.models import vit
from masktas_jax.models.mae import MAE
from masktas_jax.space import Arch
from masktas_jax.stages import supernet as supernet_stage, teacher
from masktas_jax.training import finetuning, trainer

import common  # pylint: disable=g-bad-import-order

# The subnet the demo's search finds (README): embed 96, depth 4.
DEMO_ARCH = Arch(96, 4, (1, 2, 2, 1), (2.0, 4.0, 3.0, 4.0))


def _gelu_erfc(x):
  return jax.nn.gelu(x, approximate=False)


def _rows_linear_per_head(rows, kernel, bias):
  out = (rows @ kernel.reshape(rows.shape[-1], -1)).reshape(
      rows.shape[0], *bias.shape) + bias
  return out.reshape(rows.shape[0], -1)


@contextlib.contextmanager
def formulation(name: str):
  """Within: vit's GELU and projection as `name` ('now' or 'before')."""
  saved = vit.gelu, vit.rows_linear
  if name == 'before':
    vit.gelu, vit.rows_linear = _gelu_erfc, _rows_linear_per_head
  try:
    yield
  finally:
    vit.gelu, vit.rows_linear = saved


def tasks(config):
  """(stage, trainer.Task, batch size, whether batches carry labels)."""
  space = config_lib.space_from_config(config)
  mae = MAE(config_lib.mae_config(config), rngs=nnx.Rngs(0))
  return [
      ('teacher', teacher.make_task(config, 300, 20),
       config.teacher.batch_size, False),
      ('supernet', supernet_stage.make_task(
          config, mae, 300, 20, config.supernet.batch_size),
       config.supernet.batch_size, False),
      ('finetune', finetuning.make_task(
          config.finetune, space, DEMO_ARCH, space.num_classes, 600, 0, None),
       config.finetune.batch_size, True),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='demo')
  parser.add_argument('--iters', type=int, default=20)
  args = parser.parse_args()
  config = common.load_config(args.config)
  size = config.space.image_size
  rng = np.random.default_rng(0)
  runs, stages = {}, []
  for stage, task, batch_size, labelled in tasks(config):
    stages.append((stage, batch_size))
    batch = {'image': rng.integers(0, 256, (batch_size, size, size, 3),
                                   dtype=np.uint8)}
    if labelled:
      batch['label'] = rng.integers(0, config.space.num_classes, batch_size)
    for name in ('before', 'now'):
      with formulation(name):
        prog = trainer.program(task)
        state = prog.init(jax.random.key(0), task.init_inputs)
        state, metrics = jax.block_until_ready(prog.step(
            state, batch, jax.random.key(1), task.constants))
      runs[stage, name] = dict(step=prog.step, state=state, batch=batch,
                               constants=task.constants, times=[],
                               loss=float(metrics['loss']))
  for _ in range(args.iters):
    for run in runs.values():
      start = time.perf_counter()
      run['state'], _ = jax.block_until_ready(run['step'](
          run['state'], run['batch'], jax.random.key(1), run['constants']))
      run['times'].append(time.perf_counter() - start)

  print(f'# {common.command()}')
  print(f'# {jax.devices()[0].device_kind}, {jax.device_count()} device(s); '
        f'medians of {args.iters} steps, timed in turn')
  print('| stage | batch | before (ms) | now (ms) | now / before | '
        'images/s now | first-step loss before / now |')
  print('|---|---:|---:|---:|---:|---:|---|')
  for stage, batch_size in stages:
    before, now = runs[stage, 'before'], runs[stage, 'now']
    b, n = (statistics.median(r['times']) for r in (before, now))
    print(f'| {stage} | {batch_size} | {1e3 * b:.1f} | {1e3 * n:.1f} | '
          f'{n / b:.3f} | {batch_size / n:.0f} | '
          f'{before["loss"]:.6f} / {now["loss"]:.6f} |')
    if not np.isclose(before['loss'], now['loss'], rtol=1e-5):
      raise SystemExit(f'{stage}: the two formulations disagree')


if __name__ == '__main__':
  main()
