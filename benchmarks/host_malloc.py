"""The demo's train steps on this host's CPU with glibc's default malloc
and with `hostmem.reuse_freed_memory()` (what `masktas_jax.main` sets).

The setting is process-wide and must precede JAX's start, so each
measurement is a child process: for each round, each stage (MAE teacher
pre-training, the supernet's masked distillation, fine-tuning the demo's
found subnet) and each setting in turn, a child compiles the jitted step
`trainer.program(task)` builds and times `--iters` steps on one uint8
batch. Per stage it prints the medians over rounds of the step time, the
kernel (sys) time and the minor page faults per step, and the ratio of the
step times.

  python benchmarks/host_malloc.py             # configs/demo.py, ~5 min
  python benchmarks/host_malloc.py --rounds 3 --iters 30
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODES = ('default', 'reuse')


def child(stage: str, mode: str, config_name: str, iters: int) -> dict:
  """One stage's step under one malloc setting, timed in this process."""
  from masktas_jax import hostmem  # pylint: disable=g-import-not-at-top
  if mode == 'default':
    # Before common's import applies the setting.
    hostmem.reuse_freed_memory = lambda: False
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  import cpu_step  # pylint: disable=g-import-not-at-top
  from masktas_jax.training import trainer  # pylint: disable=g-import-not-at-top

  config = common.load_config(config_name)
  size = config.space.image_size
  rng = np.random.default_rng(0)
  _, task, batch_size, labelled = next(
      t for t in cpu_step.tasks(config) if t[0] == stage)
  batch = {'image': rng.integers(0, 256, (batch_size, size, size, 3),
                                 dtype=np.uint8)}
  if labelled:
    batch['label'] = rng.integers(0, config.space.num_classes, batch_size)
  prog = trainer.program(task)
  state = prog.init(jax.random.key(0), task.init_inputs)
  times = []
  for i in range(iters + 2):  # Two warm-up steps: compile, first reuse.
    if i == 2:
      usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    state, _ = jax.block_until_ready(prog.step(
        state, batch, jax.random.key(1), task.constants))
    times.append(time.perf_counter() - start)
  end = resource.getrusage(resource.RUSAGE_SELF)
  return {'batch': batch_size, 'step': statistics.median(times[2:]),
          'sys': (end.ru_stime - usage.ru_stime) / iters,
          'faults': (end.ru_minflt - usage.ru_minflt) / iters}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='demo')
  parser.add_argument('--iters', type=int, default=20)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--stages', default='teacher,supernet,finetune')
  parser.add_argument('--child', nargs=2, metavar=('STAGE', 'MODE'),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(*args.child, args.config, args.iters)))
    return
  stages = args.stages.split(',')
  runs = {(s, m): [] for s in stages for m in MODES}
  for _ in range(args.rounds):
    for stage in stages:
      for mode in MODES:
        out = subprocess.run(
            [sys.executable, __file__, '--config', args.config, '--iters',
             str(args.iters), '--child', stage, mode],
            capture_output=True, text=True, check=True)
        runs[stage, mode].append(json.loads(out.stdout.splitlines()[-1]))
  import common  # pylint: disable=g-import-not-at-top
  print(f'# {common.command()}')
  print(f'# medians over {args.rounds} rounds of each child\'s median of '
        f'{args.iters} steps; stages and settings in turn')
  print('| stage | batch | default: step ms | sys ms | page faults | '
        'reuse: step ms | sys ms | page faults | reuse / default |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for stage in stages:
    row = {m: {k: statistics.median(r[k] for r in runs[stage, m])
               for k in ('step', 'sys', 'faults')} for m in MODES}
    cells = ' | '.join(f'{1e3 * row[m]["step"]:.1f} | '
                       f'{1e3 * row[m]["sys"]:.0f} | {row[m]["faults"]:,.0f}'
                       for m in MODES)
    print(f'| {stage} | {runs[stage, MODES[0]][0]["batch"]} | {cells} | '
          f'{row["reuse"]["step"] / row["default"]["step"]:.3f} |')


if __name__ == '__main__':
  main()
