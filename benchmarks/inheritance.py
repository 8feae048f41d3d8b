"""What inheriting supernet weights buys, per fine-tuning recipe.

Reads a finished pipeline workdir (its teacher and supernet), picks
`--archs` subnets spread evenly over the search window's parameter range,
and fine-tunes each, per recipe, budget and seed, from its inherited weights
and from random weights (`finetune.from_scratch`, with the recipe that suits
random weights: `--scratch`). Scored on the validation split
(`data.eval_split`), never on the test split: the recipe is chosen here.
Also the linear probe of each subnet's inherited features (mode=rank's
'linear' yardstick), the ceiling a fine-tune from them should pass.

Recipes that read the CLS token through a supernet trained to predict the
teacher's mean token (`supernet.cls_target`) take that supernet from
`--cls-workdir` (a workdir whose supernet was trained so, on the same
teacher).

Each run is cached in `--cache/<recipe>/<steps>steps/<arch>/seed<seed>/`
(a finished run is read back, an interrupted one resumes) and, with
`--record`, its top-1 is kept in the same path under `--record`, as
`seed<seed>.json` (committed to the repository, it outlives the machine;
`--supernet` reads a supernet kept there too; the record is bound to one
config and supernet), so the study grows run by run across sessions; runs
go seed by seed (every subnet and recipe of seed 0 first), so a study
stopped early is balanced. `--report` prints the table
of what is done without training. Prints, per recipe and budget, the mean
top-1 of the inherited and the scratch runs and the margin inherited -
scratch, mean +- std over the (subnet, seed) pairs done for both, with how
many pairs inheriting wins.

  python -m masktas_jax.main --config=configs/fashion.py --workdir=/tmp/fashion
  python benchmarks/inheritance.py --workdir=/tmp/fashion \
      --config=configs/fashion.py --cache=/root/studies/inheritance \
      --recipes=paper,mean,mean_warmup --budgets=0.25,1 --seeds=0,1,2
"""

from __future__ import annotations

import argparse
import statistics

from etils import epath

from masktas_jax import config_lib
from masktas_jax.space import Arch
from masktas_jax.stages import rank
from masktas_jax.storage import artifacts, model_dirs
from masktas_jax.training import finetuning

import common  # pylint: disable=g-bad-import-order
import study_record  # pylint: disable=g-bad-import-order

# Recipe name -> config.finetune overrides, on top of the config's own.
# 'paper' is the recipe before this study (the CLS token, no warm-up); the
# config's defaults are 'mean_warmup'. '_supernet': 'cls' reads the
# supernet of --cls-workdir (CLS output trained to predict the teacher's
# mean token) instead of --workdir's.
RECIPES = {
    'paper': {'pool': 'cls', 'warmup_epochs': 0.0},
    'cls_warmup': {'pool': 'cls'},
    'cls_supervised': {'pool': 'cls', '_supernet': 'cls'},
    'mean': {'pool': 'mean', 'warmup_epochs': 0.0},
    'mean_warmup': {'pool': 'mean'},
    'mean_warmup_lpft': {'pool': 'mean', 'head_init': 'probe'},
    'mean_warmup_half_lr': {'pool': 'mean', 'lr': 0.5},
    'mean_warmup_ld075': {'pool': 'mean', 'layer_decay': 0.75},
    'mean_warmup_ld1': {'pool': 'mean', 'layer_decay': 1.0},
    'scratch': common.SCRATCH_RECIPE,
}
# Fields given as a factor of the config's value rather than a value.
_FACTORS = ('lr',)


def recipe_config(config, recipe: str, steps: int, seed: int, arch: Arch,
                  supernet: str, from_scratch: bool):
  """`config` fine-tuning `arch` by `recipe` for `steps` steps."""
  c = config.copy_and_resolve_references()
  for field, value in RECIPES[recipe].items():
    if not field.startswith('_'):
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


