"""mode=summary: the pipeline's `summary.json` and one-page `report.png`
(drawn with `plots`) from what the workdir holds."""

from __future__ import annotations

import json

import jax
import ml_collections
from etils import epath

from masktas_jax import config_lib, parallel
from masktas_jax.space import Arch
from masktas_jax.stage import Stage
from masktas_jax.storage import artifacts
from masktas_jax.training.plots import plot_losses, plot_pareto
from masktas_jax.training.plots import plot_search_progress, save_figure

# After `plots`, which chose the headless backend.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,g-bad-import-order


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


STAGE = Stage('summary', summarize, pipeline=True)
