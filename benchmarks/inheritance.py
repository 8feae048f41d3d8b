"""What inheriting supernet weights buys, per fine-tuning recipe.

Reads a finished pipeline workdir (its teacher and supernet), picks
`--archs` subnets spread evenly over the search window's parameter range,
and fine-tunes each, per recipe, budget and seed, from its inherited weights
and from random weights (`finetune.from_scratch`, with the recipe that suits
random weights: `--scratch`). Scored on the validation split
(`data.eval_split`), never on the test split: the recipe is chosen here.
Also the linear probe of each subnet's inherited features (mode=rank's
'linear' yardstick), the ceiling a fine-tune from them should pass.

Each run is cached in `--cache/<recipe>/<steps>/<arch>/<seed>/` (a finished
run is read back, an interrupted one resumes), so the study grows run by
run across sessions. Prints, per recipe and budget, the mean top-1 of the
inherited and the scratch runs and the margin inherited - scratch, mean +-
std over (subnet, seed) pairs, with how many pairs inheriting wins.

  python -m masktas_jax.main --config=configs/fashion.py --workdir=/tmp/fashion
  python benchmarks/inheritance.py --workdir=/tmp/fashion \
      --config=configs/fashion.py --cache=/root/studies/inheritance \
      --recipes=paper,mean,mean_warmup --budgets=0.25,1 --seeds=0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
from etils import epath

from masktas_jax import artifacts, config_lib, finetuning
from masktas_jax import model_dirs, rank
from masktas_jax.evolution import Window
from masktas_jax.space import Arch

import common  # pylint: disable=g-bad-import-order

# Recipe name -> config.finetune overrides, on top of the config's own
# (None: keep the config's value). 'paper' is the recipe before this study
# (the CLS token, no warm-up); the config's defaults are 'mean_warmup'.
RECIPES = {
    'paper': {'pool': 'cls', 'warmup_epochs': 0.0},
    'cls_warmup': {'pool': 'cls'},
    'mean': {'pool': 'mean', 'warmup_epochs': 0.0},
    'mean_warmup': {'pool': 'mean'},
    'mean_warmup_half_lr': {'pool': 'mean', 'lr': 0.5},
    'mean_warmup_ld075': {'pool': 'mean', 'layer_decay': 0.75},
    # What suits random weights: no layer decay (no body to protect).
    'scratch': {'pool': 'mean', 'layer_decay': 1.0},
}
# Fields given as a factor of the config's value rather than a value.
_FACTORS = ('lr',)


def spread_archs(config, count: int, seed: int) -> list[Arch]:
  """`count` subnets of the config's window at evenly spaced quantiles of
  parameter count, from 1,000 random ones (seeded)."""
  space = config_lib.space_from_config(config)
  pool = sorted(rank.sample_archs(space, Window.from_config(config.search),
                                  1000, seed),
                key=space.count_params)
  picks = np.linspace(0, len(pool) - 1, count).round().astype(int)
  return [pool[i] for i in picks]


def recipe_config(config, recipe: str, steps: int, seed: int, arch: Arch,
                  supernet: str, from_scratch: bool):
  """`config` fine-tuning `arch` by `recipe` for `steps` steps."""
  c = config.copy_and_resolve_references()
  for field, value in RECIPES[recipe].items():
    c.finetune[field] = (c.finetune[field] * value if field in _FACTORS
                         else value)
  c.finetune.steps = steps
  c.finetune.eval_split = config.data.eval_split
  c.finetune.from_scratch = from_scratch
  c.finetune.arch = arch.to_json()
  c.search.supernet = supernet
  c.seed = seed
  return config_lib.validate(c)


def run_dir(cache: epath.Path, recipe: str, steps: int, arch: Arch,
            seed: int) -> epath.Path:
  return (cache / recipe / f'{steps}steps' /
          artifacts.arch_key(arch.to_json()) / f'seed{seed}')


def probe_top1(config, workdir: epath.Path, archs: list[Arch]) -> list[float]:
  """Linear-probe top-1 (validation) of each Arch's inherited features."""
  c = config.copy_and_resolve_references()
  c.rank.yardstick = 'linear'
  encoder = model_dirs.load_student(artifacts.supernet_model(c, workdir),
                                    c).encoder
  return [float(t) for t in rank.yardstick_top1(
      c, workdir, encoder, config_lib.space_from_config(c), archs)]


def _summary(values: list[float]) -> str:
  if not values:
    return '-'
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f'{statistics.mean(values):+.1f} +- {std:.1f}'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True,
                      help='a finished pipeline (teacher and supernet)')
  parser.add_argument('--config', default='configs/fashion.py')
  parser.add_argument('--cache', required=True,
                      help='where each fine-tuning run lives (resumable)')
  parser.add_argument('--recipes', default='paper,mean,mean_warmup')
  parser.add_argument('--scratch', default='scratch',
                      help='the recipe of the from-scratch runs')
  parser.add_argument('--budgets', default='0.25,1',
                      help="fractions of the config's finetune.steps")
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--archs', type=int, default=6)
  parser.add_argument('--arch-seed', type=int, default=0)
  args = parser.parse_args()

  workdir, cache = epath.Path(args.workdir), epath.Path(args.cache)
  config = common.load_config(args.config)
  supernet = str(artifacts.supernet_model(config, workdir))
  space = config_lib.space_from_config(config)
  archs = spread_archs(config, args.archs, args.arch_seed)
  seeds = [int(s) for s in args.seeds.split(',')]
  budgets = [max(1, round(float(b) * config.finetune.steps))
             for b in args.budgets.split(',')]
  probe_file = cache / 'probe.json'
  if probe_file.exists():
    probes = json.loads(probe_file.read_text())
  else:
    probes = probe_top1(config, workdir, archs)
    cache.mkdir(parents=True, exist_ok=True)
    probe_file.write_text(json.dumps(probes))

  def top1(recipe, steps, arch, seed, from_scratch):
    c = recipe_config(config, recipe, steps, seed, arch, supernet,
                      from_scratch)
    result = finetuning.fine_tune(c, run_dir(cache, recipe, steps, arch, seed),
                                  arch)
    return 100 * result['top1']

  rows = []
  for steps in budgets:
    scratch = {(a, s): top1(args.scratch, steps, a, s, True)
               for a in archs for s in seeds}
    for recipe in args.recipes.split(','):
      inherited = {(a, s): top1(recipe, steps, a, s, False)
                   for a in archs for s in seeds}
      margins = [inherited[k] - scratch[k] for k in inherited]
      rows.append((recipe, steps, statistics.mean(inherited.values()),
                   statistics.mean(scratch.values()), margins))
      print(f'{recipe} {steps} steps: inherited - scratch '
            f'{_summary(margins)}', flush=True)

  print(f'\n# {common.command()}')
  print('# subnets (params M, linear probe top-1 %): ' + ', '.join(
      f'E{a.embed_dim} D{a.depth} ({space.count_params(a) / 1e6:.2f}, '
      f'{100 * p:.1f})' for a, p in zip(archs, probes)))
  print(f'# seeds {seeds}; scratch recipe {args.scratch!r}; validation '
        f'split {config.data.eval_split!r}')
  print('| recipe | steps | inherited top-1 | scratch top-1 | inherited - '
        'scratch (mean +- std) | inherited wins |')
  print('|---|---:|---:|---:|---:|---:|')
  for recipe, steps, inh, scr, margins in rows:
    wins = sum(m > 0 for m in margins)
    print(f'| {recipe} | {steps} | {inh:.2f} | {scr:.2f} | '
          f'{_summary(margins)} | {wins} of {len(margins)} |')


if __name__ == '__main__':
  main()
