"""mode=rank: how far to trust the label-free fitness on your data.

Samples N subnets inside the search window, scores each with the search's
label-free fitness and with a supervised yardstick (`config.rank.yardstick`)
on labelled images, and reports rank correlations (Kendall tau, Spearman
rho, each with a bootstrap 95% interval over the subnets) with a scatter
plot: `rank/rank.json`, `rank/scatter.png`. The same correlations for three
controls that cost nothing, parameter count, MACs and the student's own
relation-map entropy (no teacher), say whether the fitness is worth its
cost: it must beat them.

Yardsticks, all on the subnets' inherited weights:
* 'knn': top-1 of a weighted k-NN vote on frozen mean-pooled features;
* 'linear': top-1 of a linear probe on the same features, trained for the
  whole population in one compiled call;
* 'finetune': top-1 after each subnet is fine-tuned with the fine-tuning
  recipe for `rank.finetune_steps` steps (`rank/finetune/`, resumable).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from masktas_jax import config_lib, data, parallel
from masktas_jax.errors import MaskTASError
from masktas_jax.evaluation import evaluator, fitness, signals
from masktas_jax.evaluation.probe import linear_probe_top1
from masktas_jax.evaluation.ranking import correlation, kendall_within_strata
from masktas_jax.evaluation.window import check_window, sample_archs, Window
from masktas_jax.space import Arch
from masktas_jax.stage import Stage, SUPERNET, TEACHER_CHECKPOINT
from masktas_jax.storage import artifacts
from masktas_jax.training import finetuning, plots

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,g-bad-import-order



class RankError(MaskTASError, ValueError):
  """mode=rank cannot run as configured."""


def knn_top1(train_features: np.ndarray, train_labels: np.ndarray,
             query_features: np.ndarray, query_labels: np.ndarray, k: int,
             num_classes: int, temperature: float = 0.07) -> float:
  """Top-1 accuracy of a weighted k-NN vote on cosine similarity.

  Args:
    train_features: (N, D) labelled support set; train_labels (N,) ints.
    query_features: (M, D); query_labels (M,) ints.
    k: neighbours voting (at most N are used).
    temperature: each neighbour votes exp(similarity / temperature).
  """
  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

  similarity = unit(query_features) @ unit(train_features).T  # (M, N)
  k = min(k, similarity.shape[1])
  nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
  weights = np.exp(np.take_along_axis(similarity, nearest, 1) / temperature)
  votes = np.zeros((len(query_features), num_classes))
  np.add.at(votes, (np.arange(len(query_features))[:, None],
                    np.asarray(train_labels)[nearest]), weights)
  return float(np.mean(votes.argmax(1) == np.asarray(query_labels)))


class FeatureExtractor:
  """Mean-pooled patch features (P, B, max_embed) of many Archs at once, on
  whole images (no masking), in one compiled call per batch; `strategy` as
  the search's scorer (fitness.STRATEGIES; 'auto': 'map' on CPU)."""

  def __init__(self, encoder, space, capacity: int, strategy: str = 'auto',
               mesh=None):
    strategy = fitness.resolve_strategy(strategy)
    self.space, self.capacity = space, capacity
    graphdef, state = nnx.split(encoder)
    mode = fitness.ENCODE_MODES[strategy]

    def features(inputs, batch, _):
      state, archs = inputs
      encoder = nnx.merge(graphdef, state)

      def one(arch):
        return jnp.mean(encoder.encode(batch['image'], arch, mode=mode)[:, 1:],
                        1)

      # Gathered to every process: the probes run on the host.
      return (fitness.over_population(one, archs, strategy), batch['valid'],
              batch['label'])

    self.evaluator = evaluator.Evaluator(features, mesh)
    self.state = self.evaluator.place(nnx.to_pure_dict(state))

  def __call__(self, archs: Sequence[Arch],
               batches: Sequence[dict[str, np.ndarray]]):
    """((P, n, D) features, (n,) labels) over every valid image."""
    padded = list(archs) + [archs[-1]] * (self.capacity - len(archs))
    encoded = self.space.encode_batch(padded)
    feats, labels = [], []
    # One batch at a time: the (P, b, D) outputs of every batch at once
    # would not fit on a device at real sizes.
    for outputs in self.evaluator.map(batches, (self.state, encoded)):
      out, valid, label = jax.device_get(outputs)
      feats.append(np.asarray(out)[:len(archs), valid])
      labels.append(np.asarray(label)[valid])
    return np.concatenate(feats, axis=1), np.concatenate(labels)


