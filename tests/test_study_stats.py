"""benchmarks/study_stats.py: the signal study's noise ceiling and its
held-out verdict, against direct computations on synthetic studies whose
truth is known."""

import copy
import sys

import numpy as np
from scipy import stats

import helpers

sys.path.insert(0, str(helpers.ROOT / 'benchmarks'))
import study_stats  # pylint: disable=g-import-not-at-top,wrong-import-position


def _study(true, runs, **signals):
  """A per-seed study record: `runs` (k, n) top-1 fractions used for both
  splits, signals as given."""
  ft = [[(float(v), float(v)) for v in run] for run in runs]
  return {'ft': ft, **{k: list(map(float, v)) for k, v in signals.items()},
          'true': true}


def test_noise_recovers_known_spreads_and_predicts_the_measured_kendall():
  rng = np.random.default_rng(0)
  n, arch_sd, run_sd = 4000, 0.005, 0.002  # 0.5 and 0.2 points.
  true = 0.85 + arch_sd * rng.normal(size=n)
  a, b = (true + run_sd * rng.normal(size=n) for _ in range(2))
  out = study_stats.noise(a, b)
  assert abs(out['run_sd'] - 100 * run_sd) < 0.01
  assert abs(out['arch_sd'] - 100 * arch_sd) < 0.02
  r = arch_sd**2 / (arch_sd**2 + run_sd**2)
  assert abs(out['reliability'] - r) < 0.01
  lo, hi = out['reliability_ci']
  assert lo < out['reliability'] < hi
  # The Kendall two runs agree at, measured directly, is what it predicts.
  measured = stats.kendalltau(a, b).statistic
  assert abs(out['expected_kendall'] - measured) < 0.02
  # Spearman-Brown: the mean of that many runs, against another such mean,
  # agrees at the target tau.
  k = out['seeds_for_target']
  r_k = k * r / (1 + (k - 1) * r)
  assert abs(2 / np.pi * np.arcsin(r_k) - study_stats.TARGET_TAU) < 0.01
  # The truth itself, against the two runs' mean: the yardstick's ceiling.
  perfect = stats.kendalltau(true, (a + b) / 2).statistic
  assert abs(out['perfect_kendall'] - perfect) < 0.02
  assert perfect > measured + 0.1  # Above two runs' agreement, here.


def _held_out(seed, n=30, strata=3):
  """A held-out seed: params spread over the window, top-1 rising with
  params plus an architecture effect that params do not explain; two
  fine-tuning runs with small noise."""
  rng = np.random.default_rng(seed)
  params = np.sort(rng.uniform(0.25, 0.55, n))
  true = 0.86 + 0.02 * (params - 0.4) + 0.004 * rng.normal(size=n)
  runs = true + 0.0005 * rng.normal(size=(2, n))
  return _study(true, runs, params=params, oracle=runs.mean(0),
                noise=rng.normal(size=n), size=params)


def _within(x, y, params, strata=3):
  groups = np.array_split(np.argsort(params, kind='stable'), strata)
  return np.mean([stats.kendalltau(x[g], y[g]).statistic for g in groups])


def test_verdict_against_direct_kendalls():
  studies = [_held_out(2), _held_out(3)]
  ys = [np.mean([[t for t, _ in run] for run in s['ft']], 0) for s in studies]
  oracle = study_stats.verdict(studies, 'oracle')
  size = study_stats.verdict(studies, 'size')
  noise = study_stats.verdict(studies, 'noise')
  base = np.mean([stats.kendalltau(s['params'], y).statistic
                  for s, y in zip(studies, ys)])
  # A signal equal to the yardstick: Kendall 1, margin over params exact.
  assert oracle['seeds'] == 2
  assert np.isclose(oracle['kendall'], 1.0)
  assert np.isclose(oracle['control_kendall'], base)
  assert np.isclose(oracle['margin'], 1 - base)
  assert np.isclose(oracle['within'], 1.0)
  assert oracle['met']
  # A signal that is parameter count: no margin, and the verdict says so.
  assert np.isclose(size['margin'], 0.0)
  assert np.isclose(size['within'], np.mean(
      [_within(np.asarray(s['params']), y, np.asarray(s['params']))
       for s, y in zip(studies, ys)]))
  assert not size['met']
  # Noise: Kendall near 0, its interval wide and containing the estimate.
  direct = np.mean([stats.kendalltau(s['noise'], y).statistic
                    for s, y in zip(studies, ys)])
  assert np.isclose(noise['kendall'], direct)
  for key in ('kendall', 'margin', 'within'):
    lo, hi = noise[f'{key}_ci']
    assert lo <= noise[key] <= hi and hi - lo > 0.1
  assert not noise['met']


def test_verdict_leaves_out_unfinished_seeds():
  done, part = _held_out(4), _held_out(5)
  part['ft'][1][7] = None
  assert study_stats.verdict([part], 'oracle') is None
  one = study_stats.verdict([done], 'oracle')
  both = study_stats.verdict([done, part], 'oracle')
  assert both['seeds'] == 1 and both['kendall'] == one['kendall']


def test_done_subset_reads_a_study_part_way_as_a_finished_one():
  rng = np.random.default_rng(3)
  n = 12
  params = rng.uniform(0.25, 0.55, n)
  runs = 0.86 + 0.02 * params + 0.001 * rng.normal(size=(2, n))
  names = study_stats.signals.FITNESSES + study_stats.CONTROLS
  full = _study(None, runs, **{k: rng.normal(size=n) for k in names})
  full['params'] = list(params)
  full['archs'] = [f'arch{i}' for i in range(n)]
  part = {**full, 'ft': [list(seed) for seed in full['ft']]}
  part['ft'][0][2] = part['ft'][1][5] = part['ft'][1][6] = None
  done = [i for i in range(n) if i not in (2, 5, 6)]
  assert study_stats.yardstick(part, 0) is None  # Unfinished.
  before = copy.deepcopy(part)
  sub = study_stats.done_subset(part)
  assert part == before  # The study itself is left alone.
  assert sub['subnets'] == done
  assert sub['archs'] == [f'arch{i}' for i in done]
  np.testing.assert_allclose(sub['params'], params[done])
  np.testing.assert_allclose(study_stats.yardstick(sub, 0),
                             runs[:, done].mean(0))
  # Its Kendall is the one over those subnets alone, computed directly.
  name = names[0]
  got = study_stats.rows(sub, 0)[name]['kendall']
  want = stats.kendalltau(np.array(full[name])[done],
                          runs[:, done].mean(0)).statistic
  assert abs(got - want) < 1e-12
