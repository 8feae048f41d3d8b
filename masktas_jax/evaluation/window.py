"""The search's hard bounds: a window on parameters and MACs, and sampling in it.

Arch counts are closed-form (`SearchSpace.count_params` / `count_macs`), so
whether a window holds any Arch at all is decided before anything is
trained or scored (`check_window`), and candidates outside it are rejected
without a model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Container

import numpy as np

from masktas_jax.errors import SearchError
from masktas_jax.space import Arch, SearchSpace

# Partial sums `check_window` tracks per (embed dim, depth) before it gives up
# proving infeasibility (and lets sampling decide).
_MAX_REACHABLE = 200_000


def _fmt_params(n: int) -> str:
  return f'{n / 1e6:.4g}M'


def _fmt_macs(n: int) -> str:
  return f'{n / 1e9:.4g}G'


def _span(lo: int, hi: int, fmt: Callable[[int], str]) -> str:
  if not hi:
    return f'>= {fmt(lo)}' if lo else 'any'
  return f'{fmt(lo)}-{fmt(hi)}' if lo else f'<= {fmt(hi)}'


@dataclasses.dataclass(frozen=True)
class Window:
  """Hard bounds on absolute parameter and MAC counts; max 0 = unbounded."""

  min_params: int = 0
  max_params: int = 0
  min_macs: int = 0
  max_macs: int = 0

  def __post_init__(self):
    for lo, hi in (('min_params', 'max_params'), ('min_macs', 'max_macs')):
      a, b = getattr(self, lo), getattr(self, hi)
      if a < 0 or b < 0 or (b and b < a):
        raise SearchError(f'Window.{lo}/{hi}: need 0 <= min <= max '
                          f'(max 0 = unbounded), got {a} and {b}')
      object.__setattr__(self, lo, int(a))
      object.__setattr__(self, hi, int(b))

  @classmethod
  def from_config(cls, search_config: Any) -> 'Window':
    """From `config.search`: `*_params_m` in millions, `*_gmacs` in G."""
    c = search_config
    return cls(round(c.min_params_m * 1e6), round(c.max_params_m * 1e6),
               round(c.min_gmacs * 1e9), round(c.max_gmacs * 1e9))

  def params_ok(self, n: int) -> bool:
    return self.min_params <= n <= (self.max_params or n)

  def macs_ok(self, n: int) -> bool:
    return self.min_macs <= n <= (self.max_macs or n)

  def contains(self, space: SearchSpace, arch: Arch) -> bool:
    """Whether `arch` meets both constraints (closed form, nothing scored)."""
    return (self.params_ok(space.count_params(arch)) and
            self.macs_ok(space.count_macs(arch)))

  def describe(self) -> str:
    return (f'params {_span(self.min_params, self.max_params, _fmt_params)}, '
            f'MACs {_span(self.min_macs, self.max_macs, _fmt_macs)}')


def layer_costs(space: SearchSpace,
                embed: int) -> tuple[np.ndarray, np.ndarray]:
  """(fixed (2,), per-choice (K, 2)) [params, MACs] at one embed dim.

  Measured from `count_params` / `count_macs` rather than re-derived, so the
  window check follows those formulas: both sum per-layer terms, so a layer's
  cost is the difference between a depth-2 and a depth-1 Arch.
  """
  def cost(arch):
    return np.array([space.count_params(arch), space.count_macs(arch)],
                    np.int64)
  h0, r0 = space.layer_choices[0]
  one = cost(Arch(embed, 1, (h0,), (r0,)))
  per_layer = np.stack([
      cost(Arch(embed, 2, (h0, h), (r0, r))) - one
      for h, r in space.layer_choices])
  return one - per_layer[0], per_layer


def _fits(space: SearchSpace, lower: np.ndarray, upper: np.ndarray) -> bool:
  """Whether some Arch has lower <= [params, MACs] <= upper (elementwise).

  The set of reachable per-layer cost sums is built layer by layer for each
  embed dim. Costs only grow, so partial sums that are already over `upper`,
  or that cannot reach `lower` even with the costliest remaining layers, are
  dropped; sums of layer choices also collide a lot. Should the set still
  grow past `_MAX_REACHABLE`, this answers True and sampling decides.
  """
  dims = np.flatnonzero((lower > 0) | (upper > 0))  # Constrained dimensions.
  if not len(dims):
    return True
  upper = np.where(upper > 0, upper, np.iinfo(np.int64).max)[dims]
  lower = lower[dims]
  for embed in space.embed_dims:
    fixed, per_layer = (c[..., dims] for c in layer_costs(space, embed))
    most = per_layer.max(0)
    reach = np.zeros((1, len(dims)), np.int64)
    for depth in range(1, space.max_depth + 1):
      reach = (reach[:, None, :] + per_layer[None]).reshape(-1, len(dims))
      total = fixed + reach
      left = space.max_depth - depth
      reach = reach[((total <= upper) & (total + left * most >= lower)).all(-1)]
      if not len(reach):
        break
      # Unique rows via one lexicographic sort (faster than unique(axis=0)).
      reach = reach[np.lexsort(reach.T[::-1])]
      reach = reach[np.r_[True, (np.diff(reach, axis=0) != 0).any(-1)]]
      if len(reach) > _MAX_REACHABLE:
        return True
      if depth in space.depths:
        if (fixed + reach >= lower).all(-1).any():
          return True  # The pruning already enforced `upper`.
  return False


def check_window(space: SearchSpace, window: Window) -> None:
  """Raises SearchError, naming the config fields, if no Arch fits `window`.

  Exact and fast (milliseconds for AutoFormer's spaces): `min_arch` and
  `max_arch` bound the space since costs grow with every choice; inside those
  bounds `_fits` searches the reachable (params, MACs) sums.
  """
  w = window
  lo_arch, hi_arch = space.min_arch(), space.max_arch()
  p_lo, p_hi = space.count_params(lo_arch), space.count_params(hi_arch)
  m_lo, m_hi = space.count_macs(lo_arch), space.count_macs(hi_arch)
  spans = (f'(the space spans {_fmt_params(p_lo)}-{_fmt_params(p_hi)} '
           f'parameters, {_fmt_macs(m_lo)}-{_fmt_macs(m_hi)} MACs)')
  for field, bad, what in (
      ('max_params_m', w.max_params and w.max_params < p_lo,
       f'at most {_fmt_params(w.max_params)} parameters'),
      ('min_params_m', w.min_params > p_hi,
       f'at least {_fmt_params(w.min_params)} parameters'),
      ('max_gmacs', w.max_macs and w.max_macs < m_lo,
       f'at most {_fmt_macs(w.max_macs)} MACs'),
      ('min_gmacs', w.min_macs > m_hi,
       f'at least {_fmt_macs(w.min_macs)} MACs')):
    if bad:
      raise SearchError(
          f'config.search.{field}: no Arch of the space has {what} {spans}')
  lower = np.array([w.min_params, w.min_macs], np.int64)
  upper = np.array([w.max_params, w.max_macs], np.int64)
  if _fits(space, lower, upper):
    return
  params = f'{_span(w.min_params, w.max_params, _fmt_params)} parameters'
  macs = f'{_span(w.min_macs, w.max_macs, _fmt_macs)} MACs'
  # Name the constraint to blame: params alone, MACs alone, or the pair.
  if not _fits(space, lower * [1, 0], upper * [1, 0]):
    field, what = 'min_params_m/max_params_m', params
  elif not _fits(space, lower * [0, 1], upper * [0, 1]):
    field, what = 'min_gmacs/max_gmacs', macs
  else:
    field = '*_params_m and config.search.*_gmacs'
    what = f'both {params} and {macs}'
  raise SearchError(
      f'config.search.{field}: no Arch of the space has {what} {spans}')


def random_candidate(space: SearchSpace, window: Window,
                     rng: np.random.Generator, max_tries: int = 10_000,
                     exclude: Container[Arch] = frozenset()) -> Arch:
  """A uniform `space.sample` inside `window` and not in `exclude`.

  Rejection sampling; raises SearchError after `max_tries` draws.
  """
  for _ in range(max_tries):
    arch = space.sample(rng)
    if arch not in exclude and window.contains(space, arch):
      return arch
  raise SearchError(
      f'config.search: no new Arch inside the window ({window.describe()}) in '
      f'{max_tries} random draws; widen the window or enlarge the space')


def sample_archs(space, window: Window, count: int, seed: int) -> list[Arch]:
  """`count` distinct random Archs inside `window` (fewer if it holds fewer)."""
  rng, archs, seen = np.random.default_rng(seed), [], set()
  for _ in range(count):
    try:
      arch = random_candidate(space, window, rng, exclude=frozenset(seen))
    except SearchError:
      break
    seen.add(arch)
    archs.append(arch)
  return archs
