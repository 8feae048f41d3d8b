"""A fine-tuning recipe variant, paired with the signal study's runs.

The signal study (`signal_study.py`) fine-tunes each subnet from its
inherited weights with the config's recipe and every third one from random
weights too, at the same seed. This fine-tunes those subnets (the ones with
a random-weight run) again from their inherited weights with one or more
config overrides (`--set finetune.layer_decay=1.0`), the same supernet,
seed, data order and budget, so that every variant run is paired with the
study's inherited run and its random-weight run: variant - config's recipe
and variant - random weights, per subnet, on validation and test.

Runs are recorded in `--record/<name>/seed<s>/` (committed, as the study's
are); `--report` trains nothing. `--worker=i/n` shares the runs.

  REC=benchmarks/records/signal_study_ld09   # the study under layer decay 0.9
  python benchmarks/recipe_pairs.py --study=$REC --teacher=$REC/teacher \
      --study-set finetune.layer_decay=0.9 \
      --root=/root/studies/recipe_pairs --name=ld1 \
      --set finetune.layer_decay=1.0
"""

from __future__ import annotations

import argparse

import numpy as np

from masktas_jax.space import Arch

import common  # pylint: disable=g-bad-import-order
import signal_report  # pylint: disable=g-bad-import-order
import signal_study  # pylint: disable=g-bad-import-order
import study_record  # pylint: disable=g-bad-import-order


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  signal_study.add_study_arguments(parser, seeds='0')
  parser.add_argument('--study', required=True,
                      help="the signal study's record (runs and supernets)")
  parser.add_argument('--name', required=True, help='the variant\'s name')
  parser.add_argument('--steps', type=int, default=1500)
  parser.add_argument('--record',
                      default=str(study_record.RECORDS / 'recipe_pairs'))
  parser.add_argument('--worker', default='0/1')
  parser.add_argument('--study-set', action='append', default=[],
                      help="the study's own overrides KEY=VALUE, where "
                      'the config has changed since it ran (e.g. '
                      'finetune.layer_decay=0.9 for '
                      'records/signal_study_ld09); the variant is the '
                      'study\'s config with --set on top')
  args = parser.parse_args()
  index, workers = common.worker(args)
  configured = lambda overrides: signal_study.study_config(
      argparse.Namespace(**{**vars(args), 'set': overrides}))
  config = configured(args.study_set + args.set)  # The variant.
  base = configured(args.study_set)
  # The study's runs must be of this config less the variant.
  study_record.Record(args.study).bind(base)
  record = study_record.Record(args.record) / args.name
  record.bind(config)
  rows = []
  for seed in [int(s) for s in args.seeds.split(',')]:
    study = study_record.Record(args.study) / f'seed{seed}'
    runs = study.path / f'{args.steps}steps'
    pairs = sorted(p.parent for p in runs.glob('*/scratch0.json')
                   if (p.parent / 'ft0.json').exists()) if runs.exists() else []
    c = config.copy_and_resolve_references()
    c.seed = seed
    c.search.supernet = str(study.path / 'supernet')
    for j, run in enumerate(pairs):
      ft = (study_record.Record(run) / 'ft0.json').get()
      scratch = (study_record.Record(run) / 'scratch0.json').get()
      arch = Arch.from_dict(ft['arch'])
      top1 = signal_study.fine_tuned(
          args, c, common.seed_dir(args.root, seed), arch, 0,
          mine=j % workers == index, record=record / f'seed{seed}')
      if top1 is not None:
        rows.append((seed, arch, top1, (ft['validation'], ft['test']),
                     (scratch['validation'], scratch['test'])))
  if workers > 1 and not args.report:
    return
  print(f'\n# {common.command()}')
  print(f'# variant {args.name!r} ({", ".join(args.set)}), {args.steps} '
        'steps; top-1 % (validation / test)')
  print('| seed | subnet | variant | config\'s recipe | random weights | '
        'variant - config\'s | variant - random |')
  print('|---|---|---:|---:|---:|---:|---:|')
  pct = lambda t: f'{100 * t[0]:.2f} / {100 * t[1]:.2f}'
  diff = lambda a, b: f'{100 * (a[0] - b[0]):+.2f} / {100 * (a[1] - b[1]):+.2f}'
  for seed, arch, var, ft, scr in rows:
    print(f'| {seed} | E{arch.embed_dim} D{arch.depth} | {pct(var)} | '
          f'{pct(ft)} | {pct(scr)} | {diff(var, ft)} | {diff(var, scr)} |')
  for split, name in enumerate(('validation', 'test')):
    for other, label in ((3, "config's recipe"), (4, 'random weights')):
      d = [100 * (r[2][split] - r[other][split]) for r in rows]
      if d:
        print(f'{name}: variant - {label} over {len(d)} subnets '
              f'{signal_report.margin(np.array(d))}')


if __name__ == '__main__':
  main()
