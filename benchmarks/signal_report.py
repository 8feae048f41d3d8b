"""`signal_study.py --report`: the study's tables from its record.

Per seed, each fitness's and control's Kendall with the fine-tuned
yardstick (validation on the selection seeds, test on the held-out ones)
and within parameter strata, the yardstick's noise ceiling, the default
chosen on the selection seeds and its held-out verdict against the goal of
#26 (`study_stats.verdict`), inherited against random weights, and, with
`--against`, the inherited runs paired with another record's. Writes
`signal_study.json` and `signal_study.png` into the record.
"""

from __future__ import annotations

import json
import statistics

import numpy as np
from etils import epath
from scipy import stats

from masktas_jax.evaluation import ranking, signals
from masktas_jax.space import Arch
from masktas_jax.training import plots

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,g-bad-import-order

import common  # pylint: disable=g-bad-import-order
import study_record  # pylint: disable=g-bad-import-order
import study_stats  # pylint: disable=g-bad-import-order
from study_stats import CONTROLS, ceiling, rows, yardstick  # pylint: disable=g-bad-import-order


def _fmt_noise(c: dict) -> str:
  lo, hi = c['reliability_ci']
  seeds = c['seeds_for_target']
  return (f'run-to-run sd {c["run_sd"]:.2f} points, subnets\' sd '
          f'{c["arch_sd"]:.2f}; one run\'s reliability {c["reliability"]:.2f}'
          f' [{lo:.2f}, {hi:.2f}] (expected Kendall '
          f'{c["expected_kendall"]:+.2f}); a yardstick agreeing at '
          f'{study_stats.TARGET_TAU} needs the mean of '
          + (f'{seeds:.1f}' if seeds is not None else 'unboundedly many')
          + ' fine-tuning seeds; a perfect signal would reach '
          f'{c["perfect_kendall"]:+.2f} against the two seeds\' mean')


def _fmt(row: dict) -> str:
  lo, hi = row['ci']
  return f'{row["kendall"]:+.2f} [{lo:+.2f}, {hi:+.2f}]'


def _vs_probe(study: dict, name: str) -> dict:
  """Kendall (and its 95% interval) of signal `name` with the linear probe
  of each subnet's inherited features: does the signal rank what the
  inherited weights hold, whatever fine-tuning makes of it."""
  corr = ranking.correlation(study[name], study['probe'])
  return {'kendall': corr['kendall_tau'], 'ci': corr['kendall_ci']}


def recorded(record_path: str, config_path: str
             ) -> tuple[study_record.Record, dict]:
  """The study's record at `record_path` and its `signal_study.json` (what
  `--report` wrote), after checking the record was made with the config at
  `config_path` (the machine's paths aside); SystemExit in one line if
  either is wrong."""
  record = study_record.Record(record_path)
  report = (record / 'signal_study.json').get()
  if report is None:
    raise SystemExit(f'--record: no {record.path}/signal_study.json; run '
                     'signal_study.py --report first')
  record.bind(common.load_config(config_path, **{
      'teacher.checkpoint': str(record.path / 'teacher')}))
  return record, report


def seed_config(config_path: str, record: study_record.Record, seed: int,
                **overrides):
  """The study's config of seed `seed`: the record's teacher and that
  seed's recorded supernet, `overrides` on top."""
  return common.load_config(config_path, **{
      'teacher.checkpoint': str(record.path / 'teacher'),
      'search.supernet': str(record.path / f'seed{seed}' / 'supernet'),
      'seed': seed, **overrides})


# A selection seed's signals are shown part-way from this many subnets.
PARTIAL = 10


def _print_row(seed, split: str, c: dict | None, table: dict,
               probe: float) -> None:
  """One row of --report's table: each signal's Kendall with the yardstick
  (its interval) and, in brackets, within parameter strata."""
  print(f'| {seed} | {split} | {_fmt(c) if c else "-"} | ' + ' | '.join(
      _fmt(table[n]) + f' ({table[n]["within_params"]:+.2f})'
      for n in signals.FITNESSES + CONTROLS) + f' | {probe:+.2f} |')


