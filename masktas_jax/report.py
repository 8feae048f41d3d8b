"""mode=space and mode=summary: the search-space description, and the
pipeline's `summary.json` + one-page `report.png` (drawn with `plots`)."""

from __future__ import annotations

import json

import jax

import ml_collections
import numpy as np
from etils import epath

from masktas_jax import artifacts, config_lib, parallel, stage
from masktas_jax.plots import plot_losses, plot_pareto, plot_search_progress
from masktas_jax.plots import save_figure
from masktas_jax.space import Arch

# After `plots`, which chose the headless backend.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,g-bad-import-order


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
  (workdir / artifacts.SPACE).write_text(json.dumps(info, indent=2))

  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.scatter(params, gmacs, s=6, alpha=0.5, label='500 random Archs')
  for key, marker in (('min_arch', 'v'), ('max_arch', '^')):
    ax.scatter(info[key]['params'] / 1e6, info[key]['macs'] / 1e9, s=60,
               marker=marker, color='k', label=key.replace('_', ' '))
  ax.set_xlabel('parameters (M)')
  ax.set_ylabel('GMACs per image')
  ax.set_title(f'search space: {info["num_archs"]:.3g} Archs')
  ax.legend()
  save_figure(fig, workdir / artifacts.SPACE_PLOT)

  lo, hi = info['min_arch'], info['max_arch']
  print(f'search space: {info["num_archs"]:.3g} Archs, '
        f'{space.num_patches} patches of {space.patch_size} px')
  for name, a in (('min', lo), ('max', hi)):
    print(f'  {name} Arch: embed {a["embed_dim"]}, depth {a["depth"]}, '
          f'{a["params"] / 1e6:.2f} M params, {a["macs"] / 1e9:.3f} GMACs')
  print(f'  wrote {workdir / artifacts.SPACE} and '
        f'{workdir / artifacts.SPACE_PLOT}')
  return info


def _read_json(path: epath.Path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None


def summary(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
  """The pipeline's results as `summary.json` holds them.

  `search` (best Arch and fitness) and `finetune` (top-1 / top-5 and the
  split) appear when their stage has finished; `params` (a standalone
  classifier with `config.space.num_classes` classes), `flops` and `macs`
  (per image) describe the fine-tuned Arch, or the search's best before
  fine-tuning.
  """
  space = config_lib.space_from_config(config)
  best = _read_json(artifacts.best_arch(workdir))
  tuned = _read_json(artifacts.finetune_metrics(workdir))
  result = {}
  if best:
    result['search'] = {'best_arch': best['arch'],
                        'best_fitness': best['fitness'],
                        'generations': best['generations'],
                        'window': best['window']}
  if tuned:
    result['finetune'] = {k: tuned[k] for k in (
        'top1', 'top5', 'images', 'split', 'steps', 'inherited', 'arch')}
  final = (tuned or best or {}).get('arch')
  if final:
    arch = Arch.from_dict(final)
    result.update(arch=final, params=space.count_params(arch),
                  flops=space.count_flops(arch), macs=space.count_macs(arch))
  return result


def _plot_accuracy(ax, result: dict) -> None:
  """Top-1 / top-5 bars with the final Arch's size, or a note."""
  tuned = result.get('finetune')
  if not tuned:
    ax.text(0.5, 0.5, 'not fine-tuned yet', ha='center', va='center')
    ax.set_axis_off()
    return
  values = [100 * tuned['top1'], 100 * tuned['top5']]
  bars = ax.bar(['top-1', 'top-5'], values, color=['tab:blue', 'tab:orange'])
  for bar, value in zip(bars, values):
    ax.text(bar.get_x() + bar.get_width() / 2, value, f'{value:.2f}%',
            ha='center', va='bottom')
  ax.set_ylim(0, 110)
  ax.set_ylabel(f'accuracy on {tuned["split"]!r} (%)')
  arch = tuned['arch']
  ax.set_title(
      f'fine-tuned: embed {arch["embed_dim"]}, depth {arch["depth"]}\n'
      f'{result["params"] / 1e6:.2f} M params, '
      f'{result["flops"] / 1e9:.3f} GFLOPs/image')


def summarize(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
  """Writes `summary.json` and `report.png` (teacher, supernet and
  fine-tuning losses, search progress, Pareto front, final accuracy) from
  what the stages left in `workdir`; returns the summary."""
  result = summary(config, workdir)
  if jax.process_index() != 0:
    return result
  (workdir / artifacts.SUMMARY).write_text(json.dumps(result, indent=2))
  history_path = (artifacts.stage_dir(workdir, 'search') /
                  artifacts.SEARCH_HISTORY)
  history = ([json.loads(l) for l in history_path.read_text().splitlines()
              if l.strip()] if history_path.exists() else [])
  fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
  losses = (('teacher', 'teacher (MAE pre-training)'),
            ('supernet', 'supernet (masked distillation)'),
            ('finetune', 'fine-tuning'))
  for ax, (stage, title) in zip(axes[0], losses):
    if not plot_losses(
        ax, artifacts.stage_dir(workdir, stage) / artifacts.METRICS_LOG, title):
      ax.text(0.5, 0.5, f'{title}:\nnot trained in this workdir',
              ha='center', va='center')
      ax.set_axis_off()
  best = _read_json(artifacts.best_arch(workdir)) or {}
  label = f'fitness ({best.get("fitness_variant", "relation")})'
  for ax, plot in ((axes[1, 0], plot_search_progress),
                   (axes[1, 1], plot_pareto)):
    if history:
      plot(ax, history, label)
    else:
      ax.text(0.5, 0.5, 'no search in this workdir', ha='center',
              va='center')
      ax.set_axis_off()
  _plot_accuracy(axes[1, 2], result)
  fig.suptitle(f'masktas_jax on {config.data.name!r}: {workdir}')
  save_figure(fig, workdir / artifacts.REPORT)
  parallel.log(f'summary: wrote {workdir / artifacts.SUMMARY} and '
               f'{workdir / artifacts.REPORT}')
  return result


SPACE = stage.Stage('space', describe_space, pipeline=True)
SUMMARY = stage.Stage('summary', summarize, pipeline=True)
