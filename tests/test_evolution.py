"""Evolutionary search: window check, operators, ask/tell state, resume."""

import itertools
import json
import time

import numpy as np
import pytest

from masktas_jax import config_lib
from masktas_jax.errors import SearchError
from masktas_jax.evaluation.evolution import crossover, Evolution
from masktas_jax.evaluation.evolution import EvolutionConfig, mutate
from masktas_jax.evaluation.window import check_window, random_candidate, Window
from masktas_jax.space import Arch, SearchSpace

SPACE = SearchSpace(embed_dims=(32, 48, 64), depths=(2, 3, 4),
                    num_heads=(1, 2, 3), mlp_ratios=(2.0, 3.0, 4.0),
                    image_size=16, patch_size=4, num_classes=10)
BASE = SearchSpace(embed_dims=(528, 576, 624), depths=(14, 15, 16),
                   num_heads=(9, 10), mlp_ratios=(3.0, 3.5, 4.0))
CONFIG = EvolutionConfig(population=12, generations=5, parents=4, mutations=6,
                         crossovers=6)


def _window(space, lo_q=0.3, hi_q=0.7):
  """A params window between two quantiles of random Archs."""
  rng = np.random.default_rng(0)
  p = [space.count_params(space.sample(rng)) for _ in range(300)]
  return Window(int(np.quantile(p, lo_q)), int(np.quantile(p, hi_q)))


def _score_fn(space, calls=None):
  """A fixed random projection of the encoded Arch (cheap, deterministic)."""
  proj = {}

  def score(archs):
    if calls is not None:
      calls.append(list(archs))
    enc = space.encode_batch(archs)
    feats = np.concatenate(
        [np.asarray(v, np.float64).reshape(len(archs), -1)
         for _, v in sorted(enc.items())], axis=1)
    if 'w' not in proj:
      proj['w'] = np.random.default_rng(123).normal(size=feats.shape[1])
    return feats @ proj['w']
  return score


def _run(seed, window=None, config=CONFIG, space=SPACE):
  evo = Evolution(space, window or _window(space), config, seed)
  score = _score_fn(space)
  best = []
  while not evo.done:
    evo.step(score)
    best.append(evo.best[1])
  return evo, best


def _enumerate(space):
  for e, d in itertools.product(space.embed_dims, space.depths):
    for layers in itertools.product(space.layer_choices, repeat=d):
      yield Arch(e, d, tuple(h for h, _ in layers), tuple(r for _, r in layers))


# -- window -------------------------------------------------------------------


def test_window_from_config_and_contains():
  c = config_lib.base_config().search
  c.min_params_m, c.max_params_m, c.max_gmacs = 5.3, 6.0, 1.25
  w = Window.from_config(c)
  assert w == Window(5_300_000, 6_000_000, 0, 1_250_000_000)
  assert Window().contains(SPACE, SPACE.max_arch())
  a = SPACE.sample(np.random.default_rng(0))
  p, m = SPACE.count_params(a), SPACE.count_macs(a)
  assert Window(p, p, m, m).contains(SPACE, a)
  assert not Window(p + 1, 0).contains(SPACE, a)
  assert not Window(0, 0, 0, m - 1).contains(SPACE, a)
  with pytest.raises(SearchError, match='min_params/max_params'):
    Window(10, 5)


@pytest.mark.parametrize('window, field', [
    (lambda lo, hi: Window(0, lo[0] - 1), 'max_params_m: no Arch .* at most'),
    (lambda lo, hi: Window(hi[0] + 1, 0), 'min_params_m: no Arch .* at least'),
    (lambda lo, hi: Window(0, 0, 0, lo[1] - 1), 'max_gmacs: no Arch'),
    (lambda lo, hi: Window(0, 0, hi[1] + 1, 0), 'min_gmacs: no Arch'),
])
def test_check_window_rejects_windows_outside_the_space(window, field):
  lo = [f(SPACE.min_arch()) for f in (SPACE.count_params, SPACE.count_macs)]
  hi = [f(SPACE.max_arch()) for f in (SPACE.count_params, SPACE.count_macs)]
  with pytest.raises(SearchError, match=f'config.search.{field}.*space spans'):
    check_window(SPACE, window(lo, hi))
  with pytest.raises(SearchError):
    Evolution(SPACE, window(lo, hi), CONFIG)


def test_check_window_rejects_gaps_inside_the_range():
  # Two embed dims, one layer choice: two Archs with a gap between them.
  space = SearchSpace((32, 64), (1,), (1,), (2.0,), image_size=8, patch_size=4)
  small, large = space.min_arch(), space.max_arch()
  ps, pl = space.count_params(small), space.count_params(large)
  ms, ml = space.count_macs(small), space.count_macs(large)
  with pytest.raises(SearchError, match='min_params_m/max_params_m: no Arch'):
    check_window(space, Window(ps + 1, pl - 1))
  with pytest.raises(SearchError, match='min_gmacs/max_gmacs'):
    check_window(space, Window(0, 0, ms + 1, ml - 1))
  # Each constraint alone is met, but by different Archs.
  with pytest.raises(SearchError, match='_params_m and .*_gmacs: .* both'):
    check_window(space, Window(0, ps, ml, 0))
  check_window(space, Window(ps, ps, ms, ms))
  check_window(space, Window(ps, pl))