def against(args, per_seed: dict) -> dict[str, list[float]]:
  """Prints and returns (split name -> points) this study's inherited runs
  minus those of the record `args.against` (the same subnets and seeds
  under another recipe), paired by subnet and fine-tuning seed."""
  out = {}
  for split, name in enumerate(('validation', 'test')):
    diffs = []
    for seed, study in per_seed.items():
      other = study_record.Record(args.against) / f'seed{seed}'
      for i, arch in enumerate(study['archs']):
        for k, runs in enumerate(study['ft']):
          theirs = study_record.run_record(
              other, args.steps, Arch.from_dict(arch), f'ft{k}').get()
          if runs[i] is not None and theirs is not None:
            diffs.append(100 * (runs[i][split] - theirs[name]))
    if diffs:
      print(f'{name}: this record - {args.against} over {len(diffs)} '
            f'paired inherited runs {margin(np.array(diffs))}')
      out[name] = diffs
  return out


def progress(study: dict, scratch_every: int) -> str:
  """How far a seed's runs are: recorded of planned, subnets with every
  fine-tuning seed, random-weight runs (every `scratch_every`-th subnet)."""
  n = len(study['archs'])
  ft = sum(r is not None for runs in study['ft'] for r in runs)
  both = sum(all(runs[i] is not None for runs in study['ft'])
             for i in range(n))
  planned = [i for i in range(n) if scratch_every and i % scratch_every == 0]
  scratch = sum(study['scratch'][i] is not None for i in planned)
  total = len(study['ft']) * n + len(planned)
  return (f'{ft + scratch} of {total} runs recorded ({both} of {n} subnets '
          f'with every fine-tuning seed, {scratch} of {len(planned)} '
          'random-weight runs)')


def margin(points: np.ndarray) -> str:
  """'mean +- sd points (k of n ahead)' of paired differences (points,
  e.g. inherited - scratch)."""
  return (f'{common.mean_sd(points, signed=True)} points '
          f'({int((points > 0).sum())} of {len(points)} ahead)')


def plot(complete: dict, select: list[int], path: epath.Path,
         show_held_out: bool = True) -> None:
  """Kendall of each fitness and control with the yardstick, from
  `complete` (seed -> the report's summary of a complete seed: its 'rows'
  and 'ceiling'): bars the mean over the selection seeds (validation) and
  held-out seeds (test; only with `show_held_out`), dots each seed's with
  its 95% interval;
  dashed lines how well two single fine-tuning runs agree, dotted ones the
  ceiling: what a perfect signal would reach against the two runs' mean
  (`study_stats.noise`'s perfect_kendall)."""
  names = list(signals.FITNESSES + CONTROLS)
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(11, 5))
  for j, (label, split) in enumerate((('selection seeds, validation', 0),
                                      ('held-out seeds, test', 1))):
    # Centred on the ticks while only the selection seeds show.
    color = f'C{j}'
    offset = 0.4 * j - 0.2 if show_held_out else 0.0
    seeds = [s for s in complete if (s in select) == (split == 0)
             and (show_held_out or not split)]
    tables = {s: complete[s]['rows'] for s in seeds}
    if not tables:
      why = ('withheld until the choice is final' if split and
             not show_held_out else 'none complete')
      ax.bar([np.nan], [np.nan], color=color, label=f'{label}: {why}')
      continue
    taus = np.array([[t.get(n, {}).get('kendall', np.nan) for n in names]
                     for t in tables.values()])
    ax.bar(x + offset, np.nanmean(taus, axis=0), 0.4, color=color, alpha=0.7,
           label=f'{label} (mean of {len(tables)} seed'
           f'{"s" if len(tables) > 1 else ""}; each with its 95% interval)')
    for k, t in enumerate(tables.values()):
      ci = np.array([t.get(n, {}).get('ci', (np.nan, np.nan))
                     for n in names])
      # A percentile interval may miss its estimate by a rounding.
      ax.errorbar(x + offset + 0.1 * (k - (len(tables) - 1) / 2), taus[k],
                  yerr=np.clip([taus[k] - ci[:, 0], ci[:, 1] - taus[k]], 0,
                               None), fmt='o', color='k', ms=3, lw=0.8,
                  capsize=2)
    ceilings = [c for s in tables if (c := complete[s]['ceiling'])]
    if ceilings:
      agree = np.mean([c['kendall'] for c in ceilings])
      perfect = np.mean([c['perfect_kendall'] for c in ceilings])
      ax.axhline(agree, color=color, ls='--', lw=1.2,
                 label=f'{label}: two single runs agree ({agree:+.2f})')
      ax.axhline(perfect, color=color, ls=':', lw=1.5,
                 label=f'{label}: ceiling, a perfect signal against the '
                 f'two runs\' mean ({perfect:+.2f})')
  # The controls need no training of their own; a fitness must beat them.
  ax.axvline(len(signals.FITNESSES) - 0.5, color='grey', lw=0.8, ls=':')
  ax.text(len(signals.FITNESSES) - 0.4, 0.98, 'controls', color='grey',
          va='top', transform=ax.get_xaxis_transform())
  ax.axhline(0, color='k', lw=0.5)
  ax.set_ylim(top=1.05)  # Room for the legend above the bars.
  ax.set_xticks(x, names, rotation=30, ha='right')
  ax.set_ylabel('Kendall tau with fine-tuned top-1')
  ax.legend(fontsize=8, loc='upper left')
  plots.save_figure(fig, path)


