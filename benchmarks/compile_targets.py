"""What each config needs on TPU topologies and GPUs: `mode=compile` over a
grid of configs and targets, one process each, gathered into one table.

    python benchmarks/compile_targets.py [--configs tiny,small,base]
        [--targets tpu:v5e:4x4,tpu:v5p:2x2x1,tpu:v6e:2x2,cuda:8xh100,cpu:64]
        [--stages supernet] [--max-batch] [--out DIR]

Per config and target: memory per device against the chip's, analytic model
GFLOPs per device and step, the roofline step time and images/s per chip,
and the compile time on this host. With --max-batch, the largest per-device
batch (a power of two times the config's) whose supernet step still
compiles and fits, with the memory of each batch compiled on the way.
These are compiler figures, not runs. GPU targets need the '.[cuda]'
extra (its own venv: `--python`).

`cpu:B` is this host's CPU at B images per step (one device): the same
programs (`compile_stage.programs`) compiled for it, in a fresh process with no
compilation cache, for their compile time and XLA:CPU's memory figures
(`mode=compile` has no CPU target: a CPU is run, not compiled for).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(python: str, args: list[str], workdir: pathlib.Path
         ) -> tuple[int, dict | None, str, float]:
  """(exit code, report or None, last stderr line, wall seconds) of
  `python ARGS` run from the repository, writing workdir/compile/report.json."""
  shutil.rmtree(workdir, ignore_errors=True)  # No stale report.
  start = time.perf_counter()
  result = subprocess.run([python, *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu',
                                          'PYTHONPATH': str(REPO)},
                          check=False)
  seconds = time.perf_counter() - start
  report = workdir / 'compile' / 'report.json'
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  return (result.returncode,
          json.loads(report.read_text()) if report.exists() else None,
          lines[-1] if lines else '', seconds)


def compile_once(python: str, config: str, platform: str, topology: str,
                 stages: str, workdir: pathlib.Path,
                 overrides=()) -> tuple[int, dict | None, str, float]:
  """`_run` of one `mode=compile`."""
  return _run(python, [
      '-m', 'masktas_jax.main', f'--config=configs/{config}.py',
      f'--workdir={workdir}', '--config.mode=compile',
      f'--config.compile.platform={platform}',
      f'--config.compile.topology={topology}',
      f'--config.compile.stages=({",".join(repr(s) for s in stages.split(","))},)',
      *overrides], workdir)


def cpu_compile(config: str, batch: int, stages: str,
                workdir: pathlib.Path) -> None:
  """Child process of a `cpu:B` target: compiles `stages` of configs/CONFIG
  at `batch` images for this host's CPU; writes a report.json shaped like
  `mode=compile`'s (no roofline: no chip table entry for a host CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  from masktas_jax import parallel
  from masktas_jax.stages import compile as compile_stage
  from masktas_jax.compilation import roofline  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import common  # pylint: disable=g-import-not-at-top
  stages = tuple(stages.split(','))
  cfg = common.load_config(
      config, **{f'{stage}.batch_size': batch for stage in stages})
  mesh = parallel.make_mesh(jax.devices()[:1])
  rows = []
  for program in compile_stage.programs(cfg, mesh, stages):
    start = time.perf_counter()
    compiled = program.fn.lower(*program.args).compile()
    seconds = time.perf_counter() - start
    rows.append({'stage': program.stage, 'program': program.name,
                 'batch_per_device': batch, 'devices': 1,
                 'bytes': roofline.memory_sizes(compiled),
                 'model_flops_per_device': program.model_flops,
                 'compile_s': seconds})
  (workdir / 'compile').mkdir(parents=True, exist_ok=True)
  (workdir / 'compile' / 'report.json').write_text(
      json.dumps({'programs': rows}))


def compile_cpu(python: str, config: str, batch: int, stages: str,
                workdir: pathlib.Path) -> tuple[int, dict | None, str, float]:
  """`_run` of one `cpu:B` target's child process."""
  return _run(python, [__file__, '--cpu-child',
                       f'{config}:{batch}:{stages}:{workdir}'], workdir)