def test_check_window_is_exact_against_enumeration():
  space = SearchSpace((16, 24), (1, 2, 3), (1, 2), (1.0, 3.0), image_size=8,
                      patch_size=4, num_classes=3)
  costs = np.array([(space.count_params(a), space.count_macs(a))
                    for a in _enumerate(space)])
  rng = np.random.default_rng(0)
  lo, hi = costs.min(0), costs.max(0)
  outcomes = set()
  for _ in range(300):
    p = np.sort(rng.integers(lo[0], hi[0] + 1, 2))
    m = np.sort(rng.integers(lo[1], hi[1] + 1, 2))
    if rng.random() < 0.5:  # Narrow windows find the gaps.
      p[1] = p[0] + rng.integers(0, 200)
      m[1] = m[0] + rng.integers(0, 20_000)
    w = Window(*p, *m) if rng.random() < 0.7 else Window(*p)
    fits = any(w.params_ok(c[0]) and w.macs_ok(c[1]) for c in costs)
    try:
      check_window(space, w)
      outcomes.add('pass')
      assert fits, w
    except SearchError:
      outcomes.add('raise')
      assert not fits, w
  assert outcomes == {'pass', 'raise'}


def test_check_window_accepts_every_sampled_arch_and_is_fast():
  rng = np.random.default_rng(1)
  for _ in range(5):  # The tightest window there is, around a random Arch.
    a = BASE.sample(rng)
    p, m = BASE.count_params(a), BASE.count_macs(a)
    check_window(BASE, Window(p, p, m, m))
  start = time.perf_counter()
  check_window(BASE, Window(52_000_000, 54_000_000, 0, 11_000_000_000))
  with pytest.raises(SearchError):
    check_window(BASE, Window(52_000_000, 54_000_000, 0, 9_000_000_000))
  assert time.perf_counter() - start < 2.0  # ~0.05 s; loose for shared CPUs.


# -- operators ----------------------------------------------------------------


def test_random_candidate_stays_in_the_window():
  w = _window(SPACE, 0.45, 0.55)
  rng = np.random.default_rng(0)
  for _ in range(50):
    a = random_candidate(SPACE, w, rng)
    assert SPACE.contains(a) and w.contains(SPACE, a)
  only = SPACE.min_arch()
  p = SPACE.count_params(only)
  with pytest.raises(SearchError, match='no new Arch inside the window'):
    random_candidate(SPACE, Window(p, p), rng, max_tries=100, exclude={only})


def test_mutate_output_is_valid_and_probabilities_act():
  rng = np.random.default_rng(0)
  changed, depths = 0, set()
  for _ in range(300):
    a = SPACE.sample(rng)
    same = mutate(a, SPACE, rng, 0.0, 0.0, 0.0)
    assert same == a
    m = mutate(a, SPACE, rng, 1.0, 1.0, 1.0)
    assert SPACE.contains(m)
    changed += m != a
    depths.add(m.depth)
    half = mutate(a, SPACE, rng, 0.4, 0.2, 0.4)
    assert SPACE.contains(half)
    # Without a depth change, the layers are edited in place.
    layer_only = mutate(a, SPACE, rng, 0.0, 0.5, 0.0)
    assert layer_only.depth == a.depth and layer_only.embed_dim == a.embed_dim
  assert changed >= 295 and depths == set(SPACE.depths)


def test_crossover_mixes_genes_of_equal_depth_parents():
  rng = np.random.default_rng(0)
  a = Arch(32, 3, (1, 1, 1), (2.0, 2.0, 2.0))
  b = Arch(64, 3, (3, 3, 3), (4.0, 4.0, 4.0))
  children = [crossover(a, b, rng) for _ in range(200)]
  for c in children:
    assert SPACE.contains(c) and c.depth == 3
    assert c.embed_dim in (32, 64)
    assert all(h in (1, 3) for h in c.num_heads)
    assert all(r in (2.0, 4.0) for r in c.mlp_ratios)
  # Genes are drawn independently, so mixed children appear.
  assert len(set(children)) > 50
  assert any(len(set(c.num_heads)) == 2 for c in children)
  assert crossover(a, a, rng) == a
  with pytest.raises(SearchError, match='depth'):
    crossover(a, SPACE.max_arch(), rng)


# -- search -------------------------------------------------------------------