def held_out(per_seed: dict, select: list[int], chosen: str,
             summary: dict) -> None:
  """Prints (and keeps in `summary['held_out']`) every signal on the
  seeds outside `select`, test yardstick, against the goal
  (`study_stats.verdict`); the `chosen` one is the result."""
  seeds = [s for s in per_seed if s not in select]
  found = {n: study_stats.verdict([per_seed[s] for s in seeds], n)
           for n in signals.FITNESSES + CONTROLS}
  found = {n: v for n, v in found.items() if v is not None}
  if not found:
    return
  print(f'\nheld-out seeds {seeds} ({next(iter(found.values()))["seeds"]} '
        'complete), test yardstick; means over the seeds, 95% stratified '
        f'bootstrap; goal: Kendall >= {study_stats.GOAL_TAU}, >= '
        f'{study_stats.GOAL_MARGIN} above params, > 0 within strata')
  print('| signal | Kendall | - params | within params strata | goal |')
  print('|---|---:|---:|---:|---|')
  ci = lambda v, k: f'{v[k]:+.2f} [{v[k + "_ci"][0]:+.2f}, ' + (
      f'{v[k + "_ci"][1]:+.2f}]')
  for n, v in found.items():
    label = f'**{n}** (chosen)' if n == chosen else n
    print(f'| {label} | {ci(v, "kendall")} | {ci(v, "margin")} | '
          f'{ci(v, "within")} | {"met" if v["met"] else "not met"} |')
  summary['held_out'] = found


