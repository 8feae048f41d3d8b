"""The no-search baselines: the largest and the largest uniform Arch of a
window, against enumerating every Arch of a small space."""

import itertools

import numpy as np
import pytest

from masktas_jax.errors import SearchError
from masktas_jax.evaluation import baselines
from masktas_jax.evaluation.window import Window
from masktas_jax.space import Arch, SearchSpace

SPACE = SearchSpace(embed_dims=(32, 48, 64), depths=(2, 3, 4),
                    num_heads=(1, 2, 3), mlp_ratios=(2.0, 3.0, 4.0),
                    image_size=16, patch_size=4, num_classes=10)


def _every_arch():
  """(arch, params, MACs) of all 22,113 Archs of SPACE."""
  out = []
  for e, d in itertools.product(SPACE.embed_dims, SPACE.depths):
    for layers in itertools.product(SPACE.layer_choices, repeat=d):
      a = Arch(e, d, tuple(h for h, _ in layers), tuple(r for _, r in layers))
      out.append((a, SPACE.count_params(a), SPACE.count_macs(a)))
  return out


EVERY = _every_arch()


def _windows():
  params = np.array([p for _, p, _ in EVERY])
  macs = np.array([m for _, _, m in EVERY])
  q = lambda v, f: int(np.quantile(v, f))
  return [Window(q(params, .3), q(params, .6)),
          Window(0, q(params, .2)),
          Window(q(params, .4), 0),
          Window(q(params, .2), q(params, .8), 0, q(macs, .5)),
          Window(0, 0, q(macs, .3), q(macs, .35))]


def _key(p, m):
  return (p, -m)  # Most parameters, then fewest MACs.


@pytest.mark.parametrize('window', _windows())
def test_largest_is_the_enumerated_maximum(window):
  inside = [(p, m) for a, p, m in EVERY if window.contains(SPACE, a)]
  got = baselines.largest(SPACE, window)
  assert window.contains(SPACE, got)
  assert _key(SPACE.count_params(got), SPACE.count_macs(got)) == max(
      _key(p, m) for p, m in inside)


@pytest.mark.parametrize('window', _windows())
def test_uniform_is_the_largest_hand_written_arch(window):
  inside = [(p, m) for a, p, m in EVERY if window.contains(SPACE, a) and
            len(set(a.num_heads)) == 1 and len(set(a.mlp_ratios)) == 1]
  got = baselines.uniform(SPACE, window)
  assert len(set(got.num_heads)) == 1 and len(set(got.mlp_ratios)) == 1
  assert window.contains(SPACE, got)
  assert _key(SPACE.count_params(got), SPACE.count_macs(got)) == max(
      _key(p, m) for p, m in inside)
  # Never larger than the unconstrained largest.
  assert SPACE.count_params(got) <= SPACE.count_params(
      baselines.largest(SPACE, window))


def test_no_arch_in_the_window_is_one_line():
  p = SPACE.count_params(SPACE.max_arch())
  for fn, what in ((baselines.largest, 'no single Arch inside the window'),
                   (baselines.uniform, 'no uniform')):
    with pytest.raises(SearchError, match=what) as error:
      fn(SPACE, Window(p + 1, 0))
    assert '\n' not in str(error.value)


def test_a_window_only_mixed_archs_fit_has_no_uniform_one():
  # Exactly the cost of an Arch whose layers differ: no uniform one fits.
  # Layer cost sums that no Arch with one (heads, ratio) pair has.
  mixed = Arch(48, 2, (1, 2), (2.0, 3.0))
  p, m = SPACE.count_params(mixed), SPACE.count_macs(mixed)
  window = Window(p, p, m, m)
  assert not any(window.contains(SPACE, a) and len(set(a.num_heads)) == 1
                 and len(set(a.mlp_ratios)) == 1 for a, _, _ in EVERY)
  assert window.contains(SPACE, baselines.largest(SPACE, window))
  with pytest.raises(SearchError, match='no uniform'):
    baselines.uniform(SPACE, window)
