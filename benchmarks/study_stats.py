"""Statistics of a ranking study (`signal_study.py`, `search_vs_baselines.py`):
the yardstick and its noise ceiling, each signal's Kendall with it, and the
held-out verdict on the goal of #26.

A study's per-seed record (`signal_study.study_seed`) holds, for n subnets,
each signal's values (n,), 'params' (n,), and 'ft': per fine-tuning seed a
list of n (validation, test) top-1 pairs or None where not yet run.

Free of side effects on import (unlike `common`), so tests import it.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from masktas_jax.evaluation import ranking, signals

CONTROLS = ('params', 'macs', 'student_entropy')

# The goal of #26 on the held-out seeds: Kendall with the yardstick of at
# least GOAL_TAU, at least GOAL_MARGIN above the parameter-count control,
# and above 0 within parameter strata.
GOAL_TAU, GOAL_MARGIN = 0.6, 0.15


def yardstick(study: dict, split: int) -> list[float] | None:
  """Mean top-1 over the fine-tuning seeds (split 0: validation, 1: test),
  or None while a run is missing."""
  runs = study['ft']
  if any(r is None for seed in runs for r in seed):
    return None
  return [float(np.mean([seed[i][split] for seed in runs]))
          for i in range(len(runs[0]))]


def done_subset(study: dict) -> dict:
  """`study` restricted to the subnets every fine-tuning seed has finished:
  each per-subnet list (n,) cut to those m, 'ft' per seed, and 'subnets'
  the m indices; a study part-way through reads as a finished one of m."""
  runs = study['ft']
  n = len(runs[0])
  done = [i for i in range(n) if all(seed[i] is not None for seed in runs)]
  out = {k: ([v[i] for i in done]
             if isinstance(v, (list, tuple)) and len(v) == n else v)
         for k, v in study.items()}
  out['ft'] = [[seed[i] for i in done] for seed in runs]
  out['subnets'] = done
  return out


def rows(study: dict, split: int) -> dict[str, dict]:
  """Kendall (with interval) and within-strata Kendall of every fitness and
  control against the yardstick on `split`."""
  y = yardstick(study, split)
  if y is None:
    return {}
  out = {}
  for name in signals.FITNESSES + CONTROLS:
    corr = ranking.correlation(study[name], y)
    out[name] = {'kendall': corr['kendall_tau'], 'ci': corr['kendall_ci'],
                 'within_params': ranking.kendall_within_strata(
                     study[name], y, study['params'])['kendall_tau']}
  return out


def ceiling(study: dict, split: int) -> dict | None:
  """Kendall between the first two fine-tuning seeds' top-1, over the
  subnets both have finished ('subnets'); None below 5 of them."""
  runs = study['ft']
  if len(runs) < 2:
    return None
  pairs = [(a[split], b[split]) for a, b in zip(runs[0], runs[1])
           if a is not None and b is not None]
  if len(pairs) < 5:
    return None
  corr = ranking.correlation(*zip(*pairs))
  return {'kendall': corr['kendall_tau'], 'ci': corr['kendall_ci'],
          'subnets': len(pairs), **noise(*zip(*pairs))}


# Kendall's tau of a bivariate normal with correlation r is 2/pi asin(r):
# two yardsticks agree at tau 0.7 once each is reliable to r = sin(0.35 pi).
TARGET_TAU = 0.7


def _reliability(a: np.ndarray, b: np.ndarray) -> tuple[float, float,
                                                         float]:
  """(run-to-run sd, true sd, one run's reliability) of two seeds' top-1
  in points (see `noise`)."""
  run = float(np.std(a - b, ddof=1) / np.sqrt(2))
  true_var = max(float(np.var((a + b) / 2, ddof=1)) - run**2 / 2, 0.0)
  r = true_var / (true_var + run**2) if true_var + run**2 else 0.0
  return run, float(np.sqrt(true_var)), r


def noise(a, b, seed: int = 0) -> dict[str, Any]:
  """What limits the yardstick, from two fine-tuning seeds' top-1 `a`, `b`
  (n subnets each): the run-to-run noise sd (sd(a - b) / sqrt 2), the sd of
  the subnets' true top-1 (the two-seed mean's variance less its noise's),
  in points; the reliability r of one run (true variance / a run's
  variance), with a bootstrap 95% interval over the subnets, and the tau
  two runs would agree at with that r (2/pi asin r, normal errors), which
  is steadier than the tau of a few subnets; and how many fine-tuning
  seeds each of two mean yardsticks would need to agree with each other at
  tau 0.7 (Spearman-Brown: the mean of k runs has k r / (1 + (k - 1) r));
  None where r is 0. And the tau a perfect signal (the subnets' true top-1)
  would reach against the two seeds' mean, the yardstick's own ceiling
  (2/pi asin sqrt(R), R = 2r / (1 + r) the mean's reliability)."""
  a, b = 100 * np.asarray(a, float), 100 * np.asarray(b, float)
  run, true_sd, r = _reliability(a, b)
  resamples = np.random.default_rng(seed).integers(
      0, len(a), (ranking.BOOTSTRAP_RESAMPLES, len(a)))
  boot = [_reliability(a[i], b[i])[2] for i in resamples]
  need = np.sin(TARGET_TAU * np.pi / 2)
  return {'run_sd': run, 'arch_sd': true_sd, 'reliability': r,
          'reliability_ci': [float(v) for v in np.percentile(boot,
                                                             [2.5, 97.5])],
          'expected_kendall': float(2 / np.pi * np.arcsin(r)),
          'perfect_kendall': float(2 / np.pi * np.arcsin(
              np.sqrt(2 * r / (1 + r)))),
          'seeds_for_target': (float(need * (1 - r) / (r * (1 - need)))
                               if r > 0 else None)}


def _tau(x: np.ndarray, y: np.ndarray) -> float:
  """Kendall tau-b, NaN where undefined (a constant input)."""
  return float(ranking.kendall_b(x, y))


def verdict(studies: Sequence[dict], name: str, split: int = 1,
            control: str = 'params', strata: int = ranking.STRATA,
            seed: int = 0) -> dict[str, Any] | None:
  """Signal `name` against the goal over `studies` (one per held-out seed;
  those with a missing run are left out; None if none is complete), on
  `split`'s yardstick (1: test):

  * 'kendall': the mean over seeds of its Kendall with the yardstick;
  * 'margin': that less the same mean for `control` (parameter count);
  * 'within': the mean over seeds of its Kendall within `strata` groups of
    consecutive parameter counts (`ranking.kendall_within_strata`'s
    statistic), what it knows beyond size;

  each with a 95% percentile interval from one stratified bootstrap (the
  subnets resampled within their parameter strata, per seed: the study
  draws its subnets at evenly spaced parameter quantiles, so the strata
  are fixed by its design), paired across the three statistics; and 'met',
  whether the point estimates meet the goal (GOAL_TAU, GOAL_MARGIN, > 0).
  """
  data = []
  for study in studies:
    y = yardstick(study, split)
    if y is None:
      continue
    size = np.asarray(study['params'], float)
    groups = np.array_split(np.argsort(size, kind='stable'), strata)
    data.append((np.asarray(study[name], float),
                 np.asarray(study[control], float), np.asarray(y), groups))
  if not data:
    return None

  def statistics(picks) -> np.ndarray:
    """(kendall, control's kendall, within) averaged over the seeds, for
    one index array per stratum per seed."""
    out = []
    for (x, c, y, _), pick in zip(data, picks):
      i = np.concatenate(pick)
      within = [_tau(x[g], y[g]) for g in pick if len(g) > 1]
      within = [t for t in within if np.isfinite(t)]
      out.append((_tau(x[i], y[i]), _tau(c[i], y[i]),
                  np.mean(within) if within else np.nan))
    with warnings.catch_warnings():  # NaN where every seed's is (tiny strata).
      warnings.simplefilter('ignore', RuntimeWarning)
      return np.nanmean(np.array(out), axis=0)

  rng = np.random.default_rng(seed)
  point = statistics([groups for *_, groups in data])
  boot = np.array([statistics([[rng.choice(g, len(g)) for g in groups]
                               for *_, groups in data])
                   for _ in range(ranking.BOOTSTRAP_RESAMPLES)])

  def ci(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]
    return ([float(v) for v in np.percentile(values, [2.5, 97.5])]
            if len(values) else [float('nan')] * 2)

  kendall, base, within = (float(v) for v in point)
  out = {'name': name, 'control': control, 'seeds': len(data),
         'kendall': kendall, 'kendall_ci': ci(boot[:, 0]),
         'control_kendall': base, 'margin': kendall - base,
         'margin_ci': ci(boot[:, 0] - boot[:, 1]),
         'within': within, 'within_ci': ci(boot[:, 2])}
  out['met'] = bool(kendall >= GOAL_TAU and out['margin'] >= GOAL_MARGIN
                    and within > 0)
  return out