def report(args, per_seed: dict, select: list[int]) -> None:
  """Prints the tables of `per_seed` (seed -> `signal_study.study_seed`'s
  dict) and writes them into `args.record`; `select`: the selection
  seeds."""
  print(f'\n# {common.command()}')
  print(f'# {args.archs} subnets per seed, {args.steps} fine-tuning steps, '
        f'{args.ft_seeds} fine-tuning seeds; selection seeds {select}')
  print('| seed | split | ft seed vs ft seed | ' + ' | '.join(
      signals.FITNESSES + CONTROLS + ('probe',)) + ' |')
  print('|---|---|---:|' + '---:|' * (len(signals.FITNESSES) +
                                      len(CONTROLS) + 1))
  summary = {}
  # Selection seeds not complete (or not given): the choice is provisional
  # and the held-out seeds show their ceilings only.
  pending = [s for s in select
             if s not in per_seed or yardstick(per_seed[s], 0) is None]
  for seed, study in per_seed.items():
    split = 0 if seed in select else 1
    c = ceiling(study, split)
    table = [] if split and pending else rows(study, split)
    if not table:
      part = study_stats.done_subset(study)
      done = len(part['subnets'])  # With every fine-tuning seed.
      if c and seed in select and done >= PARTIAL:
        # A selection seed part-way: how the signals stand over the subnets
        # done (the coverage order spreads them over the window), never
        # used to choose, and not shown for held-out seeds.
        _print_row(f'{seed} ({done} of {len(study["archs"])} subnets, '
                   'partial)', 'validation', c, rows(part, 0),
                   ranking.correlation(part['probe'],
                                       yardstick(part, 0))['kendall_tau'])
      elif c:
        print(f'| {seed} | {("validation", "test")[split]} | {_fmt(c)} '
              f'over the {c["subnets"]} subnets done |' + ' |' * (
                  len(signals.FITNESSES) + len(CONTROLS) + 1))
      continue
    probe = ranking.correlation(study['probe'], yardstick(study, split))
    summary[seed] = {'split': ('validation', 'test')[split], 'rows': table,
                     'ceiling': c, 'probe': probe['kendall_tau'],
                     # The second yardstick: a linear probe of the inherited
                     # features (labels, no fine-tuning).
                     'vs_probe': {n: _vs_probe(study, n)
                                  for n in signals.FITNESSES + CONTROLS}}
    _print_row(seed, summary[seed]['split'], c, table, probe['kendall_tau'])
  complete = [s for s in per_seed if s in summary]
  if complete:
    print('\nKendall with the second yardstick, the linear probe of each '
          'subnet\'s inherited features (labels, no fine-tuning):')
    print('| seed | ' + ' | '.join(signals.FITNESSES + CONTROLS) + ' |')
    print('|---|' + '---:|' * len(signals.FITNESSES + CONTROLS))
    for seed in complete:
      print(f'| {seed} | ' + ' | '.join(
          _fmt(summary[seed]['vs_probe'][n])
          for n in signals.FITNESSES + CONTROLS) + ' |')
  for seed, study in per_seed.items():
    print(f'seed {seed}: {progress(study, args.scratch_every)}')
    for split, name in enumerate(('validation', 'test')):
      c = ceiling(study, split)
      if c:
        print(f'seed {seed}, {name}, {c["subnets"]} subnets: '
              f'{_fmt_noise(c)}')
    # The default is chosen on validation and reported on test: do the two
    # splits' yardsticks (means over the fine-tuning seeds) rank alike?
    part = study_stats.done_subset(study)
    if len(part['subnets']) > 2:
      val, test = (yardstick(part, split) for split in (0, 1))
      print(f'seed {seed}, validation vs test yardstick over '
            f'{len(part["subnets"])} '
            f'subnets: Kendall {stats.kendalltau(val, test).statistic:+.2f}'
            f', Pearson {np.corrcoef(val, test)[0, 1]:+.2f}')
  chosen = [s for s in select if s in summary]
  if chosen:
    best = max(signals.FITNESSES, key=lambda n: statistics.mean(
        summary[s]['rows'][n]['kendall'] for s in chosen))
    # Until every selection seed is complete the choice is only a reading
    # of the seeds so far, and says so.
    prefix = (f'provisional, selection seeds {pending} not complete; '
              if pending else '')
    print(f'\n{prefix}chosen on seeds {chosen}: {best!r}')
    summary['chosen'] = best
    summary['chosen_on'] = chosen
    summary['provisional'] = bool(pending)
    if pending:
      # Held-out numbers read before the choice is final would invite
      # choosing (or adding candidates) on them.
      print(f'held-out verdict withheld until selection seeds {pending} '
            'are complete')
    else:
      held_out(per_seed, select, best, summary)
  # Inherited (fine-tuning seed 0) against the same subnet from random
  # weights with the same seed and the recipe that suits them
  # (common.SCRATCH_RECIPE): what inheriting buys at this budget.
  seed_means = ([], [])
  for seed, study in per_seed.items():
    for split, name in enumerate(('validation', 'test')):
      pairs = [(s[split], f[split])
               for s, f in zip(study['scratch'], study['ft'][0])
               if s is not None and f is not None]
      if not pairs:
        continue
      scr, inh = (np.array(x) for x in zip(*pairs))
      seed_means[split].append(100 * (inh - scr).mean())
      line = (f'seed {seed}, {name}: inherited - scratch over {len(pairs)} '
              f'subnets {margin(100 * (inh - scr))}')
      if len(pairs) > 2:
        line += (', Kendall of the two '
                 f'{stats.kendalltau(scr, inh).statistic:+.2f}')
      print(line)
  for split, name in enumerate(('validation', 'test')):
    if len(seed_means[split]) > 1:
      print(f'{name}: inherited - scratch over {len(seed_means[split])} '
            'seeds, mean +- sd of the seeds\' means '
            f'{common.mean_sd(seed_means[split], signed=True)} points')
  if args.against:
    summary['against'] = {'record': args.against,
                          **against(args, per_seed)}
  root = epath.Path(args.record)
  (root / 'signal_study.json').write_text(json.dumps(
      {'per_seed': {str(s): v for s, v in per_seed.items()},
       'summary': {str(k): v for k, v in summary.items()}}))
  plot({s: summary[s] for s in complete}, select, root / 'signal_study.png',
       not pending)