def probe_top1(config, workdir: epath.Path, archs: list[Arch],
               supernet: str) -> list[float]:
  """Linear-probe top-1 (validation) of each Arch's inherited features
  from the supernet model directory `supernet`."""
  c = config.copy_and_resolve_references()
  c.rank.yardstick = 'linear'
  space = config_lib.space_from_config(c)
  encoder = model_dirs.load_student(supernet, space).encoder
  return [float(t) for t in rank.yardstick_top1(
      c, workdir, encoder, space, archs)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True,
                      help='a finished pipeline (teacher and supernet)')
  parser.add_argument('--config', default='configs/fashion.py')
  parser.add_argument('--cache', required=True,
                      help='where each fine-tuning run lives (resumable)')
  parser.add_argument('--supernet', default='',
                      help="a supernet model directory instead of "
                      "--workdir's (e.g. a study's record of it)")
  parser.add_argument('--record', default='',
                      help='where each finished run\'s top-1 and the probe '
                      'are kept as small JSON files (e.g. under '
                      'benchmarks/records/, committed: a fresh machine '
                      'resumes from them)')
  parser.add_argument('--recipes', default='paper,mean,mean_warmup')
  parser.add_argument('--scratch', default='scratch',
                      help='the recipe of the from-scratch runs')
  parser.add_argument('--budgets', default='0.25,1',
                      help="fractions of the config's finetune.steps")
  parser.add_argument('--steps', default='',
                      help='budgets in steps instead of --budgets')
  parser.add_argument('--cls-workdir', default='',
                      help="a workdir whose supernet was trained with "
                      "supernet.cls_target (for '_supernet': 'cls' recipes)")
  parser.add_argument('--report', action='store_true',
                      help='print the table of the runs done; train none')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--archs', type=int, default=6)
  parser.add_argument('--arch-seed', type=int, default=0)
  parser.add_argument('--worker', default='0/1',
                      help="'i/n': run every n-th run from the i-th, one "
                      'single-thread process per core as signal_study.py '
                      '(each with the same --record); worker 0 computes the '
                      'probe')
  args = parser.parse_args()
  try:
    index, workers = common.worker(args)
  except ValueError as e:
    parser.error(str(e))

  workdir, cache = epath.Path(args.workdir), epath.Path(args.cache)
  config = common.load_config(args.config)
  supernets = {None: str(artifacts.supernet_model(
      args.supernet or config.search.supernet, workdir))}
  if args.cls_workdir:
    supernets['cls'] = str(artifacts.supernet_model(
        config.search.supernet, epath.Path(args.cls_workdir)))
  record = None
  if args.record:
    record = study_record.Record(args.record)
    # Its runs are of one config and one supernet, wherever it lies.
    record.bind(config,
                supernet=study_record.supernet_fingerprint(supernets[None]))
  space = config_lib.space_from_config(config)
  archs = common.spread_archs(config, args.archs, args.arch_seed)
  seeds = [int(s) for s in args.seeds.split(',')]
  budgets = ([int(s) for s in args.steps.split(',')] if args.steps else
             [max(1, round(float(b) * config.finetune.steps))
              for b in args.budgets.split(',')])
  recipes = args.recipes.split(',')
  if args.scratch in recipes:
    parser.error(f'--recipes: {args.scratch!r} is the scratch recipe '
                 '(--scratch); its runs are from random weights')
  for recipe in recipes + [args.scratch]:
    if recipe not in RECIPES:
      parser.error(f'--recipes: unknown recipe {recipe!r}; expected some '
                   f'of {sorted(RECIPES)}')
    if RECIPES[recipe].get('_supernet') not in supernets:
      parser.error(f'--recipes: {recipe!r} needs --cls-workdir')
  probe_file = study_record.Record(
      record.path / f'probe_{args.archs}_{args.arch_seed}.json' if record
      else cache / 'probe.json')
  if (probes := probe_file.get()) is None:
    if args.report or index:
      probes = [float('nan')] * len(archs)
    else:
      probes = probe_top1(config, workdir, archs, supernets[None])
      probe_file.put(probes)

  def top1(recipe, steps, arch, seed, mine=True):
    """Validation top-1 (%) of one run; None if not done and --report or
    another worker's."""
    path = run_dir(cache, recipe, steps, arch, seed)
    kept = None
    if record is not None:
      kept = study_record.Record(run_dir(record.path, recipe, steps, arch,
                                   seed).with_suffix('.json'))
    if kept and (done := kept.get()) is not None:
      return 100 * done['top1']
    if args.report or not mine:
      done = finetuning.finished(path)
      return None if done is None else 100 * done['top1']
    c = recipe_config(config, recipe, steps, seed, arch,
                      supernets[RECIPES[recipe].get('_supernet')],
                      recipe == args.scratch)
    done = finetuning.fine_tune(config_lib.finetune_setup(c), path, arch)
    if kept:
      kept.put({'top1': done['top1'], 'arch': arch.to_dict()})
    return 100 * done['top1']

  # Seed by seed, so that a study stopped early covers every subnet and
  # recipe alike.
  results = {}
  # --worker i/n takes every n-th (budget, seed, subnet), all its recipes
  # and its scratch run, so whatever a worker finishes is whole pairs.
  units = [(steps, arch, seed) for steps in budgets for seed in seeds
           for arch in archs]
  for j, (steps, arch, seed) in enumerate(units):
    for recipe in [args.scratch] + recipes:
      results[recipe, steps, arch, seed] = top1(
          recipe, steps, arch, seed, mine=j % workers == index)

  rows = []
  for steps in budgets:
    for recipe in recipes:
      pairs = [(results[recipe, steps, a, s], results[args.scratch, steps, a,
                                                      s])
               for s in seeds for a in archs]
      pairs = [(i, r) for i, r in pairs if i is not None and r is not None]
      if pairs:
        rows.append((recipe, steps, [i for i, _ in pairs],
                     [r for _, r in pairs], [i - r for i, r in pairs]))

  print(f'\n# {common.command()}')
  print('# subnets (params M, linear probe top-1 %): ' + ', '.join(
      f'E{a.embed_dim} D{a.depth} ({space.count_params(a) / 1e6:.2f}, '
      f'{100 * p:.1f})' for a, p in zip(archs, probes)))
  print(f'# seeds {seeds}; scratch recipe {args.scratch!r}; validation '
        f'split {config.data.eval_split!r}')
  print('| recipe | steps | pairs | inherited top-1 | scratch top-1 | '
        'inherited - scratch (mean +- std) | inherited wins |')
  print('|---|---:|---:|---:|---:|---:|---:|')
  for recipe, steps, inh, scr, margins in rows:
    wins = sum(m > 0 for m in margins)
    margin = common.mean_sd(margins, signed=True, digits=1)
    print(f'| {recipe} | {steps} | {len(margins)} | {statistics.mean(inh):.2f}'
          f' | {statistics.mean(scr):.2f} | {margin} | {wins} of '
          f'{len(margins)} |')
  if workers > 1 and not args.report:
    print(f'# worker {args.worker}: the runs of the other workers appear '
          'once they are done (--report)')


if __name__ == '__main__':
  main()
