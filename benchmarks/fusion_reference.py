"""Does the signal study's fusion order its subnets as a search's would?

The study (`signal_study.py`) standardises a fusion's signals among its own
30 subnets, spread evenly over the window's parameter range; a search
standardises them among `signals.FUSION_REFERENCE` subnets drawn uniformly
from the window (`stages/search.py`'s `calibrate`). A fusion is a weighted
sum of its signals, so the two differ only in the weights the standard
deviations give them. Per seed of the study's record: both standard
deviations of each fused signal, and each weighting's Kendall with the
seed's validation yardstick over the study's subnets. Scores the study's
subnets and the reference subnets afresh with the seed's recorded supernet
and the study's teacher (a few minutes on one core; the largest difference
from the study's recorded values is printed), for the config the record is
bound to, with the search's seed set to the study's seed as the study
does; the yardstick comes from the study's report (`signal_study.json`).

  python benchmarks/fusion_reference.py --seeds=0 --fitness=relation_params
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from masktas_jax import config_lib
from masktas_jax.evaluation import fitness, signals
from masktas_jax.evaluation.window import sample_archs, Window
from masktas_jax.space import Arch

import common  # pylint: disable=g-bad-import-order
import signal_report  # pylint: disable=g-bad-import-order
import study_record  # pylint: disable=g-bad-import-order
import study_stats  # pylint: disable=g-bad-import-order


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--record',
                      default=str(study_record.RECORDS / 'signal_study'))
  parser.add_argument('--config', default='configs/fashion.py')
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--fitness', default='relation_params',
                      choices=sorted(signals.FUSIONS))
  parser.add_argument('--workdir', default='/tmp/fusion_reference',
                      help="the scorer's workdir (it finds the teacher and "
                      'supernet through the config; nothing is written)')
  args = parser.parse_args()
  record, report = signal_report.recorded(args.record, args.config)
  fused = signals.FUSIONS[args.fitness]
  print(f'# {common.command()}')
  print(f'| seed | standardised among | {" | ".join(f"sd {n}" for n in fused)}'
        ' | Kendall with the validation yardstick |')
  print('|---:|---|' + '---:|' * (len(fused) + 1))
  for seed in (int(s) for s in args.seeds.split(',')):
    study = report['per_seed'].get(str(seed))
    yard = study and study_stats.yardstick(study, 0)
    if yard is None:
      print(f'| {seed} | (not complete in the record) |' + ' |' * (
          len(fused) + 1))
      continue
    c = signal_report.seed_config(args.config, record, seed,
                                  **{'search.fitness': args.fitness})
    space = config_lib.space_from_config(c)
    # The search's reference subnets for this config and seed.
    refs = sample_archs(space, Window.from_config(c.search),
                        signals.FUSION_REFERENCE, c.seed + 10)
    archs = [Arch.from_dict(a) for a in study['archs']]
    names = tuple(n for n in fused if n in signals.SIGNALS)
    scorer = fitness.load_scorer(
        config_lib.scoring(c), f'{args.workdir}/seed{seed}',
        capacity=max(len(refs), len(archs)),
        names=names + ('student_entropy',))
    search = {**scorer.signals(refs), **signals.size_values(space, refs)}
    values = {**scorer.signals(archs), **signals.size_values(space, archs)}
    values = {n: np.asarray(values[n], np.float64) for n in fused}
    drift = max(float(np.abs(values[n] - np.asarray(study[n])).max())
                for n in names)
    print(f'| {seed} | (the study\'s subnets scored again: largest '
          f'difference from its record {drift:.2g}) |' + ' |' * (
              len(fused) + 1))
    for label, reference in ((f'the study\'s {len(yard)} spread subnets',
                              values),
                             (f'the search\'s {len(refs)} uniform samples',
                              search)):
      tau = stats.kendalltau(signals.fuse(values, reference, args.fitness),
                             yard).statistic
      sds = ' | '.join(
          f'{sd:,.0f}' if (sd := np.std(reference[n])) >= 1000 else
          f'{sd:.4g}' for n in fused)
      print(f'| {seed} | {label} | {sds} | {tau:+.3f} |')


if __name__ == '__main__':
  main()
