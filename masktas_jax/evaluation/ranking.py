"""Rank statistics of a signal against a yardstick over subnets: Kendall
tau-b and Spearman rho with percentile bootstrap intervals, and Kendall
within parameter-count strata (what a signal knows beyond size).

Vectorised over bootstrap resamples: a study's report bootstraps thousands
of resamples of dozens of signals, which scipy's one-pair-at-a-time
functions make slow; each is checked against scipy in the tests.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from scipy import stats

# Bootstrap resamples of the subnets for the 95% intervals.
BOOTSTRAP_RESAMPLES = 1000
# Parameter-count strata of `kendall_within_strata`.
STRATA = 3


# Pairs (x resamples) `kendall_b` compares at once; past _PAIRS_MAX pairs a
# row (n > ~2,900) it asks scipy row by row instead (O(n log n) a row).
_PAIRS_PER_CHUNK = 2**22
_PAIRS_MAX = 2**22


def kendall_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Kendall tau-b of x and y along their last axis (..., n): (...), NaN
  where undefined (a constant row, n < 2, a NaN). scipy's `kendalltau` of
  one pair at a time, for the thousands of resamples a bootstrap takes:
  the concordance signs of all n (n - 1) / 2 pairs, ties counted out of
  the denominator as tau-b does."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  lead, n = x.shape[:-1], x.shape[-1]
  count = int(np.prod(lead, dtype=int))
  x, y = x.reshape(count, n), y.reshape(count, n)
  out = np.full(count, np.nan)
  if 1 < n and n * (n - 1) // 2 > _PAIRS_MAX:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', stats.ConstantInputWarning)
      out[:] = [stats.kendalltau(a, b).statistic for a, b in zip(x, y)]
  elif 1 < n:
    i, j = np.triu_indices(n, 1)
    sign = lambda v: np.sign(np.where(v[:, i] == v[:, j], 0.0,
                                      v[:, i] - v[:, j]))  # inf ties: 0.
    rows = max(1, _PAIRS_PER_CHUNK // len(i))
    for start in range(0, count, rows):
      with np.errstate(invalid='ignore'):  # inf - inf, where it is a tie.
        sx, sy = sign(x[start:start + rows]), sign(y[start:start + rows])
      num = np.einsum('rp,rp->r', sx, sy)
      den = np.sqrt(np.abs(sx).sum(1) * np.abs(sy).sum(1))
      out[start:start + rows] = np.where(den > 0,
                                         num / np.where(den > 0, den, 1),
                                         np.nan)
  return out.reshape(lead) if lead else out[0]


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Spearman's rho of each row of x and y (r, n), as scipy's `spearmanr`
  (Pearson of average ranks): (r,), NaN for a constant row."""
  rx, ry = (stats.rankdata(v, axis=-1) for v in (x, y))
  rx, ry = (v - v.mean(-1, keepdims=True) for v in (rx, ry))
  den = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
  return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1),
                  np.nan)


def correlation(x: Sequence[float], y: Sequence[float],
                seed: int = 0) -> dict[str, Any]:
  """Kendall tau-b and Spearman rho of x and y (n,), each with a percentile
  bootstrap 95% interval over resampled (x, y) pairs.

  A statistic that is undefined (a constant input) is NaN; resamples where
  it is undefined are left out of the interval.
  """
  x, y = np.asarray(x, float), np.asarray(y, float)
  resamples = np.random.default_rng(seed).integers(
      0, len(x), (BOOTSTRAP_RESAMPLES, len(x)))
  result = {}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', stats.ConstantInputWarning)
    for name, fn, rows in (('kendall', stats.kendalltau, kendall_b),
                           ('spearman', stats.spearmanr, _spearman_rows)):
      key = 'kendall_tau' if name == 'kendall' else 'spearman_rho'
      result[key] = float(fn(x, y).statistic)
      boot = rows(x[resamples], y[resamples])
      boot = boot[np.isfinite(boot)]
      result[f'{name}_ci'] = ([float(v) for v in np.percentile(boot,
                                                              [2.5, 97.5])]
                              if len(boot) else [float('nan')] * 2)
  return result


def kendall_within_strata(x: Sequence[float], y: Sequence[float],
                          size: Sequence[float], strata: int = STRATA,
                          seed: int = 0) -> dict[str, Any]:
  """Kendall tau-b of x and y within strata of `size` (the subnets cut
  into `strata` groups of consecutive parameter counts, equal in number),
  averaged over the strata, with a percentile bootstrap 95% interval
  (pairs resampled within each stratum): what a fitness knows beyond size.
  A fitness that only re-discovers size has ~0 here."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  groups = np.array_split(np.argsort(np.asarray(size, float), kind='stable'),
                          strata)
  rng = np.random.default_rng(seed)

  def mean_tau(picks):
    """Mean over strata of Kendall within each, per resample: `picks` one
    (r, len(g)) index array per stratum; (r,)."""
    taus = np.stack([kendall_b(x[p], y[p]) for p in picks
                     if p.shape[-1] > 1] or [np.full(len(picks[0]), np.nan)])
    with warnings.catch_warnings():  # NaN where every stratum's is.
      warnings.simplefilter('ignore', RuntimeWarning)
      return np.nanmean(taus, axis=0)

  # Drawn resample by resample, stratum by stratum.
  draws = [[rng.choice(g, len(g)) for g in groups]
           for _ in range(BOOTSTRAP_RESAMPLES)]
  boot = mean_tau([np.stack([d[k] for d in draws])
                   for k in range(len(groups))])
  boot = boot[np.isfinite(boot)]
  point = float(mean_tau([g[None] for g in groups])[0])
  return {'kendall_tau': point, 'strata': strata,
          'kendall_ci': ([float(v) for v in np.percentile(boot, [2.5, 97.5])]
                         if len(boot) else [float('nan')] * 2)}