def check_labels(config) -> None:
  """Raises RankError unless both splits the yardstick reads have labels."""
  for field in ('train_split', 'eval_split'):
    source = data.get_source(config.data, config.data[field],
                             config.space.image_size)
    if not source.num_classes:
      raise RankError(
          f'config.rank.yardstick: {config.rank.yardstick!r} needs labelled '
          f'images, and {config.data.name!r} split '
          f'{config.data[field]!r} (config.data.{field}) has none')


def finetune_dir(config, workdir: epath.Path, arch: Arch) -> epath.Path:
  """Where the 'finetune' yardstick fine-tunes `arch`: a workdir of its own
  (`finetuning.fine_tune` writes `finetune/` in it), keyed by steps and
  Arch."""
  return artifacts.rank_finetune_dir(workdir, config.rank.finetune_steps,
                                     arch.to_json())


def finetune_top1(config, workdir: epath.Path, archs: Sequence[Arch],
                  supernet: str) -> np.ndarray:
  """(P,) top-1 on data.eval_split of each Arch fine-tuned from `supernet`
  for `rank.finetune_steps` steps with config.finetune's recipe; each run
  lives in `workdir/rank/finetune/<steps>steps/<arch hash>/` and is read
  back when finished."""
  r = config.rank
  run = finetuning.Run(steps=r.finetune_steps,
                       eval_split=config.data.eval_split, supernet=supernet,
                       from_scratch=False)
  setup = config_lib.finetune_setup(config)
  accuracy = []
  for i, arch in enumerate(archs):
    parallel.log(f'rank: fine-tuning subnet {i + 1}/{len(archs)} '
                 f'({r.finetune_steps} steps)')
    accuracy.append(finetuning.fine_tune(
        setup, finetune_dir(config, workdir, arch), arch, run)['top1'])
  return np.asarray(accuracy)


def yardstick_top1(config, workdir: epath.Path, encoder, space,
                   archs: Sequence[Arch]) -> np.ndarray:
  """(P,) the supervised accuracy `config.rank.yardstick` of each Arch."""
  r, s = config.rank, config.search
  if r.yardstick == 'finetune':
    return finetune_top1(config, workdir, archs, str(
        artifacts.supernet_model(s.supernet, workdir)))
  extract = FeatureExtractor(encoder, space, capacity=len(archs),
                             strategy=s.scoring)
  support = data.eval_batches(config.data, config.data.train_split,
                              space.image_size, r.train_images, s.batch_size,
                              config.seed + 5, 'search.batch_size')
  query = data.eval_batches(config.data, config.data.eval_split,
                            space.image_size, r.eval_images, s.batch_size,
                            config.seed + 6, 'search.batch_size')
  train_feats, train_labels = extract(archs, support)
  query_feats, query_labels = extract(archs, query)
  num_classes = int(max(train_labels.max(), query_labels.max())) + 1
  if r.yardstick == 'linear':
    return linear_probe_top1(train_feats, train_labels, query_feats,
                             query_labels, num_classes)
  return np.array([knn_top1(train_feats[i], train_labels, query_feats[i],
                            query_labels, r.knn_k, num_classes)
                   for i in range(len(archs))])


YARDSTICK_LABELS = {'knn': 'k-NN top-1 (%)', 'linear': 'linear probe top-1 (%)',
                    'finetune': 'fine-tuned top-1 (%)'}


def scatter_plot(result: dict[str, Any], path: epath.PathLike) -> None:
  """The yardstick against the fitness and against each control."""
  archs = result['archs']
  accuracy = 100 * np.array([a['yardstick'] for a in archs])
  variant = result['fitness_variant']
  panels = [('fitness', f'label-free fitness ({variant})', 1.0,
             result['fitness'])] + [
                 (name, label, scale, result['controls'][name])
                 for name, label, scale in (
                     ('params', 'control: parameters (M)', 1e-6),
                     ('macs', 'control: GMACs per image', 1e-9),
                     ('student_entropy',
                      'control: student map entropy (no teacher)', 1.0))]
  fig, axes = plt.subplots(2, 2, figsize=(10, 8))
  for ax, (key, label, scale, corr) in zip(axes.ravel(), panels):
    ax.scatter([a[key] * scale for a in archs], accuracy, s=18,
               color='C0' if key == 'fitness' else 'C7')
    ax.set_xlabel(label)
    ax.set_ylabel(YARDSTICK_LABELS[result['yardstick']])
    lo, hi = corr['kendall_ci']
    ax.set_title(f'Kendall {corr["kendall_tau"]:.2f} [{lo:.2f}, {hi:.2f}], '
                 f'Spearman {corr["spearman_rho"]:.2f}', fontsize=10)
  fig.suptitle(f'{len(archs)} subnets of {result["window"]}')
  plots.save_figure(fig, path)


