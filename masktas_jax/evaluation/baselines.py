"""The Archs a user would pick without the search, as baselines for it.

* `largest`: the window's Arch with the most parameters (the trivial "take
  the biggest that fits");
* `uniform`: the window's largest Arch with one head count and one MLP ratio
  for every layer, as DeiT and ViT are written by hand.

Both exact: a layer's parameter and MAC counts depend only on its own
(heads, MLP ratio) at a given embed dim (`window.layer_costs`), so the
reachable cost sums are built layer by layer, as `window.check_window`
does, keeping one Arch per sum.
"""

from __future__ import annotations

import itertools

import numpy as np

from masktas_jax.errors import SearchError
from masktas_jax.evaluation.window import layer_costs, Window
from masktas_jax.space import Arch, SearchSpace


def _bounds(window: Window) -> tuple[np.ndarray, np.ndarray]:
  """[params, MACs] lower and upper bounds (2,), an open max as int64 max."""
  top = np.iinfo(np.int64).max
  return (np.array([window.min_params, window.min_macs], np.int64),
          np.array([window.max_params or top, window.max_macs or top],
                   np.int64))


def _best(candidates, space: SearchSpace, what: str,
          window: Window) -> Arch:
  """The candidate with the most parameters (then the fewest MACs)."""
  best = max(candidates, default=None, key=lambda a: (
      space.count_params(a), -space.count_macs(a)))
  if best is None:
    raise SearchError(f'config.search: no {what} Arch inside the window '
                      f'({window.describe()})')
  return best


def largest(space: SearchSpace, window: Window) -> Arch:
  """The Arch of `space` inside `window` with the most parameters (then the
  fewest MACs). Costs do not depend on the layers' order: of the Archs with
  the same (heads, MLP ratio) choices, the one returned has them in the
  order the layer-by-layer walk first reached their cost sum (earlier
  `space.layer_choices` first)."""
  lower, upper = _bounds(window)
  choices = space.layer_choices
  found = []
  for embed in space.embed_dims:
    fixed, per_layer = layer_costs(space, embed)
    # Reachable [params, MACs] sums of the layers so far -> one choice list.
    reach = {(0, 0): ()}
    for depth in range(1, space.max_depth + 1):
      grown = {}
      for cost, picks in reach.items():
        for k, step in enumerate(per_layer):
          total = (cost[0] + int(step[0]), cost[1] + int(step[1]))
          if (fixed + total <= upper).all():  # Costs only grow.
            grown.setdefault(total, picks + (k,))
      reach = grown
      if depth in space.depths:
        for cost, picks in reach.items():
          if (fixed + cost >= lower).all():
            found.append(Arch(embed, depth,
                              tuple(choices[k][0] for k in picks),
                              tuple(choices[k][1] for k in picks)))
  return _best(found, space, 'single', window)


def uniform(space: SearchSpace, window: Window) -> Arch:
  """The largest Arch inside `window` with the same (heads, MLP ratio) in
  every layer."""
  found = (Arch(e, d, (h,) * d, (r,) * d) for e, d, (h, r) in itertools.product(
      space.embed_dims, space.depths, space.layer_choices))
  return _best((a for a in found if window.contains(space, a)), space,
               'uniform (one head count and MLP ratio for every layer)',
               window)
