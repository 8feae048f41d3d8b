"""The shared plots: the Pareto front against a brute-force one, and the
files the trainer and the search write."""

import json

import numpy as np

from masktas_jax.storage import artifacts
from masktas_jax.training import plots


def test_pareto_front_is_the_set_nothing_dominates():
  rng = np.random.default_rng(0)
  # Ties in cost on purpose: only the fittest of equal costs can be on it.
  cost = rng.integers(0, 15, 60).astype(float)
  fitness = rng.normal(size=60)
  dominated = [any((cost[j] <= cost[i] and fitness[j] > fitness[i]) or
                   (cost[j] < cost[i] and fitness[j] >= fitness[i])
                   for j in range(60)) for i in range(60)]
  front = plots.pareto_front(cost, fitness)
  assert sorted(front) == [i for i in range(60) if not dominated[i]]
  assert list(cost[front]) == sorted(cost[front])


def test_search_and_loss_plots_are_pngs(tmp_path):
  history = [{'generation': g, 'fitness': float(-g - i), 'params': 1e5 * i}
             for g in range(3) for i in range(4)]
  plots.search_plots(history, tmp_path, 'fitness (pixel)')
  metrics = tmp_path / 'metrics.jsonl'
  # Step 2 logged twice (a resumed run): the last record wins.
  metrics.write_text('\n'.join(json.dumps({'step': s, 'loss': loss})
                               for s, loss in ((1, 1.0), (2, 0.7), (2, 0.5),
                                               (3, 0.4))))
  assert plots.read_metrics(metrics)[2] == {'step': 2, 'loss': 0.5}
  plots.loss_figure(metrics, tmp_path / 'loss.png', 'stage')
  plots.loss_figure(tmp_path / 'missing.jsonl', tmp_path / 'none.png', 'x')
  for name in (artifacts.FITNESS_PLOT, artifacts.PARETO_PLOT, 'loss.png'):
    assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG'
  assert not (tmp_path / 'none.png').exists()
