"""mode=rank: how far to trust the label-free fitness on your data.

Samples N subnets inside the search window, scores each with the search's
label-free fitness and with a supervised yardstick (k-NN top-1 accuracy of
the subnet's features with its inherited weights, on labelled images), and
reports the rank correlations (Kendall tau, Spearman rho) with a scatter
plot: `rank/rank.json`, `rank/scatter.png`.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from scipy import stats

from masktas_jax import config_lib, data, parallel, report, search
from masktas_jax.evolution import Window, check_window, random_candidate
from masktas_jax.space import Arch

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,g-bad-import-order


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
  whole images (no masking), through the vmapped `mask` path."""

  def __init__(self, encoder, space, capacity: int, mesh=None):
    self.space, self.capacity = space, capacity
    self.mesh = mesh or parallel.make_mesh()
    rep = parallel.replicated(self.mesh)
    self.graphdef, state = nnx.split(encoder)
    self.state = jax.device_put(nnx.to_pure_dict(state), rep)

    def features(state, archs, images, valid, labels):
      encoder = nnx.merge(self.graphdef, state)
      feats = jax.vmap(lambda arch: jnp.mean(
          encoder.encode(images, arch, mode='mask')[:, 1:], axis=1))(archs)
      return feats, valid, labels

    # Gathered to every process: the k-NN runs on the host.
    sharded = parallel.batch_sharded(self.mesh)
    self._features = jax.jit(features, in_shardings=(
        rep, rep, sharded, sharded, sharded), out_shardings=rep)

  def __call__(self, archs: Sequence[Arch],
               batches: Sequence[dict[str, np.ndarray]]):
    """((P, n, D) features, (n,) labels) over every valid image."""
    padded = list(archs) + [archs[-1]] * (self.capacity - len(archs))
    encoded = self.space.encode_batch(padded)
    feats, labels = [], []
    for batch in batches:
      g = parallel.global_batch(batch, self.mesh)
      out, valid, label = jax.device_get(self._features(
          self.state, encoded, g['image'], g['valid'], g['label']))
      feats.append(np.asarray(out)[:len(archs), valid])
      labels.append(np.asarray(label)[valid])
    return np.concatenate(feats, axis=1), np.concatenate(labels)


def sample_archs(space, window: Window, count: int, seed: int) -> list[Arch]:
  """`count` distinct random Archs inside `window` (fewer if it holds fewer)."""
  rng, archs, seen = np.random.default_rng(seed), [], set()
  for _ in range(count):
    try:
      arch = random_candidate(space, window, rng, exclude=frozenset(seen))
    except search.SearchError:
      break
    seen.add(arch)
    archs.append(arch)
  return archs


def run(config, workdir: epath.Path) -> dict[str, Any]:
  """Scores `config.rank.num_archs` subnets both ways; returns rank.json."""
  r, s = config.rank, config.search
  space = config_lib.space_from_config(config)
  window = Window.from_config(s)
  check_window(space, window)
  archs = sample_archs(space, window, r.num_archs, config.seed + 4)
  encoder, teacher = search.load_models(config, workdir)

  # --- label-free: exactly the search's fitness ----------------------------
  split = s.eval_split or config.data.train_split
  scorer = search.PopulationScorer(
      encoder, teacher, space,
      search.eval_batches(config, split, s.eval_images, s.batch_size,
                          config.seed + 2),
      tau=s.tau, mask_ratio=config.supernet.mask_ratio, seed=config.seed + 3,
      capacity=len(archs), strategy=s.scoring)
  fitness = scorer(archs)

  # --- supervised yardstick: k-NN on the inherited features ----------------
  extract = FeatureExtractor(encoder, space, capacity=len(archs))
  support = search.eval_batches(config, config.data.train_split,
                                r.train_images, s.batch_size, config.seed + 5)
  query = search.eval_batches(config, config.data.eval_split, r.eval_images,
                              s.batch_size, config.seed + 6)
  train_feats, train_labels = extract(archs, support)
  query_feats, query_labels = extract(archs, query)
  if min(train_labels.min(), query_labels.min()) < 0:
    raise data.DataError(
        f'config.data.name: mode=rank needs labelled images, and '
        f'{config.data.name!r} has unlabelled ones')
  num_classes = int(max(train_labels.max(), query_labels.max())) + 1
  accuracy = np.array([knn_top1(train_feats[i], train_labels, query_feats[i],
                                query_labels, r.knn_k, num_classes)
                       for i in range(len(archs))])

  tau = stats.kendalltau(fitness, accuracy).statistic
  rho = stats.spearmanr(fitness, accuracy).statistic
  result = {
      'num_archs': len(archs), 'kendall_tau': float(tau),
      'spearman_rho': float(rho), 'knn_k': r.knn_k,
      'fitness_images': scorer.num_images, 'support_images': len(train_labels),
      'query_images': len(query_labels), 'window': window.describe(),
      'archs': [{'arch': a.to_dict(), 'params': space.count_params(a),
                 'fitness': float(f), 'knn_top1': float(acc)}
                for a, f, acc in zip(archs, fitness, accuracy)]}
  out = workdir / 'rank'
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    (out / 'rank.json').write_text(json.dumps(result, indent=2))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(fitness, 100 * accuracy, s=18)
    ax.set_xlabel('label-free fitness (relation consistency)')
    ax.set_ylabel(f'{r.knn_k}-NN top-1 (%)')
    ax.set_title(f'{len(archs)} subnets: Kendall tau {tau:.2f}, '
                 f'Spearman rho {rho:.2f}')
    report.save_figure(fig, out / 'scatter.png')
  parallel.log(f'rank: {len(archs)} subnets, Kendall tau {tau:.3f}, '
               f'Spearman rho {rho:.3f} between the label-free fitness and '
               f'{r.knn_k}-NN top-1; wrote {out / "rank.json"}')
  return result