def check(config, workdir: epath.Path, earlier: frozenset[str]) -> None:
  """SearchError for a window no subnet fits; an error for a yardstick
  without labels."""
  del workdir, earlier
  check_window(config_lib.space_from_config(config),
               Window.from_config(config.search))
  check_labels(config)


def run(config, workdir: epath.Path) -> dict[str, Any]:
  """Scores `config.rank.num_archs` subnets both ways; returns rank.json."""
  r, s = config.rank, config.search
  space = config_lib.space_from_config(config)
  window = Window.from_config(s)
  check_window(space, window)
  check_labels(config)
  archs = sample_archs(space, window, r.num_archs, config.seed + 4)

  # --- label-free: every fitness variant, the search's among them ----------
  scorer = fitness.load_scorer(config_lib.scoring(config), workdir,
                               capacity=len(archs), names=signals.SIGNALS)
  warning = fitness.check_teacher_entropy(scorer.teacher_entropy)
  if warning:
    parallel.log(warning)
  values = {**scorer.signals(archs), **signals.size_values(space, archs)}
  # A fusion by its z-scores among these subnets.
  variants = {name: (signals.fuse(values, values, name)
                     if name in signals.FUSIONS else values[name])
              for name in signals.FITNESSES}
  scores, student_entropy = variants[s.fitness], values['student_entropy']

  # --- supervised yardstick and the free controls --------------------------
  accuracy = yardstick_top1(config, workdir, scorer.encoder, space, archs)
  params = [int(p) for p in values['params']]  # Exact: counts < 2**53.
  macs = [space.count_macs(a) for a in archs]
  result = {
      'num_archs': len(archs), 'yardstick': r.yardstick,
      'window': window.describe(),
      'relation': dataclasses.asdict(scorer.relation),
      'teacher_entropy': scorer.teacher_entropy,
      'fitness_images': scorer.num_images,
      'fitness_variant': s.fitness,
      'fitness': correlation(scores, accuracy, config.seed),
      'controls': {name: correlation(v, accuracy, config.seed)
                   for name, v in (('params', params), ('macs', macs),
                                   ('student_entropy', student_entropy))},
      'variants': {name: {
          **correlation(v, accuracy, config.seed),
          'within_params': kendall_within_strata(v, accuracy, params,
                                                 seed=config.seed)}
                   for name, v in variants.items()},
      'archs': [{'arch': a.to_dict(), 'params': p, 'macs': m,
                 'fitness': float(f), 'student_entropy': float(h),
                 'yardstick': float(acc),
                 'variants': {n: float(v[i]) for n, v in variants.items()}}
                for i, (a, p, m, f, h, acc) in enumerate(zip(
                    archs, params, macs, scores, student_entropy,
                    accuracy))]}
  if r.yardstick == 'knn':
    result['knn_k'] = r.knn_k
  out = artifacts.stage_dir(workdir, 'rank')
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    (out / artifacts.RANK).write_text(json.dumps(result, indent=2))
    scatter_plot(result, out / artifacts.SCATTER_PLOT)
  f = result['fitness']
  lo, hi = f['kendall_ci']
  controls = ', '.join(f'{k} {v["kendall_tau"]:.3f}'
                       for k, v in result['controls'].items())
  others = ', '.join(f'{k} {v["kendall_tau"]:.3f} (within params '
                     f'{v["within_params"]["kendall_tau"]:.3f})'
                     for k, v in result['variants'].items())
  parallel.log(f'rank: {len(archs)} subnets, Kendall tau {f["kendall_tau"]:.3f}'
               f' [{lo:.3f}, {hi:.3f}], Spearman rho {f["spearman_rho"]:.3f} '
               f'between the label-free fitness and {r.yardstick} top-1 '
               f'(controls: {controls}; every variant: {others}); wrote '
               f'{out / artifacts.RANK}')
  return result


# Not in the pipeline: it checks the fitness against a labelled yardstick.
STAGE = Stage('rank', run, check,
                    reads=(TEACHER_CHECKPOINT, SUPERNET),
                    data=True)
