"""Plots shared by the trainer, the stages and the benchmarks: PNG writing,
loss curves of a metrics.jsonl, search progress and Pareto front."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
from etils import epath

matplotlib.use('Agg')  # Headless: plots are written as files.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from masktas_jax.storage import artifacts


def save_figure(fig, path: epath.PathLike) -> None:
  """Writes `fig` as a PNG (any epath, gs:// included) and closes it."""
  fig.tight_layout()
  with epath.Path(path).open('wb') as f:
    fig.savefig(f, dpi=120)
  plt.close(fig)


def pareto_front(cost: np.ndarray, fitness: np.ndarray) -> np.ndarray:
  """Indices of the points no other point beats on both: lower `cost` (N,)
  and higher `fitness` (N,); sorted by cost."""
  order = np.lexsort((-fitness, cost))
  front, best = [], -np.inf
  for i in order:
    if fitness[i] > best:
      front.append(i)
      best = fitness[i]
  return np.asarray(front, int)


def plot_search_progress(ax, history: list[dict],
                         label: str = 'fitness') -> None:
  """Best so far, generation best and generation mean fitness."""
  gens = sorted({h['generation'] for h in history})
  by_gen = [[h['fitness'] for h in history if h['generation'] == g]
            for g in gens]
  ax.plot(gens, np.maximum.accumulate([max(f) for f in by_gen]), 'o-',
          label='best so far')
  ax.plot(gens, [max(f) for f in by_gen], 's--', label='generation best')
  ax.plot(gens, [np.mean(f) for f in by_gen], '^:', label='generation mean')
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel('generation')
  ax.set_ylabel(label)
  ax.set_title('search progress')
  ax.legend()


def plot_pareto(ax, history: list[dict], label: str = 'fitness') -> None:
  """Every scored candidate, fitness against parameters, and the front."""
  params = np.array([h['params'] for h in history]) / 1e6
  fitness = np.array([h['fitness'] for h in history])
  gens = np.array([h['generation'] for h in history])
  points = ax.scatter(params, fitness, c=gens, s=12, cmap='viridis')
  front = pareto_front(params, fitness)
  ax.plot(params[front], fitness[front], 'r.-', label='Pareto front')
  ax.figure.colorbar(points, ax=ax, label='generation')
  ax.set_xlabel('parameters (M)')
  ax.set_ylabel(label)
  ax.set_title(f'{len(history)} scored candidates')
  ax.legend()


def search_plots(history: list[dict], out: epath.Path,
                 label: str = 'fitness') -> None:
  """out/fitness.png and out/pareto.png; `label` names the fitness."""
  for name, plot in ((artifacts.FITNESS_PLOT, plot_search_progress),
                     (artifacts.PARETO_PLOT, plot_pareto)):
    fig, ax = plt.subplots(figsize=(6, 4.5))
    plot(ax, history, label)
    save_figure(fig, out / name)


def read_metrics(path: epath.Path) -> dict[int, dict]:
  """step -> record of a trainer metrics.jsonl; the last record of a step
  wins (a resumed run logs its steps again). Empty when there is no file."""
  if not path.exists():
    return {}
  records = (json.loads(line) for line in path.read_text().splitlines()
             if line.strip())
  return {r['step']: r for r in records}


def plot_losses(ax, metrics_path: epath.Path, title: str) -> bool:
  """Every '*loss*' series of a metrics.jsonl against the step; False (and
  nothing drawn) when there is none."""
  by_step = read_metrics(metrics_path)
  if not by_step:
    return False
  steps = sorted(by_step)
  for key in (k for k in by_step[steps[-1]] if 'loss' in k):
    ax.plot(steps, [by_step[s].get(key, np.nan) for s in steps], label=key)
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  ax.set_title(title)
  ax.legend()
  return True


def loss_figure(metrics_path: epath.Path, out: epath.Path, title: str) -> None:
  """`out` (a PNG) with the losses of `metrics_path`, if it has any."""
  fig, ax = plt.subplots(figsize=(6, 4))
  if plot_losses(ax, metrics_path, title):
    save_figure(fig, out)
  else:
    plt.close(fig)
