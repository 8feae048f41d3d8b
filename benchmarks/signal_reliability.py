"""How steady is each label-free signal under another sample of scoring
images and masks, and does scoring more images rank better?

The study (`signal_study.py`) scores each seed's subnets once, on
`search.eval_images` images of `search.eval_split` with masks, both drawn
from the config's seed. A signal that reorders the subnets when other
images are drawn is limited by its own measurement noise, which more
images would reduce; one that keeps its order and still ranks the
yardstick poorly measures something else. Per seed of the study's record:
each signal's values on `--draws` other image-and-mask draws
(`config.seed` offset by 1000 k, which moves the scoring's images and
masks only), their Kendall with the study's recorded values (the signal's
own reliability), each draw's Kendall with the seed's validation
yardstick, and the same on `--more` times as many images.

  python benchmarks/signal_reliability.py --seeds=0 --draws=2 --more=4
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from masktas_jax import config_lib
from masktas_jax.evaluation import fitness, signals
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
  parser.add_argument('--draws', type=int, default=2,
                      help='other draws of images and masks')
  parser.add_argument('--more', type=int, default=4,
                      help='a draw with this many times the images (1: none)')
  parser.add_argument('--workdir', default='/tmp/signal_reliability',
                      help="the scorer's workdir (nothing is written)")
  args = parser.parse_args()
  record, report = signal_report.recorded(args.record, args.config)
  names = signals.SIGNALS
  print(f'# {common.command()}')
  print('| seed | draw | images | ' + ' | '.join(names) + ' |')
  print('|---:|---|---:|' + '---:|' * len(names))
  for seed in (int(s) for s in args.seeds.split(',')):
    study = report['per_seed'].get(str(seed))
    yard = study and study_stats.yardstick(study, 0)
    if yard is None:
      print(f'| {seed} | (not complete in the record) | |' + ' |' * len(
          names))
      continue
    archs = [Arch.from_dict(a) for a in study['archs']]
    recorded = {n: np.asarray(study[n], np.float64) for n in names}
    tau = lambda x, y: stats.kendalltau(x, y).statistic  # noqa: E731
    base = signal_report.seed_config(args.config, record, seed)
    images = base.search.eval_images
    print(f'| {seed} | the study\'s (with the yardstick) | {images} | '
          + ' | '.join(f'{tau(recorded[n], yard):+.2f}' for n in names)
          + ' |')
    draws = [(k, images) for k in range(1, args.draws + 1)]
    if args.more > 1:
      draws.append((args.draws + 1, images * args.more))
    for k, count in draws:
      c = base.copy_and_resolve_references()
      c.seed = seed + 1000 * k  # Only the scoring reads it here.
      c.search.eval_images = count
      scorer = fitness.load_scorer(config_lib.scoring(c),
                                   f'{args.workdir}/seed{seed}',
                                   capacity=len(archs), names=names)
      values = scorer.signals(archs)
      print(f'| {seed} | draw {k}: with the study\'s draw | {count} | '
            + ' | '.join(f'{tau(values[n], recorded[n]):+.2f}'
                         for n in names) + ' |')
      print(f'| {seed} | draw {k}: with the yardstick | {count} | '
            + ' | '.join(f'{tau(values[n], yard):+.2f}' for n in names)
            + ' |')


if __name__ == '__main__':
  main()
