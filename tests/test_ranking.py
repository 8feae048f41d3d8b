"""Rank statistics (`evaluation/ranking.py`): the vectorised Kendall,
Spearman and their bootstrap intervals against scipy, one pair at a time."""

import warnings

import numpy as np
import pytest
from scipy import stats

from masktas_jax.evaluation import ranking


def test_correlation_with_bootstrap_intervals():
  rng = np.random.default_rng(1)
  x = rng.normal(size=30)
  close, loose = x + 0.3 * rng.normal(size=30), x + 3 * rng.normal(size=30)
  a, b = ranking.correlation(x, close), ranking.correlation(x, loose)
  for c, y in ((a, close), (b, loose)):
    # Kendall's tau-b by its definition (no ties in continuous data).
    pairs = [(i, j) for i in range(30) for j in range(i + 1, 30)]
    concordance = [np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
                   for i, j in pairs]
    assert c['kendall_tau'] == pytest.approx(np.mean(concordance))
    for name, interval in (('kendall_tau', 'kendall_ci'),
                           ('spearman_rho', 'spearman_ci')):
      lo, hi = c[interval]
      assert lo <= c[name] <= hi
  assert a['kendall_ci'][0] > b['kendall_ci'][1] - 0.3
  assert np.diff(a['kendall_ci']) < np.diff(b['kendall_ci'])
  assert ranking.correlation(x, close, seed=3) != a  # Resampled anew.


def test_kendall_b_in_chunks_and_at_the_edges(monkeypatch):
  """Chunked, row by row through scipy past its pair limit, and at n < 3,
  inf ties and strata emptier than their count: as scipy says."""
  rng = np.random.default_rng(11)
  x = rng.integers(0, 5, (40, 12)).astype(float)
  y = rng.integers(0, 5, (40, 12)).astype(float)
  x[3, 4:6] = np.inf  # A tie at infinity.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', stats.ConstantInputWarning)
    want = np.array([stats.kendalltau(a, b).statistic for a, b in zip(x, y)])
    monkeypatch.setattr(ranking, '_PAIRS_PER_CHUNK', 100)  # 1 row a chunk.
    np.testing.assert_allclose(ranking.kendall_b(x, y), want, atol=1e-12)
    monkeypatch.setattr(ranking, '_PAIRS_MAX', 10)  # Row by row via scipy.
    np.testing.assert_allclose(ranking.kendall_b(x, y), want, atol=1e-12)
    monkeypatch.undo()
    for n in (0, 1):
      assert np.isnan(ranking.kendall_b(np.ones((3, n)), np.ones((3, n)))).all()
    two = ranking.kendall_b(np.array([[1., 2], [1, 1]]), np.array([[2., 3],
                                                                   [1, 2]]))
    assert two[0] == 1 and np.isnan(two[1])
    for n, strata in ((2, 3), (5, 3), (7, 4)):
      a, b, size = rng.normal(size=n), rng.normal(size=n), rng.permutation(n)
      groups = np.array_split(np.argsort(size, kind='stable'), strata)
      taus = [stats.kendalltau(a[g], b[g]).statistic for g in groups
              if len(g) > 1]
      got = ranking.kendall_within_strata(a, b, size, strata=strata)
      if taus:
        assert got['kendall_tau'] == pytest.approx(np.mean(taus), abs=1e-12)
      else:
        assert np.isnan(got['kendall_tau'])


def test_bootstraps_equal_scipy_one_resample_at_a_time():
  """The bootstraps score their resamples all at once (`ranking.kendall_b`);
  each must equal scipy's statistic of that resample alone, ties and
  constant resamples included, and the intervals the one-by-one loop's."""
  rng = np.random.default_rng(7)
  x = rng.integers(0, 4, (300, 9)).astype(float)  # Many ties.
  y = rng.integers(0, 4, (300, 9)).astype(float)
  x[:5] = 1.0  # Constant rows: undefined.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', stats.ConstantInputWarning)
    want = np.array([stats.kendalltau(a, b).statistic for a, b in zip(x, y)])
    got = ranking.kendall_b(x, y)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.isnan(got[:5]).all() and np.isfinite(got[5:]).all()
    assert ranking.kendall_b(x[7], y[7]) == pytest.approx(want[7], abs=1e-12)
    # The intervals, against the loop over the same resamples.
    a = rng.normal(size=25)
    b = a + rng.normal(size=25)
    b[:4] = b[4]  # Ties in one variable.
    picks = np.random.default_rng(0).integers(
        0, 25, (ranking.BOOTSTRAP_RESAMPLES, 25))
    out = ranking.correlation(a, b)
    for fn, key in ((stats.kendalltau, 'kendall_ci'),
                    (stats.spearmanr, 'spearman_ci')):
      boot = np.array([fn(a[i], b[i]).statistic for i in picks])
      boot = boot[np.isfinite(boot)]
      np.testing.assert_allclose(out[key], np.percentile(boot, [2.5, 97.5]),
                                 rtol=0, atol=1e-12)
    # Within strata: the same draws, stratum by stratum.
    size = rng.permutation(25)
    groups = np.array_split(np.argsort(size, kind='stable'), 3)
    draw = np.random.default_rng(0)
    boot = []
    for _ in range(ranking.BOOTSTRAP_RESAMPLES):
      taus = [stats.kendalltau(a[p], b[p]).statistic
              for p in [draw.choice(g, len(g)) for g in groups]]
      taus = [t for t in taus if np.isfinite(t)]
      boot.append(np.mean(taus) if taus else np.nan)
    boot = np.array(boot)
    within = ranking.kendall_within_strata(a, b, size, strata=3)
    np.testing.assert_allclose(
        within['kendall_ci'],
        np.percentile(boot[np.isfinite(boot)], [2.5, 97.5]), rtol=0,
        atol=1e-12)
    assert within['kendall_tau'] == pytest.approx(np.mean(
        [stats.kendalltau(a[g], b[g]).statistic for g in groups]), abs=1e-12)
