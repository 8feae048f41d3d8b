"""What the search buys a user: the searched subnet against the choices they
would make without it, and the paper's masking-ratio ablation.

On `configs/fashion.py`, per seed (`--seeds`: seeds that did not choose the
fitness), on one teacher (`--teacher`), in the layout of
`signal_study.py` (so both share supernets and fine-tuning runs when
`--root` and the budget are the same):

1. the supernet of that seed (`--root/seed<s>/`, trained if not yet) and
   the search with `--fitness` (`--root/seed<s>/search_<fitness>/`, its wall
   time recorded);
2. fine-tuned with the config's recipe, `--steps` steps, the same data order
   and head seed for every subnet of a seed, top-1 on the test split:
   * `searched`: the found Arch from its inherited weights;
   * `random`: `--random` Archs drawn uniformly inside the window (their
     median and best), inherited weights;
   * `largest`: the window's Arch with the most parameters
     (`masktas_jax.evaluation.baselines.largest`), inherited weights;
   * `uniform`: the largest Arch with one head count and one MLP ratio for
     every layer, as one writes a ViT by hand (`baselines.uniform`),
     inherited weights;
   * `scratch`: the found Arch from random weights.
3. the search's wall time against the fine-tuning time of the random
   baseline (what a user spends to pick by trying).

`--mask-ratios` adds the ablation (paper Fig. 3) on the first seed: per
supernet mask ratio, its own supernet (`--root/mask<r>/seed<s>/`; the
config's own ratio is `--root/seed<s>/`), search
and found subnet fine-tuned as above, and the fitness's Kendall with the
fine-tuned top-1 of `--ablation-archs` subnets spread over the window (one
fine-tuning seed; `signal_study.study_seed`).

Everything is cached (a rerun picks up where it stopped; `--report`
trains nothing). Prints the tables, writes `--root/search_vs_baselines.json`
and `.png`.

  python benchmarks/search_vs_baselines.py --root=/root/studies/signals \
      --teacher=/root/studies/fashion_v2/teacher/model --seeds=2,3,4 \
      --steps=500 --mask-ratios=0.5,0.75,0.9
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from etils import epath

from masktas_jax import config_lib, main
from masktas_jax.evaluation import baselines, signals
from masktas_jax.evaluation.window import sample_archs, Window
from masktas_jax.space import Arch
from masktas_jax.stages import rank
from masktas_jax.storage import artifacts
from masktas_jax.training import plots

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,g-bad-import-order

import common  # pylint: disable=g-bad-import-order
import signal_study  # pylint: disable=g-bad-import-order

# Row order of the table; 'random' rows are summarised as median and best.
BASELINES = ('searched', 'largest', 'uniform', 'scratch')


def _log(message: str) -> None:
  print(f'[search_vs_baselines] {message}', flush=True)


def searched(args, config, workdir: epath.Path) -> tuple[Arch, float | None]:
  """(found Arch, search wall seconds) of `--fitness` on `workdir`'s
  supernet; the seconds are None when the search ran before timing was
  recorded."""
  out = workdir / f'search_{args.fitness}'
  timing = out / 'search_wall_s.json'
  best = artifacts.best_arch(out)
  if not best.exists():
    if args.report:
      raise SystemExit(f'--report: no search in {out} yet')
    resumed = (artifacts.stage_dir(out, 'search') /
               artifacts.SEARCH_STATE).exists()
    c = config.copy_and_resolve_references()
    c.mode, c.search.fitness = 'search', args.fitness
    c.search.supernet = str(artifacts.model_dir(workdir, 'supernet'))
    _log(f'searching {out} with fitness {args.fitness!r}')
    start = time.perf_counter()
    main.run(config_lib.validate(c), str(out))
    timing.write_text(json.dumps(None if resumed else
                                 time.perf_counter() - start))
  # A search resumed from a killed one was timed in part only: None.
  seconds = json.loads(timing.read_text()) if timing.exists() else None
  return Arch.from_dict(json.loads(best.read_text())['arch']), seconds


def fine_tune_seconds(args, workdir: epath.Path, arch: Arch,
                      scratch: bool = False) -> float | None:
  """Wall seconds of one fine-tuning run's training, from its last logged
  throughput (the trainer's images/s since the run started, its first
  compile included; the evaluation left out, so the baseline's cost is, if
  anything, understated; a resumed run counted at its last part's rate).
  None before the run."""
  run = (workdir / 'finetune' / f'{args.steps}steps' /
         artifacts.arch_key(arch.to_json()) /
         ('scratch0' if scratch else 'ft0') / 'finetune' /
         artifacts.METRICS_LOG)
  if not run.exists():
    return None
  records = plots.read_metrics(run)
  last = records.get(args.steps, {}).get('images_per_s')
  return args.steps * args.batch_size / last if last else None


def study_seed(args, config, seed: int) -> dict:
  """Every subnet of seed `seed`, fine-tuned (cached)."""
  workdir = signal_study.supernet(args, config, seed)
  c = config.copy_and_resolve_references()
  c.seed = seed
  space = config_lib.space_from_config(c)
  window = Window.from_config(c.search)
  found, search_s = searched(args, c, workdir)
  archs = {'searched': found, 'largest': baselines.largest(space, window),
           'uniform': baselines.uniform(space, window)}
  randoms = sample_archs(space, window, args.random, seed)
  out = {'search_s': search_s, 'archs': {}, 'top1': {}, 'random': []}
  for name, arch in archs.items():
    out['archs'][name] = arch.to_dict()
    out['top1'][name] = signal_study.fine_tuned(args, c, workdir, arch, 0)
  out['archs']['scratch'] = found.to_dict()
  out['top1']['scratch'] = signal_study.fine_tuned(args, c, workdir, found, 0,
                                                   scratch=True)
  for arch in randoms:
    out['random'].append({'arch': arch.to_dict(),
                          'top1': signal_study.fine_tuned(args, c, workdir,
                                                          arch, 0),
                          'seconds': fine_tune_seconds(args, workdir, arch)})
  out['params'] = {n: space.count_params(Arch.from_dict(a))
                   for n, a in out['archs'].items()}
  return out


def summarise(study: dict) -> dict | None:
  """Test top-1 of each baseline (median and best of the random ones), or
  None while a run is missing."""
  tops = [r['top1'] for r in study['random']]
  if any(t is None for t in tops) or any(
      study['top1'][n] is None for n in BASELINES):
    return None
  test = [t[1] for t in tops]
  row = {n: study['top1'][n][1] for n in BASELINES}
  row['random_median'] = float(np.median(test))
  row['random_best'] = float(np.max(test))
  seconds = [r['seconds'] for r in study['random']]
  row['random_ft_s'] = (float(np.sum(seconds)) if None not in seconds
                        else None)
  row['search_s'] = study['search_s']
  return row


def ablation(args, config, seed: int, ratio: float) -> dict:
  """Mask ratio `ratio`: found subnet's test top-1 and the fitness's
  Kendall with fine-tuned test top-1 of `--ablation-archs` subnets."""
  # The config's own ratio is the main study's supernet, search and runs.
  root = (args.root if ratio == config.supernet.mask_ratio else
          f'{args.root}/mask{ratio:g}')
  sub = argparse.Namespace(**{**vars(args), 'root': root,
                              'archs': args.ablation_archs, 'ft_seeds': 1,
                              'scratch_every': 0})
  c = config.copy_and_resolve_references()
  c.supernet.mask_ratio = ratio
  study = signal_study.study_seed(sub, c, seed)
  workdir = signal_study.seed_dir(sub, seed)
  c.seed = seed
  found, _ = searched(sub, c, workdir)
  top1 = signal_study.fine_tuned(sub, c, workdir, found, 0)
  y = signal_study.yardstick(study, 1)
  corr = (None if y is None else
          rank.correlation(study[args.fitness], y))
  return {'ratio': ratio, 'arch': found.to_dict(),
          'top1': None if top1 is None else top1[1],
          'kendall': None if corr is None else corr['kendall_tau'],
          'kendall_ci': None if corr is None else corr['kendall_ci']}


def _pm(values: list[float], signed: bool = False) -> str:
  """mean +- sd of top-1 fractions (or their differences), in points."""
  return common.mean_sd([100 * v for v in values], signed=signed)


def plot(rows: dict, ablations: list[dict], path: epath.Path) -> None:
  """Test top-1 per baseline and seed; the ablation's top-1 and Kendall."""
  names = [*BASELINES[:1], 'random_median', 'random_best', *BASELINES[1:]]
  fig, axes = plt.subplots(1, 2 if ablations else 1, figsize=(12, 4.5),
                           squeeze=False)
  ax = axes[0, 0]
  for j, (seed, row) in enumerate(rows.items()):
    ax.scatter(np.arange(len(names)) + 0.08 * (j - len(rows) / 2),
               [100 * row[n] for n in names], label=f'seed {seed}')
  ax.set_xticks(range(len(names)), names, rotation=20, ha='right')
  ax.set_ylabel('test top-1 (%)')
  ax.legend()
  if ablations:
    ax = axes[0, 1]
    done = [a for a in ablations if a['top1'] is not None]
    ax.plot([a['ratio'] for a in done], [100 * a['top1'] for a in done], 'o-')
    ax.set_xlabel('supernet mask ratio')
    ax.set_ylabel('found subnet test top-1 (%)')
    twin = ax.twinx()
    done = [a for a in ablations if a['kendall'] is not None]
    twin.plot([a['ratio'] for a in done], [a['kendall'] for a in done],
              's--', color='C1')
    twin.set_ylabel('fitness Kendall with fine-tuned top-1', color='C1')
  plots.save_figure(fig, path)


def main_() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  signal_study.add_study_arguments(parser, seeds='2,3,4')
  parser.add_argument('--fitness', default='',
                      help=f'one of {signals.FITNESSES}; default the '
                      "config's search.fitness")
  parser.add_argument('--random', type=int, default=10)
  parser.add_argument('--steps', type=int, default=0,
                      help="fine-tuning steps; 0: the config's")
  parser.add_argument('--mask-ratios', default='')
  parser.add_argument('--ablation-archs', type=int, default=12)
  args = parser.parse_args()
  config = signal_study.study_config(args)
  args.fitness = args.fitness or config.search.fitness
  if args.fitness not in signals.FITNESSES:
    parser.error(f'--fitness: {args.fitness!r} is not one of '
                 f'{signals.FITNESSES}')
  args.steps = args.steps or config.finetune.steps
  args.batch_size = config.finetune.batch_size
  seeds = [int(s) for s in args.seeds.split(',')]

  rows = {}
  for seed in seeds:
    try:
      row = summarise(study_seed(args, config, seed))
    except SystemExit as e:
      _log(str(e))
      continue
    if row is not None:
      rows[seed] = row
  ablations = []
  for ratio in [float(r) for r in args.mask_ratios.split(',') if r]:
    try:
      ablations.append(ablation(args, config, seeds[0], ratio))
    except SystemExit as e:
      _log(str(e))

  print(f'\n# {common.command()}')
  print(f'# fitness {args.fitness!r}, {args.steps} fine-tuning steps, '
        f'{args.random} random subnets per seed; test top-1 (%)')
  cols = ['searched', 'random_median', 'random_best', 'largest', 'uniform',
          'scratch']
  print('| seed | ' + ' | '.join(cols) + ' | search (s) | random '
        'fine-tunes (s) |')
  print('|---|' + '---:|' * (len(cols) + 2))
  for seed, row in rows.items():
    print(f'| {seed} | ' + ' | '.join(f'{100 * row[c]:.2f}' for c in cols) +
          f' | {row["search_s"] or float("nan"):.0f} | '
          f'{row["random_ft_s"] or float("nan"):.0f} |')
  if rows:
    print('| mean +- std | ' + ' | '.join(
        _pm([r[c] for r in rows.values()]) for c in cols) + ' | | |')
    margin = [r['searched'] - r['random_median'] for r in rows.values()]
    spread = (statistics.stdev(margin) if len(margin) > 1 else float('nan'))
    met = len(margin) > 1 and statistics.mean(margin) > 2 * spread
    gap = lambda other: _pm(
        [r['searched'] - r[other] for r in rows.values()], signed=True)
    print(f'\nsearched - median random: {_pm(margin, signed=True)} points '
          '(goal: a mean above twice its std over seeds: '
          f'{"met" if met else "not met"}); searched - largest: '
          f'{gap("largest")}; searched - uniform: {gap("uniform")}')
  if ablations:
    print('\n| mask ratio | found Arch | test top-1 | fitness Kendall '
          f'({args.ablation_archs} subnets) |')
    print('|---:|---|---:|---:|')
    for a in ablations:
      arch = a['arch']
      kendall = ('-' if a['kendall'] is None else
                 f'{a["kendall"]:+.2f} [{a["kendall_ci"][0]:+.2f}, '
                 f'{a["kendall_ci"][1]:+.2f}]')
      top1 = '-' if a['top1'] is None else f'{100 * a["top1"]:.2f}'
      print(f'| {a["ratio"]:g} | E{arch["embed_dim"]} D{arch["depth"]} | '
            f'{top1} | {kendall} |')
  root = epath.Path(args.root)
  root.mkdir(parents=True, exist_ok=True)
  (root / 'search_vs_baselines.json').write_text(json.dumps(
      {'fitness': args.fitness, 'steps': args.steps,
       'rows': {str(s): r for s, r in rows.items()}, 'ablation': ablations},
      indent=2))
  if rows or ablations:
    plot(rows, ablations, root / 'search_vs_baselines.png')


if __name__ == '__main__':
  main_()
