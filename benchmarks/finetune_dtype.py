"""Fine-tuning's train step on this host's CPU in float32 and in bfloat16
(`finetune.compute_dtype`), in one run: each step's median time, images/s,
the ratio, and with `--profile` where each step's time goes by op kind
(`op_profile.breakdown`: dots, moves, elementwise, control).

The subnet is the one the Fashion-MNIST pipeline found at the config's
supernet rate (BENCHMARKS.md, "The supernet's learning rate"); the weights
are random (the dtype's cost does not depend on them); the batch is uint8
images, as the input pipeline delivers them. The two steps run in turn,
`--iters` rounds. One thread, as the studies run:

  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 \\
      python benchmarks/finetune_dtype.py --profile=/tmp/ft_profile
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import op_profile  # pylint: disable=g-bad-import-order

if '--profile' in ' '.join(sys.argv):
  op_profile.enable_op_events()  # Before JAX starts its CPU backend.

import jax  # pylint: disable=g-import-not-at-top,g-bad-import-order
import numpy as np  # pylint: disable=g-import-not-at-top,g-bad-import-order

from masktas_jax import config_lib  # pylint: disable=g-import-not-at-top
from masktas_jax.space import Arch  # pylint: disable=g-import-not-at-top
from masktas_jax.training import finetuning  # pylint: disable=g-import-not-at-top
from masktas_jax.training import trainer  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-import-not-at-top,g-bad-import-order

# configs/fashion.py's pipeline at 16x the supernet rate (fashion_v4).
FASHION_ARCH = Arch(96, 5, (2, 2, 2, 1, 2), (3.0, 2.0, 3.0, 2.0, 2.0))
DTYPES = ('float32', 'bfloat16')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='configs/fashion.py')
  parser.add_argument('--iters', type=int, default=20)
  parser.add_argument('--profile', default='',
                      help='a folder: also trace 10 steps per dtype there '
                      'and print the time by op kind')
  args = parser.parse_args()
  config = common.load_config(args.config)
  space = config_lib.space_from_config(config)
  size, batch_size = space.image_size, config.finetune.batch_size
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (batch_size, size, size, 3),
                                 dtype=np.uint8),
           'label': rng.integers(0, space.num_classes, batch_size)}
  runs = {}
  for dtype in DTYPES:
    recipe = config.finetune.copy_and_resolve_references()
    recipe.compute_dtype = dtype
    task = finetuning.make_task(recipe, space, FASHION_ARCH,
                                space.num_classes, 1000, 100, None)
    prog = trainer.program(task)
    state = prog.init(jax.random.key(0), task.init_inputs)
    state, metrics = jax.block_until_ready(prog.step(
        state, batch, jax.random.key(1), task.constants))
    runs[dtype] = dict(prog=prog, state=state, times=[],
                       constants=task.constants, loss=float(metrics['loss']))

  def step(run):
    run['state'], _ = run['prog'].step(run['state'], batch,
                                       jax.random.key(1), run['constants'])
    jax.block_until_ready(run['state'])

  for _ in range(args.iters):
    for run in runs.values():
      start = time.perf_counter()
      step(run)
      run['times'].append(time.perf_counter() - start)
  kinds = {}
  if args.profile:
    for dtype, run in runs.items():
      folder = os.path.join(args.profile, dtype)
      with op_profile.trace(folder):
        for _ in range(10):
          step(run)
      seconds = op_profile.breakdown(folder)
      total = sum(seconds.values())
      kinds[dtype] = ', '.join(f'{k} {100 * seconds[k] / total:.0f}%'
                               for k in op_profile.KINDS)

  print(f'# {common.command()}')
  print(f'# {FASHION_ARCH}, batch {batch_size} at {size} px; '
        f'{len(os.sched_getaffinity(0))} core(s) allowed; medians of '
        f'{args.iters} steps, timed in turn')
  print('| compute dtype | step (ms) | images/s | speed vs float32 | '
        'first-step loss | time by op kind (profiled) |')
  print('|---|---:|---:|---:|---:|---|')
  base = statistics.median(runs['float32']['times'])
  for dtype, run in runs.items():
    t = statistics.median(run['times'])
    print(f'| {dtype} | {1e3 * t:.1f} | {batch_size / t:.0f} | '
          f'{base / t:.2f}x | {run["loss"]:.4f} | {kinds.get(dtype, "-")} |')


if __name__ == '__main__':
  main()
