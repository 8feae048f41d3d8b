"""Human-facing outputs: the search-space description and the plots of the
search (progress per generation, fitness against parameters with the Pareto
front)."""

from __future__ import annotations

import json

import matplotlib
import ml_collections
import numpy as np
from etils import epath

matplotlib.use('Agg')  # Headless: plots are written as files.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from masktas_jax import config_lib


def describe_space(config: ml_collections.ConfigDict,
                   workdir: epath.Path) -> dict:
  """Writes `space.json` and `space.png` (params vs MACs of sampled Archs).

  Returns the description written to `space.json`.
  """
  space = config_lib.space_from_config(config)
  info = space.describe()
  rng = np.random.default_rng(config.seed)
  archs = [space.sample(rng) for _ in range(500)]
  params = np.array([space.count_params(a) for a in archs]) / 1e6
  gmacs = np.array([space.count_macs(a) for a in archs]) / 1e9
  info['sampled'] = {
      'count': len(archs),
      'params_m': [round(float(params.min()), 3), round(float(params.max()), 3)],
      'gmacs': [round(float(gmacs.min()), 4), round(float(gmacs.max()), 4)],
  }
  (workdir / 'space.json').write_text(json.dumps(info, indent=2))

  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.scatter(params, gmacs, s=6, alpha=0.5, label='500 random Archs')
  for key, marker in (('min_arch', 'v'), ('max_arch', '^')):
    ax.scatter(info[key]['params'] / 1e6, info[key]['macs'] / 1e9, s=60,
               marker=marker, color='k', label=key.replace('_', ' '))
  ax.set_xlabel('parameters (M)')
  ax.set_ylabel('GMACs per image')
  ax.set_title(f'search space: {info["num_archs"]:.3g} Archs')
  ax.legend()
  save_figure(fig, workdir / 'space.png')

  lo, hi = info['min_arch'], info['max_arch']
  print(f'search space: {info["num_archs"]:.3g} Archs, '
        f'{space.num_patches} patches of {space.patch_size} px')
  for name, a in (('min', lo), ('max', hi)):
    print(f'  {name} Arch: embed {a["embed_dim"]}, depth {a["depth"]}, '
          f'{a["params"] / 1e6:.2f} M params, {a["macs"] / 1e9:.3f} GMACs')
  print(f'  wrote {workdir / "space.json"} and {workdir / "space.png"}')
  return info


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


def plot_search_progress(ax, history: list[dict]) -> None:
  """Best so far, generation best and generation mean fitness."""
  gens = sorted({h['generation'] for h in history})
  by_gen = [[h['fitness'] for h in history if h['generation'] == g]
            for g in gens]
  ax.plot(gens, np.maximum.accumulate([max(f) for f in by_gen]), 'o-',
          label='best so far')
  ax.plot(gens, [max(f) for f in by_gen], 's--', label='generation best')
  ax.plot(gens, [np.mean(f) for f in by_gen], '^:', label='generation mean')
  ax.set_xlabel('generation')
  ax.set_ylabel('fitness (relation consistency)')
  ax.set_title('search progress')
  ax.legend()


def plot_pareto(ax, history: list[dict]) -> None:
  """Every scored candidate, fitness against parameters, and the front."""
  params = np.array([h['params'] for h in history]) / 1e6
  fitness = np.array([h['fitness'] for h in history])
  gens = np.array([h['generation'] for h in history])
  points = ax.scatter(params, fitness, c=gens, s=12, cmap='viridis')
  front = pareto_front(params, fitness)
  ax.plot(params[front], fitness[front], 'r.-', label='Pareto front')
  ax.figure.colorbar(points, ax=ax, label='generation')
  ax.set_xlabel('parameters (M)')
  ax.set_ylabel('fitness (relation consistency)')
  ax.set_title(f'{len(history)} scored candidates')
  ax.legend()


def search_plots(history: list[dict], out: epath.Path) -> None:
  """out/fitness.png and out/pareto.png."""
  for name, plot in (('fitness.png', plot_search_progress),
                     ('pareto.png', plot_pareto)):
    fig, ax = plt.subplots(figsize=(6, 4.5))
    plot(ax, history)
    save_figure(fig, out / name)
