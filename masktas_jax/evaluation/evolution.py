"""Host-side evolutionary search (AutoFormer's evolution, MaskTAS sec. 2.4).

Candidates outside the parameter / MAC window are rejected in closed form
before anything is scored, and no Arch is scored twice. The search is an
ask/tell loop whose whole state (including the NumPy Generator) is JSON, so a
search killed after any generation, or between `propose` and `tell`, resumes
with exactly the candidates and best Arch of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from masktas_jax.errors import SearchError
from masktas_jax.evaluation.window import check_window, random_candidate, Window
from masktas_jax.space import Arch, SearchSpace

STATE_VERSION = 1
# Mutation / crossover draws allowed per requested child (AutoFormer: 10).
TRIES_PER_CHILD = 10


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