def max_batch(python, config, platform, topology, row: dict,
              root: pathlib.Path) -> tuple[int, dict[int, float], str]:
  """The largest power-of-two multiple of `row`'s batch per device (which
  compiled) whose supernet step still compiles and fits; 64 x that batch
  means at least that. Starts at the largest such batch that fits if the
  temporaries grew in proportion to the batch (the rest fixed), then
  doubles until one does not fit or halves until one does: XLA
  rematerialises under memory pressure, so the guess is a start, not an
  answer. Any failure counts as not fitting.

  Returns (batch, {batch: GiB per device of each batch compiled}, the
  last failure's one-line reason)."""
  per_device, devices = int(row['batch_per_device']), row['devices']
  sizes = row['bytes']
  memory = {per_device: sizes['total'] / 2**30}
  failure = ''

  def fits(batch: int) -> bool:
    nonlocal failure
    code, report, last, _ = compile_once(
        python, config, platform, topology, 'supernet',
        root / f'{config}_{topology}_{batch}'.replace(':', '_'),
        [f'--config.supernet.batch_size={batch * devices}'])
    if code or report is None:
      failure = last
      return False
    memory[batch] = report['programs'][0]['bytes']['total'] / 2**30
    return True

  limit = 64 * per_device
  per_image = sizes['temp'] / per_device
  guess = per_device
  while (2 * guess <= limit and sizes['total'] - sizes['temp'] +
         2 * guess * per_image <= row['usable_memory']):
    guess *= 2
  if guess > per_device and not fits(guess):
    guess //= 2
    while guess > per_device and not fits(guess):
      guess //= 2
    return guess, memory, failure
  best = guess
  while 2 * best <= limit and fits(2 * best):
    best *= 2
  return best, memory, failure


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='tiny,small,base')
  parser.add_argument('--targets', default=(
      'tpu:v5e:4x4,tpu:v5p:2x2x1,tpu:v6e:2x2,cuda:8xh100'))
  parser.add_argument('--stages', default='supernet')
  parser.add_argument('--max-batch', action='store_true')
  parser.add_argument('--python', default=sys.executable,
                      help='the interpreter (a venv with the back ends)')
  parser.add_argument('--out', default='')
  parser.add_argument('--cpu-child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.cpu_child:
    config, batch, stages, workdir = args.cpu_child.split(':', 3)
    cpu_compile(config, int(batch), stages, pathlib.Path(workdir))
    return
  root = pathlib.Path(args.out or tempfile.mkdtemp(prefix='aot_'))
  print('| config | target | stage | program | batch / device | memory / '
        'device (GiB) | of the chip | model GFLOPs / device | roofline ms '
        '| images/s / chip | compile s |' + (
            ' largest batch / device |' if args.max_batch else ''))
  print('|---|---|---|---|---|---|---|---|---|---|---|' + (
      '---|' if args.max_batch else ''))
  for config in args.configs.split(','):
    for target in args.targets.split(','):
      platform, topology = target.split(':', 1)
      workdir = root / f'{config}_{topology}'.replace(':', '_')
      if platform == 'cpu':
        code, report, last, _ = compile_cpu(args.python, config,
                                            int(topology), args.stages,
                                            workdir)
      else:
        code, report, last, _ = compile_once(args.python, config, platform,
                                             topology, args.stages, workdir)
      if report is None:
        print(f'| {config} | {topology} | {args.stages} | failed: {last} |'
              + ' |' * 7)
        continue
      for r in report['programs']:
        if 'error' in r:
          print(f"| {config} | {topology} | {r['stage']} | {r['program']} | "
                f"{r['batch_per_device']:g} | does not fit | | | | | "
                f"{r['compile_s']:.0f} |")
          continue
        if platform == 'cpu':
          print(f"| {config} | host CPU | {r['stage']} | {r['program']} | "
                f"{r['batch_per_device']:g} | "
                f"{r['bytes']['total'] / 2**30:.2f} | | "
                f"{r['model_flops_per_device'] / 1e9:,.0f} | | | "
                f"{r['compile_s']:.0f} |" + (' |' if args.max_batch else ''),
                flush=True)
          continue
        extra = ''
        if args.max_batch and r['stage'] == 'supernet':
          best, memory, failure = max_batch(args.python, config, platform,
                                            topology, r, root)
          by_batch = ', '.join(f'{b}: {m:.2f}' for b, m in sorted(
              memory.items()))
          extra = (f' {best} ({memory[best]:.2f} GiB; by batch: {by_batch}; '
                   f'{2 * best}: {failure or "not tried"}) |')
        elif args.max_batch:
          extra = ' |'
        print(f"| {config} | {topology} | {r['stage']} | {r['program']} | "
              f"{r['batch_per_device']:g} | {r['bytes']['total'] / 2**30:.2f} "
              f"| {r['bytes']['total'] / r['chip_memory']:.0%} | "
              f"{r['model_flops_per_device'] / 1e9:,.0f} | "
              f"{r['roofline']['step_s'] * 1e3:.1f} | "
              f"{r['images_per_s_per_chip']:,.0f} | {r['compile_s']:.0f} |"
              + extra, flush=True)
      if code and report is not None:
        print(f'| {config} | {topology} | | {last} |')


if __name__ == '__main__':
  main()