def test_every_candidate_is_new_valid_and_in_the_window():
  calls = []
  w = _window(SPACE)
  evo = Evolution(SPACE, w, CONFIG, seed=0)
  score = _score_fn(SPACE, calls)
  while not evo.done:
    evo.step(score)
  assert evo.generation == CONFIG.generations == len(calls)
  scored = [a for call in calls for a in call]
  assert len(calls[0]) == CONFIG.population
  assert all(len(c) == CONFIG.population for c in calls[1:])
  assert len(set(scored)) == len(scored) == len(evo.history)
  for a, h in zip(scored, evo.history):
    assert SPACE.contains(a) and w.contains(SPACE, a)
    assert Arch.from_dict(h['arch']) == a
    assert h['params'] == SPACE.count_params(a)
    assert h['macs'] == SPACE.count_macs(a)
  gens = [h['generation'] for h in evo.history]
  assert gens == sorted(gens) and set(gens) == set(range(CONFIG.generations))
  fitness = np.array([h['fitness'] for h in evo.history])
  # Parents are the top-k over everything scored.
  assert [f for _, f in evo.parents] == sorted(fitness)[::-1][:CONFIG.parents]
  assert evo.best[1] == fitness.max()
  with pytest.raises(SearchError, match='done'):
    evo.step(score)


def test_later_generations_descend_from_parents():
  evo = Evolution(SPACE, _window(SPACE), CONFIG, seed=0)
  score = _score_fn(SPACE)
  evo.step(score)
  parents = {a for a, _ in evo.parents}
  children = evo.propose()
  # Mutants keep most genes of some parent; random Archs rarely do.
  def closeness(c):
    return max(sum(x == y for x, y in zip(c.num_heads, p.num_heads)) +
               (c.embed_dim == p.embed_dim) for p in parents)
  near = np.mean([closeness(c) for c in children[:CONFIG.mutations]])
  rng = np.random.default_rng(5)
  far = np.mean([closeness(SPACE.sample(rng)) for _ in range(200)])
  assert near > far


def test_best_fitness_never_decreases():
  _, best = _run(0)
  assert len(best) == CONFIG.generations
  assert all(b1 >= b0 for b0, b1 in zip(best, best[1:]))
  assert best[-1] > best[0]  # The search improves on random Archs.


def test_seeded_runs_repeat_and_differ_across_seeds():
  a, _ = _run(0)
  b, _ = _run(0)
  c, _ = _run(1)
  assert a.history == b.history and a.best == b.best
  assert a.history != c.history


@pytest.mark.parametrize('stop_after, mid_generation', [
    (0, False), (1, False), (3, False), (2, True)])
def test_resume_from_json_state_matches_an_uninterrupted_run(
    stop_after, mid_generation):
  full, _ = _run(7)
  evo = Evolution(SPACE, _window(SPACE), CONFIG, seed=7)
  score = _score_fn(SPACE)
  for _ in range(stop_after):
    evo.step(score)
  if mid_generation:  # Killed while the proposed candidates were scored.
    proposed = evo.propose()
  state = json.loads(json.dumps(evo.state_dict()))
  del evo
  resumed = Evolution.from_state_dict(state, SPACE)
  if mid_generation:
    assert resumed.propose() == proposed
  while not resumed.done:
    resumed.step(score)
  assert resumed.history == full.history
  assert resumed.best == full.best
  assert resumed.state_dict() == full.state_dict()


def test_state_for_another_space_and_bad_scores_are_rejected():
  evo = Evolution(SPACE, _window(SPACE), CONFIG, seed=0)
  evo.step(_score_fn(SPACE))
  other = SearchSpace(**{**SPACE.to_dict(), 'depths': (2, 3)})
  with pytest.raises(SearchError, match='different search space'):
    Evolution.from_state_dict(evo.state_dict(), other)
  n = len(evo.propose())
  with pytest.raises(SearchError, match=f'expected {n} fitness'):
    evo.tell(np.zeros(n + 1))
  with pytest.raises(SearchError, match='non-finite'):
    evo.tell(np.full(n, np.nan))
  evo.tell(np.zeros(n))  # The pending candidates are still there to score.
  assert evo.generation == 2


def test_small_window_exhausts_gracefully():
  # A window holding fewer Archs than a population: each is scored once.
  space = SearchSpace((16, 24), (1, 2), (1, 2), (1.0, 3.0), image_size=8,
                      patch_size=4)
  total = space.num_archs()
  config = EvolutionConfig(population=30, generations=4, parents=5,
                           mutations=10, crossovers=10, max_tries=2000)
  evo, best = _run(0, Window(), config, space)
  assert len(evo.history) == total
  assert len({json.dumps(h['arch']) for h in evo.history}) == total
  assert len(best) == 4


def test_from_config_reads_the_search_fields():
  c = config_lib.base_config().search
  c.population, c.generations, c.parents = 8, 2, 3
  c.mutations, c.crossovers = 4, 4
  evo = Evolution.from_config(SPACE, c, seed=0)
  assert evo.config.population == 8 and evo.config.parents == 3
  assert evo.window == Window()
  evo.step(_score_fn(SPACE))
  assert len(evo.history) == 8
