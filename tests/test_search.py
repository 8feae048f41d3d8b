"""mode=search: the vectorised scorer and the resumable evolution stage."""

import json

import jax
import numpy as np
import pytest
from etils import epath
from flax import nnx

from masktas_jax import config_lib, rank, search, supernet_train, teacher
from masktas_jax.evolution import SearchError, Window
from masktas_jax.models.mae import MAE
from test_supernet_train import _config

SMALL = {'space.embed_dims': (32, 48), 'space.depths': (2, 3),
         'space.num_heads': (1, 2), 'space.mlp_ratios': (2.0, 4.0),
         'teacher.embed_dim': 64, 'teacher.depth': 2, 'teacher.num_heads': 1,
         'supernet.decoder_embed_dim': 32, 'search.eval_images': 48,
         'search.batch_size': 16, 'search.population': 8,
         'search.generations': 3, 'search.parents': 3, 'search.mutations': 4,
         'search.crossovers': 4}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir holding a teacher and a (randomly initialised) supernet."""
  root = tmp_path_factory.mktemp('search')
  config = _config('', **SMALL)
  model = MAE(teacher.mae_config(config), rngs=nnx.Rngs(0))
  teacher.save_teacher(model, root / 'teacher' / 'model')
  _, params, fixed = nnx.split(
      supernet_train.build_student(config, 64, nnx.Rngs(1)), nnx.Param, ...)
  state = {'params': nnx.to_pure_dict(params),
           'fixed': nnx.to_pure_dict(fixed)}
  supernet_train.save_student(state, 64, config,
                              supernet_train.model_path(epath.Path(root)))
  return root


def _search_config(**overrides):
  return _config('', **{**SMALL, **overrides})


@pytest.mark.parametrize('strategy', ['vmap', 'map'])
def test_population_scorer_equals_scoring_each_alone_and_compiles_once(
    workdir, strategy):
  config = _search_config()
  space = config_lib.space_from_config(config)
  encoder, teacher_model = search.load_models(config, epath.Path(workdir))
  batches = search.eval_batches(config, 'train', 40, 16, seed=0)
  assert len(batches) == 3 and int(sum(b['valid'].sum() for b in batches)) == 40
  scorer = search.PopulationScorer(encoder, teacher_model, space, batches,
                                   tau=0.5, mask_ratio=0.75, seed=0,
                                   capacity=5, strategy=strategy)
  rng = np.random.default_rng(0)
  for _ in range(2):  # Two "generations" of different Archs, one compile.
    archs = [space.sample(rng) for _ in range(7)]  # Two chunks, one padded.
    together = scorer(archs)
    alone = np.array([scorer.score_alone(a) for a in archs])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
  assert scorer.traces == 1
  # The fitness tells Archs apart.
  assert np.ptp(together) > 1e-4


def test_search_stays_in_the_window_and_resumes_to_the_same_result(
    workdir, tmp_path, monkeypatch):
  space = config_lib.space_from_config(_search_config())
  rng = np.random.default_rng(1)
  params = sorted(space.count_params(space.sample(rng)) for _ in range(200))
  lo, hi = params[50] / 1e6, params[150] / 1e6
  config = _search_config(**{'search.min_params_m': lo,
                             'search.max_params_m': hi})
  config.search.supernet = str(supernet_train.model_path(epath.Path(workdir)))
  config.teacher.checkpoint = str(epath.Path(workdir) / 'teacher' / 'model')

  straight = search.run(config, epath.Path(tmp_path / 'a'))
  out = tmp_path / 'a' / 'search'
  history = [json.loads(l) for l in
             (out / 'history.jsonl').read_text().splitlines()]
  window = Window.from_config(config.search)
  archs = [search.Arch.from_dict(h['arch']) for h in history]
  assert len(history) == len({a.to_json() for a in archs})  # No repeats.
  assert all(window.contains(space, a) and space.contains(a) for a in archs)
  assert max(h['fitness'] for h in history) == straight['fitness']
  assert {h['generation'] for h in history} == {0, 1, 2}
  assert json.loads((out / 'best_arch.json').read_text()) == straight
  for png in ('fitness.png', 'pareto.png'):
    assert (out / png).read_bytes()[:4] == b'\x89PNG'

  # Killed after its second generation: the next run picks up from there.
  calls = []
  original = search.PopulationScorer.__call__

  def dies_in_generation_3(self, archs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return original(self, archs)

  monkeypatch.setattr(search.PopulationScorer, '__call__',
                      dies_in_generation_3)
  with pytest.raises(KeyboardInterrupt):
    search.run(config, epath.Path(tmp_path / 'b'))
  monkeypatch.setattr(search.PopulationScorer, '__call__', original)
  state = json.loads((tmp_path / 'b/search/state.json').read_text())
  assert state['generation'] == 2
  resumed = search.run(config, epath.Path(tmp_path / 'b'))
  assert resumed == straight
  assert (tmp_path / 'b/search/history.jsonl').read_text() == (
      out / 'history.jsonl').read_text()
  # Finished: a rerun reads the result instead of searching again.
  assert search.run(config, epath.Path(tmp_path / 'b')) == straight


def test_an_empty_window_is_refused_before_any_work(tmp_path):
  config = _search_config(**{'search.min_params_m': 50.0,
                             'search.max_params_m': 60.0})
  with pytest.raises(SearchError, match='config.search'):
    search.run(config, epath.Path(tmp_path))
  assert not (tmp_path / 'search').exists()


def test_a_supernet_of_another_space_is_refused(workdir):
  config = _search_config(**{'space.embed_dims': (32, 64)})
  with pytest.raises(supernet_train.SupernetError,
                     match='config.space.embed_dims'):
    search.load_models(config, epath.Path(workdir))


def test_knn_top1_against_a_hand_checked_example():
  train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
  labels = np.array([0, 0, 1, 1])
  # Query 0 is nearest class 0; query 1 nearest class 1 but labelled 0;
  # query 2 sits among class 1.
  query = np.array([[1.0, 0.05], [0.05, 1.0], [0.2, 0.8]])
  assert rank.knn_top1(train, labels, query, np.array([0, 0, 1]), k=2,
                       num_classes=2) == pytest.approx(2 / 3)
  # With every neighbour voting, weights exp(cos / T) still favour the near.
  assert rank.knn_top1(train, labels, query, np.array([0, 1, 1]), k=4,
                       num_classes=2) == 1.0


def test_rank_mode_scores_both_ways_and_correlates(workdir, tmp_path):
  config = _search_config(**{'rank.num_archs': 6, 'rank.knn_k': 5,
                             'rank.train_images': 64, 'rank.eval_images': 32})
  config.search.supernet = str(supernet_train.model_path(epath.Path(workdir)))
  config.teacher.checkpoint = str(epath.Path(workdir) / 'teacher' / 'model')
  result = rank.run(config, epath.Path(tmp_path))
  assert result == json.loads((tmp_path / 'rank/rank.json').read_text())
  assert (tmp_path / 'rank/scatter.png').read_bytes()[:4] == b'\x89PNG'
  assert result['support_images'] == 64 and result['query_images'] == 32
  fitness = [a['fitness'] for a in result['archs']]
  accuracy = [a['knn_top1'] for a in result['archs']]
  assert len({json.dumps(a['arch']) for a in result['archs']}) == 6
  assert all(0 <= a <= 1 for a in accuracy)
  # Kendall's tau-b by its definition: (concordant - discordant) pairs over
  # the geometric mean of the pairs untied in each ranking.
  pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
  df = [np.sign(fitness[i] - fitness[j]) for i, j in pairs]
  da = [np.sign(accuracy[i] - accuracy[j]) for i, j in pairs]
  untied = np.sqrt(np.count_nonzero(df) * np.count_nonzero(da))
  if untied:
    assert result['kendall_tau'] == pytest.approx(
        np.dot(df, da) / untied)
  assert -1 <= result['spearman_rho'] <= 1
