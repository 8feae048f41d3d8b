"""Host-side evolutionary search (AutoFormer's evolution, MaskTAS sec. 2.4).

Candidates outside the parameter / MAC window are rejected in closed form
before anything is scored, and no Arch is scored twice. The search is an
ask/tell loop whose whole state (including the NumPy Generator) is JSON, so a
search killed after any generation, or between `propose` and `tell`, resumes
with exactly the candidates and best Arch of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Container, Mapping, Sequence

import numpy as np

from masktas_jax.errors import MaskTASError
from masktas_jax.space import Arch, SearchSpace

STATE_VERSION = 1
# Mutation / crossover draws allowed per requested child (AutoFormer: 10).
TRIES_PER_CHILD = 10
# Partial sums `check_window` tracks per (embed dim, depth) before it gives up
# proving infeasibility (and lets sampling decide).
_MAX_REACHABLE = 200_000


class SearchError(MaskTASError, ValueError):
  """The search cannot run as configured (window, state or scores)."""


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


# -- operators ----------------------------------------------------------------


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


def mutate(arch: Arch, space: SearchSpace, rng: np.random.Generator,
           depth_prob: float, layer_prob: float, embed_prob: float) -> Arch:
  """AutoFormer's mutation. Returns a valid Arch of `space`.

  With `depth_prob` the depth is re-drawn: added layers are random, dropped
  ones are cut from the end. Then each layer's heads and MLP ratio are each
  re-drawn with `layer_prob`, and the embed dim with `embed_prob`. A re-draw
  is uniform over the choices, so it may keep the old value.
  """
  heads, ratios = list(arch.num_heads), list(arch.mlp_ratios)
  depth = arch.depth
  if rng.random() < depth_prob:
    depth = int(rng.choice(space.depths))
    for _ in range(len(heads), depth):
      heads.append(int(rng.choice(space.num_heads)))
      ratios.append(float(rng.choice(space.mlp_ratios)))
    heads, ratios = heads[:depth], ratios[:depth]
  for i in range(depth):
    if rng.random() < layer_prob:
      ratios[i] = float(rng.choice(space.mlp_ratios))
    if rng.random() < layer_prob:
      heads[i] = int(rng.choice(space.num_heads))
  embed = arch.embed_dim
  if rng.random() < embed_prob:
    embed = int(rng.choice(space.embed_dims))
  return space.validate(Arch(embed, depth, tuple(heads), tuple(ratios)))


def crossover(a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
  """AutoFormer's crossover of two parents of the same depth.

  Every gene (embed dim, each layer's heads, each layer's MLP ratio) comes
  from either parent with probability 1/2, independently. Archs of one space
  give an Arch of that space.
  """
  if a.depth != b.depth:
    raise SearchError(f'crossover: parents differ in depth ({a.depth} and '
                      f'{b.depth})')
  pick = lambda x, y: x if rng.random() < 0.5 else y
  return Arch(pick(a.embed_dim, b.embed_dim), a.depth,
              tuple(pick(x, y) for x, y in zip(a.num_heads, b.num_heads)),
              tuple(pick(x, y) for x, y in zip(a.mlp_ratios, b.mlp_ratios)))


# -- search state -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
  """Hyper-parameters, named as the `config.search` fields."""

  population: int = 50
  generations: int = 20
  parents: int = 10
  mutations: int = 25
  crossovers: int = 25
  layer_mutation_prob: float = 0.2
  depth_mutation_prob: float = 0.4
  embed_mutation_prob: float = 0.4
  # Random draws allowed per random candidate (window + dedupe rejections).
  max_tries: int = 10_000

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if f.name.endswith('_prob'):
        ok, need = 0 <= v <= 1, 'a probability'
      elif f.name in ('mutations', 'crossovers'):
        ok, need = v >= 0, '>= 0'
      else:
        ok, need = v > 0, 'positive'
      if not ok:
        raise SearchError(f'config.search.{f.name}: expected {need}, got {v}')


class Evolution:
  """AutoFormer's evolution as an ask/tell loop over host-side state.

  Generation 0 is `population` random Archs inside the window. Each later one
  is `mutations` mutants and `crossovers` children of the top-`parents` Archs
  scored so far (over all generations), topped up with random Archs to
  `population` when the bounded tries fall short. Every candidate is inside
  the window and new (never scored before, unique in its generation).

  Use `step(score_fn)`, or `propose()` then `tell(fitness)` when scoring is
  split up; `state_dict()` may be saved at any point in between.
  """

  def __init__(self, space: SearchSpace, window: Window,
               config: EvolutionConfig = EvolutionConfig(), seed: int = 0):
    check_window(space, window)
    self.space, self.window, self.config = space, window, config
    self.rng = np.random.default_rng(seed)
    self.generation = 0
    # One entry per scored candidate: arch (dict), fitness, params, macs,
    # generation.
    self.history: list[dict[str, Any]] = []
    self._archs: list[Arch] = []  # history's Archs, parsed
    self._parents: list[int] = []  # history indices, best first
    self._population: list[int] = []  # history indices of the last generation
    self._pending: list[Arch] | None = None  # proposed, not yet told
    self._visited: set[Arch] = set()

  @classmethod
  def from_config(cls, space: SearchSpace, search_config: Any,
                  seed: int) -> 'Evolution':
    """From `config.search` (population, generations, ..., window fields)."""
    fields = [f.name for f in dataclasses.fields(EvolutionConfig)
              if f.name != 'max_tries']
    config = EvolutionConfig(**{f: search_config[f] for f in fields})
    return cls(space, Window.from_config(search_config), config, seed)

  # -- views ----------------------------------------------------------------

  @property
  def done(self) -> bool:
    return self.generation >= self.config.generations

  def _scored(self, indices: list[int]) -> list[tuple[Arch, float]]:
    return [(self._archs[i], self.history[i]['fitness']) for i in indices]

  @property
  def parents(self) -> list[tuple[Arch, float]]:
    """Top-k (Arch, fitness) over everything scored so far, best first."""
    return self._scored(self._parents)

  @property
  def population(self) -> list[tuple[Arch, float]]:
    """(Arch, fitness) of the last scored generation, in proposal order."""
    return self._scored(self._population)

  @property
  def best(self) -> tuple[Arch, float]:
    if not self._parents:
      raise SearchError('Evolution.best: nothing has been scored yet')
    return self.parents[0]

  # -- ask / tell -------------------------------------------------------------

  def propose(self) -> list[Arch]:
    """The next generation's candidates (the same list until `tell`)."""
    if self._pending is not None:
      return list(self._pending)
    if self.done:
      raise SearchError(f'Evolution.propose: all {self.config.generations} '
                        'generations are done')
    c, rng = self.config, self.rng
    taken = set(self._visited)
    out: list[Arch] = []

    def offer(arch: Arch) -> None:
      if arch not in taken and self.window.contains(self.space, arch):
        taken.add(arch)
        out.append(arch)

    if self.generation > 0:
      parents = [self._archs[i] for i in self._parents]
      for _ in range(TRIES_PER_CHILD * c.mutations):
        if len(out) >= c.mutations:
          break
        offer(mutate(parents[rng.integers(len(parents))], self.space, rng,
                     c.depth_mutation_prob, c.layer_mutation_prob,
                     c.embed_mutation_prob))
      goal = len(out) + c.crossovers
      for _ in range(TRIES_PER_CHILD * c.crossovers):
        if len(out) >= goal:
          break
        i = int(rng.integers(len(parents)))
        mates = [p for j, p in enumerate(parents)
                 if j != i and p.depth == parents[i].depth]
        if mates:  # Else a wasted try, as in AutoFormer.
          offer(crossover(parents[i], mates[rng.integers(len(mates))], rng))
    while len(out) < c.population:
      try:
        out.append(random_candidate(self.space, self.window, rng, c.max_tries,
                                    taken))
      except SearchError:
        if self.generation == 0 and not out:
          raise
        break  # The window's Archs are (nearly) all scored: go on with fewer.
      taken.add(out[-1])
    self._pending = out
    return list(out)

  def tell(self, fitness: Sequence[float] | np.ndarray) -> None:
    """Records the fitness (higher is better) of the proposed candidates."""
    if self._pending is None:
      raise SearchError('Evolution.tell: call propose() first')
    fitness = np.asarray(fitness, np.float64)
    if fitness.shape != (len(self._pending),):
      raise SearchError(f'Evolution.tell: expected {len(self._pending)} '
                        f'fitness values, got shape {fitness.shape}')
    if not np.isfinite(fitness).all():
      raise SearchError(
          f'Evolution.tell: {int((~np.isfinite(fitness)).sum())} non-finite '
          'fitness values (a diverged supernet or teacher?)')
    start = len(self.history)
    for arch, f in zip(self._pending, fitness):
      self._add(arch, float(f), self.generation)
    self._population = list(range(start, len(self.history)))
    self._pending = None
    self.generation += 1
    self._rank(self._parents + self._population)

  def step(self, score_fn: Callable[[list[Arch]], np.ndarray]) -> None:
    """Runs one generation; `score_fn(archs) -> (len(archs),)` fitness."""
    archs = self.propose()
    self.tell(score_fn(archs) if archs else np.zeros((0,)))

  def _add(self, arch: Arch, fitness: float, generation: int) -> None:
    self._archs.append(arch)
    self._visited.add(arch)
    self.history.append({
        'arch': arch.to_dict(), 'fitness': fitness,
        'params': self.space.count_params(arch),
        'macs': self.space.count_macs(arch), 'generation': generation})

  def _rank(self, indices: list[int]) -> None:
    # Ties go to the earlier candidate, so the order is reproducible.
    fitness = lambda i: (-self.history[i]['fitness'], i)
    ranked = sorted(set(indices), key=fitness)
    self._parents = ranked[:self.config.parents]

  # -- checkpointing ----------------------------------------------------------

  def state_dict(self) -> dict[str, Any]:
    """Everything needed to resume, as plain JSON types."""
    return {
        'version': STATE_VERSION,
        'space': self.space.to_dict(),
        'window': dataclasses.asdict(self.window),
        'config': dataclasses.asdict(self.config),
        'generation': self.generation,
        'rng': self.rng.bit_generator.state,
        'history': [dict(h, arch=dict(h['arch'])) for h in self.history],
        'parents': list(self._parents),
        'population': list(self._population),
        'pending': (None if self._pending is None else
                    [a.to_dict() for a in self._pending]),
    }

  @classmethod
  def from_state_dict(cls, state: Mapping[str, Any],
                      space: SearchSpace) -> 'Evolution':
    """Restores a `state_dict()` (after a JSON round trip) for `space`."""
    if state.get('version') != STATE_VERSION:
      raise SearchError(f'search state: version {state.get("version")!r}, '
                        f'expected {STATE_VERSION}')
    if SearchSpace(**state['space']) != space:
      raise SearchError('search state: saved for a different search space '
                        f'({state["space"]}); start a new search workdir')
    self = cls(space, Window(**state['window']),
               EvolutionConfig(**state['config']))
    self.rng.bit_generator.state = state['rng']
    self.generation = int(state['generation'])
    for h in state['history']:
      self._add(Arch.from_dict(h['arch']), float(h['fitness']),
                int(h['generation']))
    self._parents = [int(i) for i in state['parents']]
    self._population = [int(i) for i in state['population']]
    pending = state['pending']
    self._pending = (None if pending is None else
                     [Arch.from_dict(a) for a in pending])
    return self
