"""What the search buys a user: the searched subnet against the choices they
would make without it, and the paper's masking-ratio ablation.

On `configs/fashion.py`, per seed (`--seeds`: seeds that did not choose the
fitness), on one teacher (`--teacher`):

1. the supernet of that seed: the one kept in `--supernets` (the signal
   study's record, which holds its held-out seeds' supernets) if there,
   else trained under `--root/seed<s>/` and kept in this study's record;
   the search with `--fitness` on it (its wall time recorded);
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
supernet mask ratio, a supernet (the config's own ratio: the seed's
supernet above; others trained under `--root/mask<r>/` and kept in the
record), the search and found subnet fine-tuned as above, and the fitness's
Kendall with the fine-tuned top-1 of `--ablation-archs` subnets spread over
the window (one fine-tuning seed; `signal_study.study_seed`).

Results, searches and the supernets it trains are recorded as they come in
`--record` (default `benchmarks/records/search_vs_baselines/`, committed;
bound to the config, `--fitness` and `--steps`), checkpoints go under
`--root`; a rerun on any machine picks up where the record stops,
`--report` trains nothing. `--worker=i/n` shares the runs between n
processes as in `signal_study.py` (worker 0 trains and searches, the others
wait for it). Prints the tables, writes `search_vs_baselines.json` and
`.png` into the record.

  REC=benchmarks/records/signal_study
  python benchmarks/search_vs_baselines.py --root=/tmp/svb \
      --teacher=$REC/teacher --supernets=$REC --seeds=2,3,4 \
      --steps=1500 --mask-ratios=0.5,0.75,0.9
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from etils import epath

from masktas_jax import config_lib, main
from masktas_jax.evaluation import baselines, ranking, signals
from masktas_jax.evaluation.window import sample_archs, Window
from masktas_jax.space import Arch
from masktas_jax.storage import artifacts
from masktas_jax.training import plots

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,g-bad-import-order

import common  # pylint: disable=g-bad-import-order
import signal_study  # pylint: disable=g-bad-import-order
import study_record  # pylint: disable=g-bad-import-order
import study_stats  # pylint: disable=g-bad-import-order

# Row order of the table; 'random' rows are summarised as median and best.
BASELINES = ('searched', 'largest', 'uniform', 'scratch')


def _log(message: str) -> None:
  print(f'[search_vs_baselines] {message}', flush=True)


def seed_supernet(args, config, seed: int,
                  record: study_record.Record) -> epath.Path:
  """The model directory of seed `seed`'s supernet: `--supernets`' (the
  signal study's record) if it holds one, else this study's, trained
  under --root and recorded in `record` (the seed's) first if not yet."""
  if args.supernets:
    shared = epath.Path(args.supernets) / f'seed{seed}'
    if artifacts.is_model_dir(shared / 'supernet', 'student'):
      return shared / 'supernet'
    if shared.exists():  # Training our own would make two seed-s supernets.
      raise SystemExit(f'seed {seed}: {shared} has no supernet yet; run '
                       'this seed once that study has recorded it')
  signal_study.wait_for(args, record / 'supernet.json',
                        f'seed {seed} supernet')
  return signal_study.recorded_supernet(args, config, seed, record)


def searched(args, config, seed: int, supernet: epath.Path,
             record: study_record.Record) -> tuple[Arch, float | None] | None:
  """(found Arch, search wall seconds) of `--fitness` on `supernet`,
  searched (worker 0) and recorded in `record` (the seed's, or the mask
  ratio's) if not yet; None under --report before the search. The seconds
  are None for a search resumed part-way."""
  rec = record / f'search_{args.fitness}.json'
  done = signal_study.wait_for(args, rec, f'seed {seed} search')
  if done is None:
    if args.report:
      return None
    out = signal_study.seed_dir(args, seed) / f'search_{args.fitness}'
    resumed = (artifacts.stage_dir(out, 'search') /
               artifacts.SEARCH_STATE).exists()
    c = config.copy_and_resolve_references()
    c.mode, c.seed, c.search.fitness = 'search', seed, args.fitness
    c.search.supernet = str(supernet)
    _log(f'searching {out} with fitness {args.fitness!r}')
    start = time.perf_counter()
    main.run(config_lib.validate(c), str(out))
    seconds = None if resumed else time.perf_counter() - start
    found = json.loads(artifacts.best_arch(out).read_text())
    done = {'arch': found['arch'], 'seconds': seconds,
            'recorded_by': study_record.versions()}
    rec.put(done)
  return Arch.from_dict(done['arch']), done['seconds']


def study_seed(args, config, seed: int) -> dict:
  """Every baseline of seed `seed`, fine-tuned (recorded) where done."""
  record = study_record.Record(args.record) / f'seed{seed}'
  supernet = seed_supernet(args, config, seed, record)
  c = config.copy_and_resolve_references()
  c.seed = seed
  c.search.supernet = str(supernet)
  space = config_lib.space_from_config(c)
  window = Window.from_config(c.search)
  out = {'search_s': None, 'archs': {}, 'top1': {}, 'random': [],
         'supernet': str(supernet)}
  search = searched(args, c, seed, supernet, record)
  runs = [('largest', baselines.largest(space, window), False),
          ('uniform', baselines.uniform(space, window), False)]
  if search is not None:
    out['search_s'] = search[1]
    runs = [('searched', search[0], False), ('scratch', search[0], True),
            *runs]
  randoms = sample_archs(space, window, args.random, seed)
  runs += [(None, arch, False) for arch in randoms]
  index, workers = common.worker(args)
  workdir = signal_study.seed_dir(args, seed)
  for j, (name, arch, scratch) in enumerate(runs):
    top1 = signal_study.fine_tuned(args, c, workdir, arch, 0, scratch=scratch,
                                   mine=j % workers == index, record=record)
    if name is None:
      run = study_record.run_record(record, args.steps, arch, 'ft0').get()
      out['random'].append({'arch': arch.to_dict(), 'top1': top1,
                            'seconds': run and run.get('train_s')})
    else:
      out['archs'][name], out['top1'][name] = arch.to_dict(), top1
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
  Kendall with fine-tuned test top-1 of `--ablation-archs` subnets (one
  fine-tuning seed), recorded in `--record/mask<r>/`."""
  record = study_record.Record(args.record) / f'mask{ratio:g}'
  sub = argparse.Namespace(**{
      **vars(args), 'root': f'{args.root}/mask{ratio:g}',
      'record': str(record.path), 'archs': args.ablation_archs,
      'ft_seeds': 1, 'scratch_every': 0})
  c = config.copy_and_resolve_references()
  c.supernet.mask_ratio = ratio
  # The config's own ratio is the main comparison's: its seed's supernet,
  # search and found subnet's run.
  own = study_record.Record(args.record) / f'seed{seed}'
  supernet = (seed_supernet(args, config, seed, own)
              if ratio == config.supernet.mask_ratio else None)
  study = signal_study.study_seed(sub, c, seed, supernet_dir=supernet)
  c.seed = seed
  where, kept = ((args, own) if supernet else
                 (sub, record / f'seed{seed}'))
  supernet = supernet or kept.path / 'supernet'
  found = searched(where, c, seed, supernet, kept)
  top1 = None
  if found is not None:
    c.search.supernet = str(supernet)
    top1 = signal_study.fine_tuned(
        where, c, signal_study.seed_dir(where, seed), found[0], 0,
        mine=common.worker(args)[0] == 0, record=kept)
  y = study_stats.yardstick(study, 1)
  corr = (None if y is None else
          ranking.correlation(study[args.fitness], y))
  return {'ratio': ratio, 'arch': None if found is None else found[0].to_dict(),
          'top1': None if top1 is None else top1[1],
          'kendall': None if corr is None else corr['kendall_tau'],
          'kendall_ci': None if corr is None else corr['kendall_ci']}


def _pm(values: list[float], signed: bool = False) -> str:
  """mean +- sd of top-1 fractions (or their differences), in points."""
  return common.mean_sd([100 * v for v in values], signed=signed)


def plot(rows: dict, ablations: list[dict], path: epath.Path) -> None:
  """Test top-1 per baseline and seed (mean +- std over seeds in black);
  the ablation's found-subnet top-1 and the fitness's Kendall (with its
  interval) per mask ratio, each on its own axes."""
  names = [*BASELINES[:1], 'random_median', 'random_best', *BASELINES[1:]]
  fig, axes = plt.subplots(1, 3 if ablations else 1,
                           figsize=(16 if ablations else 7, 4.5),
                           squeeze=False)
  ax = axes[0, 0]
  x = np.arange(len(names))
  for j, (seed, row) in enumerate(rows.items()):
    ax.scatter(x + 0.08 * (j - (len(rows) - 1) / 2),
               [100 * row[n] for n in names], label=f'seed {seed}', s=18)
  if len(rows) > 1:
    tops = 100 * np.array([[row[n] for n in names] for row in rows.values()])
    ax.errorbar(x + 0.3, tops.mean(0), yerr=tops.std(0, ddof=1), fmt='_',
                color='k', capsize=3, label='mean +- std')
  ax.set_xticks(x, names, rotation=20, ha='right')
  ax.set_ylabel('test top-1 (%)')
  ax.set_title('the searched subnet and the baselines')
  ax.legend(fontsize=8)
  if ablations:
    ax = axes[0, 1]
    done = [a for a in ablations if a['top1'] is not None]
    ax.plot([a['ratio'] for a in done], [100 * a['top1'] for a in done], 'o-')
    ax.set_xlabel('supernet mask ratio')
    ax.set_ylabel('found subnet test top-1 (%)')
    ax.set_title('masking ratio: the found subnet')
    ax = axes[0, 2]
    done = [a for a in ablations if a['kendall'] is not None]
    k = np.array([a['kendall'] for a in done])
    ci = np.array([a['kendall_ci'] for a in done]).reshape(-1, 2)
    ax.errorbar([a['ratio'] for a in done], k,
                yerr=[k - ci[:, 0], ci[:, 1] - k], fmt='s-', capsize=3,
                color='C1')
    ax.axhline(0, color='grey', lw=0.5)
    ax.set_xlabel('supernet mask ratio')
    ax.set_ylabel('fitness Kendall with fine-tuned top-1')
    ax.set_title('masking ratio: the fitness (95% interval)')
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
  parser.add_argument('--record',
                      default=str(study_record.RECORDS / 'search_vs_baselines'),
                      help='where the results, searches and the supernets '
                      'trained here are kept (committed); bound to the '
                      'config, --fitness and --steps')
  parser.add_argument('--supernets',
                      default=str(study_record.RECORDS / 'signal_study'),
                      help='a record whose seed<s>/supernet is used where it '
                      'exists (the signal study\'s held-out seeds); "" for '
                      'none')
  parser.add_argument('--worker', default='0/1',
                      help='i/n: run every n-th fine-tune from the i-th, as in '
                      'signal_study.py; worker 0 trains and searches')
  args = parser.parse_args()
  try:
    workers = common.worker(args)[1]
  except ValueError as e:
    parser.error(str(e))
  config = signal_study.study_config(args)
  args.fitness = args.fitness or config.search.fitness
  if args.fitness not in signals.FITNESSES:
    parser.error(f'--fitness: {args.fitness!r} is not one of '
                 f'{signals.FITNESSES}')
  args.steps = args.steps or config.finetune.steps
  seeds = [int(s) for s in args.seeds.split(',')]
  # Supernets read from another record must come from this config.
  if args.supernets and (study_record.Record(args.supernets) /
                         'study.json').get() is not None:
    study_record.Record(args.supernets).bind(config)
  study_record.Record(args.record).bind(
      config, fitness=args.fitness, steps=args.steps, random=args.random,
      ablation_archs=args.ablation_archs)

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
  if workers > 1 and not args.report:
    _log(f'worker {args.worker}: done; --report prints the tables once '
         'every worker is')
    return

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
  root = epath.Path(args.record)
  root.mkdir(parents=True, exist_ok=True)
  (root / 'search_vs_baselines.json').write_text(json.dumps(
      {'fitness': args.fitness, 'steps': args.steps,
       'rows': {str(s): r for s, r in rows.items()}, 'ablation': ablations},
      indent=2))
  if rows or ablations:
    plot(rows, ablations, root / 'search_vs_baselines.png')


if __name__ == '__main__':
  main_()
