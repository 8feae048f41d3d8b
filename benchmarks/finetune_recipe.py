"""Top-1 of fine-tuning recipes over seeds, from one finished pipeline.

Fine-tunes the Arch a pipeline's search found (its `search/best_arch.json`,
from the inherited weights of its supernet) once per recipe and seed, each
in a scratch workdir holding copies of the pipeline's teacher, supernet and
search, and prints top-1 per seed, the mean and the fine-tuning time. A
recipe is STEPS:LR; the seed is the config's (`seed`: data order,
augmentation, initial head), the rest of the config as given.

  python benchmarks/finetune_recipe.py --workdir=/tmp/masktas_demo \
      --recipes=600:2e-3,480:3e-3 --seeds=0,1,2      # ~40 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import tempfile
import time

from etils import epath

from masktas_jax import config_lib
from masktas_jax.space import Arch
from masktas_jax.storage import artifacts
from masktas_jax.training import finetuning

import common  # pylint: disable=g-bad-import-order


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True,
                      help='a finished pipeline (teacher, supernet, search)')
  parser.add_argument('--config', default='demo')
  parser.add_argument('--recipes', default='600:2e-3,480:3e-3')
  parser.add_argument('--seeds', default='0,1,2')
  args = parser.parse_args()
  source = pathlib.Path(args.workdir)
  arch = Arch.from_dict(json.loads(
      (source / 'search' / artifacts.BEST_ARCH).read_text())['arch'])
  seeds = [int(s) for s in args.seeds.split(',')]
  rows = []
  for recipe in args.recipes.split(','):
    steps, lr = recipe.split(':')
    top1, seconds = [], []
    for seed in seeds:
      config = common.load_config(args.config, **{
          'finetune.steps': int(steps), 'finetune.lr': float(lr),
          'seed': seed})
      with tempfile.TemporaryDirectory() as scratch:
        for stage in ('teacher', 'supernet', 'search'):
          shutil.copytree(source / stage, pathlib.Path(scratch) / stage,
                          ignore=shutil.ignore_patterns('checkpoints'))
        start = time.perf_counter()
        result = finetuning.fine_tune(config_lib.finetune_setup(config),
                                      epath.Path(scratch), arch)
        seconds.append(time.perf_counter() - start)
      top1.append(100 * result['top1'])
      print(f'{recipe} seed {seed}: top-1 {top1[-1]:.2f}%', flush=True)
    rows.append((recipe, top1, statistics.mean(seconds)))

  print(f'# {common.command()}')
  print(f'# Arch {arch.to_dict()}')
  print('| steps:lr | ' + ' | '.join(f'seed {s}' for s in seeds) +
        ' | mean | s per run |')
  print('|---|' + '---:|' * (len(seeds) + 2))
  for recipe, top1, secs in rows:
    print(f'| {recipe} | ' + ' | '.join(f'{t:.2f}' for t in top1) +
          f' | {statistics.mean(top1):.2f} | {secs:.0f} |')


if __name__ == '__main__':
  main()
